//! The sandbox as `qbackup-verify` itself applies it (SPEC.md §22): the real binary on
//! archives made with the real tools (`tests/fixtures/make-archive.sh`), observed from
//! outside through `/proc/PID/status` and `/proc/PID/limits` while it waits on stdin.
//!
//! Every test runs on this kernel (which must have Landlock) and on a kernel without
//! Landlock, simulated by `simulate-kernel no-landlock` (Landlock's calls fail with ENOSYS):
//! the commands must run confined there too (SBX-9, SBX-10).
//!
//! CI runs these as root; the root-only parts (identity switch, chown'd destinations)
//! run there, and the non-root case runs through `setpriv`.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qbackup_tests::sha256_file;
use qbackup_tests::sources::{make_archive_once, sources, PASSPHRASE};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_qbackup-verify");

mod common;
use common::{is_root, Kernel, AS_NOBODY, KERNELS, SIMULATE};

/// `qbackup-verify` on a kernel, and what that kernel adds.
trait OnKernel {
    fn verifier(self) -> Command;
    /// Seccomp filters the process has before `qbackup-verify` adds its own.
    fn filters(self) -> usize;
}

impl OnKernel for Kernel {
    fn verifier(self) -> Command {
        self.command(BIN)
    }

    fn filters(self) -> usize {
        match self {
            Kernel::AsIs => 0,
            Kernel::NoLandlock => 1,
        }
    }
}

fn v4() -> PathBuf {
    make_archive_once("v4-gzip", &["--version", "4", "--compression", "gzip"])
}

/// The line of `/proc/PID/limits` text `limits` that starts with `name`, its columns
/// joined by single spaces (e.g. `Max open files 256 256 files`).
fn limit_line(limits: &str, name: &str) -> String {
    limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("{name}: {limits}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run `qbackup-verify ARGS --passphrase-file PASS ARCHIVE` on kernel `k`; (exit code,
/// stdout, stderr).
fn run(k: Kernel, args: &[&str], archive: &Path) -> (i32, String, String) {
    let o = k
        .verifier()
        .args(args)
        .arg("--passphrase-file")
        .arg(sources().pass())
        .arg(archive)
        .output()
        .expect("run qbackup-verify");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// The JSON report with the destination path replaced, so two runs compare equal.
fn report(k: Kernel, args: &[&str], archive: &Path, dest: Option<&Path>) -> (i32, Value) {
    let mut a = args.to_vec();
    a.push("--json");
    let (code, out, err) = run(k, &a, archive);
    let out = match dest {
        Some(d) => out.replace(d.to_str().unwrap(), "DIR"),
        None => out,
    };
    let doc = serde_json::from_str(&out).unwrap_or_else(|e| panic!("no JSON ({e}): {out}{err}"));
    (code, doc)
}

/// Every entry under `dir`: relative path, kind, size, permission bits, owner, content hash.
fn tree(dir: &Path) -> Vec<(String, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let what = if m.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_dir() {
                walk(root, &p, out);
                format!("dir {:o}", m.mode() & 0o7777)
            } else {
                format!(
                    "file {} {:o} {} {}",
                    m.len(),
                    m.mode() & 0o7777,
                    m.uid(),
                    sha256_file(&p)
                )
            };
            out.push((rel, what));
        }
    }
    let mut v = Vec::new();
    walk(dir, dir, &mut v);
    v.sort();
    v
}

/// SBX-2, SBX-9, SBX-10: the sandboxed verifier verifies and extracts the interop archives
/// exactly as the unsandboxed one (same reports, same trees, byte for byte), with and
/// without Landlock.
#[test]
fn sandboxed_runs_match_unsandboxed_runs() {
    let archives = [
        v4(),
        make_archive_once("v4-zstd", &["--version", "4", "--compression", "zstd"]),
        make_archive_once("v3-bzip2", &["--version", "3", "--compression", "bzip2"]),
        make_archive_once("v2-gzip", &["--version", "2", "--compression", "gzip"]),
    ];
    for a in &archives {
        let free = tempfile::tempdir().unwrap();
        let args = [
            "extract",
            "--no-sandbox",
            "--to",
            free.path().to_str().unwrap(),
        ];
        let (code, free_report) = report(Kernel::AsIs, &args, a, Some(free.path()));
        assert_eq!(code, 0);
        let free_tree = tree(free.path());
        assert!(free_tree.len() > 10, "{free_tree:?}");
        for k in KERNELS {
            for cmd in ["verify", "list"] {
                let (code, sandboxed) = report(k, &[cmd], a, None);
                assert_eq!(code, 0, "{k:?} {cmd} {}: {sandboxed}", a.display());
                let (code, free) = report(k, &["--no-sandbox", cmd], a, None);
                assert_eq!(code, 0);
                assert_eq!(sandboxed, free, "{k:?} {cmd} {}", a.display());
            }
            let d = tempfile::tempdir().unwrap();
            let (code, r) = report(
                k,
                &["extract", "--to", d.path().to_str().unwrap()],
                a,
                Some(d.path()),
            );
            assert_eq!(code, 0, "{k:?} extract {}: {r}", a.display());
            assert_eq!(r, free_report, "{k:?}");
            assert_eq!(tree(d.path()), free_tree, "{k:?} {}", a.display());
        }
    }
}

/// `qbackup-verify` started with the archive on a stdin pipe that stays empty: it has
/// applied its sandbox (or not) and waits. Returns the child and its `/proc` status once
/// the state settled (its own seccomp filter on top of those of `k`, or 500 ms after
/// start without the sandbox). `pre` runs before `k`'s prefix (e.g. `setpriv`).
fn waiting(k: Kernel, pre: &[&str], args: &[&str], sandboxed: bool) -> (Child, String, String) {
    let all: Vec<&str> = pre.iter().chain(k.prefix()).copied().collect();
    let mut cmd = match all.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(BIN);
            c
        }
        None => Command::new(BIN),
    };
    let mut child = cmd
        .args(args)
        .arg("-")
        .env("QBACKUP_PASSPHRASE", PASSPHRASE)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qbackup-verify");
    let pid = child.id();
    let start = Instant::now();
    let filters = format!("Seccomp_filters:\t{}\n", k.filters() + 1);
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let name_ok = status.contains("Name:\tqbackup-verify");
        let settled = if sandboxed {
            status.contains("Seccomp:\t2") && status.contains(&filters)
        } else {
            start.elapsed() > Duration::from_millis(500)
        };
        if name_ok && settled {
            let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
            return (child, status, limits);
        }
        if start.elapsed() > Duration::from_secs(30) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let o = child.wait_with_output().unwrap();
            panic!(
                "qbackup-verify never reached its sandbox: {status}\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Feed `archive` to a waiting child; its exit code and stdout.
fn feed(mut child: Child, archive: &Path) -> (i32, String) {
    let bytes = std::fs::read(archive).unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&bytes);
    });
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr);
    (o.status.code().unwrap_or(-1), format!("{out}{err}"))
}

