//! The ACPI tables and registers, as the `acpi` test guest reads and uses
//! them: it finds the RSDP the way Linux does, checks every table's
//! checksum, counts the MADT's CPUs and drives the FADT's sleep and reset
//! registers. Linux booting with these tables is in the x86 lane tests
//! (`linux_user.rs`).

use strato_tests::run_guest;

fn acpi(vcpus: &str, action: &str) -> strato_tests::Run {
    let cmdline = format!("action={action}");
    run_guest(
        "acpi",
        &[
            "--memory",
            "64",
            "--vcpus",
            vcpus,
            "--cmdline",
            &cmdline,
            "--log-level",
            "info",
        ],
    )
}

#[test]
fn tables_are_found_and_sound_and_list_every_vcpu() {
    for vcpus in ["1", "4"] {
        let r = acpi(vcpus, "poweroff");
        r.assert_ok();
        let out = &r.stdout;
        assert!(out.contains("acpi: rsdp e0000\n"), "{r:#?}");
        for sig in ["XSDT", "FACP", "APIC", "DSDT"] {
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("acpi: table {sig} ")))
                .unwrap_or_else(|| panic!("no {sig}: {r:#?}"));
            assert!(line.ends_with(" ok"), "{line}");
        }
        assert!(
            out.contains(&format!("acpi: madt cpus {vcpus} ioapics 1\n")),
            "{r:#?}"
        );
        // Hardware-reduced (bit 20), reset register (10), power and sleep
        // buttons as control-method devices (4, 5).
        assert!(
            out.contains("acpi: fadt flags 100430 sleep 600 reset 602=1\n"),
            "{r:#?}"
        );
    }
}

#[test]
fn s5_in_the_sleep_control_register_powers_off_with_status_0() {
    let r = acpi("2", "poweroff");
    r.assert_ok();
    assert!(r.stderr.contains("guest powered off"), "{r:#?}");
    assert!(!r.stdout.contains("still running"), "{r:#?}");
}

#[test]
fn the_reset_register_resets_with_status_0() {
    let r = acpi("1", "reset");
    r.assert_ok();
    assert!(r.stderr.contains("guest reset"), "{r:#?}");
    assert!(!r.stdout.contains("still running"), "{r:#?}");
}

#[test]
fn nonsense_in_the_acpi_registers_is_logged_once_and_ignored() {
    let r = acpi("1", "nonsense");
    r.assert_ok();
    assert!(r.stdout.contains("acpi: survived nonsense"), "{r:#?}");
    assert!(r.stderr.contains("guest powered off"), "{r:#?}");
    let warnings: Vec<&str> = r.stderr.lines().filter(|l| l.contains("WARN")).collect();
    // One line per kind of nonsense, however often the guest repeats it.
    assert!(!warnings.is_empty() && warnings.len() <= 3, "{warnings:#?}");
    assert!(
        warnings.iter().any(|l| l.contains("sleep state S3")),
        "{warnings:#?}"
    );
    assert!(
        warnings.iter().any(|l| l.contains("GED register")),
        "{warnings:#?}"
    );
}
