//! Custom CPU templates in Firecracker's format: bit modifiers for CPUID
//! leaves and MSRs (x86_64), for registers and `KVM_ARM_VCPU_INIT`
//! features (aarch64), and KVM capabilities the host must have.
//!
//! This module is the arch-neutral data and its parsing; each architecture
//! applies the parts it has ([`CpuTemplate::foreign_parts`] names the parts
//! a template holds for the other one, which the APIs refuse) while it
//! configures its vCPUs.

/// Errors of a CPU template.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    /// A bitmap that is not `0b` and at most `width` of `0`, `1`, `x`
    /// (with `_` between them as a separator).
    #[error("bitmap {text:?}: {why} (want \"0b\" and up to {width} of 0, 1 or x; _ separates)")]
    Bitmap {
        /// The bitmap as given.
        text: String,
        /// What is wrong with it.
        why: &'static str,
        /// The register's width in bits.
        width: u32,
    },
    /// A number (leaf, subleaf, address, capability) that does not parse.
    #[error("{what} {text:?} is not a number (decimal, or hexadecimal with 0x)")]
    Number {
        /// Which field.
        what: &'static str,
        /// The text as given.
        text: String,
    },
    /// A CPUID register name other than eax, ebx, ecx, edx.
    #[error("register {0:?} is not a CPUID register (eax, ebx, ecx or edx)")]
    Register(String),
    /// A CPUID leaf and subleaf that KVM does not give the vCPU.
    #[error("CPUID leaf {leaf:#x} subleaf {subleaf:#x} is not in the vCPU's CPUID, so it cannot be modified")]
    NoSuchLeaf {
        /// The leaf (function).
        leaf: u32,
        /// The subleaf (index).
        subleaf: u32,
    },
    /// An MSR or register that KVM does not read or does not take.
    #[error("{what} {addr:#x}: KVM {why}")]
    Refused {
        /// "MSR" or "register".
        what: &'static str,
        /// Its address or id.
        addr: u64,
        /// What KVM did.
        why: String,
    },
    /// Parts of the template for another architecture.
    #[error("{parts} are not for {arch}")]
    Foreign {
        /// Their names, joined.
        parts: String,
        /// This architecture.
        arch: &'static str,
    },
    /// A KVM capability the template requires and the host lacks.
    #[error("the CPU template requires KVM capability {0}, which this host's KVM lacks")]
    Capability(u32),
    /// A `cpu_template` name that is none of Firecracker's static templates
    /// for this architecture.
    #[error("unknown cpu_template {name:?} ({known} or None)")]
    UnknownStatic {
        /// The name as given.
        name: String,
        /// The names there are, joined.
        known: String,
    },
    /// A static template of the other architecture.
    #[error("cpu_template {name} is for {arch}, and this host is {host}")]
    StaticArch {
        /// The template.
        name: &'static str,
        /// Its architecture.
        arch: &'static str,
        /// This one.
        host: &'static str,
    },
    /// A static template made for another vendor's CPUs than the host's
    /// (Firecracker refuses it too: one vendor cannot be shown as the
    /// other).
    #[error("cpu_template {name} is for {wants} CPUs, and this host's CPU is {host} (CPU vendor mismatch)")]
    Vendor {
        /// The template.
        name: &'static str,
        /// The CPUID vendor string it is for.
        wants: &'static str,
        /// The host's.
        host: String,
    },
}

/// Bits to change in a register: where `filter` has a one, the register's
/// bit becomes `value`'s; the other bits stay as they are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BitModifier {
    /// The bits to change.
    pub filter: u128,
    /// Their new values (zero outside `filter`).
    pub value: u128,
}

impl BitModifier {
    /// Parses a Firecracker bitmap for a `width`-bit register: `0b` then
    /// the bits from the most significant, `0` clears, `1` sets, `x` keeps;
    /// `_` separates groups. A shorter bitmap keeps the high bits it does
    /// not name, as Firecracker reads a contracted bitmap.
    pub fn parse(text: &str, width: u32) -> Result<BitModifier, TemplateError> {
        let bad = |why| TemplateError::Bitmap {
            text: text.to_string(),
            why,
            width,
        };
        let digits = text.strip_prefix("0b").ok_or_else(|| bad("no 0b prefix"))?;
        let mut m = BitModifier::default();
        let mut bits = 0;
        for c in digits.chars().filter(|&c| c != '_') {
            if bits == width {
                return Err(bad("too many bits"));
            }
            m.filter <<= 1;
            m.value <<= 1;
            match c {
                '0' => m.filter |= 1,
                '1' => {
                    m.filter |= 1;
                    m.value |= 1;
                }
                'x' | 'X' => {}
                _ => return Err(bad("a character other than 0, 1, x or _")),
            }
            bits += 1;
        }
        if bits == 0 {
            return Err(bad("no bits"));
        }
        Ok(m)
    }

