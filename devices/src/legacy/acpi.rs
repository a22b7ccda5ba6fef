//! The registers of strato's hardware-reduced ACPI platform: the FADT's
//! sleep control, sleep status and reset registers ([`AcpiPm`]), the
//! Generic Event Device's event register ([`Ged`]) and the CPU hotplug
//! controller ([`CpuHotplug`]). Where they sit and
//! what the tables say about them is `arch`'s business; these models only
//! see offsets into their windows.

use arch::acpi_regs::{
    CPU_EJECT, CPU_ENABLED, CPU_INSERTING, CPU_REMOVING, CPU_SELECT_OFFSET, CPU_STATUS_OFFSET,
    GED_EVENT_CPU_HOTPLUG, GED_EVENT_POWER_BUTTON, RESET_OFFSET, RESET_VALUE, S5_SLEEP_TYPE,
    SLEEP_CONTROL_OFFSET, SLEEP_STATUS_OFFSET, SLP_EN,
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
    /// vCPUs were plugged or are asked back: the guest scans the CPU
    /// hotplug controller.
    CpuHotplug,
}

impl GedEvent {
    fn bit(self) -> u8 {
        match self {
            GedEvent::PowerButton => GED_EVENT_POWER_BUTTON,
            GedEvent::CpuHotplug => GED_EVENT_CPU_HOTPLUG,
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

/// What the VMM does when the guest ejects a vCPU (`_EJ0`, after the
/// guest has taken it offline): stop running it.
pub trait CpuEject: Send {
    /// The guest gave vCPU `cpu` back.
    fn eject(&self, cpu: u32);
}

/// One vCPU slot of the hotplug controller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct CpuSlot {
    present: bool,
    inserting: bool,
    removing: bool,
}

/// How many vCPUs the controller has, as the VMM and the guest see them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuCounts {
    /// vCPUs present: plugged, and not yet ejected by the guest.
    pub present: u32,
    /// Plugged vCPUs whose event the guest has not taken yet.
    pub inserting: u32,
    /// vCPUs asked back that the guest has not ejected yet.
    pub removing: u32,
}

/// The CPU hotplug controller the DSDT's `\_SB_.CPUS` methods drive: a
/// selector, and for the selected vCPU a status byte with its presence and
/// pending insert and remove events, which the guest acknowledges by
/// writing them back, and an eject bit. vCPU 0 is never ejected (Linux
/// cannot give the boot CPU up; a guest that tries is ignored).
pub struct CpuHotplug<E: CpuEject> {
    slots: Vec<CpuSlot>,
    selected: u32,
    eject: E,
    bad: WarnOnce,
}

impl<E: CpuEject> CpuHotplug<E> {
    /// A controller for `max` vCPUs of which the first `boot` are present.
    pub fn new(boot: u32, max: u32, eject: E) -> Self {
        let slots = (0..max)
            .map(|i| CpuSlot {
                present: i < boot,
                ..CpuSlot::default()
            })
            .collect();
        CpuHotplug {
            slots,
            selected: 0,
            eject,
            bad: WarnOnce::default(),
        }
    }

    /// Makes vCPUs `0..count` present and asks the guest to give the ones
    /// above back; returns whether there is anything for the guest to
    /// scan. A vCPU asked back and wanted again is simply kept.
    pub fn resize(&mut self, count: u32) -> bool {
        let mut changed = false;
        for (id, slot) in (0u32..).zip(self.slots.iter_mut()) {
            let want = id < count.max(1);
            match (want, slot.present) {
                (true, false) => {
                    *slot = CpuSlot {
                        present: true,
                        inserting: true,
                        removing: false,
                    };
                    changed = true;
                }
                (true, true) if slot.removing => slot.removing = false,
                (false, true) if !slot.removing => {
                    slot.removing = true;
                    changed = true;
                }
                _ => {}
            }
        }
        changed
    }

    /// Whether vCPU `cpu` is present.
    pub fn present(&self, cpu: u32) -> bool {
        self.slots.get(cpu as usize).is_some_and(|s| s.present)
    }

    /// The controller's counts.
    pub fn counts(&self) -> CpuCounts {
        let count = |f: fn(&CpuSlot) -> bool| self.slots.iter().filter(|s| f(s)).count() as u32;
        CpuCounts {
            present: count(|s| s.present),
            inserting: count(|s| s.present && s.inserting),
            removing: count(|s| s.present && s.removing),
        }
    }

    fn status(&self) -> u8 {
        self.slots.get(self.selected as usize).map_or(0, |s| {
            let mut b = 0;
            if s.present {
                b |= CPU_ENABLED;
            }
            if s.inserting {
                b |= CPU_INSERTING;
            }
            if s.removing {
                b |= CPU_REMOVING;
            }
            b
        })
    }

