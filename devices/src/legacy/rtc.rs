//! The PL031 real-time clock (arm64): vm-superio's model on the MMIO bus.
//! Linux reads the time from it at boot; the PL031 only takes 32-bit
//! accesses, so any other width reads as zero and writes are dropped.

use vm_superio::rtc_pl031::{NoEvents, Rtc as Pl031};

use crate::BusDevice;

/// A PL031 in a 4 KiB MMIO window (its AMBA id registers at the top).
pub struct Rtc(Pl031<NoEvents>);

impl Rtc {
    /// A clock that counts from the host's time now.
    pub fn new() -> Self {
        Rtc(Pl031::new())
    }
}

impl Default for Rtc {
    fn default() -> Self {
        Self::new()
    }
}

impl BusDevice for Rtc {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u16::try_from(offset), <&mut [u8; 4]>::try_from(&mut *data)) {
            (Ok(offset), Ok(word)) => self.0.read(offset, word),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), Ok(word)) = (u16::try_from(offset), <&[u8; 4]>::try_from(data)) {
            self.0.write(offset, word);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_time_and_its_amba_id() {
        let mut rtc = Rtc::new();
        let mut word = [0u8; 4];
        // RTCDR, the seconds since the epoch: well past 2020.
        rtc.read(0, &mut word);
        assert!(u32::from_le_bytes(word) > 1_577_836_800);
        // The PrimeCell id (0xb105f00d) in its four id registers.
        let id: Vec<u8> = (0..4)
            .map(|i| {
                rtc.read(0xff0 + 4 * i, &mut word);
                word[0]
            })
            .collect();
        assert_eq!(id, [0x0d, 0xf0, 0x05, 0xb1]);
        // A byte access is not a PL031 access.
        let mut byte = [0xffu8; 1];
        rtc.read(0, &mut byte);
        assert_eq!(byte, [0]);
    }
}
