//! Binaries and examples of the workspace that a test binary was not built with, found
//! beside one it was (`target/<profile>/`) and built with cargo when missing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// `rel` (e.g. `qbackup-verify`, `examples/evil-child`) in the directory of `exe` (a
/// `CARGO_BIN_EXE_*` path), built with `cargo build CARGO_ARGS` (plus `--release` in a
/// release directory) if missing; one build at a time.
pub fn sibling(exe: &str, rel: &str, cargo_args: &[&str]) -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let _once = BUILD.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Path::new(exe).parent().expect("target dir");
    let bin = dir.join(rel);
    if !bin.exists() {
        let mut c = Command::new(env!("CARGO"));
        c.arg("build").args(cargo_args);
        if dir.file_name().is_some_and(|n| n == "release") {
            c.arg("--release");
        }
        assert!(c.status().expect("cargo build").success());
    }
    bin
}

/// `target/<profile>/qbackup-verify` beside `exe`.
pub fn verifier_beside(exe: &str) -> PathBuf {
    sibling(exe, "qbackup-verify", &["-p", "qbackup-verify"])
}

/// `target/<profile>/qbackup-pack` beside `exe`.
pub fn packer_beside(exe: &str) -> PathBuf {
    sibling(
        exe,
        "qbackup-pack",
        &["-p", "qbackup-pack", "--bin", "qbackup-pack"],
    )
}

/// `target/<profile>/examples/evil-child` (the malicious verifier child) beside `exe`.
pub fn evil_child_beside(exe: &str) -> PathBuf {
    sibling(
        exe,
        "examples/evil-child",
        &["-p", "qbackup-pack", "--example", "evil-child"],
    )
}