/// The value of a `/proc/PID/status` field, whitespace-normalised.
fn field(status: &str, name: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn assert_no_capabilities(status: &str, bounding_too: bool) {
    for f in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(field(status, f), "0000000000000000", "{f}: {status}");
    }
    if bounding_too {
        assert_eq!(field(status, "CapBnd"), "0000000000000000", "{status}");
    }
    assert_eq!(field(status, "NoNewPrivs"), "1");
    assert_eq!(field(status, "Seccomp"), "2");
}

/// The note a run without Landlock prints (SBX-9); none with Landlock.
fn assert_mechanism_note(k: Kernel, out: &str, mechanism: &str) {
    let note = format!("the kernel has no Landlock; confinement: {mechanism}");
    assert_eq!(out.contains(&note), k == Kernel::NoLandlock, "{k:?}: {out}");
}

/// SBX-3, SBX-6: started as root, `verify` runs as nobody with no supplementary groups and
/// no capabilities, under the resource limits, and still verifies.
#[test]
fn root_verify_runs_as_nobody() {
    for k in KERNELS {
        let args = ["verify", "--jobs", "2", "--max-kdf-memory", "1024"];
        let (child, status, limits) = waiting(k, &[], &args, true);
        if is_root() {
            assert_eq!(field(&status, "Uid"), "65534 65534 65534 65534", "{status}");
            assert_eq!(field(&status, "Gid"), "65534 65534 65534 65534", "{status}");
            assert_eq!(field(&status, "Groups"), "", "{status}");
        }
        assert_no_capabilities(&status, is_root());
        let limit = |name: &str| limit_line(&limits, name);
        assert!(limit("Max file size").contains(" 0 0 bytes"), "{limits}");
        assert!(
            limit("Max core file size").contains(" 0 0 bytes"),
            "{limits}"
        );
        assert!(
            limit("Max open files").contains(" 256 256 files"),
            "{limits}"
        );
        let as_ = qbackup_verify::sandbox::address_space_limit(1 << 30, 2).to_string();
        assert!(limit("Max address space").contains(&as_), "{limits}");
        let (code, out) = feed(child, &v4());
        assert_eq!(code, 0, "{k:?}: {out}");
        assert_mechanism_note(k, &out, "seccomp only (no path syscalls)");
    }
}

