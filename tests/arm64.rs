//! aarch64 platform tests: tiny arm64 guests (`tests/guests/aarch64`) that
//! report what strato set up for them: PSCI bring-up of every vCPU with
//! its MPIDR, the FDT in X0, the RAM it describes all usable, SYSTEM_OFF
//! and SYSTEM_RESET ending strato with status 0, and kernels of the wrong
//! architecture refused by name.
//!
//! The guests exist only in an aarch64 build of these tests, so every test
//! here is `#[ignore]`d on other hosts (`cargo test` lists them as
//! ignored) and the aarch64 lane runs them with `--include-ignored`:
//! `python3 tests/lane/lane.py --arch aarch64 test`. The arch-neutral
//! hello test in `tests/boot.rs` runs there too.

use std::time::Duration;
use strato_tests::{require_aarch64, run_guest, strato, Scratch};

macro_rules! aarch64 {
    () => {
        "aarch64 guests: runs in the aarch64 lane (python3 tests/lane/lane.py --arch aarch64 test)"
    };
}

/// Start of guest RAM on aarch64 (Firecracker's layout).
const DRAM_START: u64 = 0x8000_0000;

#[test]
#[ignore = aarch64!()]
fn every_vcpu_comes_up_through_psci_with_its_mpidr() {
    require_aarch64();
    for vcpus in [1u64, 2, 4] {
        let r = run_guest(
            "smp",
            &[
                "--vcpus",
                &vcpus.to_string(),
                "--memory",
                "64",
                "--log-level",
                "info",
            ],
        );
        r.assert_ok();
        let lines = r.lines();
        let mpidrs: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("smp: cpu mpidr 0x"))
            .collect();
        let want: Vec<String> = (0..vcpus).map(|i| format!("{i:016x}")).collect();
        assert_eq!(mpidrs, want, "{r:#?}");
        assert!(
            lines.contains(&format!("smp: 0x{vcpus:016x} cpus").as_str()),
            "{r:#?}"
        );
        assert!(
            !r.stdout.contains("timeout") && !r.stdout.contains("failed"),
            "{r:#?}"
        );
        assert!(r.stderr.contains("guest reset"), "{r:#?}");
    }
}

#[test]
#[ignore = aarch64!()]
fn the_fdt_is_in_x0_and_system_off_ends_with_status_0() {
    require_aarch64();
    for mib in [64u64, 129, 1024] {
        let r = run_guest(
            "poweroff",
            &["--memory", &mib.to_string(), "--log-level", "info"],
        );
        r.assert_ok();
        // The top 2 MiB of RAM, 2 MiB aligned; big-endian magic d00dfeed.
        let fdt = (DRAM_START + (mib << 20) - (2 << 20)) & !((2 << 20) - 1);
        assert_eq!(
            r.lines(),
            vec![format!(
                "poweroff: fdt at 0x{fdt:016x} magic 0x00000000d00dfeed"
            )],
            "{r:#?}"
        );
        assert!(r.stderr.contains("guest powered off"), "{r:#?}");
    }
}

#[test]
#[ignore = aarch64!()]
fn x86_kernels_are_refused_by_name_before_any_guest_runs() {
    require_aarch64();
    let dir = Scratch::new("arm64-x86-kernel");
    // An x86_64 ELF header (e_machine 62) and a bzImage ("HdrS" at 0x202).
    let mut elf = vec![0u8; 4096];
    elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
    elf[18] = 62;
    let mut bz = vec![0u8; 4096];
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    for (name, bytes, says) in [
        ("vmlinux", elf, "is an ELF for x86_64 (e_machine 62)"),
        ("bzImage", bz, "is an x86 bzImage"),
    ] {
        let path = dir.file(name, &bytes);
        let r = strato(&["run", "--kernel", &path], None, Duration::from_secs(30));
        assert_ne!(r.code(), 0, "{r:#?}");
        assert!(r.stderr.contains(says), "{r:#?}");
        assert!(
            r.stderr.contains("this aarch64 build boots an arm64 Image"),
            "{r:#?}"
        );
        assert!(r.stdout.is_empty(), "{r:#?}");
    }
}

#[test]
#[ignore = aarch64!()]
fn more_vcpus_than_the_gic_can_hold_are_refused() {
    require_aarch64();
    let r = run_guest("hello", &["--vcpus", "257", "--memory", "64"]);
    assert_ne!(r.code(), 0, "{r:#?}");
    assert!(r.stderr.contains("257"), "{r:#?}");
    assert!(r.stdout.is_empty(), "{r:#?}");
}

#[test]
#[ignore = aarch64!()]
fn an_image_that_claims_more_memory_than_the_guest_has_is_refused() {
    require_aarch64();
    let dir = Scratch::new("arm64-huge-image");
    // An Image header (magic at 0x38) whose image_size (at 16) is 1 TiB.
    let mut image = vec![0u8; 4096];
    image[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
    image[0x38..0x3c].copy_from_slice(b"ARM\x64");
    let path = dir.file("Image", &image);
    let r = strato(
        &["run", "--kernel", &path, "--memory", "64"],
        None,
        Duration::from_secs(30),
    );
    assert_ne!(r.code(), 0, "{r:#?}");
    assert!(
        r.stderr
            .contains("needs 0x10000000000 bytes of RAM from its load address"),
        "{r:#?}"
    );
    assert!(r.stdout.is_empty(), "{r:#?}");
}

#[test]
#[ignore = aarch64!()]
fn every_mib_of_ram_is_described_and_usable() {
    require_aarch64();
    // 3 GiB: RAM from 2 GiB runs past 4 GiB, where 32-bit addresses end.
    for mib in [64u64, 3072] {
        let r = run_guest(
            "memory",
            &["--memory", &mib.to_string(), "--log-level", "info"],
        );
        r.assert_ok();
        let ram = format!("memory: ram {DRAM_START:016x} {:016x}", mib << 20);
        assert!(r.lines().contains(&ram.as_str()), "{r:#?}");
        // The guest lives in the first 2 MiB; every MiB above is checked.
        assert!(
            r.stdout.contains(&format!("memory: {} MiB ok", mib - 2)),
            "{r:#?}"
        );
        let highest = DRAM_START + ((mib - 1) << 20);
        assert!(
            r.stdout
                .contains(&format!("memory: highest {highest:016x}")),
            "{r:#?}"
        );
        assert!(r.stderr.contains("guest reset"), "{r:#?}");
    }
}
