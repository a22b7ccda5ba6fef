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
/// GED event register bit: a vCPU is being plugged or unplugged; the
/// guest scans the CPU hotplug controller.
pub const GED_EVENT_CPU_HOTPLUG: u8 = 1 << 1;

/// The CPU hotplug controller: a selector and a status register. The
/// guest writes a vCPU id to the selector (4 bytes at this offset), then
/// reads or writes that vCPU's status byte.
pub const CPU_SELECT_OFFSET: u64 = 0;
/// Offset of the selected vCPU's status byte.
pub const CPU_STATUS_OFFSET: u64 = 4;
/// Status bit (read-only): the vCPU is present.
pub const CPU_ENABLED: u8 = 1 << 0;
/// Status bit: the vCPU was plugged and the guest has not taken the
/// event yet; the guest writes it to acknowledge.
pub const CPU_INSERTING: u8 = 1 << 1;
/// Status bit: the VMM asks the guest to give the vCPU up; the guest
/// writes it to acknowledge.
pub const CPU_REMOVING: u8 = 1 << 2;
/// Status bit (write-only): the guest has taken the vCPU offline and
/// ejects it (`_EJ0`).
pub const CPU_EJECT: u8 = 1 << 3;
