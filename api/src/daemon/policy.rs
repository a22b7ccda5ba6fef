//! Which files the daemon opens for a client: kernels, initrds and drives.
//!
//! The daemon runs as root, so a path in a request must not be opened with
//! the daemon's rights on the client's word. Either the operator names the
//! directories guests may use (`--allow-path`, canonicalized at start-up)
//! and a file must resolve, symlinks followed, to a path inside one of
//! them; or, with no such directories, the file is opened with the
//! client's own credentials (uid, gid and groups from the socket), so a
//! client gets no file it could not open itself. Either way nothing under
//! the daemon's state directory is ever handed out: its records, sockets,
//! logs and lock belong to the daemon.
//!
//! The check and the use are one: the daemon opens each file, checks what
//! it opened, and passes that open descriptor to the VMM process, which
//! reaches it as `/proc/self/fd/N`. Renaming or swapping a symlink after
//! the check changes nothing.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::http::{ApiError, Peer};

/// What the daemon may open, and for whom.
pub struct PathPolicy {
    /// Canonical directories (or files) guests may use; empty: use the
    /// client's credentials.
    roots: Vec<PathBuf>,
    /// The canonical state directory, never opened for a guest.
    state_dir: PathBuf,
}

/// How a file is used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// A kernel or initrd: a regular file, read.
    Image,
    /// A drive: a regular file or a block device, read or read-write.
    Drive {
        /// Opened for writing too.
        write: bool,
    },
}

/// Why a file was refused, before it becomes a 400 or 403.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not an absolute path.
    #[error("{0} path {1} must be absolute")]
    Relative(String, PathBuf),
    /// The file cannot be opened (missing, a loop of symlinks ...).
    #[error("{0} {1}: {2}")]
    Open(String, PathBuf, #[source] std::io::Error),
    /// The client's credentials do not allow it.
    #[error("{0} {1}: permission denied for the client (uid {2}, gid {3})")]
    Denied(String, PathBuf, u32, u32),
    /// Not a regular file (or block device, for a drive).
    #[error("{0} {1} is not a regular file{2}")]
    Kind(String, PathBuf, &'static str),
    /// Inside the daemon's state directory.
    #[error("{0} {1} is inside the daemon's state directory {2}: refused")]
    StateDir(String, PathBuf, PathBuf),
    /// Outside every `--allow-path`.
    #[error(
        "{0} {1} (resolving to {2}) is outside the paths this daemon allows (--allow-path {3})"
    )]
    Outside(String, PathBuf, PathBuf, String),
    /// No credentials for the client.
    #[error("{0} {1}: the client's credentials are unknown, so no file is opened for it")]
    NoPeer(String, PathBuf),
    /// The daemon cannot take on the client's credentials.
    #[error("{0} {1}: cannot check access as uid {2}: {3}")]
    Credentials(String, PathBuf, u32, #[source] std::io::Error),
}

impl From<PolicyError> for ApiError {
    fn from(e: PolicyError) -> ApiError {
        let status = match &e {
            PolicyError::Relative(..) | PolicyError::Open(..) | PolicyError::Kind(..) => 400,
            PolicyError::Credentials(..) => 500,
            _ => 403,
        };
        ApiError::new(status, e.to_string())
    }
}

