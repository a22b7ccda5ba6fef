//! The VM, its vCPUs and the kernel on arm64 KVM: vCPUs initialised for
//! PSCI 0.2 (secondaries powered off until the guest's `CPU_ON`), the
//! in-kernel GIC created after them, an arm64 `Image` loaded at its text
//! offset from the start of RAM, and the FDT at the top of RAM.

use std::fs::File;
use std::io::{Read, Seek};
use std::sync::mpsc::Receiver;

use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V2,
    kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3, kvm_vcpu_init, PSR_MODE_EL1h, KVM_ARM_VCPU_POWER_OFF,
    KVM_ARM_VCPU_PSCI_0_2, KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR,
    KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_REG_ARM64, KVM_REG_ARM64_SYSREG,
    KVM_REG_ARM_CORE, KVM_REG_SIZE_MASK, KVM_REG_SIZE_SHIFT, KVM_REG_SIZE_U64,
    KVM_VGIC_V2_ADDR_TYPE_CPU, KVM_VGIC_V2_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_DIST,
    KVM_VGIC_V3_ADDR_TYPE_REDIST, PSR_A_BIT, PSR_D_BIT, PSR_F_BIT, PSR_I_BIT,
};
use kvm_ioctls::{Cap, DeviceFd, Kvm, VcpuFd, VmFd};
use linux_loader::loader::pe::PE;
use linux_loader::loader::KernelLoader;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::fdt::{build_fdt, FdtConfig, GicVersion};
use super::fdt_addr;
use super::layout::*;
use crate::cpu_template::{CpuTemplate, FeatureModifier, RegModifier};
use crate::kernel::{KernelFormat, LoadError};
use crate::{BootConfig, KvmError, RamRegion, TemplateError};

