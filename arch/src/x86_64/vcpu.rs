//! vCPU state on x86_64: CPUID, MSRs, FPU and LAPIC for every vCPU, the
//! entry registers for the boot vCPU, and what an exit report reads back.

use kvm_bindings::{
    kvm_msr_entry, CpuId, Msrs, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use log::warn;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::loader::KernelEntry;
use super::{boot_fpu, boot_msrs, boot_regs, setup_cpuid, setup_lint, setup_sregs};
use crate::cpu_template::{CpuTemplate, CpuidModifier, CpuidRegister, MsrModifier};
use crate::{KvmError, TemplateError};

/// Longest x86 instruction.
const MAX_INSN_LEN: usize = 15;

/// What every vCPU of a VM is configured from: KVM's supported CPUID,
/// whether its LAPIC has the TSC-deadline timer, the topology and the CPU
/// template.
pub struct VcpuSetup {
    supported: CpuId,
    tsc_deadline: bool,
    threads_per_core: u8,
    msrs: Vec<MsrModifier>,
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
            msrs: Vec::new(),
        })
    }

    /// Applies a CPU template: its CPUID changes go into what every vCPU
    /// starts from (before the topology, which strato sets itself), its
    /// MSR changes are made at each vCPU's configuration. Fails, changing
    /// nothing, on a part for another architecture, a capability KVM
    /// lacks or a CPUID leaf KVM does not give.
    pub fn set_template(&mut self, kvm: &Kvm, template: &CpuTemplate) -> Result<(), KvmError> {
        template.check(crate::ARCH_NAME, |c| kvm.check_extension_raw(c.into()) > 0)?;
        let mut cpuid = self.supported.clone();
        apply_cpuid(&mut cpuid, &template.cpuid)?;
        self.supported = cpuid;
        self.msrs = template.msrs.clone();
        Ok(())
    }

    /// Two threads to a core (Firecracker's `smt`), or one.
    pub fn set_smt(&mut self, smt: bool) {
        self.threads_per_core = if smt { 2 } else { 1 };
    }
}

/// Changes the template's CPUID registers; a leaf and subleaf KVM does
/// not give is an error (an entry made up for it would tell the guest of
/// a leaf past the maximum the CPU reports).
fn apply_cpuid(cpuid: &mut CpuId, modifiers: &[CpuidModifier]) -> Result<(), TemplateError> {
    for m in modifiers {
        let entry = cpuid
            .as_mut_slice()
            .iter_mut()
            .find(|e| e.function == m.leaf && e.index == m.subleaf)
            .ok_or(TemplateError::NoSuchLeaf {
                leaf: m.leaf,
                subleaf: m.subleaf,
            })?;
        let reg = match m.register {
            CpuidRegister::Eax => &mut entry.eax,
            CpuidRegister::Ebx => &mut entry.ebx,
            CpuidRegister::Ecx => &mut entry.ecx,
            CpuidRegister::Edx => &mut entry.edx,
        };
        *reg = m.bits.apply_u32(*reg);
    }
    Ok(())
}

