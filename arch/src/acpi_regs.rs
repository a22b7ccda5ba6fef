//! The ACPI registers of strato's hardware-reduced platform, as the
//! tables describe them and the device models implement them: the FADT's
//! sleep control, sleep status and reset registers, and the Generic Event
//! Device's event register. Where they sit is in each architecture's
//! `PLATFORM`.

/// Offset of the sleep control register in the power-management window.
pub const SLEEP_CONTROL_OFFSET: u64 = 0;
/// Sleep status register offset.
pub const SLEEP_STATUS_OFFSET: u64 = 1;
/// Reset register offset.
pub const RESET_OFFSET: u64 = 2;
/// The value the guest writes to the reset register to reset.
pub const RESET_VALUE: u8 = 1;
/// Sleep control: SLP_EN (ACPI 6.5, 4.8.3.7).
pub const SLP_EN: u8 = 1 << 5;
/// The sleep type the DSDT's `\_S5` names; the guest writes it to
/// SLP_TYP (bits 2-4) with SLP_EN to power off.
pub const S5_SLEEP_TYPE: u8 = 5;
/// GED event register bit: the power button was pressed.
pub const GED_EVENT_POWER_BUTTON: u8 = 1 << 0;