/// Fails unless KVM has what this platform needs.
pub fn check_kvm(kvm: &Kvm) -> Result<(), KvmError> {
    crate::require_caps(
        kvm,
        &[
            (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
            (Cap::Irqfd, "KVM_CAP_IRQFD"),
            (Cap::ArmPsci02, "KVM_CAP_ARM_PSCI_0_2"),
            (Cap::DeviceCtrl, "KVM_CAP_DEVICE_CTRL"),
        ],
    )
}

/// Most vCPUs a VM can have here: KVM's limit and the redistributor
/// space of the layout.
pub fn max_vcpus(kvm: &Kvm) -> u32 {
    (kvm.get_max_vcpus() as u32).min(MAX_VCPUS)
}

/// Creates the VM (KVM's default 40-bit guest-physical space holds the
/// whole layout).
pub fn create_vm(kvm: &Kvm) -> Result<VmFd, KvmError> {
    kvm.create_vm()
        .map_err(|e| KvmError::Call("KVM_CREATE_VM", e))
}

/// The in-kernel GIC, and the vCPUs it was sized for until
/// [`create_vcpus`] hands them out.
pub struct Chipset {
    // Kept open: closing the device fd does not remove the GIC, but its
    // attributes can only be read through it.
    _gic: DeviceFd,
    version: GicVersion,
    vcpus: Vec<VcpuFd>,
}

impl Chipset {
    /// Nothing waits on vCPU 0's first entry here.
    pub fn vcpu0_entered(&mut self, _vm_fd: &VmFd, _entered: Receiver<()>) {}

    /// No helper thread to wait for.
    pub fn settle(&mut self) {}
}

/// The vCPUs [`create_chipset`] made.
pub fn create_vcpus(
    _vm_fd: &VmFd,
    chipset: &mut Chipset,
    _count: u32,
) -> Result<Vec<VcpuFd>, KvmError> {
    Ok(std::mem::take(&mut chipset.vcpus))
}

/// Creates `count` vCPUs, initialises them for PSCI 0.2 (all but the
/// first powered off until the guest starts them with `CPU_ON`), then the
/// GIC, which KVM sizes to the vCPUs that exist when it is initialised:
/// here the vCPUs must come first, and the devices' irqfds after the GIC.
pub fn create_chipset(
    _kvm: &Kvm,
    vm_fd: &VmFd,
    count: u32,
    setup: &VcpuSetup,
) -> Result<Chipset, KvmError> {
    let mut preferred = kvm_vcpu_init::default();
    vm_fd
        .get_preferred_target(&mut preferred)
        .map_err(|e| KvmError::Call("KVM_ARM_PREFERRED_TARGET", e))?;
    let mut vcpus = Vec::with_capacity(count as usize);
    for id in 0..count {
        let fd = vm_fd
            .create_vcpu(u64::from(id))
            .map_err(|e| KvmError::Call("KVM_CREATE_VCPU", e))?;
        let mut init = preferred;
        init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
        if id > 0 {
            init.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
        }
        for f in &setup.features {
            // set_template checked the index.
            let word = &mut init.features[f.index as usize];
            *word = f.bits.apply_u32(*word);
        }
        fd.vcpu_init(&init)
            .map_err(|e| KvmError::Call("KVM_ARM_VCPU_INIT", e))?;
        vcpus.push(fd);
    }
    let (gic, version) = match create_gic(vm_fd, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3) {
        Ok(gic) => (gic, GicVersion::V3),
        Err(v3) => {
            if count > GICV2_MAX_VCPUS {
                return Err(KvmError::Unsupported(format!(
                    "this host has no GICv3 ({v3}) and GICv2 handles at most \
                     {GICV2_MAX_VCPUS} vCPUs, {count} requested"
                )));
            }
            log::info!("no GICv3 ({v3}), using GICv2");
            (
                create_gic(vm_fd, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V2)?,
                GicVersion::V2,
            )
        }
    };
    let chipset = Chipset {
        _gic: gic,
        version,
        vcpus,
    };
    match version {
        GicVersion::V3 => {
            set_addr(&chipset._gic, KVM_VGIC_V3_ADDR_TYPE_DIST, GIC_DIST_ADDR)?;
            set_addr(
                &chipset._gic,
                KVM_VGIC_V3_ADDR_TYPE_REDIST,
                gic_redist_addr(count),
            )?;
        }
        GicVersion::V2 => {
            set_addr(&chipset._gic, KVM_VGIC_V2_ADDR_TYPE_DIST, GIC_DIST_ADDR)?;
            set_addr(&chipset._gic, KVM_VGIC_V2_ADDR_TYPE_CPU, GICV2_CPU_ADDR)?;
        }
    }
    let nr_irqs: u32 = GIC_NR_IRQS;
    set_attr(
        &chipset._gic,
        KVM_DEV_ARM_VGIC_GRP_NR_IRQS,
        0,
        &nr_irqs as *const u32 as u64,
        "KVM_DEV_ARM_VGIC_GRP_NR_IRQS",
    )?;
    set_attr(
        &chipset._gic,
        KVM_DEV_ARM_VGIC_GRP_CTRL,
        u64::from(KVM_DEV_ARM_VGIC_CTRL_INIT),
        0,
        "KVM_DEV_ARM_VGIC_CTRL_INIT",
    )?;
    Ok(chipset)
}

fn create_gic(vm_fd: &VmFd, kind: u32) -> Result<DeviceFd, KvmError> {
    let mut device = kvm_create_device {
        type_: kind,
        fd: 0,
        flags: 0,
    };
    vm_fd
        .create_device(&mut device)
        .map_err(|e| KvmError::Call("KVM_CREATE_DEVICE (GIC)", e))
}

fn set_addr(gic: &DeviceFd, kind: u32, addr: u64) -> Result<(), KvmError> {
    set_attr(
        gic,
        KVM_DEV_ARM_VGIC_GRP_ADDR,
        u64::from(kind),
        &addr as *const u64 as u64,
        "KVM_DEV_ARM_VGIC_GRP_ADDR",
    )
}

/// Sets a GIC attribute; `addr` points at its value (KVM reads it during
/// the call), or is 0 for attributes without one.
fn set_attr(
    gic: &DeviceFd,
    group: u32,
    attr: u64,
    addr: u64,
    what: &'static str,
) -> Result<(), KvmError> {
    let attr = kvm_device_attr {
        flags: 0,
        group,
        attr,
        addr,
    };
    gic.set_device_attr(&attr)
        .map_err(|e| KvmError::Call(what, e))
}

/// The power button: this platform has none (no ACPI GED); a guest is
/// stopped through PSCI from inside, or from outside by the VMM.
pub fn guest_listens_to_power_button(_vm_fd: &VmFd) -> bool {
    false
}

/// What the vCPUs are made with: the CPU template's `KVM_ARM_VCPU_INIT`
/// features and register changes. Nothing is read from KVM here.
#[derive(Default)]
pub struct VcpuSetup {
    features: Vec<FeatureModifier>,
    regs: Vec<RegModifier>,
}

impl VcpuSetup {
    /// No template yet.
    pub fn new(_kvm: &Kvm) -> Result<VcpuSetup, KvmError> {
        Ok(VcpuSetup::default())
    }

    /// Applies a CPU template: its features when the vCPUs are
    /// initialised, its registers when each is configured. Fails, changing
    /// nothing, on a part for another architecture, a capability KVM lacks
    /// or a feature word past `KVM_ARM_VCPU_INIT`'s.
    pub fn set_template(&mut self, kvm: &Kvm, template: &CpuTemplate) -> Result<(), KvmError> {
        template.check(crate::ARCH_NAME, |c| kvm.check_extension_raw(c.into()) > 0)?;
        let words = kvm_vcpu_init::default().features.len();
        if let Some(f) = template
            .vcpu_features
            .iter()
            .find(|f| f.index as usize >= words)
        {
            return Err(KvmError::Unsupported(format!(
                "CPU template: vcpu_features index {} is past the {words} words of KVM_ARM_VCPU_INIT",
                f.index
            )));
        }
        self.features = template.vcpu_features.clone();
        self.regs = template.regs.clone();
        Ok(())
    }

    /// No SMT topology here ([`crate::SMT`] is false; the configuration
    /// refuses it first).
    pub fn set_smt(&mut self, _smt: bool) {}
}

/// Id of a core register: its offset in `struct kvm_regs`, in 32-bit
/// words (arch/arm64/include/uapi/asm/kvm.h).
const fn core_reg(offset_bytes: u64) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE as u64 | (offset_bytes / 4)
}
/// `regs.regs[0]`.
const REG_X0: u64 = core_reg(0);
/// `regs.pc`: after 31 general registers and `sp`.
const REG_PC: u64 = core_reg(8 * 32);
/// `regs.pstate`.
const REG_PSTATE: u64 = core_reg(8 * 33);
/// MPIDR_EL1: op0 3, op1 0, CRn 0, CRm 0, op2 5.
const REG_MPIDR_EL1: u64 =
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM64_SYSREG as u64 | (3 << 14) | 5;
/// EL1 with SP_EL1, every exception masked: the state booting.rst asks for.
const BOOT_PSTATE: u64 = (PSR_MODE_EL1h | PSR_A_BIT | PSR_F_BIT | PSR_I_BIT | PSR_D_BIT) as u64;