/// SBX-3: as nobody from the start (via `setpriv`), the identity stays and any inherited
/// capability is gone; the run succeeds.
#[test]
fn non_root_keeps_its_identity() {
    let pre: &[&str] = if is_root() { &AS_NOBODY } else { &[] };
    // SAFETY: no preconditions.
    let me = if is_root() {
        65534
    } else {
        unsafe { libc::geteuid() }
    };
    for k in KERNELS {
        let (child, status, _) = waiting(k, pre, &["list"], true);
        assert_eq!(field(&status, "Uid"), format!("{me} {me} {me} {me}"));
        assert_no_capabilities(&status, false);
        let (code, out) = feed(child, &v4());
        assert_eq!(code, 0, "{k:?}: {out}");
        assert!(out.contains("work"), "{out}");
    }
}

/// SBX-3, SBX-10: root extracting into a root-owned destination stays uid 0 with no
/// capabilities at all; the files are root's, and the destination is the only place it
/// can write.
#[test]
fn root_extract_into_root_dir_is_uid_0_without_capabilities() {
    for k in KERNELS {
        let dest = tempfile::tempdir().unwrap();
        let d = dest.path().to_str().unwrap();
        let (child, status, limits) = waiting(k, &[], &["extract", "--to", d], true);
        assert_no_capabilities(&status, is_root());
        if is_root() {
            assert_eq!(field(&status, "Groups"), "", "{status}");
        }
        // SAFETY: no preconditions.
        let me = unsafe { libc::geteuid() };
        assert_eq!(field(&status, "Uid"), format!("{me} {me} {me} {me}"));
        let fsize = qbackup_format::limits::MAX_FILE_SIZE.to_string();
        assert!(
            limits
                .lines()
                .any(|l| l.starts_with("Max file size") && l.contains(&fsize)),
            "{limits}"
        );
        let (code, out) = feed(child, &v4());
        assert_eq!(code, 0, "{k:?}: {out}");
        assert_mechanism_note(k, &out, "mount namespace confined to DIR");
        let img = dest.path().join("work/private.img");
        assert_eq!(std::fs::metadata(&img).unwrap().uid(), me);
    }
}

/// SBX-3: root extracting into a directory another user owns becomes that user; the files
/// are that user's.
#[test]
fn root_extract_into_a_users_dir_runs_as_its_owner() {
    if !is_root() {
        eprintln!("needs root to chown the destination; CI runs as root");
        return;
    }
    for k in KERNELS {
        let dest = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dest.path(), Some(65534), Some(65534)).unwrap();
        let d = dest.path().to_str().unwrap();
        let (child, status, _) = waiting(k, &[], &["extract", "--to", d], true);
        assert_eq!(field(&status, "Uid"), "65534 65534 65534 65534", "{status}");
        assert_no_capabilities(&status, true);
        let (code, out) = feed(child, &v4());
        assert_eq!(code, 0, "{k:?}: {out}");
        let m = std::fs::metadata(dest.path().join("work/private.img")).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
    }
}

/// SBX-3, SBX-10: started as nobody without Landlock, extract confines itself in a user
/// namespace (mapping only its own ids): it stays nobody, and extracts the same tree as
/// an unsandboxed run, owned by nobody.
#[test]
fn nobody_extracts_without_landlock_in_a_user_namespace() {
    let top = tempfile::tempdir().unwrap();
    std::fs::set_permissions(top.path(), PermissionsExt::from_mode(0o755)).unwrap();
    let dest = top.path().join("dest");
    let free = top.path().join("free");
    let pre: &[&str] = if is_root() {
        for d in [&dest, &free] {
            std::fs::create_dir(d).unwrap();
            std::os::unix::fs::chown(d, Some(65534), Some(65534)).unwrap();
        }
        &AS_NOBODY
    } else {
        &[]
    };
    // SAFETY: no preconditions.
    let me = if is_root() {
        65534
    } else {
        unsafe { libc::geteuid() }
    };
    let d = dest.to_str().unwrap();
    let (child, status, _) = waiting(Kernel::NoLandlock, pre, &["extract", "--to", d], true);
    assert_eq!(field(&status, "Uid"), format!("{me} {me} {me} {me}"));
    assert_no_capabilities(&status, false);
    let (code, out) = feed(child, &v4());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("confinement: mount namespace confined to DIR (in a user namespace)"),
        "{out}"
    );
    assert_eq!(
        std::fs::metadata(dest.join("work/private.img"))
            .unwrap()
            .uid(),
        me
    );
    let f = free.to_str().unwrap();
    let (child, _, _) = waiting(
        Kernel::AsIs,
        pre,
        &["--no-sandbox", "extract", "--to", f],
        false,
    );
    let (code, out) = feed(child, &v4());
    assert_eq!(code, 0, "{out}");
    assert_eq!(tree(&dest), tree(&free));
}

