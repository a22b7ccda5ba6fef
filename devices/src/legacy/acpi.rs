//! The registers of strato's hardware-reduced ACPI platform: the FADT's
//! sleep control, sleep status and reset registers ([`AcpiPm`]), and the
//! Generic Event Device's event register ([`Ged`]). Where they sit and
//! what the tables say about them is `arch`'s business; these models only
//! see offsets into their windows.

use arch::acpi_regs::{
    GED_EVENT_POWER_BUTTON, RESET_OFFSET, RESET_VALUE, S5_SLEEP_TYPE, SLEEP_CONTROL_OFFSET,
    SLEEP_STATUS_OFFSET, SLP_EN,
};
use vm_superio::Trigger;

use crate::BusDevice;

/// Logs the first of a kind of guest misbehaviour, and nothing after it:
/// a guest looping on a bad write must not flood the log.
#[derive(Default)]
struct WarnOnce(bool);

impl WarnOnce {
    fn warn(&mut self, what: std::fmt::Arguments) {
        if !self.0 {
            self.0 = true;
            log::warn!("{what} (ignored; further ones are not logged)");
        }
    }
}

/// Sleep control/status and reset: a write of SLP_TYP = S5 with SLP_EN
/// powers off, the reset value to the reset register resets.
pub struct AcpiPm<P: Trigger, R: Trigger> {
    power_off: P,
    reset: R,
    bad: WarnOnce,
}

impl<P: Trigger, R: Trigger> AcpiPm<P, R> {
    /// Registers that fire `power_off` and `reset`.
    pub fn new(power_off: P, reset: R) -> Self {
        AcpiPm {
            power_off,
            reset,
            bad: WarnOnce::default(),
        }
    }
}

impl<P, R> BusDevice for AcpiPm<P, R>
where
    P: Trigger + Send,
    R: Trigger + Send,
    P::E: std::fmt::Debug,
    R::E: std::fmt::Debug,
{
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Sleep status: never a wake event to report. The other registers
        // are write-only and read as 0 too.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        if data.len() != 1 {
            self.bad.warn(format_args!(
                "ACPI PM register {offset}: {}-byte write, registers are one byte",
                data.len()
            ));
            return;
        }
        match offset {
            SLEEP_CONTROL_OFFSET if value & SLP_EN != 0 => {
                let sleep_type = (value >> 2) & 0x7;
                if sleep_type == S5_SLEEP_TYPE {
                    if let Err(e) = self.power_off.trigger() {
                        log::error!("cannot record the guest's power-off: {e:?}");
                    }
                } else {
                    self.bad.warn(format_args!(
                        "guest asked for sleep state S{sleep_type}, which is not offered"
                    ));
                }
            }
            // Without SLP_EN a sleep control write only sets bits Linux
            // clears first; wake status writes clear what we never set.
            SLEEP_CONTROL_OFFSET | SLEEP_STATUS_OFFSET => {}
            RESET_OFFSET if value == RESET_VALUE => {
                if let Err(e) = self.reset.trigger() {
                    log::error!("cannot record the guest's reset: {e:?}");
                }
            }
            _ => self.bad.warn(format_args!(
                "ACPI PM register {offset}: unexpected write {value:#x}"
            )),
        }
    }
}

/// Events the GED signals; bits of its event register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GedEvent {
    /// The power button was pressed.
    PowerButton,
}

impl GedEvent {
    fn bit(self) -> u8 {
        match self {
            GedEvent::PowerButton => GED_EVENT_POWER_BUTTON,
        }
    }
}

/// The Generic Event Device: pending events in a register the guest's
/// `_EVT` method reads (which clears it), announced by an interrupt.
pub struct Ged<T: Trigger> {
    pending: u8,
    irq: T,
    /// How many times the guest has read the register with events in it:
    /// proof that the guest's ACPI handles GED interrupts.
    taken: u64,
    bad: WarnOnce,
}

impl<T: Trigger> Ged<T> {
    /// A GED that raises `irq`.
    pub fn new(irq: T) -> Self {
        Ged {
            pending: 0,
            irq,
            taken: 0,
            bad: WarnOnce::default(),
        }
    }

    /// Marks `event` pending and interrupts the guest.
    pub fn notify(&mut self, event: GedEvent) -> Result<(), T::E> {
        self.pending |= event.bit();
        self.irq.trigger()
    }

    /// How many times the guest has collected events so far.
    pub fn taken(&self) -> u64 {
        self.taken
    }
}

impl<T: Trigger + Send> BusDevice for Ged<T> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset == 0 {
            if let Some(first) = data.first_mut() {
                *first = std::mem::take(&mut self.pending);
                if *first != 0 {
                    self.taken += 1;
                }
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        self.bad.warn(format_args!(
            "GED register {offset}: write of {data:02x?} to a read-only register"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::test_util::Count;

    #[test]
    fn s5_powers_off_and_the_reset_value_resets() {
        let (off, reset) = (Count::default(), Count::default());
        let mut pm = AcpiPm::new(off.clone(), reset.clone());
        // What Linux writes: clear wake status, then SLP_TYP | SLP_EN.
        pm.write(SLEEP_STATUS_OFFSET, &[0x80]);
        pm.write(SLEEP_CONTROL_OFFSET, &[S5_SLEEP_TYPE << 2]);
        assert_eq!(off.get(), 0);
        pm.write(SLEEP_CONTROL_OFFSET, &[(S5_SLEEP_TYPE << 2) | SLP_EN]);
        assert_eq!(off.get(), 1);
        pm.write(RESET_OFFSET, &[RESET_VALUE]);
        assert_eq!(reset.get(), 1);
        let mut b = [0xffu8];
        pm.read(SLEEP_STATUS_OFFSET, &mut b);
        assert_eq!(b, [0]);
    }

    #[test]
    fn nonsense_is_ignored() {
        let (off, reset) = (Count::default(), Count::default());
        let mut pm = AcpiPm::new(off.clone(), reset.clone());
        for _ in 0..1000 {
            pm.write(SLEEP_CONTROL_OFFSET, &[(3 << 2) | SLP_EN]); // S3
            pm.write(RESET_OFFSET, &[0x42]);
            pm.write(RESET_OFFSET, &[RESET_VALUE, 0]); // wide write
            pm.write(7, &[1]);
            pm.write(0, &[]);
        }
        assert_eq!((off.get(), reset.get()), (0, 0));
        assert!(pm.bad.0, "the first one was logged");
    }

    #[test]
    fn ged_reports_events_once_and_counts_collections() {
        let irq = Count::default();
        let mut ged = Ged::new(irq.clone());
        let mut b = [0u8];
        ged.read(0, &mut b);
        assert_eq!((b[0], ged.taken()), (0, 0));
        ged.notify(GedEvent::PowerButton).unwrap();
        assert_eq!(irq.get(), 1);
        ged.read(0, &mut b);
        assert_eq!((b[0], ged.taken()), (GED_EVENT_POWER_BUTTON, 1));
        ged.read(0, &mut b);
        assert_eq!((b[0], ged.taken()), (0, 1));
        let mut wide = [0xffu8; 4];
        ged.notify(GedEvent::PowerButton).unwrap();
        ged.read(0, &mut wide);
        assert_eq!(wide, [GED_EVENT_POWER_BUTTON, 0, 0, 0]);
        ged.write(0, &[0xff]);
        ged.read(0, &mut b);
        assert_eq!(b[0], 0);
    }
}
