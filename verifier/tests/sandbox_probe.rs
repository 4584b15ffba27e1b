//! The sandbox, applied for real in a child process (`sandbox-probe`): files, sockets and
//! exec are refused, extraction writes only beneath its destination, the real driver runs
//! inside it, and without kernel support it fails closed.

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

#[test]
fn verify_and_emit_cannot_open_files_sockets_or_exec() {
    for mode in ["verify", "emit"] {
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

#[test]
fn root_drops_to_nobody() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return; // Only meaningful when the tests run as root.
    }
    let o = probe(&["emit", "none"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("uid 65534 gid 65534 (dropped from root)"),
        "{err}"
    );
}

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
