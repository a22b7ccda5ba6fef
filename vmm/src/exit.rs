//! Why a VM ended, and the shared place where the first reason is kept.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// Why a VM ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset itself (i8042 reset line, KVM reset event): the
    /// normal way a microVM guest ends.
    Reset,
    /// The guest powered off.
    PowerOff,
    /// The VMM was asked to stop the VM.
    Stopped,
    /// A vCPU triple-faulted (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// The vCPU.
        cpu: u32,
        /// Guest RIP at the shutdown, if it could be read: where to look
        /// in the guest's symbols.
        rip: Option<u64>,
    },
    /// The guest reported a crash (KVM_SYSTEM_EVENT_CRASH).
    GuestCrash {
        /// The vCPU.
        cpu: u32,
    },
    /// KVM could not run or emulate an instruction.
    InternalError {
        /// The vCPU.
        cpu: u32,
        /// KVM's suberror code.
        suberror: u32,
        /// Guest RIP, if it could be read.
        rip: Option<u64>,
        /// Instruction bytes at RIP, if they could be read.
        insn: Vec<u8>,
    },
    /// KVM_EXIT_FAIL_ENTRY.
    FailEntry {
        /// The vCPU.
        cpu: u32,
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// An exit strato does not handle.
    UnhandledExit {
        /// The vCPU.
        cpu: u32,
        /// What it was.
        what: String,
    },
    /// The VMM itself failed.
    VmmError(String),
}

impl ExitReason {
    /// True for the reasons a user sees as a clean end (exit status 0).
    pub fn is_success(&self) -> bool {
        matches!(
            self,
            ExitReason::Reset | ExitReason::PowerOff | ExitReason::Stopped
        )
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Reset => write!(f, "guest reset"),
            ExitReason::PowerOff => write!(f, "guest powered off"),
            ExitReason::Stopped => write!(f, "stopped"),
            ExitReason::TripleFault { cpu, rip: None } => write!(f, "triple fault on vCPU {cpu}"),
            ExitReason::TripleFault {
                cpu,
                rip: Some(rip),
            } => write!(f, "triple fault on vCPU {cpu} at RIP {rip:#x}"),
            ExitReason::GuestCrash { cpu } => write!(f, "guest crashed on vCPU {cpu}"),
            ExitReason::InternalError {
                cpu,
                suberror,
                rip,
                insn,
            } => {
                write!(f, "KVM internal error {suberror} on vCPU {cpu}")?;
                if *suberror == kvm_bindings::KVM_INTERNAL_ERROR_EMULATION {
                    write!(f, " (instruction emulation failed)")?;
                }
                match rip {
                    Some(rip) => write!(f, " at RIP {rip:#x}")?,
                    None => write!(f, " at an unknown RIP")?,
                }
                if !insn.is_empty() {
                    write!(f, ", instruction bytes:")?;
                    for b in insn {
                        write!(f, " {b:02x}")?;
                    }
                }
                Ok(())
            }
            ExitReason::FailEntry { cpu, reason } => {
                write!(
                    f,
                    "vCPU {cpu} failed to enter the guest (reason {reason:#x})"
                )
            }
            ExitReason::UnhandledExit { cpu, what } => {
                write!(f, "unhandled exit on vCPU {cpu}: {what}")
            }
            ExitReason::VmmError(e) => write!(f, "VMM error: {e}"),
        }
    }
}

/// Shared by every thread of a VM: the first exit reason wins, and setting
/// it tells vCPUs to leave their run loops and wakes the waiter.
pub struct ExitState {
    stop: AtomicBool,
    reason: Mutex<Option<ExitReason>>,
    evt: EventFd,
}

impl ExitState {
    /// A fresh state; `evt` is written when a reason is set.
    pub fn new(evt: EventFd) -> Self {
        ExitState {
            stop: AtomicBool::new(false),
            reason: Mutex::new(None),
            evt,
        }
    }

    /// Records `reason` unless one is recorded already.
    pub fn request(&self, reason: ExitReason) {
        let mut r = devices::bus::lock(&self.reason);
        if r.is_none() {
            log::debug!("VM exit requested: {reason}");
            *r = Some(reason);
            self.stop.store(true, Ordering::SeqCst);
            if let Err(e) = self.evt.write(1) {
                log::error!("cannot signal the VM exit: {e}");
            }
        }
    }

    /// True once any reason is recorded.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The recorded reason.
    pub fn reason(&self) -> Option<ExitReason> {
        devices::bus::lock(&self.reason).clone()
    }

    /// The eventfd written when a reason is recorded.
    pub fn event(&self) -> &EventFd {
        &self.evt
    }
}

/// The ACPI sleep control register's S5: records a guest power-off.
pub struct PowerOffTrigger(pub std::sync::Arc<ExitState>);

impl vm_superio::Trigger for PowerOffTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::PowerOff);
        Ok(())
    }
}

/// The i8042 reset line (and the ACPI reset register): records a guest
/// reset.
pub struct ResetTrigger(pub std::sync::Arc<ExitState>);

impl vm_superio::Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        self.0.request(ExitReason::Reset);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let s = ExitState::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        assert!(!s.stopping());
        s.request(ExitReason::Reset);
        s.request(ExitReason::TripleFault { cpu: 0, rip: None });
        assert!(s.stopping());
        assert_eq!(s.reason(), Some(ExitReason::Reset));
        assert_eq!(s.event().read().unwrap(), 1);
    }

    #[test]
    fn display_internal_error() {
        let r = ExitReason::InternalError {
            cpu: 1,
            suberror: 1,
            rip: Some(0x1000),
            insn: vec![0xcc, 0x90],
        };
        assert_eq!(
            r.to_string(),
            "KVM internal error 1 on vCPU 1 (instruction emulation failed) at RIP 0x1000, instruction bytes: cc 90"
        );
        assert!(!r.is_success());
        assert!(ExitReason::Reset.is_success());
    }
}
