//! Per-vCPU CPUID: KVM's supported CPUID adjusted with this vCPU's APIC id
//! and the VM's topology: one or two threads per core (Firecracker's
//! `smt`), all cores in one package. APIC ids are the vCPU indices, so with
//! two threads the low bit is the thread and vCPUs 2n and 2n+1 are siblings.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;
const LEAF_AMD_SIZE_IDS: u32 = 0x8000_0008;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;

/// Topology level types of leaves 0xb/0x1f.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// The host CPU's vendor string (CPUID leaf 0: EBX, EDX, ECX), which
/// the static CPU templates are checked against.
pub fn host_cpu_vendor() -> Option<String> {
    // The intrinsic is unsafe in older toolchains (such as the workspace's
    // rust-version) and safe in newer ones, hence the allowance.
    #[allow(unused_unsafe)]
    // SAFETY: CPUID exists on every x86_64 CPU and only writes the four
    // registers the intrinsic returns.
    let r = unsafe { std::arch::x86_64::__cpuid(0) };
    let bytes: Vec<u8> = [r.ebx, r.edx, r.ecx]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    String::from_utf8(bytes).ok()
}

/// Bits needed to hold `n` distinct ids.
fn id_bits(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Adjusts `cpuid` (from KVM_GET_SUPPORTED_CPUID) for vCPU `cpu_id` of
/// `vcpus`, `threads_per_core` (1 or 2) to a core. `tsc_deadline` says
/// whether KVM emulates the TSC-deadline timer.
pub fn setup_cpuid(
    cpuid: &mut CpuId,
    cpu_id: u8,
    vcpus: u8,
    threads_per_core: u8,
    tsc_deadline: bool,
) {
    let apic_id = u32::from(cpu_id);
    let count = u32::from(vcpus.max(1));
    let threads = u32::from(threads_per_core.max(1)).min(count);
    let thread_bits = id_bits(threads);
    // Bits of the APIC id below the package: thread and core.
    let core_bits = thread_bits + id_bits(count.div_ceil(threads));
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                // EBX: initial APIC id, logical processors per package, and
                // CLFLUSH line size in 8-byte units (64 bytes).
                e.ebx = (apic_id << 24) | ((count & 0xff) << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR;
                if tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // Cores per package - 1 in EAX[31:26]; each cache level is
                // private to a core (its threads) except the last, shared
                // by the package.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { threads - 1 };
                let cores = count.div_ceil(threads);
                e.eax = (e.eax & 0x3fff) | ((sharing & 0xfff) << 14) | (((cores - 1) & 0x3f) << 26);
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                let (eax, ebx, level) = match e.index {
                    0 => (thread_bits, threads, LEVEL_SMT),
                    1 => (core_bits, count, LEVEL_CORE),
                    _ => (0, 0, 0),
                };
                e.eax = eax;
                e.ebx = ebx;
                e.ecx = (level << 8) | (e.index & 0xff);
                e.edx = apic_id;
            }
            LEAF_AMD_SIZE_IDS => {
                e.ecx = (e.ecx & !0xf0ff) | (core_bits << 12) | ((count - 1) & 0xff);
            }
            LEAF_AMD_TOPOLOGY => {
                // Extended APIC id; the compute unit (core) and its threads
                // - 1; node 0 with one node per processor.
                e.eax = apic_id;
                e.ebx = ((threads - 1) << 8) | ((apic_id >> thread_bits) & 0xff);
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn topology_follows_the_vcpu() {
        let mut c = CpuId::from_entries(&[
            entry(1, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0x8000_0008, 0),
        ])
        .unwrap();
        setup_cpuid(&mut c, 3, 4, 1, true);
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_ne!(s[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(s[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_ne!(s[0].edx & EDX_HTT, 0);
        assert_eq!((s[1].ebx, s[1].edx, s[1].ecx >> 8), (1, 3, LEVEL_SMT));
        assert_eq!((s[2].eax, s[2].ebx, s[2].ecx >> 8), (2, 4, LEVEL_CORE));
        assert_eq!(s[3].ecx & 0xff, 3);
    }

    #[test]
    fn two_threads_a_core_make_siblings_of_even_and_odd_vcpus() {
        // Leaf 4, subleaf 0: a level-1 cache (EAX[7:5] = 1).
        let l1 = kvm_cpuid_entry2 {
            function: 4,
            eax: 1 << 5,
            ..Default::default()
        };
        let mut c = CpuId::from_entries(&[l1, entry(0xb, 0), entry(0xb, 1), entry(0x8000_001e, 0)])
            .unwrap();
        // vCPU 5 of 8: core 2, thread 1.
        setup_cpuid(&mut c, 5, 8, 2, false);
        let s = c.as_slice();
        // L1 (level 1 in EAX[7:5]) shared by 2 threads, 4 cores.
        assert_eq!((s[0].eax >> 14) & 0xfff, 1);
        assert_eq!(s[0].eax >> 26, 3);
        assert_eq!((s[1].eax, s[1].ebx, s[1].ecx >> 8), (1, 2, LEVEL_SMT));
        assert_eq!((s[2].eax, s[2].ebx, s[2].ecx >> 8), (3, 8, LEVEL_CORE));
        assert_eq!((s[3].ebx >> 8) & 0xff, 1);
        assert_eq!(s[3].ebx & 0xff, 2);
        // One vCPU with SMT asked: one thread.
        setup_cpuid(&mut c, 0, 1, 2, false);
        assert_eq!(c.as_slice()[1].ebx, 1);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 254].map(id_bits), [0, 1, 2, 2, 3, 8]);
    }
}
