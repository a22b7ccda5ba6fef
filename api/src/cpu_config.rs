//! Firecracker's custom CPU template as the APIs take it (`PUT
//! /cpu-config`, the config file's `cpu-config`), and its translation
//! into the VMM's [`CpuTemplate`]. The body is kept as the client sent it,
//! so `GET /vm/config` shows it back unchanged.

use serde::{Deserialize, Serialize};
use vmm::cpu_template::{
    parse_capability, parse_number, BitModifier, CpuTemplate, CpuidModifier, FeatureModifier,
    MsrModifier, RegModifier, TemplateError,
};

/// The template, as JSON.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CpuConfig {
    /// `"N"`: KVM must have capability N; `"!N"`: N is not checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kvm_capabilities: Vec<String>,
    /// CPUID changes (x86_64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpuid_modifiers: Vec<CpuidLeaf>,
    /// MSR changes (x86_64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub msr_modifiers: Vec<AddrBitmap>,
    /// Register changes (aarch64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reg_modifiers: Vec<AddrBitmap>,
    /// `KVM_ARM_VCPU_INIT` feature changes (aarch64).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vcpu_features: Vec<Feature>,
}

/// One CPUID leaf and subleaf with its register changes.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CpuidLeaf {
    /// The leaf: a string holding a number.
    pub leaf: String,
    /// The subleaf: a string holding a number.
    pub subleaf: String,
    /// KVM's CPUID entry flags; taken as given, as KVM sets them itself.
    #[serde(default)]
    pub flags: u32,
    /// The registers to change.
    pub modifiers: Vec<CpuidRegisterBitmap>,
}

/// A CPUID register and its bitmap.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CpuidRegisterBitmap {
    /// eax, ebx, ecx or edx.
    pub register: String,
    /// `0b` and up to 32 of 0, 1, x.
    pub bitmap: String,
}

/// An MSR or register address and its bitmap.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AddrBitmap {
    /// A string holding a number.
    pub addr: String,
    /// `0b` and up to 64 (MSR) or 128 (register) of 0, 1, x.
    pub bitmap: String,
}

/// A word of the vCPU features and its bitmap.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    /// Which 32-bit word.
    pub index: u32,
    /// `0b` and up to 32 of 0, 1, x.
    pub bitmap: String,
}

fn number<T: TryFrom<u64>>(what: &'static str, text: &str) -> Result<T, TemplateError> {
    T::try_from(parse_number(what, text)?).map_err(|_| TemplateError::Number {
        what,
        text: text.to_string(),
    })
}

impl CpuConfig {
    /// The template it describes, or what is wrong with it. Parts for the
    /// other architecture are parsed too; the VM configuration refuses
    /// them with their names (`vmm::VmConfig::validate`).
    pub fn template(&self) -> Result<CpuTemplate, TemplateError> {
        let mut t = CpuTemplate::default();
        for c in &self.kvm_capabilities {
            t.required_caps.extend(parse_capability(c)?);
        }
        for l in &self.cpuid_modifiers {
            let leaf = number("leaf", &l.leaf)?;
            let subleaf = number("subleaf", &l.subleaf)?;
            for m in &l.modifiers {
                t.cpuid.push(CpuidModifier {
                    leaf,
                    subleaf,
                    register: m.register.parse()?,
                    bits: BitModifier::parse(&m.bitmap, 32)?,
                });
            }
        }
        for m in &self.msr_modifiers {
            t.msrs.push(MsrModifier {
                addr: number("MSR addr", &m.addr)?,
                bits: BitModifier::parse(&m.bitmap, 64)?,
            });
        }
        for m in &self.reg_modifiers {
            t.regs.push(RegModifier {
                addr: number("register addr", &m.addr)?,
                bits: BitModifier::parse(&m.bitmap, 128)?,
            });
        }
        for f in &self.vcpu_features {
            t.vcpu_features.push(FeatureModifier {
                index: f.index,
                bits: BitModifier::parse(&f.bitmap, 32)?,
            });
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm::cpu_template::CpuidRegister;

    #[test]
    fn firecracker_s_example_parses() {
        let body = r#"{
            "kvm_capabilities": ["!56", "171"],
            "cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                "modifiers": [{"register": "eax", "bitmap": "0bxxxx000000000011xx00011011110010"}]}],
            "msr_modifiers": [{"addr": "0x10a", "bitmap": "0b0"}]
        }"#;
        let c: CpuConfig = serde_json::from_str(body).unwrap();
        let t = c.template().unwrap();
        assert_eq!(t.required_caps, [171]);
        assert_eq!(t.cpuid.len(), 1);
        assert_eq!(
            (t.cpuid[0].leaf, t.cpuid[0].subleaf, t.cpuid[0].register),
            (1, 0, CpuidRegister::Eax)
        );
        assert_eq!(t.msrs[0].addr, 0x10a);
        assert_eq!(t.msrs[0].bits.apply_u64(0xff), 0xfe);
        // Shown back as given.
        let again: CpuConfig = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        assert_eq!(again, c);
    }

    #[test]
    fn bad_templates_say_which_field() {
        let err = |body: &str| -> String {
            match serde_json::from_str::<CpuConfig>(body) {
                Err(e) => e.to_string(),
                Ok(c) => c.template().unwrap_err().to_string(),
            }
        };
        let leaf = |leaf: &str, reg: &str, bitmap: &str| {
            format!(
                r#"{{"cpuid_modifiers":[{{"leaf":"{leaf}","subleaf":"0","modifiers":[{{"register":"{reg}","bitmap":"{bitmap}"}}]}}]}}"#
            )
        };
        assert!(err(&leaf("0x1q", "eax", "0b1")).contains("leaf \"0x1q\""));
        assert!(err(&leaf("0x100000000", "eax", "0b1")).contains("leaf"));
        assert!(err(&leaf("1", "rax", "0b1")).contains("\"rax\""));
        assert!(err(&leaf("1", "eax", "1")).contains("no 0b prefix"));
        assert!(
            err(r#"{"msr_modifiers":[{"addr":"0x10a","bitmap":"0b2"}]}"#).contains("0, 1 or x")
        );
        assert!(err(r#"{"kvm_capabilities":["x"]}"#).contains("KVM capability"));
        assert!(err(r#"{"cpuid":[]}"#).contains("unknown field"));
    }
}
