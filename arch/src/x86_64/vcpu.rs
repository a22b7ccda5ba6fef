//! vCPU state on x86_64: CPUID, MSRs, FPU and LAPIC for every vCPU, the
//! entry registers for the boot vCPU, and what an exit report reads back.

use kvm_bindings::{
    CpuId, KVM_INTERNAL_ERROR_EMULATION, KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES,
    KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use log::warn;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::loader::KernelEntry;
use super::{boot_fpu, boot_msrs, boot_regs, setup_cpuid, setup_lint, setup_sregs};
use crate::KvmError;

/// Longest x86 instruction.
const MAX_INSN_LEN: usize = 15;

/// What every vCPU of a VM is configured from: KVM's supported CPUID and
/// whether its LAPIC has the TSC-deadline timer.
pub struct VcpuSetup {
    supported: CpuId,
    tsc_deadline: bool,
    threads_per_core: u8,
}

impl VcpuSetup {
    /// Reads what KVM supports.
    pub fn new(kvm: &Kvm) -> Result<VcpuSetup, KvmError> {
        Ok(VcpuSetup {
            supported: kvm
                .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
                .map_err(|e| KvmError::Call("KVM_GET_SUPPORTED_CPUID", e))?,
            tsc_deadline: kvm.check_extension(Cap::TscDeadlineTimer),
            threads_per_core: 1,
        })
    }

    /// Two threads to a core (Firecracker's `smt`), or one.
    pub fn set_smt(&mut self, smt: bool) {
        self.threads_per_core = if smt { 2 } else { 1 };
    }
}

/// Sets CPUID, MSRs, FPU and LAPIC; the boot vCPU also gets the entry
/// state. The others wait for INIT/SIPI from the guest, as KVM's
/// in-kernel LAPIC keeps them until then.
pub fn configure_vcpu(
    fd: &VcpuFd,
    id: u32,
    vcpus: u32,
    setup: &VcpuSetup,
    boot: Option<&KernelEntry>,
) -> Result<(), KvmError> {
    let mut cpuid = setup.supported.clone();
    setup_cpuid(
        &mut cpuid,
        id as u8,
        vcpus as u8,
        setup.threads_per_core,
        setup.tsc_deadline,
    );
    fd.set_cpuid2(&cpuid)
        .map_err(|e| KvmError::Call("KVM_SET_CPUID2", e))?;

    let msrs = boot_msrs().map_err(|e| KvmError::Unsupported(e.to_string()))?;
    let set = fd
        .set_msrs(&msrs)
        .map_err(|e| KvmError::Call("KVM_SET_MSRS", e))?;
    if set != msrs.as_slice().len() {
        // KVM stops at the first MSR it refuses; the rest keep their
        // reset values, which a guest copes with.
        warn!(
            "vCPU {id}: KVM refused MSR {:#x}",
            msrs.as_slice()[set].index
        );
    }
    fd.set_fpu(&boot_fpu())
        .map_err(|e| KvmError::Call("KVM_SET_FPU", e))?;

    let mut lapic = fd
        .get_lapic()
        .map_err(|e| KvmError::Call("KVM_GET_LAPIC", e))?;
    setup_lint(&mut lapic);
    fd.set_lapic(&lapic)
        .map_err(|e| KvmError::Call("KVM_SET_LAPIC", e))?;

    if let Some(boot) = boot {
        let mut sregs = fd
            .get_sregs()
            .map_err(|e| KvmError::Call("KVM_GET_SREGS", e))?;
        setup_sregs(&mut sregs, boot.mode);
        fd.set_sregs(&sregs)
            .map_err(|e| KvmError::Call("KVM_SET_SREGS", e))?;
        fd.set_regs(&boot_regs(boot.mode, boot.entry, boot.boot_info))
            .map_err(|e| KvmError::Call("KVM_SET_REGS", e))?;
    }
    Ok(())
}

/// The vCPU's RIP, for an exit report.
pub fn program_counter(fd: &VcpuFd) -> Option<u64> {
    fd.get_regs().ok().map(|r| r.rip)
}

/// The instruction bytes KVM failed on: from the internal error's data
/// when KVM put them there, else read at CS:RIP through the guest's page
/// tables. Call right after a KVM_EXIT_INTERNAL_ERROR exit.
pub fn faulting_instruction(fd: &mut VcpuFd, mem: &GuestMemoryMmap) -> Vec<u8> {
    // SAFETY: called right after a KVM_EXIT_INTERNAL_ERROR exit, so
    // `internal` is the union member KVM filled in.
    let internal = unsafe { fd.get_kvm_run().__bindgen_anon_1.internal };
    if internal.suberror == KVM_INTERNAL_ERROR_EMULATION
        && internal.ndata >= 3
        && internal.data[0] & u64::from(KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES) != 0
    {
        // struct emulation_failure: flags (data[0]), then a u8 length
        // and up to 15 instruction bytes packed in data[1..3].
        let raw: Vec<u8> = internal.data[1..3]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect();
        let n = usize::from(raw[0]).min(MAX_INSN_LEN);
        return raw[1..1 + n].to_vec();
    }
    let (Some(rip), Ok(sregs)) = (program_counter(fd), fd.get_sregs()) else {
        return Vec::new();
    };
    let Ok(t) = fd.translate_gva(sregs.cs.base.wrapping_add(rip)) else {
        return Vec::new();
    };
    if t.valid == 0 {
        return Vec::new();
    }
    let mut buf = [0u8; MAX_INSN_LEN];
    match mem.read(&mut buf, GuestAddress(t.physical_address)) {
        Ok(n) => buf[..n].to_vec(),
        Err(_) => Vec::new(),
    }
}