    /// `old` with the bits changed.
    pub fn apply(&self, old: u128) -> u128 {
        (old & !self.filter) | (self.value & self.filter)
    }

    /// [`BitModifier::apply`] on a 32-bit register.
    pub fn apply_u32(&self, old: u32) -> u32 {
        self.apply(u128::from(old)) as u32
    }

    /// [`BitModifier::apply`] on a 64-bit register.
    pub fn apply_u64(&self, old: u64) -> u64 {
        self.apply(u128::from(old)) as u64
    }
}

/// Parses a number as Firecracker's templates write them: a string with
/// a decimal or `0x` hexadecimal integer.
pub fn parse_number(what: &'static str, text: &str) -> Result<u64, TemplateError> {
    let t = text.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(&hex.replace('_', ""), 16),
        None => t.parse(),
    };
    parsed.map_err(|_| TemplateError::Number {
        what,
        text: text.to_string(),
    })
}

/// Parses an entry of a template's `kvm_capabilities`: `"N"` requires
/// capability N (Some), `"!N"` takes N off the checks (None: strato checks
/// only the capabilities it cannot run without, so there is nothing to
/// take off).
pub fn parse_capability(text: &str) -> Result<Option<u32>, TemplateError> {
    let (removed, number) = match text.strip_prefix('!') {
        Some(n) => (true, n),
        None => (false, text),
    };
    let cap = parse_number("KVM capability", number)?;
    let cap = u32::try_from(cap).map_err(|_| TemplateError::Number {
        what: "KVM capability",
        text: text.to_string(),
    })?;
    Ok((!removed).then_some(cap))
}

/// A CPUID output register.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CpuidRegister {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

impl std::str::FromStr for CpuidRegister {
    type Err = TemplateError;

    fn from_str(s: &str) -> Result<Self, TemplateError> {
        match s {
            "eax" => Ok(CpuidRegister::Eax),
            "ebx" => Ok(CpuidRegister::Ebx),
            "ecx" => Ok(CpuidRegister::Ecx),
            "edx" => Ok(CpuidRegister::Edx),
            _ => Err(TemplateError::Register(s.to_string())),
        }
    }
}

/// One CPUID register of one leaf and subleaf to modify.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuidModifier {
    /// The leaf (function, EAX in).
    pub leaf: u32,
    /// The subleaf (index, ECX in).
    pub subleaf: u32,
    /// The register.
    pub register: CpuidRegister,
    /// Its bits.
    pub bits: BitModifier,
}

/// An MSR to modify at boot (x86_64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsrModifier {
    /// Its index.
    pub addr: u32,
    /// Its bits.
    pub bits: BitModifier,
}

/// A register to modify through `KVM_SET_ONE_REG` (aarch64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegModifier {
    /// The KVM register id.
    pub addr: u64,
    /// Its bits.
    pub bits: BitModifier,
}

/// A word of `KVM_ARM_VCPU_INIT`'s features to modify (aarch64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureModifier {
    /// Which 32-bit word of `features`.
    pub index: u32,
    /// Its bits.
    pub bits: BitModifier,
}

/// A custom CPU template, parsed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuTemplate {
    /// KVM capabilities the host must have.
    pub required_caps: Vec<u32>,
    /// CPUID changes (x86_64).
    pub cpuid: Vec<CpuidModifier>,
    /// MSR changes (x86_64).
    pub msrs: Vec<MsrModifier>,
    /// Register changes (aarch64).
    pub regs: Vec<RegModifier>,
    /// vCPU feature changes (aarch64).
    pub vcpu_features: Vec<FeatureModifier>,
}