/// SBX-9: `emit` (the default child of `qbackup-pack restore`) without Landlock runs under
/// seccomp alone and sends the same stream as with Landlock.
#[test]
fn emit_without_landlock_sends_the_same_stream() {
    let mut streams = Vec::new();
    for k in KERNELS {
        let o = k
            .verifier()
            .args(["emit", "--passphrase-file"])
            .arg(sources().pass())
            .arg(v4())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{k:?}: {err}");
        assert_mechanism_note(k, &err, "seccomp only (no path syscalls)");
        assert!(o.stdout.len() > 100_000, "{k:?}: {} bytes", o.stdout.len());
        streams.push(o.stdout);
    }
    assert!(streams[0] == streams[1], "the two streams differ");
}

/// SBX-7: `--no-sandbox` (a global flag, before or after the command) disables every layer
/// (on the simulated kernel only its own filter remains).
#[test]
fn no_sandbox_disables_it() {
    for k in KERNELS {
        for args in [["--no-sandbox", "verify"], ["verify", "--no-sandbox"]] {
            let (child, status, limits) = waiting(k, &[], &args, false);
            let (seccomp, nnp) = match k {
                Kernel::AsIs => ("0", "0"),
                Kernel::NoLandlock => ("2", "1"),
            };
            assert_eq!(field(&status, "Seccomp"), seccomp, "{status}");
            assert_eq!(field(&status, "Seccomp_filters"), k.filters().to_string());
            assert_eq!(field(&status, "NoNewPrivs"), nnp, "{status}");
            // SAFETY: no preconditions.
            let me = unsafe { libc::geteuid() };
            assert_eq!(field(&status, "Uid"), format!("{me} {me} {me} {me}"));
            assert!(
                limits.contains("Max address space         unlimited"),
                "{limits}"
            );
            let (code, out) = feed(child, &v4());
            assert_eq!(code, 0, "{out}");
            assert!(
                out.contains("--no-sandbox: running without the sandbox"),
                "{out}"
            );
        }
    }
}

/// Run `qbackup-verify ARGS` under `simulate-kernel FEATURES`; (exit code, stdout, stderr).
fn simulated<S: AsRef<std::ffi::OsStr>>(
    features: &str,
    args: &[S],
) -> (Option<i32>, String, String) {
    let o = Command::new(SIMULATE)
        .args([features, BIN])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// SBX-7, SBX-9, SBX-10: without seccomp every command refuses with exit 21; without
/// Landlock and without namespaces, `extract` refuses with exit 21 and says how to enable
/// Landlock, while `verify` and `list` run under seccomp alone; `--no-sandbox` runs.
#[test]
fn fails_closed_with_exit_21() {
    let pass = sources().pass();
    let a = v4();
    let dest = tempfile::tempdir().unwrap();
    let tail = [
        "--passphrase-file",
        pass.to_str().unwrap(),
        a.to_str().unwrap(),
    ];
    let with =
        |cmd: &[&str]| -> Vec<String> { cmd.iter().chain(&tail).map(|s| s.to_string()).collect() };
    let extract = ["extract", "--to", dest.path().to_str().unwrap()];
    for cmd in [&["verify"][..], &["list"], &["emit"], &extract] {
        let (code, out, err) = simulated("no-seccomp", &with(cmd));
        assert_eq!(code, Some(21), "{cmd:?}: {err}");
        assert!(
            err.contains("seccomp") && err.contains("--no-sandbox"),
            "{cmd:?}: {err}"
        );
        assert!(out.is_empty(), "nothing verified, nothing reported");
    }
    for features in [
        "no-landlock,no-namespaces",
        "landlock-disabled,no-namespaces",
    ] {
        let (code, out, err) = simulated(features, &with(&extract));
        assert_eq!(code, Some(21), "{features}: {err}");
        for w in ["no Landlock", "mount namespace", "lsm=", "--no-sandbox"] {
            assert!(err.contains(w), "{features} {w}: {err}");
        }
        assert!(out.is_empty(), "nothing verified, nothing reported");
        for cmd in ["verify", "list"] {
            let (code, out, err) = simulated(features, &with(&[cmd]));
            assert_eq!(code, Some(0), "{features} {cmd}: {err}");
            assert!(out.contains("work"), "{out}");
            assert!(
                err.contains("confinement: seccomp only (no path syscalls)"),
                "{err}"
            );
        }
    }
    assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 0);
    for features in ["no-seccomp", "no-landlock,no-namespaces"] {
        let free = tempfile::tempdir().unwrap();
        let f = free.path().to_str().unwrap();
        for cmd in [
            &["--no-sandbox", "verify"][..],
            &["--no-sandbox", "extract", "--to", f],
        ] {
            let (code, _, err) = simulated(features, &with(cmd));
            assert_eq!(code, Some(0), "{features} {cmd:?}: {err}");
        }
        assert!(free.path().join("work/private.img").exists());
    }
}

