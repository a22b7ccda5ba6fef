//! The VM on x86_64: KVM capabilities, the VM with its TSS and identity
//! map, the in-kernel IOAPIC/PIC/LAPIC and PIT (the `Chipset`), and the
//! vCPUs, created after the irqchip so that each gets an in-kernel LAPIC.
//!
//! The in-kernel PIT (i8254), with tick reinjection turned off on a helper
//! thread while the guest runs, so that KVM's VM teardown does not wait
//! for it.
//!
//! KVM creates its PIT in "reinject" mode: the PIT registers an IRQ-ack and
//! an IRQ-mask notifier so that it can re-inject ticks the guest missed.
//! Unregistering them (on `KVM_REINJECT_CONTROL` off, or in the teardown on
//! the last close of the VM fd) waits for two grace periods of the VM's
//! IRQ SRCU domain back to back. The first ends within microseconds, so the
//! second finds the domain "not idle" (a grace period ended less than
//! `srcutree.exp_holdoff`, 25 µs, ago) and takes SRCU's normal, timer-paced
//! path: a jiffy or two per phase, 8-24 ms at HZ=250. That was the slow
//! mode of a VMM process's exit, for strato and Firecracker alike.
//!
//! Turning reinjection off while the guest runs moves that wait to a
//! thread beside it, and leaves nothing for the teardown to unregister.
//! While the ioctl sleeps it holds the PIT's lock, which vCPU 0 also takes
//! whenever it is loaded on another host CPU (KVM moves the PIT's timer
//! with it), first of all on its first KVM_RUN. So the helper is spawned
//! after the vCPUs and waits until vCPU 0 has entered the guest once: its
//! start then costs the guest's start-up nothing, and vCPU 0 can wait for
//! it at most once, if it changes host CPU in those milliseconds (as can a
//! guest touching the PIT).
//!
//! Lost PIT ticks are then dropped rather than re-injected, as with QEMU's
//! `lost_tick_policy=discard` (which its microvm documentation
//! recommends): guests that count PIT ticks for time-keeping drift, Linux
//! with a TSC or LAPIC timer does not.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;