impl CpuTemplate {
    /// The names of the parts this template holds that belong to an
    /// architecture other than `arch` ("x86_64" or "aarch64"): a template
    /// with any is refused rather than half applied.
    pub fn foreign_parts(&self, arch: &str) -> Vec<&'static str> {
        let x86 = [
            ("cpuid_modifiers", !self.cpuid.is_empty()),
            ("msr_modifiers", !self.msrs.is_empty()),
        ];
        let arm = [
            ("reg_modifiers", !self.regs.is_empty()),
            ("vcpu_features", !self.vcpu_features.is_empty()),
        ];
        let foreign = if arch == "x86_64" { arm } else { x86 };
        foreign
            .into_iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| name)
            .collect()
    }

    /// Checks that the template is for `arch` and that KVM has every
    /// capability it requires (`has` asks KVM).
    pub fn check(
        &self,
        arch: &'static str,
        has: impl Fn(u32) -> bool,
    ) -> Result<(), TemplateError> {
        let foreign = self.foreign_parts(arch);
        if !foreign.is_empty() {
            return Err(TemplateError::Foreign {
                parts: foreign.join(" and "),
                arch,
            });
        }
        match self.required_caps.iter().find(|&&c| !has(c)) {
            Some(&c) => Err(TemplateError::Capability(c)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmaps_clear_set_and_keep() {
        let m = BitModifier::parse("0bxxxx_0000_0000_0011_xx00_0110_1111_0010", 32).unwrap();
        assert_eq!(m.filter as u32, 0x0fff_3fff);
        assert_eq!(m.value as u32, 0x0003_06f2);
        assert_eq!(m.apply_u32(0xffff_ffff), 0xf003_c6f2);
        assert_eq!(m.apply_u32(0), 0x0003_06f2);
        // Contracted: the bits not named are kept.
        let m = BitModifier::parse("0b10", 64).unwrap();
        assert_eq!((m.filter, m.value), (0b11, 0b10));
        assert_eq!(m.apply_u64(u64::MAX), u64::MAX - 1);
        // All 128 bits of an arm64 register.
        let full = format!("0b1{}", "x".repeat(127));
        let m = BitModifier::parse(&full, 128).unwrap();
        assert_eq!(m.apply(0), 1 << 127);
    }

    #[test]
    fn bad_bitmaps_say_what_is_wrong() {
        let err = |t: &str, w| match BitModifier::parse(t, w) {
            Err(TemplateError::Bitmap { why, .. }) => why,
            other => panic!("{t}: {other:?}"),
        };
        assert_eq!(err("1010", 32), "no 0b prefix");
        assert_eq!(err("0b", 32), "no bits");
        assert_eq!(err("0b___", 32), "no bits");
        assert_eq!(err("0b012", 32), "a character other than 0, 1, x or _");
        assert_eq!(err(&format!("0b{}", "1".repeat(33)), 32), "too many bits");
        assert!(BitModifier::parse(&format!("0b{}", "1".repeat(32)), 32).is_ok());
        let msg = BitModifier::parse("0b2", 32).unwrap_err().to_string();
        assert!(msg.contains("\"0b2\""), "{msg}");
    }

    #[test]
    fn numbers_are_decimal_or_hex() {
        assert_eq!(parse_number("leaf", "0x8000_0001"), Ok(0x8000_0001));
        assert_eq!(parse_number("leaf", "0X1f"), Ok(0x1f));
        assert_eq!(parse_number("leaf", "7"), Ok(7));
        assert!(parse_number("leaf", "0xg").is_err());
        assert!(parse_number("leaf", "-1").is_err());
        assert!(parse_number("leaf", "").is_err());
        assert_eq!(parse_capability("171"), Ok(Some(171)));
        assert_eq!(parse_capability("!56"), Ok(None));
        assert!(parse_capability("!x").is_err());
        assert!(parse_capability("0x100000000").is_err());
    }

    #[test]
    fn foreign_parts_and_caps() {
        let bits = BitModifier::default();
        let t = CpuTemplate {
            required_caps: vec![56, 171],
            regs: vec![RegModifier { addr: 1, bits }],
            cpuid: vec![CpuidModifier {
                leaf: 1,
                subleaf: 0,
                register: CpuidRegister::Ecx,
                bits,
            }],
            ..Default::default()
        };
        assert_eq!(t.foreign_parts("x86_64"), ["reg_modifiers"]);
        assert_eq!(t.foreign_parts("aarch64"), ["cpuid_modifiers"]);
        let x86_only = CpuTemplate {
            regs: Vec::new(),
            ..t.clone()
        };
        assert_eq!(
            x86_only.check("x86_64", |c| c == 56),
            Err(TemplateError::Capability(171))
        );
        assert_eq!(x86_only.check("x86_64", |_| true), Ok(()));
        assert_eq!(
            t.check("x86_64", |_| true).unwrap_err().to_string(),
            "reg_modifiers are not for x86_64"
        );
        assert_eq!("ecx".parse::<CpuidRegister>(), Ok(CpuidRegister::Ecx));
        assert!("rax".parse::<CpuidRegister>().is_err());
    }
}
