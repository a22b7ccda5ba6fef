//! Builds the tiny test guests with the machine's assembler so that
//! `cargo test` always boots guests made from the sources in this tree.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("guests");
    // The guests are for the architecture the tests are built for: x86
    // ELF guests, or arm64 Images from tests/guests/aarch64.
    let script = match std::env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("aarch64") => root.join("tests/guests/aarch64/build.sh"),
        _ => root.join("tests/guests/build.sh"),
    };
    println!("cargo:rerun-if-changed=tests/guests");
    let status = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(status.success(), "building the test guests failed");
    println!("cargo:rustc-env=STRATO_TEST_GUESTS={}", out.display());
}