use kvm_bindings::{kvm_pit_config, kvm_reinject_control, KVMIO, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use log::warn;
use vmm_sys_util::ioctl::ioctl_with_ref;
use vmm_sys_util::ioctl_io_nr;

use super::layout::{GED_IRQ, KVM_IDENTITY_MAP_ADDR, KVM_TSS_ADDR, MAX_VCPUS};
use crate::KvmError;

ioctl_io_nr!(KVM_REINJECT_CONTROL, KVMIO, 0x71);

/// Fails unless KVM has what this platform needs.
pub fn check_kvm(kvm: &Kvm) -> Result<(), KvmError> {
    crate::require_caps(
        kvm,
        &[
            (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::SetTssAddr, "KVM_CAP_SET_TSS_ADDR"),
            (Cap::Pit2, "KVM_CAP_PIT2"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
        ],
    )
}

/// Most vCPUs a VM can have here: KVM's limit, and the 8-bit xAPIC ids
/// of the MP table and MADT.
pub fn max_vcpus(kvm: &Kvm) -> u32 {
    (kvm.get_max_vcpus() as u32).min(MAX_VCPUS)
}

/// Creates the VM with the TSS and identity map that KVM needs for
/// real-mode emulation on Intel.
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, KvmError> {
    let vm_fd = kvm
        .create_vm()
        .map_err(|e| KvmError::Call("KVM_CREATE_VM", e))?;
    vm_fd
        .set_tss_address(KVM_TSS_ADDR as usize)
        .map_err(|e| KvmError::Call("KVM_SET_TSS_ADDR", e))?;
    if kvm.check_extension(Cap::SetIdentityMapAddr) {
        vm_fd
            .set_identity_map_address(KVM_IDENTITY_MAP_ADDR)
            .map_err(|e| KvmError::Call("KVM_SET_IDENTITY_MAP_ADDR", e))?;
    }
    Ok(vm_fd)
}

/// The in-kernel devices beside the vCPUs: IOAPIC, PIC and PIT.
pub struct Chipset {
    pit: Pit,
}

impl Chipset {
    /// Told when vCPU 0 has entered the guest once (see the PIT above).
    pub fn vcpu0_entered(&mut self, vm_fd: &VmFd, entered: Receiver<()>) {
        self.pit.start_reinject_off(vm_fd, entered);
    }

    /// Waits for the chipset's helper thread; call after the vCPU threads
    /// are joined and before the VM fd closes.
    pub fn settle(&mut self) {
        self.pit.settle();
    }
}

/// Creates the irqchip and the PIT. The vCPUs come later, from
/// [`create_vcpus`], right before they are configured, as strato always
/// did on x86: a build that created them here, before the devices and the
/// kernel load, had Linux instances of the daemon that never printed a
/// line in 3 of 7 lane runs (three booting at once), and none in 5 runs
/// since. Why is not known; a vCPU's TSC starts when it is created, and
/// the lane's host TSC is unstable.
pub fn create_chipset(
    kvm: &Kvm,
    vm_fd: &VmFd,
    _vcpus: u32,
    _setup: &crate::VcpuSetup,
) -> Result<Chipset, KvmError> {
    vm_fd
        .create_irq_chip()
        .map_err(|e| KvmError::Call("KVM_CREATE_IRQCHIP", e))?;
    let pit = Pit::create(kvm, vm_fd)?;
    Ok(Chipset { pit })
}

/// Creates `count` vCPUs; each gets an in-kernel LAPIC, since the irqchip
/// exists.
pub fn create_vcpus(
    vm_fd: &VmFd,
    _chipset: &mut Chipset,
    count: u32,
) -> Result<Vec<VcpuFd>, KvmError> {
    (0..count)
        .map(|id| {
            vm_fd
                .create_vcpu(u64::from(id))
                .map_err(|e| KvmError::Call("KVM_CREATE_VCPU", e))
        })
        .collect()
}

/// True if the guest has bound a driver to the GED, the power button's
/// path (its IOAPIC pin is unmasked). If the interrupt controller cannot
/// be read, assume it might have.
pub fn guest_listens_to_power_button(vm_fd: &VmFd) -> bool {
    let mut chip = kvm_bindings::kvm_irqchip {
        chip_id: kvm_bindings::KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    match vm_fd.get_irqchip(&mut chip) {
        // SAFETY: KVM filled the IOAPIC member of the union, the one
        // `chip_id` asked for.
        Ok(()) => ged_listening(unsafe { &chip.chip.ioapic }),
        Err(e) => {
            warn!("cannot read the IOAPIC to see whether the guest has ACPI: {e}");
            true
        }
    }
}

/// Whether the guest has unmasked the GED's IOAPIC pin in `ioapic` (KVM's
/// IOAPIC state): Linux does when its GED driver binds, so a guest whose
/// ACPI would not see the power button (no ACPI, `acpi=off`) can be told
/// apart at once, without waiting for it not to answer.
pub fn ged_listening(ioapic: &kvm_bindings::kvm_ioapic_state) -> bool {
    const MASKED: u64 = 1 << 16;
    // SAFETY: `redirtbl` entries are a union of a u64 and bit fields over
    // the same 8 bytes; every bit pattern is a valid u64.
    let entry = unsafe { ioapic.redirtbl[GED_IRQ as usize].bits };
    entry & MASKED == 0
}

/// The VM's PIT; dropping it waits for the helper thread, if one runs.
pub struct Pit {
    reinject_control: bool,
    reinject_off: Option<JoinHandle<()>>,
}

impl Pit {
    /// Creates the PIT; the irqchip must exist.
    pub fn create(kvm: &Kvm, vm_fd: &VmFd) -> Result<Pit, KvmError> {
        vm_fd
            .create_pit2(kvm_pit_config {
                flags: KVM_PIT_SPEAKER_DUMMY,
                ..Default::default()
            })
            .map_err(|e| KvmError::Call("KVM_CREATE_PIT2", e))?;
        Ok(Pit {
            reinject_control: kvm.check_extension(Cap::ReinjectControl),
            reinject_off: None,
        })
    }

    /// Starts a helper thread that turns reinjection off once `entered`
    /// says that vCPU 0 has entered the guest, and does nothing if its
    /// sender is dropped first. A failure is only logged: the guest runs
    /// the same, the VM's teardown just takes longer.
    pub fn start_reinject_off(&mut self, vm_fd: &VmFd, entered: Receiver<()>) {
        if !self.reinject_control || self.reinject_off.is_some() {
            return;
        }
        // SAFETY: `vm_fd` is borrowed, so its descriptor stays open while
        // this borrow exists; it is only duplicated here.
        let vm = match unsafe { BorrowedFd::borrow_raw(vm_fd.as_raw_fd()) }.try_clone_to_owned() {
            Ok(vm) => vm,
            Err(e) => {
                warn!("cannot duplicate the VM fd: {e}; the VM's teardown will wait");
                return;
            }
        };
        self.reinject_off = std::thread::Builder::new()
            .name("strato-pit".into())
            .spawn(move || {
                if entered.recv().is_ok() {
                    reinject_off(vm);
                }
            })
            .map_err(|e| warn!("cannot start the PIT thread: {e}; the VM's teardown will wait"))
            .ok();
    }

    /// Waits for the helper: reinjection is then off, or the helper gave up
    /// because vCPU 0 ended without entering the guest. Called after the
    /// vCPU threads are joined (until then vCPU 0 holds the sender the
    /// helper may be waiting on) and before the VM fd is closed (so that
    /// the helper's duplicate is not the last reference and the teardown
    /// runs where the VM is dropped).
    pub fn settle(&mut self) {
        if let Some(t) = self.reinject_off.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Pit {
    fn drop(&mut self) {
        self.settle();
    }
}

/// `KVM_REINJECT_CONTROL` with `pit_reinject = 0` on the VM behind `vm`.
fn reinject_off(vm: OwnedFd) {
    let control = kvm_reinject_control::default();
    // SAFETY: `vm` is an open KVM VM fd; the kernel only reads a
    // `kvm_reinject_control`, which `control` is, for the call's duration.
    let rc = unsafe { ioctl_with_ref(&vm, KVM_REINJECT_CONTROL(), &control) };
    if rc != 0 {
        warn!(
            "KVM_REINJECT_CONTROL failed: {}; the VM's teardown will wait",
            std::io::Error::last_os_error()
        );
    }
}
