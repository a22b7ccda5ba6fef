//! Firecracker's static CPU templates (`machine-config`'s `cpu_template`):
//! C3, T2, T2S, T2CL and T2A on x86_64, V1N1 on aarch64.
//!
//! Each is data for the custom-template machinery of [`crate::cpu_template`]:
//! [`static_cpu_template`] builds the [`CpuTemplate`] that the vCPU setup
//! applies exactly as it applies one from `PUT /cpu-config`. The bits are
//! Firecracker's (a guest moved between the two VMMs must see the same
//! CPU), written here as (filter, value) pairs: where the filter has a one,
//! the register's bit becomes the value's.
//!
//! Firecracker also lets each x86 template run only on the CPU models it
//! was made from; strato checks the vendor alone (see `docs/`), since the
//! bits are masked the same way on any model of that vendor.

use crate::cpu_template::CpuidRegister::{Eax, Ebx, Ecx, Edx};
use crate::cpu_template::{
    BitModifier, CpuTemplate, CpuidModifier, CpuidRegister, MsrModifier, RegModifier, TemplateError,
};

/// CPUID vendor string of Intel's CPUs.
pub const VENDOR_INTEL: &str = "GenuineIntel";
/// CPUID vendor string of AMD's CPUs.
pub const VENDOR_AMD: &str = "AuthenticAMD";

/// A register's change: filter, value. (0, 0) changes nothing.
type Bits = (u32, u32);

/// A static template: its name, where it applies and its changes.
#[derive(Debug)]
pub struct StaticTemplate {
    /// Firecracker's name for it.
    pub name: &'static str,
    /// The architecture it is for ([`crate::ARCH_NAME`]'s values).
    pub arch: &'static str,
    /// The CPUID vendor string of the CPUs it is for, where Firecracker
    /// checks one (not on aarch64).
    pub vendor: Option<&'static str>,
    /// Its column of [`X86_CPUID`] (x86_64).
    cpuid: Option<usize>,
    /// MSR changes: index, filter, value.
    msrs: &'static [(u32, u64, u64)],
    /// `KVM_SET_ONE_REG` changes: register id, filter, value.
    regs: &'static [(u64, u64, u64)],
}

/// The x86 templates' CPUID changes, a register a row, a template (or
/// templates alike there) a column: C3; T2 and T2S; T2CL; T2A.
///
/// C3 shows a C3 instance's CPU (family 6 model 0x3e); the others a T2
/// instance's (family 6 model 0x3f), the same in leaves 1, 7 and 0xd and
/// differing in the extended leaves of the hosts they are for: T2A's
/// 0x80000008 EBX also sets bits (2 and 18-20) that an AMD Milan reports.
#[rustfmt::skip]
const X86_CPUID: &[(u32, u32, CpuidRegister, [Bits; 4])] = &[
    (0x1, 0, Eax, [(0x0fff_3fff, 0x0003_06e4), (0x0fff_3fff, 0x0003_06f2), (0x0fff_3fff, 0x0003_06f2), (0x0fff_3fff, 0x0003_06f2)]),
    (0x1, 0, Ecx, [(0x0040_dd3c, 0), (0x0004_cdfc, 0), (0x0004_cdfc, 0), (0x0004_cdfc, 0)]),
    (0x1, 0, Edx, [(0xa864_1080, 0x1080), (0xe864_1080, 0x1080), (0xe864_1080, 0x1080), (0xe864_1080, 0x1080)]),
    (0x7, 0, Ebx, [(0xffaf_dd3c, 0), (0xffef_da14, 0x0200), (0xffef_da14, 0x0200), (0xffef_da14, 0x0200)]),
    (0x7, 0, Ecx, [(0x4041_481e, 0), (0x4041_5f5e, 0), (0x4041_5f5e, 0), (0x4041_5f5e, 0)]),
    (0x7, 0, Edx, [(0x0000_000c, 0), (0x0000_011c, 0), (0x0000_011c, 0), (0x0000_011c, 0)]),
    (0xd, 0, Eax, [(0x0000_02f8, 0), (0x0000_02f8, 0), (0x0000_02f8, 0), (0x0000_02f8, 0)]),
    (0xd, 1, Eax, [(0x0000_000e, 0), (0x0000_000e, 0), (0x0000_000e, 0), (0x0000_000e, 0)]),
    (0x8000_0001, 0, Ecx, [(0x0000_0120, 0), (0x2000_0100, 0), (0x2000_01c0, 0), (0x2000_01c4, 0)]),
    (0x8000_0001, 0, Edx, [(0x0400_0000, 0), (0x0400_0000, 0), (0x07c0_0000, 0), (0x0640_0000, 0)]),
    (0x8000_0008, 0, Ebx, [(0, 0), (0x0000_0200, 0), (0x0000_0200, 0), (0x001c_0205, 0x001c_0004)]),
];

