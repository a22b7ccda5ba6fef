//! Platform devices: the 8250 UART, the i8042 controller (reset), the
//! boot timer and the ACPI registers.

mod acpi;
mod boot_timer;
mod i8042;
mod serial;

pub use acpi::{AcpiPm, Ged, GedEvent};
pub use boot_timer::{BootTimer, BOOT_TIMER_MAGIC};
pub use i8042::I8042;
pub use serial::{Serial, SerialInputEvents};

/// COM1 I/O port base.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1 interrupt line.
pub const COM1_IRQ: u32 = 4;
/// i8042 data port; the command/status port is 4 above it.
pub const I8042_PORT: u64 = 0x60;
/// Length of the i8042 port range (0x60..=0x64).
pub const I8042_LEN: u64 = 5;
/// Keyboard interrupt line.
pub const KBD_IRQ: u32 = 1;

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