/// The boot vCPU gets the kernel's entry state (PC at the entry, X0 the
/// FDT); the others start where the guest's PSCI `CPU_ON` says.
pub fn configure_vcpu(
    fd: &VcpuFd,
    _id: u32,
    _vcpus: u32,
    setup: &VcpuSetup,
    boot: Option<&KernelEntry>,
) -> Result<(), KvmError> {
    for m in &setup.regs {
        apply_reg(fd, m)?;
    }
    if let Some(boot) = boot {
        for (reg, value, what) in [
            (REG_PSTATE, BOOT_PSTATE, "KVM_SET_ONE_REG (pstate)"),
            (REG_PC, boot.pc, "KVM_SET_ONE_REG (pc)"),
            (REG_X0, boot.fdt, "KVM_SET_ONE_REG (x0)"),
        ] {
            fd.set_one_reg(reg, &value.to_le_bytes())
                .map_err(|e| KvmError::Call(what, e))?;
        }
    }
    Ok(())
}

/// Changes one register as the template says: read, modify, write, in
/// the size its id gives (KVM_REG_SIZE: 1 << n bytes, up to 128 bits
/// here). KVM on Linux 6.1 refuses writes to the ID registers; that is
/// an error, not a template half applied.
fn apply_reg(fd: &VcpuFd, m: &RegModifier) -> Result<(), KvmError> {
    let refused = |why: String| TemplateError::Refused {
        what: "register",
        addr: m.addr,
        why,
    };
    let size = 1usize << ((m.addr & KVM_REG_SIZE_MASK) >> KVM_REG_SIZE_SHIFT);
    if size > 16 {
        return Err(refused(format!("has {size}-byte values; templates change up to 16")).into());
    }
    let mut buf = [0u8; 16];
    fd.get_one_reg(m.addr, &mut buf[..size])
        .map_err(|e| refused(format!("does not read it: {e}")))?;
    let value = m.bits.apply(u128::from_le_bytes(buf));
    fd.set_one_reg(m.addr, &value.to_le_bytes()[..size])
        .map_err(|e| refused(format!("does not take {value:#x}: {e}")))?;
    Ok(())
}

fn get_reg(fd: &VcpuFd, reg: u64) -> Option<u64> {
    let mut value = [0u8; 8];
    fd.get_one_reg(reg, &mut value).ok()?;
    Some(u64::from_le_bytes(value))
}

