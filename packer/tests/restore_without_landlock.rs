//! `qbackup-pack restore` through its default child (`qbackup-verify emit -`) on a kernel
//! without Landlock, simulated by `simulate-kernel` (Landlock's calls fail with ENOSYS or,
//! as on Qubes OS, EOPNOTSUPP; the filter is inherited by the child): the child runs
//! confined by seccomp alone (SPEC.md SBX-9) and the archive restores byte-exact.

use std::path::PathBuf;
use std::process::Command;

use qbackup_tests::binaries::{sibling, verifier_beside};
use qbackup_tests::manifest::assert_matches_manifest;
use qbackup_tests::sources::{expect_doc, make_archive, sources};

const PACK: &str = env!("CARGO_BIN_EXE_qbackup-pack");

/// target/<profile>/simulate-kernel (built if missing).
fn simulate_kernel() -> PathBuf {
    sibling(
        PACK,
        "simulate-kernel",
        &["-p", "qbackup-verify", "--bin", "simulate-kernel"],
    )
}

/// RST-1, SBX-9: restore with the real child on kernels without Landlock (and without
/// namespaces, which `emit` does not need).
#[test]
fn restore_without_landlock_runs_the_child_confined() {
    verifier_beside(PACK);
    let archive = make_archive("v4_gzip", &["--version", "4", "--compression", "gzip"]);
    let expect = expect_doc(&archive);
    let work = tempfile::tempdir().expect("tempdir");
    for features in [
        "no-landlock",
        "landlock-disabled",
        "no-landlock,no-namespaces",
    ] {
        let dest = work.path().join(features.replace(',', "+"));
        let o = Command::new(simulate_kernel())
            .arg(features)
            .arg(PACK)
            .arg("restore")
            .arg(&archive)
            .arg("--to")
            .arg(&dest)
            .arg("--passphrase-file")
            .arg(sources().pass())
            .output()
            .expect("run qbackup-pack restore");
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{features}: {stderr}");
        // The child said what confined it (and so ran its sandbox, not --no-sandbox).
        assert!(
            stderr.contains(
                "the kernel has no Landlock; confinement: seccomp only (no path syscalls)"
            ),
            "{features}: {stderr}"
        );
        assert!(!stderr.contains("--no-sandbox"), "{stderr}");
        assert_matches_manifest("v4_gzip", &expect, &dest, false, |target| {
            stderr.contains("skipped symlink") && stderr.contains(target)
        });
    }
}
