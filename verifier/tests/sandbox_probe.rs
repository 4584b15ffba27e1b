//! The sandbox, applied for real in a child process (`sandbox-probe`): files, sockets and
//! exec are refused, extraction writes only beneath its destination, the real driver runs
//! inside it, and without kernel support it fails closed (SPEC.md §22).

use std::path::Path;
use std::process::{Command, Output};

/// These tests need a kernel with Landlock and seccomp: without them the sandbox fails
/// closed, which `fails_closed_without_kernel_support` checks by simulation.
fn require_kernel() {
    assert!(
        qbackup_verify::sandbox::landlock_abi() >= 1,
        "this kernel has no Landlock (CONFIG_SECURITY_LANDLOCK, lsm=…,landlock): the sandbox \
         cannot be enforced here and qbackup-verify would refuse to run without --no-sandbox"
    );
}

fn probe(args: &[&str]) -> Output {
    require_kernel();
    Command::new(env!("CARGO_BIN_EXE_sandbox-probe"))
        .args(args)
        .output()
        .expect("run sandbox-probe")
}

/// Exit code and stdout of the probe.
fn run(args: &[&str]) -> (i32, String) {
    let o = probe(args);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let code = o
        .status
        .code()
        .unwrap_or_else(|| panic!("probe killed: {o:?}"));
    (code, out)
}

fn assert_refused(args: &[&str], errno: Option<i32>) {
    let (code, out) = run(args);
    assert_eq!(code, 1, "{args:?} not refused: {out}");
    if let Some(e) = errno {
        assert!(out.contains(&format!("(errno {e})")), "{args:?}: {out}");
    }
}

fn assert_allowed(args: &[&str]) {
    let (code, out) = run(args);
    assert_eq!(code, 0, "{args:?} refused: {out}");
}

/// SBX-2, SBX-4: a sandboxed process cannot open a file it was not given, create a socket,
/// exec, or create a file; it can read what it was given and run threads.
#[test]
fn verify_and_emit_cannot_open_files_sockets_or_exec() {
    for mode in ["verify", "list", "emit"] {
        assert_allowed(&[mode, "none"]);
        assert_allowed(&[mode, "threads"]);
        assert_allowed(&[mode, "--given", "/etc/hostname", "read-given"]);
        assert_refused(&[mode, "open", "/etc/hostname"], None);
        assert_refused(&[mode, "open", "/proc/self/status"], None);
        assert_refused(&[mode, "socket"], Some(libc::EPERM));
        assert_refused(&[mode, "unix-socket"], Some(libc::EPERM));
        assert_refused(&[mode, "exec", "/bin/true"], None);
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("x");
        assert_refused(&[mode, "create", target.to_str().unwrap()], None);
        assert!(!target.exists());
    }
}

/// SBX-2, SBX-4: extract writes beneath its destination and nowhere else.
#[test]
fn extract_writes_beneath_its_destination_only() {
    let dest = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let inside = dest.path().join("x");
    assert_allowed(&["extract", "--dest", d, "create", inside.to_str().unwrap()]);
    assert_eq!(std::fs::read(&inside).unwrap(), b"x");
    // World-writable, so only Landlock (EACCES; openat itself is allowed for extract)
    // can refuse it, also when the probe dropped from root to nobody.
    std::fs::set_permissions(
        other.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let outside = other.path().join("y");
    assert_refused(
        &["extract", "--dest", d, "create", outside.to_str().unwrap()],
        Some(libc::EACCES),
    );
    assert!(!outside.exists());
    assert_refused(
        &["extract", "--dest", d, "open", "/etc/hostname"],
        Some(libc::EACCES),
    );
    assert_refused(&["extract", "--dest", d, "socket"], Some(libc::EPERM));
    assert_refused(&["extract", "--dest", d, "exec", "/bin/true"], None);
}

/// SBX-7: without Landlock or seccomp, applying fails (the binary then exits 21).
#[test]
fn fails_closed_without_kernel_support() {
    let (code, out) = run(&[
        "verify",
        "--simulate",
        "no-landlock",
        "open",
        "/etc/hostname",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("Landlock") && out.contains("refusing to run unconfined"),
        "{out}"
    );
    let (code, out) = run(&[
        "verify",
        "--simulate",
        "no-seccomp",
        "open",
        "/etc/hostname",
    ]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("seccomp") && out.contains("refusing to run unconfined"),
        "{out}"
    );
}

fn status_field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name}: {status}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// SBX-3: the probe's own /proc/self/status after the sandbox: as root, verify/list/emit
/// run as nobody with no groups and no capabilities (bounding set included); extract into
/// a root-owned directory keeps uid 0 with no capabilities.
#[test]
fn identity_after_the_sandbox() {
    // SAFETY: no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let zero = "0000000000000000";
    for mode in ["verify", "list", "emit"] {
        let (code, status) = run(&[mode, "status"]);
        assert_eq!(code, 0, "{status}");
        if root {
            assert_eq!(status_field(&status, "Uid"), "65534 65534 65534 65534");
            assert_eq!(status_field(&status, "Gid"), "65534 65534 65534 65534");
            assert_eq!(status_field(&status, "Groups"), "");
            assert_eq!(status_field(&status, "CapBnd"), zero);
        }
        for f in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
            assert_eq!(status_field(&status, f), zero, "{f}");
        }
        assert_eq!(status_field(&status, "NoNewPrivs"), "1");
        assert_eq!(status_field(&status, "Seccomp"), "2");
    }
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let (code, status) = run(&["extract", "--dest", d, "status"]);
    assert_eq!(code, 0, "{status}");
    // SAFETY: no preconditions.
    let me = unsafe { libc::geteuid() };
    assert_eq!(status_field(&status, "Uid"), format!("{me} {me} {me} {me}"));
    assert_eq!(status_field(&status, "CapEff"), zero);
    if root {
        assert_eq!(status_field(&status, "CapBnd"), zero);
        assert_eq!(status_field(&status, "Groups"), "");
        let o = probe(&["extract", "--dest", d, "none"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("uid 0 gid 0 (root without capabilities), no capabilities"),
            "{err}"
        );
        let o = probe(&["emit", "none"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("uid 65534 gid 65534 (dropped from root)"),
            "{err}"
        );
    }
}

/// SBX-3: uid 0 without capabilities has only an owner's rights: a root-owned file
/// outside the destination with no write bit, or another user's private file, cannot be
/// written even through an already allowed path syscall (Landlock would refuse anyway;
/// here the destination holds them, so only the missing capabilities do).
#[test]
fn root_without_capabilities_has_no_dac_override() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("meaningful only as root (CI runs as root)");
        return;
    }
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let ro = dest.path().join("read-only");
    std::fs::write(&ro, b"keep").unwrap();
    std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
    let theirs = dest.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(1000), Some(1000)).unwrap();
    assert_refused(
        &["extract", "--dest", d, "create", ro.to_str().unwrap()],
        Some(libc::EACCES),
    );
    assert_eq!(std::fs::read(&ro).unwrap(), b"keep");
    let inside = theirs.join("x");
    assert_refused(
        &["extract", "--dest", d, "create", inside.to_str().unwrap()],
        Some(libc::EACCES),
    );
    // Unsandboxed root could: the refusals above come from the sandbox.
    std::fs::write(&inside, b"x").unwrap();
}