impl PathPolicy {
    /// A policy with `roots` (canonicalized here; each must exist) that
    /// keeps clients out of `state_dir` (already canonical).
    pub fn new(roots: &[PathBuf], state_dir: PathBuf) -> Result<Self, String> {
        let roots = roots
            .iter()
            .map(|r| {
                std::fs::canonicalize(r).map_err(|e| format!("--allow-path {}: {e}", r.display()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PathPolicy { roots, state_dir })
    }

    /// Opens `path` for `what` (e.g. "kernel", "drive root") as the policy
    /// allows, for the client `peer`.
    pub fn open(
        &self,
        what: &str,
        path: &Path,
        usage: Use,
        peer: Option<&Peer>,
    ) -> Result<File, PolicyError> {
        if !path.is_absolute() {
            return Err(PolicyError::Relative(what.into(), path.into()));
        }
        let place = |real: &Path| self.check_place(what, path, real);
        if self.roots.is_empty() {
            let peer = peer.ok_or_else(|| PolicyError::NoPeer(what.into(), path.into()))?;
            open_as(peer, what, path, usage, &place)
        } else {
            open_checked(what, path, usage, &place)
        }
    }

    /// Refuses `real` (where `path` resolved to) when it is in the state
    /// directory or, with roots configured, outside every root.
    fn check_place(&self, what: &str, path: &Path, real: &Path) -> Result<(), PolicyError> {
        let real = real.to_path_buf();
        if real.starts_with(&self.state_dir) {
            return Err(PolicyError::StateDir(
                what.into(),
                path.into(),
                self.state_dir.clone(),
            ));
        }
        if !self.roots.is_empty() && !self.roots.iter().any(|r| real.starts_with(r)) {
            let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
            return Err(PolicyError::Outside(
                what.into(),
                path.into(),
                real,
                roots.join(", "),
            ));
        }
        Ok(())
    }
}

/// The policy's judgement of where a path really leads.
type PlaceCheck<'a> = &'a (dyn Fn(&Path) -> Result<(), PolicyError> + Sync);

fn cstr(what: &str, path: &Path) -> Result<CString, PolicyError> {
    CString::new(path.as_os_str().as_bytes()).map_err(|e| {
        PolicyError::Open(
            what.into(),
            path.into(),
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        )
    })
}

fn open_raw(path: &CString, flags: libc::c_int) -> std::io::Result<File> {
    // SAFETY: `path` is a NUL-terminated string that outlives the call;
    // open returns a new descriptor that nothing else owns.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by open and is owned by no one else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens `path` with this thread's credentials. First with O_PATH, which
/// neither needs read permission nor has the side effects opening a
/// device can have, to check what the path names and where it really
/// leads (`place`, before any access is tried, so a refusal does not
/// depend on the file's permissions or a read-only mount); then the object
/// itself through that descriptor, which checks the permissions for the
/// access the guest gets and cannot be redirected by a rename in between.
fn open_checked(
    what: &str,
    path: &Path,
    usage: Use,
    place: PlaceCheck<'_>,
) -> Result<File, PolicyError> {
    let c = cstr(what, path)?;
    let denied_or = |e: std::io::Error| PolicyError::Open(what.into(), path.into(), e);
    let handle = open_raw(&c, libc::O_PATH).map_err(denied_or)?;
    let real =
        std::fs::read_link(format!("/proc/self/fd/{}", handle.as_raw_fd())).map_err(denied_or)?;
    place(&real)?;
    let meta = handle.metadata().map_err(denied_or)?;
    let kind_ok = match usage {
        Use::Image => meta.is_file(),
        Use::Drive { .. } => meta.is_file() || meta.file_type().is_block_device(),
    };
    if !kind_ok {
        let also = match usage {
            Use::Image => "",
            Use::Drive { .. } => " or a block device",
        };
        return Err(PolicyError::Kind(what.into(), path.into(), also));
    }
    let mode = match usage {
        Use::Drive { write: true } => libc::O_RDWR,
        _ => libc::O_RDONLY,
    };
    let again = cstr(
        what,
        Path::new(&format!("/proc/self/fd/{}", handle.as_raw_fd())),
    )?;
    open_raw(&again, mode | libc::O_NOCTTY).map_err(denied_or)
}

/// [`open_checked`] on a thread that takes on `peer`'s filesystem
/// credentials. Linux keeps credentials per thread: setgroups, setfsgid
/// and setfsuid made as raw system calls (the C library would apply
/// setgroups to every thread) change only this short-lived thread, and a
/// non-zero fsuid also drops the capabilities that let root bypass
/// permission checks. The open then succeeds exactly when the client could
/// open the file itself, search permission on every directory included.
fn open_as(
    peer: &Peer,
    what: &str,
    path: &Path,
    usage: Use,
    place: PlaceCheck<'_>,
) -> Result<File, PolicyError> {
    let cred_err = |e| PolicyError::Credentials(what.into(), path.into(), peer.uid, e);
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            become_peer(peer).map_err(cred_err)?;
            open_checked(what, path, usage, place)
        })
        .join()
    });
    let result =
        result.map_err(|_| cred_err(std::io::Error::other("the checking thread panicked")))?;
    result.map_err(|e| match e {
        PolicyError::Open(w, p, err)
            if matches!(err.raw_os_error(), Some(libc::EACCES | libc::EPERM)) =>
        {
            PolicyError::Denied(w, p, peer.uid, peer.gid)
        }
        other => other,
    })
}