/// The vCPU's PC, for an exit report.
pub fn program_counter(fd: &VcpuFd) -> Option<u64> {
    get_reg(fd, REG_PC)
}

/// KVM on arm64 reports no instruction bytes with an internal error.
pub fn faulting_instruction(_fd: &mut VcpuFd, _mem: &GuestMemoryMmap) -> Vec<u8> {
    Vec::new()
}

/// A kernel in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedKernel {
    entry: u64,
    end: u64,
}

impl LoadedKernel {
    /// First guest address past the kernel.
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Longest command line, including the NUL.
    pub fn cmdline_capacity(&self) -> usize {
        CMDLINE_MAX_SIZE
    }
}

/// Where the boot vCPU starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelEntry {
    /// The kernel's first instruction.
    pub pc: u64,
    /// The FDT's address, in X0.
    pub fdt: u64,
}

/// Errors while writing what the kernel reads at entry.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// A vCPU's MPIDR could not be read.
    #[error("cannot read vCPU {0}'s MPIDR_EL1")]
    Mpidr(usize),
    /// The device tree could not be built.
    #[error("cannot build the device tree: {0}")]
    Fdt(vm_fdt::Error),
    /// The device tree outgrew its space.
    #[error("the device tree is {0} bytes, more than the {FDT_MAX_SIZE} reserved")]
    FdtTooLarge(usize),
    /// Writing into guest memory failed.
    #[error("cannot write the device tree into guest memory: {0}")]
    Write(vm_memory::GuestMemoryError),
}

/// Loads an arm64 Image at its text offset from the start of RAM.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    file: &mut File,
    format: KernelFormat,
) -> Result<LoadedKernel, LoadError> {
    match format {
        KernelFormat::Arm64Image => {
            let r = PE::load(mem, Some(GuestAddress(DRAM_START)), file, None)
                .map_err(LoadError::Loader)?;
            // The kernel owns `image_size` bytes from its load address,
            // its BSS included, which may be more than the file: nothing
            // (the initrd) may go there.
            let mut header = [0u8; 24];
            file.rewind().map_err(LoadError::Read)?;
            file.read_exact(&mut header).map_err(LoadError::Read)?;
            let mut image_size = [0u8; 8];
            image_size.copy_from_slice(&header[16..24]);
            // `image_size` is the file's word: it must leave the top of
            // RAM, where the FDT goes, free.
            let image_size = u64::from_le_bytes(image_size);
            let ram = super::ram_regions((mem.last_addr().0 + 1).saturating_sub(DRAM_START));
            let end = r
                .kernel_load
                .0
                .checked_add(image_size)
                .map_or(u64::MAX, |e| e.max(r.kernel_end));
            if end > fdt_addr(&ram) {
                return Err(LoadError::TooLarge(image_size));
            }
            Ok(LoadedKernel {
                entry: r.kernel_load.0,
                end,
            })
        }
        KernelFormat::Unknown => Err(LoadError::NotAKernel),
        other => Err(LoadError::WrongFormat(other)),
    }
}

/// Where an initrd may lie: above the kernel, below the FDT.
pub fn initrd_range(kernel: &LoadedKernel, ram: &[RamRegion]) -> (u64, u64) {
    (kernel.end, fdt_addr(ram))
}

/// Writes the FDT; returns where the boot vCPU starts.
pub fn configure_boot(mem: &GuestMemoryMmap, cfg: &BootConfig) -> Result<KernelEntry, BootError> {
    let mpidrs = cfg
        .vcpus
        .iter()
        .enumerate()
        .map(|(i, fd)| get_reg(fd, REG_MPIDR_EL1).ok_or(BootError::Mpidr(i)))
        .collect::<Result<Vec<_>, _>>()?;
    let blob = build_fdt(&FdtConfig {
        mpidrs: &mpidrs,
        ram: cfg.ram,
        cmdline: cfg.cmdline,
        initrd: cfg.initrd,
        gic: cfg.chipset.version,
        virtio: cfg.virtio,
    })
    .map_err(BootError::Fdt)?;
    if blob.len() as u64 > FDT_MAX_SIZE {
        return Err(BootError::FdtTooLarge(blob.len()));
    }
    let at = fdt_addr(cfg.ram);
    mem.write_slice(&blob, GuestAddress(at))
        .map_err(BootError::Write)?;
    Ok(KernelEntry {
        pc: cfg.kernel.entry,
        fdt: at,
    })
}
