//! Legacy platform devices: the 8250 UART, the i8042 controller (reset) and
//! the boot timer.

mod boot_timer;
mod i8042;
mod serial;

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
