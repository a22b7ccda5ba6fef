//! Platform devices: the 8250 UART, the i8042 controller (reset), the
//! CMOS and PL031 clocks, the PL061 GPIO (a power key), the boot timer and the ACPI
//! registers. Where each sits on which bus is the
//! architecture's `PLATFORM`.

mod acpi;
mod boot_timer;
mod cmos;
mod gpio;
mod i8042;
mod rtc;
mod serial;

pub use acpi::{AcpiPm, CpuCounts, CpuEject, CpuHotplug, Ged, GedEvent};
pub use boot_timer::{BootTimer, BOOT_TIMER_MAGIC};
pub use cmos::Cmos;
pub use gpio::Pl061;
pub use i8042::I8042;
pub use rtc::Rtc;
pub use serial::{Serial, SerialInputEvents};

/// A trigger that counts its firings, for the device tests.
#[cfg(test)]
pub(crate) mod test_util {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[derive(Clone, Default)]
    pub struct Count(Arc<AtomicU32>);

    impl vm_superio::Trigger for Count {
        type E = ();
        fn trigger(&self) -> Result<(), ()> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    impl Count {
        pub fn get(&self) -> u32 {
            self.0.load(Ordering::SeqCst)
        }
    }
}
