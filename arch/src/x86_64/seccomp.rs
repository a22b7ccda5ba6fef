//! What the seccomp filters need that differs per architecture: system
//! calls that only some architectures have (x86_64 keeps the pre-`*at`
//! calls the C library still uses), and the vCPU ioctls of this
//! platform's exit handling. The filters themselves are in `vmm`.

use kvm_bindings::{kvm_irqchip, kvm_regs, kvm_sregs, kvm_translation};

/// `rename(2)`: glibc's `rename` uses it where it exists.
pub const SYS_RENAME: &[i64] = &[libc::SYS_rename];
/// `unlink(2)`: glibc's `unlink` uses it where it exists.
pub const SYS_UNLINK: &[i64] = &[libc::SYS_unlink];
/// `epoll_wait(2)`: glibc's `epoll_wait` uses it where it exists.
pub const SYS_EPOLL_WAIT: &[i64] = &[libc::SYS_epoll_wait];

const KVMIO: u64 = 0xAE;
const IOC_WRITE: u64 = 1;
const IOC_READ: u64 = 2;

/// The Linux `_IOC` encoding (asm-generic, which x86 uses).
const fn ioc(dir: u64, nr: u64, size: usize) -> u64 {
    (dir << 30) | ((size as u64) << 16) | (KVMIO << 8) | nr
}

/// `KVM_RUN`.
pub const KVM_RUN: u64 = ioc(0, 0x80, 0);
/// `KVM_GET_REGS`: a vCPU reads its RIP to describe a triple fault or an
/// internal error.
pub const KVM_GET_REGS: u64 = ioc(IOC_READ, 0x81, std::mem::size_of::<kvm_regs>());
/// `KVM_GET_SREGS`: the code segment base, for the faulting instruction.
pub const KVM_GET_SREGS: u64 = ioc(IOC_READ, 0x83, std::mem::size_of::<kvm_sregs>());
/// `KVM_TRANSLATE`: the faulting instruction's guest-physical address.
pub const KVM_TRANSLATE: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0x85,
    std::mem::size_of::<kvm_translation>(),
);

/// The KVM ioctls a running vCPU thread issues on its vCPU fd: running,
/// and reading the state that an exit reason reports.
pub const VCPU_IOCTLS: &[u64] = &[KVM_RUN, KVM_GET_REGS, KVM_GET_SREGS, KVM_TRANSLATE];

/// `KVM_GET_IRQCHIP`: whether the guest listens to the power button (see
/// [`crate::x86_64::acpi::ged_listening`]).
pub const KVM_GET_IRQCHIP: u64 = ioc(
    IOC_READ | IOC_WRITE,
    0x62,
    std::mem::size_of::<kvm_irqchip>(),
);

/// The KVM ioctls an API thread issues on the VM fd while the VM runs:
/// reading the interrupt controller before a shutdown request.
pub const API_IOCTLS: &[u64] = &[KVM_GET_IRQCHIP];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // Values from linux/kvm.h on x86_64.
        assert_eq!(KVM_RUN, 0xae80);
        assert_eq!(KVM_GET_REGS, 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS, 0x8138_ae83);
        assert_eq!(KVM_TRANSLATE, 0xc018_ae85);
        assert_eq!(KVM_GET_IRQCHIP, 0xc208_ae62);
    }
}