/// Changes one MSR of a vCPU as the template says: read, modify, write.
/// KVM may keep some bits as they were without saying so (Firecracker's
/// documentation warns of the same); an MSR it neither reads nor takes is
/// an error.
fn apply_msr(fd: &VcpuFd, m: &MsrModifier) -> Result<(), KvmError> {
    let refused = |why: &str| TemplateError::Refused {
        what: "MSR",
        addr: m.addr.into(),
        why: why.to_string(),
    };
    let one = |data| {
        Msrs::from_entries(&[kvm_msr_entry {
            index: m.addr,
            data,
            ..Default::default()
        }])
        .map_err(|e| KvmError::Unsupported(format!("{e:?}")))
    };
    let mut msrs = one(0)?;
    let read = fd
        .get_msrs(&mut msrs)
        .map_err(|e| KvmError::Call("KVM_GET_MSRS", e))?;
    if read != 1 {
        return Err(refused("does not read it").into());
    }
    let value = m.bits.apply_u64(msrs.as_slice()[0].data);
    let written = fd
        .set_msrs(&one(value)?)
        .map_err(|e| KvmError::Call("KVM_SET_MSRS", e))?;
    if written != 1 {
        return Err(refused(&format!("does not take {value:#x}")).into());
    }
    Ok(())
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
    for m in &setup.msrs {
        apply_msr(fd, m)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_template::BitModifier;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn cpuid_modifiers_change_their_leaf_and_nothing_else() {
        let leaf = |function, index| kvm_cpuid_entry2 {
            function,
            index,
            ecx: 0xffff_0000,
            ..Default::default()
        };
        let mut cpuid = CpuId::from_entries(&[leaf(7, 0), leaf(7, 1), leaf(1, 0)]).unwrap();
        let clear_low = CpuidModifier {
            leaf: 7,
            subleaf: 1,
            register: CpuidRegister::Ecx,
            bits: BitModifier::parse("0b1111_0000_0000_0001", 32).unwrap(),
        };
        apply_cpuid(&mut cpuid, &[clear_low]).unwrap();
        let ecx: Vec<u32> = cpuid.as_slice().iter().map(|e| e.ecx).collect();
        assert_eq!(ecx, [0xffff_0000, 0xffff_f001, 0xffff_0000]);
        let missing = CpuidModifier {
            subleaf: 2,
            ..clear_low
        };
        assert_eq!(
            apply_cpuid(&mut cpuid, &[missing]),
            Err(TemplateError::NoSuchLeaf {
                leaf: 7,
                subleaf: 2
            })
        );
    }

    /// T2A through the path every template takes, on the CPUID of an AMD
    /// EPYC host as KVM reported it (leaves 1, 7, 0xd and 0x8000000x).
    #[test]
    fn t2a_on_an_amd_host_s_cpuid() {
        let entry = |function, index, eax, ebx, ecx, edx| kvm_cpuid_entry2 {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
            ..Default::default()
        };
        let host = [
            entry(0x1, 0, 0x00a1_0f11, 0x0001_0800, 0xf6fa_3203, 0x178b_fbff),
            entry(0x7, 0, 0, 0xf1bf_07ab, 0x0040_069c, 0x0000_0010),
            entry(0xd, 0, 0x0000_00e7, 0x0000_0988, 0x0000_0988, 0),
            entry(0xd, 1, 0x0000_000f, 0, 0, 0),
            entry(0x8000_0001, 0, 0x00a1_0f11, 0, 0x0000_0121, 0x2fd3_fbff),
            entry(0x8000_0008, 0, 0x0000_3030, 0x0100_d205, 0, 0),
        ];
        let mut cpuid = CpuId::from_entries(&host).unwrap();
        let t2a = crate::static_templates::find_static_template(
            "T2A",
            "x86_64",
            Some(crate::static_templates::VENDOR_AMD),
        )
        .unwrap()
        .unwrap();
        apply_cpuid(&mut cpuid, &t2a.cpuid).unwrap();
        let got = cpuid.as_slice();
        // Family 6, model 0x3f, stepping 2, as on a T2 instance.
        assert_eq!(got[0].eax, 0x0003_06f2);
        // MONITOR (ECX 3) cleared, SSE3 (0) and AVX (28) kept, EDX untouched
        // where the template has no say, and MCE/MTRR left set.
        assert_eq!(got[0].ecx & (1 << 3), 0);
        assert_eq!(got[0].ecx & (1 << 28 | 1), 1 << 28 | 1);
        assert_eq!(got[0].edx, 0x178b_fbff);
        // Leaf 7 EBX: AVX2 (5) kept; SHA (29), ADX (19), RDSEED (18) gone;
        // ERMS (9) set.
        assert_eq!(got[1].ebx & (1 << 5), 1 << 5);
        assert_eq!(got[1].ebx & (1 << 29 | 1 << 19 | 1 << 18), 0);
        assert_ne!(got[1].ebx & (1 << 9), 0);
        // Leaf 7 ECX: UMIP (2), PKU (3), OSPKE (4) and VAES (9) gone.
        assert_eq!(got[1].ecx & 0x21c, 0);
        // XSAVEC/XGETBV1/XSAVES (0xd.1 EAX 1-3) gone, XSAVEOPT (0) kept.
        assert_eq!(got[3].eax, 1);
        // 0x80000001 ECX: LAHF (0) and ABM (5) kept, prefetch (8) gone;
        // EDX: 1 GiB pages (26) gone.
        assert_eq!(got[4].ecx, 0x0000_0021);
        assert_eq!(got[4].edx & (1 << 26), 0);
        // 0x80000008 EBX: CLZERO (0) gone, bits 2 and 18-20 set, IBPB (12)
        // and the rest kept.
        assert_eq!(got[5].ebx, 0x0100_d004 | 0x001c_0000);
        // XSAVE state: x87, SSE, AVX kept, the AVX-512 ones (5-7) gone;
        // the sizes in EBX/ECX are KVM's.
        assert_eq!(got[2].eax, 0x7);
        assert_eq!((got[2].ebx, got[2].ecx), (host[2].ebx, host[2].ecx));
    }
}
