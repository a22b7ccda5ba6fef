//! Builds the tiny test guests with the machine's assembler so that
//! `cargo test` always boots guests made from the sources in this tree.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("guests");
    let script = root.join("tests/guests/build.sh");
    println!("cargo:rerun-if-changed=tests/guests");
    let status = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(status.success(), "building the test guests failed");
    println!("cargo:rustc-env=STRATO_TEST_GUESTS={}", out.display());
}
