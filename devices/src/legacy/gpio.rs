//! A PL061 GPIO controller (ARM PrimeCell), the way a platform without
//! ACPI gives its guest a power key: the device tree wires one of its input
//! pins to a `gpio-keys` node with `KEY_POWER`, so Linux reports a press
//! of the key as an input event, which init or acpid acts on.
//!
//! Only what a guest driving input pins needs is modelled: the data,
//! direction and interrupt registers and the PrimeCell identification the
//! AMBA bus probes. Pins are inputs the VMM sets; what the guest writes to
//! output pins is kept and read back, and drives nothing.

use vm_superio::Trigger;

use crate::BusDevice;

/// Pins on the controller.
const PINS: u32 = 8;
/// Register offsets (PL061 TRM, 3.3). GPIODATA spans 0x000-0x3fc: address
/// bits 9:2 mask which pins a read or write touches.
const DATA_END: u64 = 0x400;
const DIR: u64 = 0x400;
const IS: u64 = 0x404;
const IBE: u64 = 0x408;
const IEV: u64 = 0x40c;
const IE: u64 = 0x410;
const RIS: u64 = 0x414;
const MIS: u64 = 0x418;
const IC: u64 = 0x41c;
const AFSEL: u64 = 0x420;
/// PrimeCell identification: GPIOPeriphID0-3 then GPIOPCellID0-3, one
/// byte a register, in the window's last 32 bytes.
const ID_START: u64 = 0xfe0;
const ID_BYTES: [u8; 8] = [0x61, 0x10, 0x04, 0x00, 0x0d, 0xf0, 0x05, 0xb1];

/// The PL061 state; `irq` fires when an enabled interrupt becomes pending.
pub struct Pl061<T: Trigger> {
    data: u8,
    dir: u8,
    is: u8,
    ibe: u8,
    iev: u8,
    ie: u8,
    ris: u8,
    afsel: u8,
    irq: T,
    /// Pins pressed as keys: released once the guest has read them high.
    momentary: u8,
    /// Interrupts the guest cleared (GPIOIC) for each pin: how a caller
    /// learns that the guest took an event.
    acked: [u64; PINS as usize],
    warned: bool,
}

impl<T: Trigger> Pl061<T> {
    /// A controller with every pin low, an input, and no interrupt set up.
    pub fn new(irq: T) -> Self {
        Pl061 {
            data: 0,
            dir: 0,
            is: 0,
            ibe: 0,
            iev: 0,
            ie: 0,
            ris: 0,
            afsel: 0,
            irq,
            momentary: 0,
            acked: [0; PINS as usize],
            warned: false,
        }
    }

    /// Drives input `pin` high or low, raising its interrupt if the guest
    /// asked for this edge or level. Pins the guest made outputs ignore it.
    pub fn set_input(&mut self, pin: u32, high: bool) -> Result<(), T::E> {
        let Some(bit) = pin_bit(pin) else {
            return Ok(());
        };
        if self.dir & bit != 0 {
            return Ok(());
        }
        let was_high = self.data & bit != 0;
        if high {
            self.data |= bit;
        } else {
            self.data &= !bit;
        }
        let fires = if self.is & bit != 0 {
            // Level-sensitive: pending while at the level in GPIOIEV.
            high == (self.iev & bit != 0)
        } else if was_high == high {
            false
        } else {
            // Edge-sensitive: both edges, or the one GPIOIEV names.
            self.ibe & bit != 0 || high == (self.iev & bit != 0)
        };
        if fires {
            self.raise(bit)?;
        }
        Ok(())
    }

    /// Presses a key on input `pin`: the pin goes high, and low again right
    /// after the guest has read it high. A key driver (Linux's gpio-keys)
    /// reads the level after each edge's interrupt, so it sees the press
    /// and then the release, and no timer is needed to let go.
    pub fn press(&mut self, pin: u32) -> Result<(), T::E> {
        let Some(bit) = pin_bit(pin) else {
            return Ok(());
        };
        self.momentary |= bit;
        self.set_input(pin, true)
    }

    /// How many times the guest has cleared `pin`'s interrupt.
    pub fn acked(&self, pin: u32) -> u64 {
        pin_bit(pin).map_or(0, |_| self.acked[pin as usize])
    }

    /// True if the guest enabled `pin`'s interrupt: a driver listens on it.
    pub fn listening(&self, pin: u32) -> bool {
        pin_bit(pin).is_some_and(|bit| self.ie & bit != 0)
    }

    fn raise(&mut self, bits: u8) -> Result<(), T::E> {
        let before = self.ris & self.ie;
        self.ris |= bits;
        if self.ris & self.ie & !before != 0 {
            self.irq.trigger()?;
        }
        Ok(())
    }

    fn warn(&mut self, what: std::fmt::Arguments) {
        if !self.warned {
            self.warned = true;
            log::warn!("{what} (ignored; further ones are not logged)");
        }
    }
}

fn pin_bit(pin: u32) -> Option<u8> {
    (pin < PINS).then(|| 1u8 << pin)
}

