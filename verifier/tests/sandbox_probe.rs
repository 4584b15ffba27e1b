//! The sandbox, applied for real in a child process (`sandbox-probe`): files, sockets and
//! exec are refused, extraction writes only beneath its destination, the real driver runs
//! inside it (SPEC.md §22). Every test runs twice: on this kernel (which must have
//! Landlock) and on a kernel without Landlock, simulated by `simulate-kernel no-landlock`
//! (its Landlock calls fail with ENOSYS, as on a kernel built without it), where the
//! fallbacks of SBX-9 and SBX-10 must confine just as much.

use std::path::Path;
use std::process::{Command, Output};

const PROBE: &str = env!("CARGO_BIN_EXE_sandbox-probe");

mod common;
use common::{is_root, Kernel, AS_NOBODY, KERNELS, SIMULATE};

/// `sandbox-probe` on a kernel.
trait Probe {
    fn probe(self, args: &[&str]) -> Output;
    fn run(self, args: &[&str]) -> (i32, String);
    fn assert_refused(self, args: &[&str], errno: Option<i32>);
    fn assert_allowed(self, args: &[&str]);
    fn outside_errno(self) -> i32;
}

impl Probe for Kernel {
    fn probe(self, args: &[&str]) -> Output {
        self.command(PROBE)
            .args(args)
            .output()
            .expect("run sandbox-probe")
    }

    /// Exit code and stdout of the probe.
    fn run(self, args: &[&str]) -> (i32, String) {
        let o = self.probe(args);
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        let code = o
            .status
            .code()
            .unwrap_or_else(|| panic!("probe killed: {o:?}"));
        (code, out)
    }

    fn assert_refused(self, args: &[&str], errno: Option<i32>) {
        let (code, out) = self.run(args);
        assert_eq!(code, 1, "{self:?} {args:?} not refused: {out}");
        if let Some(e) = errno {
            assert!(
                out.contains(&format!("(errno {e})")),
                "{self:?} {args:?}: {out}"
            );
        }
    }

    fn assert_allowed(self, args: &[&str]) {
        let (code, out) = self.run(args);
        assert_eq!(code, 0, "{self:?} {args:?} refused: {out}");
    }

    /// How extract's confinement refuses a path outside DIR: Landlock with EACCES; in the
    /// namespace rooted at DIR the path does not exist (ENOENT).
    fn outside_errno(self) -> i32 {
        match self {
            Kernel::AsIs => libc::EACCES,
            Kernel::NoLandlock => libc::ENOENT,
        }
    }
}

/// SBX-2, SBX-4, SBX-9: a sandboxed process cannot open a file it was not given, create a
/// socket, exec, or create a file; it can read what it was given and run threads — also
/// without Landlock, where seccomp alone refuses every path syscall.
#[test]
fn verify_and_emit_cannot_open_files_sockets_or_exec() {
    for k in KERNELS {
        for mode in ["verify", "list", "emit"] {
            k.assert_allowed(&[mode, "none"]);
            k.assert_allowed(&[mode, "threads"]);
            k.assert_allowed(&[mode, "--given", "/etc/hostname", "read-given"]);
            k.assert_refused(&[mode, "open", "/etc/hostname"], None);
            k.assert_refused(&[mode, "open", "/proc/self/status"], None);
            k.assert_refused(&[mode, "socket"], Some(libc::EPERM));
            k.assert_refused(&[mode, "unix-socket"], Some(libc::EPERM));
            k.assert_refused(&[mode, "exec", "/bin/true"], None);
            let dir = tempfile::tempdir().unwrap();
            let target = dir.path().join("x");
            k.assert_refused(&[mode, "create", target.to_str().unwrap()], None);
            assert!(!target.exists());
        }
        // Without Landlock the refusal is seccomp's (EPERM), whatever the path.
        if k == Kernel::NoLandlock {
            k.assert_refused(&["verify", "open", "/etc/hostname"], Some(libc::EPERM));
            k.assert_refused(&["emit", "open", "/"], Some(libc::EPERM));
        }
    }
}