/// Gives the calling thread `peer`'s filesystem identity.
fn become_peer(peer: &Peer) -> std::io::Result<()> {
    let groups: Vec<libc::gid_t> = peer.groups.clone();
    // SAFETY: the raw setgroups system call reads `groups.len()` ids from
    // a live buffer and changes only the calling thread's credentials.
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // A daemon without CAP_SETGID can still act for its own user.
        // SAFETY: geteuid has no preconditions.
        if peer.uid != unsafe { libc::geteuid() } {
            return Err(e);
        }
    }
    // setfsgid and setfsuid return the previous id and report no error:
    // a second call with an invalid id (-1) reads back what took effect.
    // SAFETY: both change only the calling thread's filesystem ids.
    let gid = unsafe {
        libc::syscall(libc::SYS_setfsgid, peer.gid);
        libc::syscall(libc::SYS_setfsgid, u32::MAX)
    };
    // SAFETY: as above.
    let uid = unsafe {
        libc::syscall(libc::SYS_setfsuid, peer.uid);
        libc::syscall(libc::SYS_setfsuid, u32::MAX)
    };
    if gid as u32 != peer.gid || uid as u32 != peer.uid {
        return Err(std::io::Error::from_raw_os_error(libc::EPERM));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("strato-policy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::canonicalize(d).unwrap()
    }

    #[test]
    fn roots_state_dir_and_symlinks() {
        let d = scratch("roots");
        let (allowed, state) = (d.join("allowed"), d.join("state"));
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        std::fs::write(allowed.join("disk"), b"x").unwrap();
        std::fs::write(d.join("outside"), b"x").unwrap();
        std::fs::write(state.join("instance.json"), b"{}").unwrap();
        std::os::unix::fs::symlink(d.join("outside"), allowed.join("link")).unwrap();
        let p = PathPolicy::new(&[allowed.clone(), state.clone()], state.clone()).unwrap();
        let rw = Use::Drive { write: true };
        assert!(p.open("drive d", &allowed.join("disk"), rw, None).is_ok());
        let e = p
            .open("drive d", &allowed.join("link"), rw, None)
            .unwrap_err();
        assert!(matches!(e, PolicyError::Outside(..)), "{e}");
        let e = p
            .open("drive d", &state.join("instance.json"), rw, None)
            .unwrap_err();
        assert!(matches!(e, PolicyError::StateDir(..)), "{e}");
        let e = p.open("kernel", &allowed, Use::Image, None).unwrap_err();
        assert!(e.to_string().ends_with("is not a regular file"), "{e}");
        let e = p
            .open("kernel", Path::new("disk"), Use::Image, None)
            .unwrap_err();
        assert_eq!(ApiError::from(e).status, 400);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn client_credentials_decide_without_roots() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let d = scratch("creds");
        let secret = d.join("secret");
        std::fs::write(&secret, b"x").unwrap();
        std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let p = PathPolicy::new(&[], d.join("state")).unwrap();
        let nobody = Peer {
            uid: 65534,
            gid: 65534,
            groups: vec![],
        };
        let root = Peer {
            uid: 0,
            gid: 0,
            groups: vec![],
        };
        let e = p
            .open("drive d", &secret, Use::Image, Some(&nobody))
            .unwrap_err();
        assert_eq!(ApiError::from(e).status, 403);
        assert!(p.open("drive d", &secret, Use::Image, Some(&root)).is_ok());
        assert!(p.open("drive d", &secret, Use::Image, None).is_err());
        // The daemon's own thread keeps its credentials.
        assert!(File::open(&secret).is_ok());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
