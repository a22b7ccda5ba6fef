//! Guest platform setup, one module per architecture.
//!
//! The VMM only calls the items re-exported at the crate root, so a new
//! architecture provides the same names under `arch/<arch>` and nothing in
//! `vmm` needs `cfg(target_arch)`. Everything here is pure code over guest
//! memory and KVM data structures, unit-tested without `/dev/kvm`.

#[cfg(target_arch = "x86_64")]
pub mod x86_64;

#[cfg(target_arch = "x86_64")]
pub use crate::x86_64::*;

/// A guest memory region that holds RAM: start address and length in bytes.
pub type RamRegion = (vm_memory::GuestAddress, u64);

/// Size of one MiB.
pub const MIB: u64 = 1 << 20;
