//! Kernel image formats, told apart by their headers before any loader
//! runs, so that a kernel for the other architecture gets a message that
//! names what it is instead of a loader's complaint about a magic number.

use std::io::{Read, Seek, SeekFrom};

/// ELF `e_machine` of x86_64.
pub const EM_X86_64: u16 = 62;
/// ELF `e_machine` of arm64.
pub const EM_AARCH64: u16 = 183;

/// bzImage: "HdrS" at 0x202, in the real-mode setup header.
const BZIMAGE_MAGIC_AT: u64 = 0x202;
const BZIMAGE_MAGIC: &[u8; 4] = b"HdrS";
/// arm64 Image: "ARM\x64" at 0x38 (Documentation/arch/arm64/booting.rst).
const ARM64_MAGIC_AT: u64 = 0x38;
const ARM64_MAGIC: &[u8; 4] = b"ARM\x64";

/// What a kernel file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelFormat {
    /// A 64-bit little-endian ELF for `machine`.
    Elf {
        /// Its `e_machine`.
        machine: u16,
    },
    /// An x86 bzImage.
    BzImage,
    /// An arm64 `Image`.
    Arm64Image,
    /// Anything else.
    Unknown,
}

impl KernelFormat {
    /// Reads the headers of `file` (from its start; the position is left
    /// anywhere).
    pub fn detect<F: Read + Seek>(file: &mut F) -> std::io::Result<KernelFormat> {
        let mut head = [0u8; 20];
        if read_at(file, 0, &mut head)? && &head[..4] == b"\x7fELF" && head[4] == 2 && head[5] == 1
        {
            return Ok(KernelFormat::Elf {
                machine: u16::from_le_bytes([head[18], head[19]]),
            });
        }
        let mut magic = [0u8; 4];
        if read_at(file, ARM64_MAGIC_AT, &mut magic)? && &magic == ARM64_MAGIC {
            return Ok(KernelFormat::Arm64Image);
        }
        if read_at(file, BZIMAGE_MAGIC_AT, &mut magic)? && &magic == BZIMAGE_MAGIC {
            return Ok(KernelFormat::BzImage);
        }
        Ok(KernelFormat::Unknown)
    }

    /// The format in words, for messages.
    pub fn describe(&self) -> String {
        match self {
            KernelFormat::Elf { machine } => {
                format!(
                    "an ELF for {} (e_machine {machine})",
                    elf_machine_name(*machine)
                )
            }
            KernelFormat::BzImage => "an x86 bzImage".into(),
            KernelFormat::Arm64Image => "an arm64 Image".into(),
            KernelFormat::Unknown => "not a kernel".into(),
        }
    }
}

/// Fills `buf` from `at`; false if the file is too short.
fn read_at<F: Read + Seek>(file: &mut F, at: u64, buf: &mut [u8]) -> std::io::Result<bool> {
    file.seek(SeekFrom::Start(at))?;
    match file.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Name of an ELF `e_machine` value, for messages.
pub fn elf_machine_name(machine: u16) -> &'static str {
    match machine {
        3 => "i386",
        8 => "MIPS",
        20 => "PowerPC",
        21 => "PowerPC64",
        22 => "s390",
        40 => "ARM",
        EM_X86_64 => "x86_64",
        EM_AARCH64 => "AArch64",
        243 => "RISC-V",
        258 => "LoongArch",
        _ => "an unknown machine",
    }
}

/// Why a kernel could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not a kernel in any format strato knows.
    #[error("is not a kernel (this {arch} build boots {formats})",
        arch = crate::ARCH_NAME, formats = crate::KERNEL_FORMATS)]
    NotAKernel,
    /// A kernel this architecture does not boot (one for another machine).
    #[error("is {found}: this {arch} build boots {formats}",
        found = .0.describe(), arch = crate::ARCH_NAME, formats = crate::KERNEL_FORMATS)]
    WrongFormat(KernelFormat),
    /// A bzImage without a 64-bit entry point.
    #[error("is a bzImage without a 64-bit entry point")]
    No64BitEntry,
    /// The kernel says it needs more memory than the guest's RAM (and the
    /// boot data above it) leaves.
    #[error("needs {0:#x} bytes of RAM from its load address, more than the guest has")]
    TooLarge(u64),
    /// The loader rejected the image.
    #[error("cannot be loaded: {0}")]
    Loader(linux_loader::loader::Error),
    /// Reading the file failed.
    #[error("cannot be read: {0}")]
    Read(#[source] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn at(len: usize, offset: usize, bytes: &[u8]) -> Cursor<Vec<u8>> {
        let mut v = vec![0u8; len];
        v[offset..offset + bytes.len()].copy_from_slice(bytes);
        Cursor::new(v)
    }

    #[test]
    fn formats_are_told_apart() {
        let mut elf = at(64, 0, b"\x7fELF\x02\x01");
        elf.get_mut()[18] = 183;
        assert_eq!(
            KernelFormat::detect(&mut elf).unwrap(),
            KernelFormat::Elf { machine: 183 }
        );
        assert_eq!(
            KernelFormat::detect(&mut at(0x400, 0x202, b"HdrS")).unwrap(),
            KernelFormat::BzImage
        );
        assert_eq!(
            KernelFormat::detect(&mut at(0x400, 0x38, b"ARM\x64")).unwrap(),
            KernelFormat::Arm64Image
        );
        assert_eq!(
            KernelFormat::detect(&mut Cursor::new(b"hello".to_vec())).unwrap(),
            KernelFormat::Unknown
        );
        assert_eq!(
            KernelFormat::Elf { machine: 183 }.describe(),
            "an ELF for AArch64 (e_machine 183)"
        );
    }
}
