//! Puts an interactive terminal in raw mode for the guest console and puts
//! it back afterwards.

use std::os::fd::{AsRawFd, RawFd};

/// Restores the saved terminal settings when dropped.
pub struct RawTerminal {
    fd: RawFd,
    saved: libc::termios,
}

/// Whether strato may read its stdin for the guest's console: unless it is
/// its controlling terminal with another process group in the foreground.
/// Reading (or setting) that from a background job (`strato vm ... &` in a
/// shell) stops the whole process with SIGTTIN or SIGTTOU, so such a VM
/// gets no console input instead. A terminal that is not the controlling
/// one (tcgetpgrp fails: /dev/console under an init) sends no such signal.
pub fn stdin_is_ours() -> bool {
    let fd = std::io::stdin().as_raw_fd();
    // SAFETY: isatty, tcgetpgrp and getpgrp only inspect the descriptor
    // and the process.
    unsafe {
        if libc::isatty(fd) != 1 {
            return true;
        }
        let foreground = libc::tcgetpgrp(fd);
        foreground < 0 || foreground == libc::getpgrp()
    }
}

impl RawTerminal {
    /// Raw mode on stdin if it is a terminal; keeps ISIG so Ctrl-C still
    /// reaches strato, which then stops the VM cleanly.
    pub fn stdin() -> Option<RawTerminal> {
        Self::raw_stdin(true)
    }

    /// Raw mode on stdin if it is a terminal, Ctrl-C and Ctrl-Z included,
    /// as Firecracker sets it: every key goes to the guest's console (a
    /// shell there can be interrupted), and the VM is stopped through its
    /// API or a signal from elsewhere.
    pub fn stdin_every_key() -> Option<RawTerminal> {
        Self::raw_stdin(false)
    }

    fn raw_stdin(keep_signals: bool) -> Option<RawTerminal> {
        let fd = std::io::stdin().as_raw_fd();
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return None;
        }
        // SAFETY: termios is plain data; tcgetattr fills it for a valid tty fd.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is a terminal and `saved` is a valid termios to fill.
        if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
            return None;
        }
        let mut raw = saved;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        if keep_signals {
            raw.c_lflag |= libc::ISIG;
        }
        // Keep output post-processing so the host side's newlines stay sane.
        raw.c_oflag |= libc::OPOST;
        // SAFETY: fd is a terminal and `raw` a complete termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawTerminal { fd, saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores settings read from this same terminal.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}