/// SBX-2, SBX-4, SBX-10: extract writes beneath its destination and nowhere else: not by
/// absolute path, not through `..` from DIR's descriptor, not through a symlink it made.
#[test]
fn extract_writes_beneath_its_destination_only() {
    for k in KERNELS {
        let top = tempfile::tempdir().unwrap();
        let dest = top.path().join("dest");
        let other = top.path().join("other");
        std::fs::create_dir(&dest).unwrap();
        std::fs::create_dir(&other).unwrap();
        let d = dest.to_str().unwrap();
        k.assert_allowed(&["extract", "--dest", d, "create-at", "x"]);
        assert_eq!(std::fs::read(dest.join("x")).unwrap(), b"x", "{k:?}");
        k.assert_allowed(&["extract", "--dest", d, "open-at", "x"]);
        // World-writable, so only the confinement (openat itself is allowed for extract)
        // can refuse it, also when the probe dropped from root to nobody.
        std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o777))
            .unwrap();
        std::fs::write(other.join("secret"), b"s").unwrap();
        let outside = other.join("y");
        let e = Some(k.outside_errno());
        k.assert_refused(
            &["extract", "--dest", d, "create", outside.to_str().unwrap()],
            e,
        );
        k.assert_refused(&["extract", "--dest", d, "create-at", "../other/y"], e);
        k.assert_refused(
            &[
                "extract",
                "--dest",
                d,
                "create-at",
                "../../../../../../../../tmp/y",
            ],
            None,
        );
        k.assert_refused(&["extract", "--dest", d, "open-at", "../other/secret"], e);
        let secret = other.join("secret");
        k.assert_refused(
            &["extract", "--dest", d, "open", secret.to_str().unwrap()],
            e,
        );
        k.assert_refused(&["extract", "--dest", d, "open", "/etc/hostname"], e);
        assert!(!outside.exists(), "{k:?}");
        assert!(!top.path().join("y").exists(), "{k:?}");
        // A symlink inside DIR pointing out (as a hostile archive would make one) leads
        // nowhere outside either.
        std::os::unix::fs::symlink(&other, dest.join("link")).unwrap();
        std::os::unix::fs::symlink("../other", dest.join("rel")).unwrap();
        k.assert_refused(&["extract", "--dest", d, "create-at", "link/z"], None);
        k.assert_refused(&["extract", "--dest", d, "create-at", "rel/z"], None);
        k.assert_refused(&["extract", "--dest", d, "open-at", "link/secret"], None);
        assert!(!other.join("z").exists(), "{k:?}");
        // `..` at the top of DIR: refused (Landlock) or DIR itself (the namespace).
        let (code, _) = k.run(&["extract", "--dest", d, "create-at", "../top-level"]);
        assert!(!top.path().join("top-level").exists(), "{k:?}");
        assert_eq!(code == 0, dest.join("top-level").exists(), "{k:?}");
        k.assert_refused(&["extract", "--dest", d, "socket"], Some(libc::EPERM));
        k.assert_refused(&["extract", "--dest", d, "exec", "/bin/true"], None);
    }
}