/// IA32_ARCH_CAPABILITIES.
const MSR_ARCH_CAPABILITIES: u32 = 0x10a;

/// T2S: IA32_ARCH_CAPABILITIES as a Skylake host has it (the
/// vulnerabilities it is not affected by), so that a guest can move
/// between Skylake and Cascade Lake hosts.
const T2S_MSRS: &[(u32, u64, u64)] = &[(MSR_ARCH_CAPABILITIES, u64::MAX, 0x0c0a_0c4c)];

/// T2CL: the capabilities only hosts newer than Cascade Lake have,
/// cleared.
const T2CL_MSRS: &[(u32, u64, u64)] = &[(MSR_ARCH_CAPABILITIES, 0xffff_ffff_e2f5_1e00, 0)];

/// A KVM register id of an aarch64 system register (`KVM_REG_ARM64 |
/// KVM_REG_SIZE_U64 | KVM_REG_ARM64_SYSREG` and its encoding).
const fn arm64_sys_reg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    0x6030_0000_0013_0000 | (op0 << 14) | (op1 << 11) | (crn << 7) | (crm << 3) | op2
}

/// V1N1: a Neoverse V1 shown as a Neoverse N1, the ID registers' fields of
/// the features N1 lacks cleared or lowered (SVE, DIT, SHA3/512, SM3/4,
/// FHM, TS, RNDR, DPB2, JSCVT, FCMA, LRCPC2, BF16, DGH, I8MM, AT).
#[rustfmt::skip]
const V1N1_REGS: &[(u64, u64, u64)] = &[
    // ID_AA64PFR0_EL1
    (arm64_sys_reg(3, 0, 0, 4, 0), 0x000f_000f_0000_0000, 0),
    // ID_AA64ISAR0_EL1
    (arm64_sys_reg(3, 0, 0, 6, 0), 0xf0ff_0fff_0000_f000, 0x0000_0000_0000_1000),
    // ID_AA64ISAR1_EL1
    (arm64_sys_reg(3, 0, 0, 6, 1), 0x00ff_f000_00ff_f00f, 0x0000_0000_0010_0001),
    // ID_AA64MMFR2_EL1
    (arm64_sys_reg(3, 0, 0, 7, 2), 0x0000_000f_0000_0000, 0),
];

const X86: &str = "x86_64";

/// Every static template Firecracker has, on either architecture.
#[rustfmt::skip]
pub const STATIC_TEMPLATES: &[StaticTemplate] = &[
    StaticTemplate { name: "C3", arch: X86, vendor: Some(VENDOR_INTEL), cpuid: Some(0), msrs: &[], regs: &[] },
    StaticTemplate { name: "T2", arch: X86, vendor: Some(VENDOR_INTEL), cpuid: Some(1), msrs: &[], regs: &[] },
    StaticTemplate { name: "T2S", arch: X86, vendor: Some(VENDOR_INTEL), cpuid: Some(1), msrs: T2S_MSRS, regs: &[] },
    StaticTemplate { name: "T2CL", arch: X86, vendor: Some(VENDOR_INTEL), cpuid: Some(2), msrs: T2CL_MSRS, regs: &[] },
    StaticTemplate { name: "T2A", arch: X86, vendor: Some(VENDOR_AMD), cpuid: Some(3), msrs: &[], regs: &[] },
    StaticTemplate { name: "V1N1", arch: "aarch64", vendor: None, cpuid: None, msrs: &[], regs: V1N1_REGS },
];

impl StaticTemplate {
    /// The custom template this one is.
    pub fn template(&self) -> CpuTemplate {
        let bits = |filter: u128, value: u128| BitModifier { filter, value };
        CpuTemplate {
            cpuid: self
                .cpuid
                .into_iter()
                .flat_map(|column| {
                    X86_CPUID
                        .iter()
                        .map(move |&(leaf, subleaf, register, row)| {
                            let (filter, value) = row[column];
                            CpuidModifier {
                                leaf,
                                subleaf,
                                register,
                                bits: bits(filter.into(), value.into()),
                            }
                        })
                })
                // A template that leaves the register alone.
                .filter(|m| m.bits.filter != 0)
                .collect(),
            msrs: modifiers(self.msrs, |addr, bits| MsrModifier { addr, bits }),
            regs: modifiers(self.regs, |addr, bits| RegModifier { addr, bits }),
            ..CpuTemplate::default()
        }
    }
}

