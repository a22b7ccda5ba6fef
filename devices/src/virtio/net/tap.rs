//! A TAP interface opened through /dev/net/tun with a virtio-net header on
//! every frame (IFF_VNET_HDR), non-blocking.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};
use vmm_sys_util::{ioctl_ior_nr, ioctl_iow_nr};

const TUNTAP: u32 = b'T' as u32;
ioctl_iow_nr!(TUNSETIFF, TUNTAP, 202, libc::c_int);
ioctl_ior_nr!(TUNGETIFF, TUNTAP, 210, libc::c_uint);
ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, libc::c_uint);
ioctl_iow_nr!(TUNSETVNETHDRSZ, TUNTAP, 216, libc::c_int);

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// Offload flags for [`Tap::set_offload`].
pub const TUN_F_CSUM: u32 = 0x01;
/// TSO for IPv4.
pub const TUN_F_TSO4: u32 = 0x02;
/// TSO for IPv6.
pub const TUN_F_TSO6: u32 = 0x04;
/// TSO with ECN.
pub const TUN_F_TSO_ECN: u32 = 0x08;

/// Errors opening a tap.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The name does not fit in an interface name.
    #[error("tap name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    /// /dev/net/tun cannot be opened.
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    /// TUNSETIFF failed (no such tap and no right to create it, or busy).
    #[error("cannot attach to tap {0}: {1}")]
    SetIff(String, #[source] io::Error),
    /// Another ioctl failed.
    #[error("tap {0}: {1} failed: {2}")]
    Ioctl(String, &'static str, #[source] io::Error),
    /// A descriptor handed over for a tap is not attached to it.
    #[error("the descriptor handed over for tap {0} is not attached to it as a tap")]
    NotHandedTap(String),
    /// A rate limiter's timer cannot be made.
    #[error("cannot make the interface's rate limiter timer: {0}")]
    Timer(#[source] io::Error),
}

/// Taps attached by another process and handed over as inherited
/// descriptors, by interface name. The daemon attaches to a tap with its
/// own rights, so that a jailed VMM needs none; [`Tap::open`] then uses
/// the descriptor instead of attaching itself.
static HANDED: Mutex<Vec<(String, OwnedFd)>> = Mutex::new(Vec::new());

/// The flags of every strato tap.
const FLAGS: libc::c_short = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// An open TAP device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    is_tap: bool,
}

impl Tap {
    /// Opens /dev/net/tun attached to (or, with CAP_NET_ADMIN, creating)
    /// the tap `name`, as [`Tap::open`] uses it: the descriptor that
    /// [`Tap::hand_over`] takes in another process.
    pub fn attach(name: &str) -> Result<File, Error> {
        if name.is_empty() || name.len() > 15 || name.contains('\0') {
            return Err(Error::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(Error::OpenTun)?;
        let mut req = IfReq {
            name: [0; 16],
            flags: FLAGS,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes an ifreq, which IfReq lays out.
        let rc = unsafe { ioctl_with_mut_ref(&file, TUNSETIFF(), &mut req) };
        if rc < 0 {
            return Err(Error::SetIff(name.to_string(), io::Error::last_os_error()));
        }
        Ok(file)
    }

    /// Keeps `fd`, made by [`Tap::attach`] for tap `name` in another
    /// process, for [`Tap::open`] in this one. It must be attached to that
    /// tap with strato's flags.
    pub fn hand_over(name: &str, fd: OwnedFd) -> Result<(), Error> {
        let mut req = IfReq {
            name: [0; 16],
            flags: 0,
            _pad: [0; 22],
        };
        // SAFETY: TUNGETIFF writes an ifreq, which IfReq lays out; a
        // descriptor that is not a tun device fails with an error.
        let rc = unsafe { ioctl_with_mut_ref(&fd, TUNGETIFF(), &mut req) };
        let len = req.name.iter().position(|b| *b == 0).unwrap_or(16);
        if rc < 0 || &req.name[..len] != name.as_bytes() || req.flags & FLAGS != FLAGS {
            return Err(Error::NotHandedTap(name.to_string()));
        }
        HANDED
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_string(), fd));
        Ok(())
    }

    /// A copy of the descriptor handed over for `name`, if any.
    fn handed(name: &str) -> Result<Option<File>, Error> {
        let handed = HANDED.lock().unwrap_or_else(|e| e.into_inner());
        let Some((_, fd)) = handed.iter().find(|(n, _)| n == name) else {
            return Ok(None);
        };
        let copy = fd
            .try_clone()
            .map_err(|e| Error::Ioctl(name.to_string(), "F_DUPFD_CLOEXEC", e))?;
        Ok(Some(File::from(copy)))
    }

    /// Opens the tap `name`: the descriptor handed over for it, else
    /// attached here.
    pub fn open(name: &str) -> Result<Tap, Error> {
        let file = match Self::handed(name)? {
            Some(file) => file,
            None => Self::attach(name)?,
        };
        let tap = Tap {
            file,
            name: name.to_string(),
            is_tap: true,
        };
        let hdr_len: libc::c_int = super::VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int.
        let rc = unsafe { ioctl_with_ref(&tap.file, TUNSETVNETHDRSZ(), &hdr_len) };
        if rc < 0 {
            return Err(tap.ioctl_error("TUNSETVNETHDRSZ"));
        }
        Ok(tap)
    }

    /// Any packet-preserving fd (a SOCK_SEQPACKET socket in tests) standing
    /// in for a tap; offload settings are then ignored.
    pub fn from_fd(fd: std::os::fd::OwnedFd, name: &str) -> Tap {
        Tap {
            file: File::from(fd),
            name: name.to_string(),
            is_tap: false,
        }
    }

    /// The ioctls a tap needs once open: the driver's offloads are set
    /// when it activates the device, on a vCPU thread (its seccomp filter
    /// allows these and no other tap ioctl).
    pub fn runtime_ioctls() -> [libc::c_ulong; 1] {
        [TUNSETOFFLOAD()]
    }

    fn ioctl_error(&self, what: &'static str) -> Error {
        Error::Ioctl(self.name.clone(), what, io::Error::last_os_error())
    }

    /// Tells the kernel which offloads the guest accepts on receive.
    pub fn set_offload(&self, flags: u32) -> Result<(), Error> {
        if !self.is_tap {
            return Ok(());
        }
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let rc = unsafe { ioctl_with_val(&self.file, TUNSETOFFLOAD(), libc::c_ulong::from(flags)) };
        if rc < 0 {
            return Err(self.ioctl_error("TUNSETOFFLOAD"));
        }
        Ok(())
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one frame (with its virtio-net header).
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: reads at most buf.len() bytes into buf.
        let n = unsafe { libc::read(self.file.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one frame gathered from `iovs` (header first).
    ///
    /// # Safety
    /// Every iovec must describe readable memory that stays mapped for the
    /// duration of the call.
    pub unsafe fn write_iovecs(&self, iovs: &[libc::iovec]) -> io::Result<usize> {
        // SAFETY: the caller guarantees the buffers; the count is the
        // slice's length.
        let n = unsafe { libc::writev(self.file.as_raw_fd(), iovs.as_ptr(), iovs.len() as i32) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Writes one frame (with its virtio-net header).
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<usize> {
        // SAFETY: writes frame.len() bytes from frame.
        let n = unsafe { libc::write(self.file.as_raw_fd(), frame.as_ptr().cast(), frame.len()) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(matches!(Tap::open(""), Err(Error::BadName(_))));
        assert!(matches!(
            Tap::open("a-name-too-long-for-linux"),
            Err(Error::BadName(_))
        ));
    }
}