/// SBX-8: without Landlock (not built: ENOSYS; built but not enabled: EOPNOTSUPP, as on
/// Qubes OS), `sandbox-check` names the mechanisms in force, proves them, says how to
/// enable Landlock and exits 0; without namespaces too, extract cannot be confined: 21.
#[test]
fn sandbox_check_without_landlock() {
    for features in ["no-landlock", "landlock-disabled"] {
        let (code, out, _) = simulated(features, &["sandbox-check"]);
        assert_eq!(code, Some(0), "{features}: {out}");
        for w in [
            "kernel landlock ABI: unavailable",
            "confinement: seccomp only (no path syscalls)",
            "trial in a child process: applied; opening a path, socket and exec refused",
            "extract confinement: mount namespace confined to DIR",
            "extract trial in a child process: applied; wrote inside DIR; nothing outside DIR could be opened or created; socket and exec refused",
            "landlock unavailable: to enable Landlock",
            "lsm=",
            "security=landlock",
            "CONFIG_SECURITY_LANDLOCK",
            "OK: the sandbox can be enforced on this system",
        ] {
            assert!(out.contains(w), "{features} {w}: {out}");
        }
    }
    let (code, out, _) = simulated("no-landlock,no-namespaces", &["sandbox-check"]);
    assert_eq!(code, Some(21), "{out}");
    for w in [
        "trial in a child process: applied; opening a path, socket and exec refused",
        "extract trial in a child process: applying the policy failed",
        "FAIL: the sandbox cannot be enforced here",
    ] {
        assert!(out.contains(w), "{w}: {out}");
    }
}

/// SBX-8: `sandbox-check` names every layer and the mechanism, and proves it in children.
#[test]
fn sandbox_check_reports_what_is_enforced() {
    for k in KERNELS {
        let o = k.verifier().arg("sandbox-check").output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert_eq!(o.status.code(), Some(0), "{k:?}: {out}");
        let abi = out
            .lines()
            .find_map(|l| l.strip_prefix("kernel landlock ABI: "))
            .unwrap_or_else(|| panic!("{out}"));
        for w in [
            "kernel seccomp filters: available",
            "no_new_privs: true",
            "seccomp: ",
            "rlimit: RLIMIT_AS = ",
            "rlimit: RLIMIT_FSIZE = ",
            "rlimit: RLIMIT_NOFILE = 256",
            "rlimit: RLIMIT_CORE = 0",
            "trial in a child process: applied; opening a path, socket and exec refused",
            "extract trial in a child process: applied; wrote inside DIR",
            "OK: the sandbox can be enforced on this system",
        ] {
            assert!(out.contains(w), "{k:?} {w}: {out}");
        }
        match k {
            Kernel::AsIs => {
                assert!(abi.parse::<i32>().is_ok_and(|v| v >= 1), "{out}");
                for w in [
                    format!("confinement: landlock ABI {abi}"),
                    "landlock: no filesystem access at all".to_string(),
                    format!("extract confinement: landlock ABI {abi}"),
                    "extract landlock: no filesystem access except read/write beneath DIR"
                        .to_string(),
                ] {
                    assert!(out.contains(&w), "{w}: {out}");
                }
                assert!(!out.contains("landlock unavailable"), "{out}");
            }
            Kernel::NoLandlock => {
                assert_eq!(abi, "unavailable");
                assert!(
                    out.contains("extract confinement: mount namespace confined to DIR"),
                    "{out}"
                );
            }
        }
        let identity = if is_root() {
            "identity: drop from root to uid 65534 gid 65534, no supplementary groups"
        } else {
            "identity: unchanged (not root), all capabilities dropped"
        };
        assert!(out.contains(identity), "{out}");
    }
}