/// A table of (address, filter, value) as the template's modifiers.
fn modifiers<A: Copy, T>(table: &[(A, u64, u64)], make: impl Fn(A, BitModifier) -> T) -> Vec<T> {
    table
        .iter()
        .map(|&(addr, filter, value)| {
            let bits = BitModifier {
                filter: filter.into(),
                value: value.into(),
            };
            make(addr, bits)
        })
        .collect()
}

/// The template Firecracker's `cpu_template` `name` stands for on `arch`
/// with a host CPU of vendor `host_vendor` (None where it cannot be
/// told): None for "None", the template, or why it cannot be used here.
pub fn find_static_template(
    name: &str,
    arch: &'static str,
    host_vendor: Option<&str>,
) -> Result<Option<CpuTemplate>, TemplateError> {
    if name == "None" {
        return Ok(None);
    }
    let Some(t) = STATIC_TEMPLATES.iter().find(|t| t.name == name) else {
        return Err(TemplateError::UnknownStatic {
            name: name.to_string(),
            known: static_template_names(arch).join(", "),
        });
    };
    if t.arch != arch {
        return Err(TemplateError::StaticArch {
            name: t.name,
            arch: t.arch,
            host: arch,
        });
    }
    if let (Some(wants), Some(host)) = (t.vendor, host_vendor) {
        if wants != host {
            return Err(TemplateError::Vendor {
                name: t.name,
                wants,
                host: host.to_string(),
            });
        }
    }
    Ok(Some(t.template()))
}

/// [`find_static_template`] for this architecture and this host's CPU.
pub fn static_cpu_template(name: &str) -> Result<Option<CpuTemplate>, TemplateError> {
    let vendor = crate::host_cpu_vendor();
    find_static_template(name, crate::ARCH_NAME, vendor.as_deref())
}

