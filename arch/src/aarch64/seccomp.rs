//! What the seccomp filters need that differs on aarch64: it has only the
//! `*at` and `epoll_pwait` forms of the calls x86_64 keeps older names
//! for, and its vCPUs read registers one at a time.

use kvm_bindings::kvm_one_reg;

/// `rename(2)` does not exist here (glibc uses `renameat`).
pub const SYS_RENAME: &[i64] = &[];
/// `unlink(2)` does not exist here (glibc uses `unlinkat`).
pub const SYS_UNLINK: &[i64] = &[];
/// `epoll_wait(2)` does not exist here (glibc uses `epoll_pwait`).
pub const SYS_EPOLL_WAIT: &[i64] = &[];

const KVMIO: u64 = 0xAE;
const IOC_WRITE: u64 = 1;

/// The Linux `_IOC` encoding (asm-generic, which arm64 uses).
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

/// `KVM_RUN`.
pub const KVM_RUN: u64 = ioc(0, 0x80, 0);
/// `KVM_GET_ONE_REG`: a vCPU reads its PC to describe an exit.
pub const KVM_GET_ONE_REG: u64 = ioc(IOC_WRITE, 0xab, std::mem::size_of::<kvm_one_reg>());

/// The KVM ioctls a running vCPU thread issues on its vCPU fd.
pub const VCPU_IOCTLS: &[u64] = &[KVM_RUN, KVM_GET_ONE_REG];

/// API threads issue no KVM ioctls here (there is no power button to ask
/// the interrupt controller about).
pub const API_IOCTLS: &[u64] = &[];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_ONE_REG, 0x4010_aeab);
    }
}