/// SBX-5: a logN 20 archive (1 GiB per KDF) verifies under `RLIMIT_AS`, with the default
/// KDF budget and with one just large enough for two KDFs at once.
#[test]
fn large_kdf_archive_verifies_under_the_address_space_limit() {
    let a = make_archive_once(
        "v4-logn20",
        &[
            "--version",
            "4",
            "--compression",
            "gzip",
            "--scrypt-logn",
            "20",
            "--vms",
            "work",
        ],
    );
    for k in KERNELS {
        for args in [
            vec!["verify", "--jobs", "2"],
            vec!["verify", "--jobs", "2", "--max-kdf-memory", "2050"],
        ] {
            let (code, out, err) = run(k, &args, &a);
            assert_eq!(code, 0, "{k:?} {args:?}: {out}{err}");
            assert!(!err.contains("--no-sandbox"), "{err}");
        }
    }
}

/// SBX-4: the progress bar on a terminal (its `TCGETS`/`TIOCGWINSZ` ioctls, clock reads)
/// works inside the sandbox: run under a pseudo-terminal (`script`).
#[test]
fn progress_bar_on_a_terminal_works_in_the_sandbox() {
    let pass = sources().pass();
    for k in KERNELS {
        let cmd = format!(
            "{} {BIN} verify --passphrase-file {} {}; echo EXIT=$?",
            k.prefix().join(" "),
            pass.display(),
            v4().display()
        );
        let o = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .output()
            .expect("run script");
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("EXIT=0"), "{k:?}: {out}");
        assert!(out.contains("ETA"), "no progress bar drawn: {out}");
        assert!(out.contains("OK: every member authenticated"), "{out}");
    }
}

/// SBX-6: limits the caller set lower (here as `nobody`, who could not raise them back)
/// are kept, not raised; the run succeeds.
#[test]
fn lower_limits_are_kept() {
    let mut pre = vec!["prlimit", "--nofile=100:200", "--as=3000000000:3500000000"];
    if is_root() {
        // Inheritable capabilities are cleared too: nobody could not raise a limit anyway.
        pre = [&AS_NOBODY[..], &pre].concat();
    }
    for k in KERNELS {
        let (child, status, limits) = waiting(k, &pre, &["verify"], true);
        assert_eq!(field(&status, "Seccomp"), "2");
        let line = |name: &str| limit_line(&limits, name);
        // Soft and hard both take the lowest of the policy's, the soft and the hard limit.
        assert_eq!(line("Max open files"), "Max open files 100 100 files");
        assert_eq!(
            line("Max address space"),
            "Max address space 3000000000 3000000000 bytes"
        );
        let (code, out) = feed(child, &v4());
        assert_eq!(code, 0, "{k:?}: {out}");
    }
}

/// SBX-2, SBX-3, SBX-10: DIR inside a 0700 directory of another user: the Landlock rule
/// (or the namespace) is set up from DIR while still root, so both the switch to DIR's
/// owner and uid 0 without capabilities (neither can traverse the parent any more)
/// extract through the open DIR.
#[test]
fn root_extract_beneath_a_parent_the_new_identity_cannot_traverse() {
    if !is_root() {
        eprintln!("needs root to chown the parent; CI runs as root");
        return;
    }
    for k in KERNELS {
        for owner in [65534, 0] {
            let top = tempfile::tempdir().unwrap();
            let parent = top.path().join("private");
            std::fs::create_dir(&parent).unwrap();
            std::fs::set_permissions(&parent, PermissionsExt::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&parent, Some(1000), Some(1000)).unwrap();
            let dest = parent.join("restore");
            std::fs::create_dir(&dest).unwrap();
            std::os::unix::fs::chown(&dest, Some(owner), Some(owner)).unwrap();
            let d = dest.to_str().unwrap();
            let (code, out, err) = run(k, &["extract", "--to", d], &v4());
            assert_eq!(code, 0, "{k:?} owner {owner}: {out}{err}");
            let m = std::fs::metadata(dest.join("work/private.img")).unwrap();
            assert_eq!(m.uid(), owner);
        }
    }
}