    fn write_status(&mut self, value: u8) {
        let cpu = self.selected;
        let Some(slot) = self.slots.get_mut(cpu as usize) else {
            self.bad.warn(format_args!(
                "CPU hotplug: status write for vCPU {cpu}, which the VM cannot have"
            ));
            return;
        };
        if value & CPU_INSERTING != 0 {
            slot.inserting = false;
        }
        if value & CPU_REMOVING != 0 {
            slot.removing = false;
        }
        if value & CPU_EJECT != 0 {
            if cpu == 0 || !slot.present {
                self.bad.warn(format_args!(
                    "CPU hotplug: eject of vCPU {cpu}, which is {}",
                    if cpu == 0 {
                        "the boot vCPU"
                    } else {
                        "not present"
                    }
                ));
                return;
            }
            *slot = CpuSlot::default();
            self.eject.eject(cpu);
        }
    }
}

impl<E: CpuEject> BusDevice for CpuHotplug<E> {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = match at {
                CPU_SELECT_OFFSET..CPU_STATUS_OFFSET => {
                    self.selected.to_le_bytes()[(at - CPU_SELECT_OFFSET) as usize]
                }
                CPU_STATUS_OFFSET => self.status(),
                _ => 0,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            let at = offset + i as u64;
            match at {
                CPU_SELECT_OFFSET..CPU_STATUS_OFFSET => {
                    let mut sel = self.selected.to_le_bytes();
                    sel[(at - CPU_SELECT_OFFSET) as usize] = b;
                    self.selected = u32::from_le_bytes(sel);
                }
                CPU_STATUS_OFFSET => self.write_status(b),
                _ => self.bad.warn(format_args!(
                    "CPU hotplug register {at}: write of {b:#x} past the registers"
                )),
            }
        }
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

    #[derive(Clone, Default)]
    struct Ejected(std::sync::Arc<std::sync::Mutex<Vec<u32>>>);

    impl CpuEject for Ejected {
        fn eject(&self, cpu: u32) {
            self.0.lock().unwrap().push(cpu);
        }
    }

    /// What the DSDT's CSCN does: for each vCPU, select it, read its
    /// status, acknowledge insert and remove events; returns the vCPUs
    /// notified as (inserted, asked back).
    fn scan<E: CpuEject>(c: &mut CpuHotplug<E>, max: u32) -> (Vec<u32>, Vec<u32>) {
        let (mut ins, mut rm) = (Vec::new(), Vec::new());
        for id in 0..max {
            c.write(CPU_SELECT_OFFSET, &id.to_le_bytes());
            let mut st = [0u8];
            c.read(CPU_STATUS_OFFSET, &mut st);
            if st[0] & CPU_INSERTING != 0 {
                ins.push(id);
                c.write(CPU_STATUS_OFFSET, &[CPU_INSERTING]);
            }
            if st[0] & CPU_REMOVING != 0 {
                rm.push(id);
                c.write(CPU_STATUS_OFFSET, &[CPU_REMOVING]);
            }
        }
        (ins, rm)
    }

    fn status<E: CpuEject>(c: &mut CpuHotplug<E>, id: u32) -> u8 {
        c.write(CPU_SELECT_OFFSET, &id.to_le_bytes());
        let mut st = [0u8];
        c.read(CPU_STATUS_OFFSET, &mut st);
        st[0]
    }

    #[test]
    fn vcpus_are_plugged_asked_back_and_ejected() {
        let ejected = Ejected::default();
        let mut c = CpuHotplug::new(1, 4, ejected.clone());
        assert_eq!(status(&mut c, 0), CPU_ENABLED);
        assert_eq!(status(&mut c, 1), 0);
        // 1 -> 4: three inserts, each reported once.
        assert!(c.resize(4));
        let counts = c.counts();
        assert_eq!((counts.present, counts.inserting), (4, 3));
        assert_eq!(scan(&mut c, 4), (vec![1, 2, 3], vec![]));
        assert_eq!(scan(&mut c, 4), (vec![], vec![]));
        assert_eq!(c.counts().inserting, 0);
        assert!(!c.resize(4), "nothing to do");
        // 4 -> 2: two asked back, present until ejected.
        assert!(c.resize(2));
        assert_eq!(scan(&mut c, 4), (vec![], vec![2, 3]));
        assert_eq!(c.counts().present, 4);
        for id in [3u32, 2] {
            c.write(CPU_SELECT_OFFSET, &id.to_le_bytes());
            c.write(CPU_STATUS_OFFSET, &[CPU_EJECT]);
        }
        assert_eq!(*ejected.0.lock().unwrap(), vec![3, 2]);
        assert_eq!(c.counts().present, 2);
        assert!(!c.present(3));
        assert_eq!(status(&mut c, 3), 0);
        // Asked back, then wanted again before the guest ejected it.
        assert!(c.resize(1));
        assert!(!c.resize(2));
        assert_eq!(scan(&mut c, 4), (vec![], vec![]));
        // And plugged again after an eject.
        assert!(c.resize(3));
        assert_eq!(scan(&mut c, 4), (vec![2], vec![]));
    }

    #[test]
    fn hostile_hotplug_writes_are_ignored() {
        let ejected = Ejected::default();
        let mut c = CpuHotplug::new(2, 2, ejected.clone());
        for _ in 0..1000 {
            // The boot vCPU, a vCPU out of range, wide and odd writes.
            c.write(CPU_SELECT_OFFSET, &0u32.to_le_bytes());
            c.write(CPU_STATUS_OFFSET, &[0xff]);
            c.write(CPU_SELECT_OFFSET, &u32::MAX.to_le_bytes());
            c.write(CPU_STATUS_OFFSET, &[0xff]);
            c.write(CPU_SELECT_OFFSET, &[7]);
            c.write(CPU_STATUS_OFFSET, &[CPU_EJECT, 0xff, 0xff, 0xff]);
            c.write(9, &[1]);
            let mut wide = [0u8; 8];
            c.read(0, &mut wide);
        }
        assert!(ejected.0.lock().unwrap().is_empty());
        assert_eq!(c.counts().present, 2);
        // An eject of a vCPU that is present and not the boot one works.
        c.write(CPU_SELECT_OFFSET, &1u32.to_le_bytes());
        c.write(CPU_STATUS_OFFSET, &[CPU_EJECT]);
        assert_eq!(*ejected.0.lock().unwrap(), vec![1]);
        assert!(c.bad.0);
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
