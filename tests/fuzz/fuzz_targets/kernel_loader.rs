//! Kernel loading as `Vm::start` does it, without KVM: the format check,
//! the ELF checks, linux-loader's ELF (with the PVH note) and bzImage
//! loaders, the command line's fit, and a 4 KiB initrd placed by the
//! kernel's limits, into a 32 MiB guest. (The boot tables written after
//! it do not depend on the image beyond what the loaders checked.)
//!
//! Input: the kernel image.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use strato_fuzz::MemFile;
use vm_memory::{GuestAddress, GuestMemoryMmap};

struct Rig {
    mem: GuestMemoryMmap,
    kernel: MemFile,
    initrd: MemFile,
}

/// Made once: mapping guest memory for every input would dominate.
fn rig() -> &'static Mutex<Rig> {
    static RIG: OnceLock<Mutex<Rig>> = OnceLock::new();
    RIG.get_or_init(|| {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 32 << 20)]).expect("memory");
        let mut initrd = MemFile::new("fuzz-initrd");
        initrd.set(&[0x11; 4096]);
        Mutex::new(Rig {
            mem,
            kernel: MemFile::new("fuzz-kernel"),
            initrd,
        })
    })
}

fuzz_target!(|data: &[u8]| {
    let mut rig = rig().lock().unwrap();
    rig.kernel.set(data);
    let (kernel, initrd) = (rig.kernel.path(), rig.initrd.path());
    let _ = vmm::boot::load(
        &rig.mem,
        &kernel,
        Some(&initrd),
        "console=ttyS0 reboot=k panic=1",
    );
});