/// The names of the static templates for `arch` (besides "None").
pub fn static_template_names(arch: &str) -> Vec<&'static str> {
    STATIC_TEMPLATES
        .iter()
        .filter(|t| t.arch == arch)
        .map(|t| t.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn find(name: &str) -> &'static StaticTemplate {
        STATIC_TEMPLATES.iter().find(|t| t.name == name).unwrap()
    }

    /// The changes of `name` to one CPUID register.
    fn cpuid_bits(name: &str, leaf: u32, register: CpuidRegister) -> BitModifier {
        let t = find(name).template();
        let mut found = t
            .cpuid
            .iter()
            .filter(|m| m.leaf == leaf && m.subleaf == 0 && m.register == register);
        let m = found.next().expect("modified");
        assert!(found.next().is_none(), "one change per register");
        m.bits
    }

    #[test]
    fn every_template_builds_for_its_architecture_only() {
        // Firecracker's counts of register changes.
        for (name, cpuid, msrs, regs) in [
            ("C3", 10, 0, 0),
            ("T2", 11, 0, 0),
            ("T2S", 11, 1, 0),
            ("T2CL", 11, 1, 0),
            ("T2A", 11, 0, 0),
            ("V1N1", 0, 0, 4),
        ] {
            let t = find(name);
            let built = t.template();
            assert_eq!(
                (built.cpuid.len(), built.msrs.len(), built.regs.len()),
                (cpuid, msrs, regs),
                "{name}"
            );
            assert_eq!(built.check(t.arch, |_| true), Ok(()), "{name}");
            for m in &built.cpuid {
                // A value bit outside the filter would be a typo.
                assert_eq!(m.bits.value & !m.bits.filter, 0, "{name} {m:?}");
            }
            let keys: std::collections::HashSet<_> = built
                .cpuid
                .iter()
                .map(|m| (m.leaf, m.subleaf, m.register))
                .collect();
            assert_eq!(keys.len(), cpuid, "{name}: a register changed twice");
            let other = if t.arch == "x86_64" {
                "aarch64"
            } else {
                "x86_64"
            };
            assert!(built.check(other, |_| true).is_err(), "{name}");
            assert_eq!(
                find_static_template(name, t.arch, t.vendor).map(|t| t.is_some()),
                Ok(true)
            );
        }
        assert_eq!(find_static_template("None", "x86_64", None), Ok(None));
        assert_eq!(
            static_template_names("x86_64"),
            ["C3", "T2", "T2S", "T2CL", "T2A"]
        );
        assert_eq!(static_template_names("aarch64"), ["V1N1"]);
    }

    #[test]
    fn t2a_masks_a_sample_cpuid() {
        // Leaf 1 EAX: the family, model and stepping of a T2 instance
        // (6, 0x3f, 2) over an AMD Milan's (0x19, 0x01, 1); the reserved
        // and processor-type bits stay.
        let eax = cpuid_bits("T2A", 1, Eax);
        assert_eq!(eax.apply_u32(0x00a0_0f11), 0x0003_06f2);
        assert_eq!(eax.apply_u32(0xf000_c000), 0xf003_c6f2);
        // Leaf 1 ECX: SSE3 (0) and AVX (28) stay; MONITOR (3) and the
        // debug-store bits (2, 4) go.
        let ecx = cpuid_bits("T2A", 1, Ecx);
        assert_eq!(ecx.apply_u32(0xffff_ffff), 0xfffb_3203);
        assert_eq!(ecx.apply_u32(1 << 28 | 1 << 3 | 1), 1 << 28 | 1);
        // Leaf 1 EDX: MCE (7) and MTRR (12) are set, PSN (18) cleared.
        let edx = cpuid_bits("T2A", 1, Edx);
        assert_eq!(edx.apply_u32(1 << 18), 1 << 7 | 1 << 12);
        // Leaf 7 EBX: AVX-512F (16), SHA (29) and ADX (19) cleared, ERMS (9)
        // set, AVX2 (5) and BMI1 (3) kept.
        let ebx7 = cpuid_bits("T2A", 7, Ebx);
        let milan_ebx7 = 1 << 29 | 1 << 19 | 1 << 16 | 1 << 5 | 1 << 3;
        assert_eq!(ebx7.apply_u32(milan_ebx7), 1 << 9 | 1 << 5 | 1 << 3);
        // 0x80000001 ECX: SSE4A (6) cleared, LAHF (0) kept; EDX: 1 GiB
        // pages (26) cleared.
        let ecx_ext = cpuid_bits("T2A", 0x8000_0001, Ecx);
        assert_eq!(ecx_ext.apply_u32(1 << 6 | 1), 1);
        assert_eq!(cpuid_bits("T2A", 0x8000_0001, Edx).apply_u32(1 << 26), 0);
        // 0x80000008 EBX: CLZERO (0) and WBNOINVD (9) cleared, IBPB (12)
        // kept, bits 2 and 18-20 set.
        let ebx_ext = cpuid_bits("T2A", 0x8000_0008, Ebx);
        assert_eq!(
            ebx_ext.apply_u32(1 << 12 | 1 << 9 | 1),
            1 << 12 | 0x001c_0004
        );
        // T2 differs from T2A only in the extended leaves.
        assert_eq!(cpuid_bits("T2", 7, Ebx), ebx7);
        assert_ne!(cpuid_bits("T2", 0x8000_0008, Ebx), ebx_ext);
    }

    #[test]
    fn vendor_and_architecture_are_checked() {
        let err = |name, arch, vendor| find_static_template(name, arch, vendor).unwrap_err();
        for name in ["C3", "T2", "T2S", "T2CL"] {
            let e = err(name, "x86_64", Some(VENDOR_AMD));
            assert_eq!(
                e,
                TemplateError::Vendor {
                    name: find(name).name,
                    wants: VENDOR_INTEL,
                    host: VENDOR_AMD.into()
                }
            );
            let msg = e.to_string();
            assert!(
                msg.contains("GenuineIntel") && msg.contains("AuthenticAMD"),
                "{msg}"
            );
            assert!(find_static_template(name, "x86_64", Some(VENDOR_INTEL)).is_ok());
        }
        assert!(matches!(
            err("T2A", "x86_64", Some(VENDOR_INTEL)),
            TemplateError::Vendor { .. }
        ));
        // A host whose vendor is not known is checked no further.
        assert!(find_static_template("T2A", "x86_64", None).is_ok());
        assert_eq!(
            err("T2", "aarch64", None).to_string(),
            "cpu_template T2 is for x86_64, and this host is aarch64"
        );
        assert!(matches!(
            err("V1N1", "x86_64", Some(VENDOR_AMD)),
            TemplateError::StaticArch { .. }
        ));
        assert_eq!(
            err("t2", "x86_64", None).to_string(),
            "unknown cpu_template \"t2\" (C3, T2, T2S, T2CL, T2A or None)"
        );
    }

    #[test]
    fn v1n1_register_ids_are_kvm_s() {
        // ID_AA64PFR0_EL1 as KVM names it (also in the API tests).
        assert_eq!(arm64_sys_reg(3, 0, 0, 4, 0), 0x6030_0000_0013_c020);
        assert_eq!(arm64_sys_reg(3, 0, 0, 7, 2), 0x6030_0000_0013_c03a);
    }
}