/// SBX-10: without Landlock, a directory descriptor other than DIR's, open when the
/// sandbox is applied, would lead out of the namespace: applying refuses.
#[test]
fn extract_without_landlock_refuses_other_open_directories() {
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let (code, out) =
        Kernel::NoLandlock.run(&["extract", "--dest", d, "--extra-dir", "/", "create-at", "x"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("is a directory other than"), "{out}");
    assert!(!dest.path().join("x").exists());
    // With Landlock the descriptor grants nothing (rights are checked on every path).
    Kernel::AsIs.assert_allowed(&["extract", "--dest", d, "--extra-dir", "/", "create-at", "x"]);
    Kernel::AsIs.assert_refused(
        &[
            "extract",
            "--dest",
            d,
            "--extra-dir",
            "/",
            "open",
            "/etc/hostname",
        ],
        Some(libc::EACCES),
    );
}

/// SBX-7, SBX-9, SBX-10: without seccomp every command fails closed; without Landlock and
/// without namespaces, extract fails closed (saying how to enable Landlock) while verify,
/// list and emit still run under seccomp alone.
#[test]
fn fails_closed_without_kernel_support() {
    let run = |features: &str, args: &[&str]| {
        let o = Command::new(SIMULATE)
            .arg(features)
            .arg(PROBE)
            .args(args)
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    };
    for features in ["no-seccomp", "no-landlock,no-seccomp"] {
        let (code, out) = run(features, &["verify", "open", "/etc/hostname"]);
        assert_eq!(code, Some(2), "{out}");
        assert!(
            out.contains("seccomp") && out.contains("refusing to run unconfined"),
            "{out}"
        );
    }
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    for features in [
        "no-landlock,no-namespaces",
        "landlock-disabled,no-namespaces",
    ] {
        let (code, out) = run(features, &["extract", "--dest", d, "create-at", "x"]);
        assert_eq!(code, Some(2), "{out}");
        for w in [
            "no Landlock",
            "mount namespace",
            "lsm=",
            "CONFIG_SECURITY_LANDLOCK",
            "refusing to run unconfined",
        ] {
            assert!(out.contains(w), "{w}: {out}");
        }
        assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 0);
        for mode in ["verify", "list", "emit"] {
            let (code, out) = run(features, &[mode, "none"]);
            assert_eq!(code, Some(0), "{mode}: {out}");
            let (code, out) = run(features, &[mode, "open", "/etc/hostname"]);
            assert_eq!(code, Some(1), "{mode}: {out}");
        }
    }
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

/// SBX-3, SBX-9: the probe's own /proc/self/status after the sandbox: as root,
/// verify/list/emit run as nobody with no groups and no capabilities (bounding set
/// included); extract into a root-owned directory keeps uid 0 with no capabilities. The
/// summary names the mechanism.
#[test]
fn identity_after_the_sandbox() {
    let root = is_root();
    let zero = "0000000000000000";
    for k in KERNELS {
        for mode in ["verify", "list", "emit"] {
            let (code, status) = k.run(&[mode, "status"]);
            assert_eq!(code, 0, "{k:?}: {status}");
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
        let (code, status) = k.run(&["extract", "--dest", d, "status"]);
        assert_eq!(code, 0, "{k:?}: {status}");
        // SAFETY: no preconditions.
        let me = unsafe { libc::geteuid() };
        assert_eq!(status_field(&status, "Uid"), format!("{me} {me} {me} {me}"));
        assert_eq!(status_field(&status, "CapEff"), zero);
        assert_eq!(status_field(&status, "Seccomp"), "2");
        if root {
            assert_eq!(status_field(&status, "CapBnd"), zero);
            assert_eq!(status_field(&status, "Groups"), "");
        }
        let (verify_mech, extract_mech) = match k {
            Kernel::AsIs => ("landlock ABI ", "landlock ABI "),
            Kernel::NoLandlock => (
                "seccomp only (no path syscalls) (Landlock unavailable)",
                if root {
                    "mount namespace confined to DIR (Landlock unavailable)"
                } else {
                    "mount namespace confined to DIR (in a user namespace)"
                },
            ),
        };
        let o = k.probe(&["extract", "--dest", d, "none"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(extract_mech), "{k:?}: {err}");
        if root {
            assert!(
                err.contains("uid 0 gid 0 (root without capabilities), no capabilities"),
                "{err}"
            );
        }
        let o = k.probe(&["emit", "none"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(verify_mech), "{k:?}: {err}");
        if root {
            assert!(
                err.contains("uid 65534 gid 65534 (dropped from root)"),
                "{err}"
            );
        }
    }
}

/// SBX-3, SBX-10: not root (nobody, via `setpriv`) and without Landlock, extract confines
/// itself in a user namespace mapping only its own ids: it stays nobody, its files are
/// nobody's, and nothing outside DIR is reachable.
#[test]
fn non_root_extract_without_landlock_uses_a_user_namespace() {
    if !is_root() {
        // Not root already: the plain NoLandlock runs of the other tests take this path.
        let dest = tempfile::tempdir().unwrap();
        let d = dest.path().to_str().unwrap();
        let o = Kernel::NoLandlock.probe(&["extract", "--dest", d, "none"]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("(in a user namespace)"), "{err}");
        return;
    }
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        top.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let dest = top.path().join("dest");
    std::fs::create_dir(&dest).unwrap();
    std::os::unix::fs::chown(&dest, Some(65534), Some(65534)).unwrap();
    let other = top.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let d = dest.to_str().unwrap();
    let as_nobody = |args: &[&str]| {
        let o = Command::new(AS_NOBODY[0])
            .args(&AS_NOBODY[1..])
            .args([SIMULATE, "no-landlock", PROBE])
            .args(args)
            .output()
            .expect("setpriv");
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let (code, out, err) = as_nobody(&["extract", "--dest", d, "create-at", "x"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("uid 65534 gid 65534, no capabilities"),
        "{err}"
    );
    assert!(
        err.contains("mount namespace confined to DIR (in a user namespace)"),
        "{err}"
    );
    let m = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(dest.join("x")).unwrap());
    assert_eq!(m, 65534);
    let outside = other.join("y");
    let (code, out, _) = as_nobody(&["extract", "--dest", d, "create", outside.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    let (code, out, _) = as_nobody(&["extract", "--dest", d, "create-at", "../other/y"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(!outside.exists());
    let (code, status, _) = as_nobody(&["extract", "--dest", d, "status"]);
    assert_eq!(code, Some(0), "{status}");
    assert_eq!(status_field(&status, "Uid"), "65534 65534 65534 65534");
    assert_eq!(status_field(&status, "CapEff"), "0000000000000000");
}

/// SBX-3: uid 0 without capabilities has only an owner's rights: a root-owned file
/// with no write bit, or another user's private directory, cannot be written even through
/// an allowed path syscall (here inside the destination, so only the missing capabilities
/// refuse), with and without Landlock.
#[test]
fn root_without_capabilities_has_no_dac_override() {
    if !is_root() {
        eprintln!("meaningful only as root (CI runs as root)");
        return;
    }
    for k in KERNELS {
        let dest = tempfile::tempdir().unwrap();
        let d = dest.path().to_str().unwrap();
        let ro = dest.path().join("read-only");
        std::fs::write(&ro, b"keep").unwrap();
        std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o444)).unwrap();
        let theirs = dest.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::set_permissions(&theirs, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        std::os::unix::fs::chown(&theirs, Some(1000), Some(1000)).unwrap();
        k.assert_refused(
            &["extract", "--dest", d, "create-at", "read-only"],
            Some(libc::EACCES),
        );
        assert_eq!(std::fs::read(&ro).unwrap(), b"keep");
        k.assert_refused(
            &["extract", "--dest", d, "create-at", "theirs/x"],
            Some(libc::EACCES),
        );
        // Unsandboxed root could: the refusals above come from the sandbox.
        std::fs::write(theirs.join("x"), b"x").unwrap();
    }
}

/// SBX-4: extract's SIGINT cleanup still works inside the sandbox: a handler sets a flag,
/// a watcher thread removes the temporaries beneath DIR and exits 130.
#[test]
fn sigint_cleanup_removes_temporaries() {
    for k in KERNELS {
        let dest = tempfile::tempdir().unwrap();
        let d = dest.path().to_str().unwrap();
        let (code, out) = k.run(&["extract", "--dest", d, "sigint-cleanup"]);
        assert_eq!(code, 130, "{k:?}: {out}");
        assert!(out.contains("cancelled; removed temporaries"), "{out}");
        assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 0);
    }
}

/// SBX-8: the check applies the policies in children, proves socket and exec refused
/// and extract confined to DIR, and names the mechanism.
#[test]
fn sandbox_check_reports_a_working_sandbox() {
    for k in KERNELS {
        let (code, out) = k.run(&["verify", "check"]);
        assert_eq!(code, 0, "{k:?}: {out}");
        assert!(
            out.contains(
                "trial in a child process: applied; opening a path, socket and exec refused"
            ),
            "{out}"
        );
        assert!(
            out.contains("extract trial in a child process: applied; wrote inside DIR; nothing outside DIR could be opened or created; socket and exec refused"),
            "{out}"
        );
        let expect: &[&str] = match k {
            Kernel::AsIs => &[
                "landlock: no filesystem access at all",
                "extract landlock: no filesystem access except read/write beneath DIR",
            ],
            Kernel::NoLandlock => &[
                "confinement: seccomp only (no path syscalls)",
                "extract confinement: mount namespace confined to DIR",
                "landlock unavailable: to enable Landlock",
            ],
        };
        for w in expect {
            assert!(out.contains(w), "{k:?} {w}: {out}");
        }
    }
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

/// SBX-2, SBX-9, SBX-10: the real driver verifies and extracts inside the sandbox, with
/// and without Landlock.
#[test]
fn the_real_driver_runs_inside_the_sandbox() {
    let work = tempfile::tempdir().unwrap();
    let archive = make_archive(work.path());
    let a = archive.to_str().unwrap();
    for k in KERNELS {
        k.assert_allowed(&["verify", "--given", a, "run-verify", "qubes"]);
        let (code, out) = k.run(&["verify", "--given", a, "run-verify", "wrong"]);
        assert_eq!(code, 1, "{k:?}");
        assert!(out.contains("wrong-passphrase"), "{k:?}: {out}");
        let dest = tempfile::tempdir().unwrap();
        let d = dest.path().to_str().unwrap();
        k.assert_allowed(&["extract", "--dest", d, "--given", a, "run-extract", "qubes"]);
        assert_eq!(
            std::fs::read(dest.path().join("work/private.img")).unwrap(),
            std::fs::read(work.path().join("stage/vm5/private.img")).unwrap(),
            "{k:?}"
        );
    }
}