impl<T: Trigger + Send> BusDevice for Pl061<T>
where
    T::E: std::fmt::Debug,
{
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value = match offset {
            o if o < DATA_END => {
                let value = self.data & ((o >> 2) as u8);
                // Keys the guest has now seen pressed are let go.
                let seen = value & self.momentary;
                self.momentary &= !seen;
                for pin in (0..PINS).filter(|p| seen & (1 << p) != 0) {
                    if let Err(e) = self.set_input(pin, false) {
                        log::error!("GPIO: cannot raise the interrupt: {e:?}");
                    }
                }
                value
            }
            DIR => self.dir,
            IS => self.is,
            IBE => self.ibe,
            IEV => self.iev,
            IE => self.ie,
            RIS => self.ris,
            MIS => self.ris & self.ie,
            AFSEL => self.afsel,
            o if (ID_START..ID_START + 4 * ID_BYTES.len() as u64).contains(&o) && o % 4 == 0 => {
                ID_BYTES[((o - ID_START) / 4) as usize]
            }
            _ => 0,
        };
        if let Some(first) = data.first_mut() {
            *first = value;
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match offset {
            o if o < DATA_END => {
                // Only output pins under the address mask change.
                let mask = ((o >> 2) as u8) & self.dir;
                self.data = (self.data & !mask) | (value & mask);
            }
            DIR => self.dir = value,
            IS => self.is = value,
            IBE => self.ibe = value,
            IEV => self.iev = value,
            IE => {
                let newly = value & !self.ie;
                self.ie = value;
                // An event that arrived while masked interrupts now.
                if self.ris & newly != 0 {
                    if let Err(e) = self.irq.trigger() {
                        log::error!("GPIO: cannot raise the interrupt: {e:?}");
                    }
                }
            }
            IC => {
                for pin in 0..PINS {
                    if value & self.ris & (1 << pin) != 0 {
                        self.acked[pin as usize] += 1;
                    }
                }
                self.ris &= !value;
            }
            AFSEL => self.afsel = value,
            _ => self.warn(format_args!(
                "GPIO: write of {value:#x} to read-only or unknown register {offset:#x}"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::test_util::Count;

    fn read(g: &mut Pl061<Count>, offset: u64) -> u8 {
        let mut b = [0xffu8; 4];
        g.read(offset, &mut b);
        assert_eq!(&b[1..], &[0, 0, 0]);
        b[0]
    }

    #[test]
    fn the_amba_bus_finds_a_pl061() {
        let mut g = Pl061::new(Count::default());
        let id: Vec<u8> = (0..8).map(|i| read(&mut g, 0xfe0 + 4 * i)).collect();
        assert_eq!(id, [0x61, 0x10, 0x04, 0x00, 0x0d, 0xf0, 0x05, 0xb1]);
    }

    /// What Linux's gpio-keys does: the pin an input with an interrupt on
    /// both edges; each press and release interrupts once, MIS names the
    /// pin, the data register shows the level, GPIOIC acknowledges.
    #[test]
    fn a_key_on_both_edges_interrupts_on_press_and_release() {
        let irq = Count::default();
        let mut g = Pl061::new(irq.clone());
        g.write(IBE, &[1 << 3]);
        assert!(!g.listening(3));
        g.write(IE, &[1 << 3]);
        assert!(g.listening(3));
        g.set_input(3, true).unwrap();
        assert_eq!(irq.get(), 1);
        assert_eq!(read(&mut g, MIS), 1 << 3);
        assert_eq!(read(&mut g, (1 << 3) << 2), 1 << 3);
        assert_eq!(read(&mut g, (1 << 2) << 2), 0, "masked-out pins read 0");
        g.write(IC, &[1 << 3]);
        assert_eq!((read(&mut g, MIS), g.acked(3)), (0, 1));
        // The same level again is no edge.
        g.set_input(3, true).unwrap();
        assert_eq!(irq.get(), 1);
        g.set_input(3, false).unwrap();
        assert_eq!((irq.get(), read(&mut g, 0x3fc)), (2, 0));
    }

    #[test]
    fn a_pressed_key_is_let_go_once_the_guest_has_read_it() {
        let irq = Count::default();
        let mut g = Pl061::new(irq.clone());
        g.write(IBE, &[1 << 3]);
        g.write(IE, &[1 << 3]);
        g.press(3).unwrap();
        assert_eq!(irq.get(), 1);
        g.write(IC, &[1 << 3]);
        // Reading other pins does not let go.
        assert_eq!(read(&mut g, 1 << 2), 0);
        assert_eq!(irq.get(), 1);
        assert_eq!(read(&mut g, 1 << 5), 1 << 3, "the press is seen");
        assert_eq!(irq.get(), 2, "the release interrupts");
        assert_eq!(read(&mut g, 1 << 5), 0, "then the key is up");
    }

    #[test]
    fn masked_events_wait_for_the_enable_and_outputs_ignore_inputs() {
        let irq = Count::default();
        let mut g = Pl061::new(irq.clone());
        g.write(IEV, &[1 << 1]);
        g.set_input(1, true).unwrap();
        assert_eq!((irq.get(), read(&mut g, RIS), read(&mut g, MIS)), (0, 2, 0));
        g.write(IE, &[1 << 1]);
        assert_eq!(irq.get(), 1);
        // An output pin keeps what the guest wrote.
        g.write(DIR, &[1 << 0]);
        g.write(0x3fc, &[0xff]);
        g.set_input(0, false).unwrap();
        assert_eq!(read(&mut g, 1 << 2), 1);
        // Pins beyond the eighth do not exist.
        g.set_input(8, true).unwrap();
        assert_eq!(g.acked(8), 0);
        g.write(0x800, &[1]);
    }
}