/// SBX-4: extract's SIGINT cleanup still works inside the sandbox: a handler sets a flag,
/// a watcher thread removes the temporaries beneath DIR and exits 130.
#[test]
fn sigint_cleanup_removes_temporaries() {
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let (code, out) = run(&["extract", "--dest", d, "sigint-cleanup"]);
    assert_eq!(code, 130, "{out}");
    assert!(out.contains("cancelled; removed temporaries"), "{out}");
    assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 0);
}

/// SBX-8: the check applies the policy in a child and proves socket and exec refused.
#[test]
fn sandbox_check_reports_a_working_sandbox() {
    let (code, out) = run(&["verify", "check"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("trial in a child process: applied; socket and exec refused"),
        "{out}"
    );
    assert!(
        out.contains("landlock: no filesystem access at all"),
        "{out}"
    );
}

/// A small v4 archive made with the real tools (scrypt 1.3.1, GNU tar, gzip), as
/// SPEC.md Appendix A.
fn make_archive(dir: &Path) -> std::path::PathBuf {
    let script = r#"
set -e
pass=qubes; id=20161020T123455-1234; S=stage
mkdir -p $S/vm5
printf 'version=4\nencrypted=True\ncompressed=True\ncompression-filter=gzip\nhmac-algorithm=scrypt\nbackup-id=%s\n' $id > $S/backup-header
echo "backup-header!$pass" | scrypt enc -P --logN 10 -r 8 -p 1 $S/backup-header $S/backup-header.hmac
cat > $S/qubes.xml <<X
<qubes><labels><label id="label-1">red</label></labels><properties/><domains><domain id="domain-5" class="AppVM"><properties><property name="name">work</property><property name="label">label-1</property></properties><features><feature name="backup-content">True</feature><feature name="backup-path">vm5/</feature><feature name="backup-size">4194304</feature></features><volume-config><volume name="private" save_on_stop="True"/></volume-config></domain></domains></qubes>
X
head -c 300000 /dev/urandom > $S/vm5/private.img; truncate -s 4M $S/vm5/private.img
enc() { (cd $S && tar --sparse -cf - "$2") | gzip > $S/tmp.gz
  echo "$id!$1!$pass" | scrypt enc -P --logN 10 -r 8 -p 1 $S/tmp.gz "$S/$1.enc"; }
enc qubes.xml.000 qubes.xml
enc vm5/private.img.000 vm5/private.img
for m in backup-header backup-header.hmac qubes.xml.000.enc vm5/private.img.000.enc; do
  tar -c --posix -f - -C $S "$m" >> backup.bin; done
"#;
    let st = Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .status()
        .expect("bash");
    assert!(st.success(), "archive generation failed");
    dir.join("backup.bin")
}

/// SBX-2: the real driver verifies and extracts inside the sandbox.
#[test]
fn the_real_driver_runs_inside_the_sandbox() {
    let work = tempfile::tempdir().unwrap();
    let archive = make_archive(work.path());
    let a = archive.to_str().unwrap();
    assert_allowed(&["verify", "--given", a, "run-verify", "qubes"]);
    let (code, out) = run(&["verify", "--given", a, "run-verify", "wrong"]);
    assert_eq!(code, 1);
    assert!(out.contains("wrong-passphrase"), "{out}");
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    assert_allowed(&["extract", "--dest", d, "--given", a, "run-extract", "qubes"]);
    assert_eq!(
        std::fs::read(dest.path().join("work/private.img")).unwrap(),
        std::fs::read(work.path().join("stage/vm5/private.img")).unwrap()
    );
}
