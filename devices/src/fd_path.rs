//! Guest files handed to the VMM already open. The daemon opens a guest's
//! kernel, initrd and drives under its path policy and passes them as
//! inherited descriptors, named `/proc/self/fd/N`. Such a path is served
//! from the descriptor itself (duplicated, not reopened by path): a jailed
//! VMM has no /proc and its unprivileged uid may not be allowed to open
//! the file again, yet it must use exactly the file it was given.

use std::fs::{File, Metadata};
use std::io::{self, Seek};
use std::os::fd::{FromRawFd, RawFd};
use std::path::Path;

/// The descriptor number a path names, if it is `/proc/self/fd/N`.
pub fn inherited_fd(path: &Path) -> Option<RawFd> {
    let n = path.to_str()?.strip_prefix("/proc/self/fd/")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// Opens `path` for reading (and writing if `write`). A `/proc/self/fd/N`
/// path yields a duplicate of descriptor N, rewound to the start, which
/// must have been opened for the access asked.
pub fn open(path: &Path, write: bool) -> io::Result<File> {
    let Some(fd) = inherited_fd(path) else {
        return std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .open(path);
    };
    // SAFETY: F_GETFL only reads the status flags of `fd`; an fd that is
    // not open fails with EBADF.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let mode = flags & libc::O_ACCMODE;
    let ok = if write {
        mode == libc::O_RDWR
    } else {
        mode == libc::O_RDONLY || mode == libc::O_RDWR
    };
    if !ok {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "descriptor {fd} is not open for {}",
                if write {
                    "reading and writing"
                } else {
                    "reading"
                }
            ),
        ));
    }
    // SAFETY: F_DUPFD_CLOEXEC makes a new descriptor (at 3 or above) for
    // the open file of `fd`; it touches no memory.
    let dup = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `dup` was just created and nothing else owns it.
    let mut file = unsafe { File::from_raw_fd(dup) };
    // The duplicate shares its offset with the original: start reads at
    // the beginning, as a fresh open would. Devices that cannot seek keep
    // their position.
    if file.metadata()?.is_file() {
        file.rewind()?;
    }
    Ok(file)
}

/// Metadata of `path`, of the inherited descriptor for `/proc/self/fd/N`
/// (symlinks followed, as `std::fs::metadata` does).
pub fn metadata(path: &Path) -> io::Result<Metadata> {
    match inherited_fd(path) {
        Some(_) => open(path, false)?.metadata(),
        None => std::fs::metadata(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;

    #[test]
    fn descriptor_paths_are_recognised() {
        assert_eq!(inherited_fd(Path::new("/proc/self/fd/12")), Some(12));
        for p in ["/proc/self/fd/", "/proc/self/fd/1a", "/proc/1/fd/3", "fd/3"] {
            assert_eq!(inherited_fd(Path::new(p)), None, "{p}");
        }
    }

    #[test]
    fn a_descriptor_is_duplicated_rewound_and_access_checked() {
        let p = std::env::temp_dir().join(format!("strato-fdpath-{}", std::process::id()));
        std::fs::write(&p, b"kernel").unwrap();
        let mut ro = File::open(&p).unwrap();
        let mut skip = [0u8; 3];
        ro.read_exact(&mut skip).unwrap();
        let named = std::path::PathBuf::from(format!("/proc/self/fd/{}", ro.as_raw_fd()));
        let mut again = open(&named, false).unwrap();
        let mut all = String::new();
        again.read_to_string(&mut all).unwrap();
        assert_eq!(all, "kernel");
        assert_eq!(metadata(&named).unwrap().len(), 6);
        let denied = open(&named, true).unwrap_err();
        assert_eq!(denied.kind(), io::ErrorKind::PermissionDenied);
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let named = std::path::PathBuf::from(format!("/proc/self/fd/{}", rw.as_raw_fd()));
        open(&named, true).unwrap().write_all(b"K").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"Kernel");
        std::fs::remove_file(&p).unwrap();
    }
}
