//! The sandbox as `qbackup-verify` itself applies it (SPEC.md §22): the real binary on
//! archives made with the real tools (`tests/fixtures/make-archive.sh`), observed from
//! outside through `/proc/PID/status` and `/proc/PID/limits` while it waits on stdin.
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
const PROBE: &str = env!("CARGO_BIN_EXE_sandbox-probe");

fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
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

/// Run `qbackup-verify ARGS --passphrase-file PASS ARCHIVE`; (exit code, stdout, stderr).
fn run(args: &[&str], archive: &Path) -> (i32, String, String) {
    let o = Command::new(BIN)
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
fn report(args: &[&str], archive: &Path, dest: Option<&Path>) -> (i32, Value) {
    let mut a = args.to_vec();
    a.push("--json");
    let (code, out, err) = run(&a, archive);
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

/// SBX-2: the sandboxed verifier verifies and extracts the interop archives exactly as
/// the unsandboxed one (same reports, same trees, byte for byte).
#[test]
fn sandboxed_runs_match_unsandboxed_runs() {
    let archives = [
        v4(),
        make_archive_once("v4-zstd", &["--version", "4", "--compression", "zstd"]),
        make_archive_once("v3-bzip2", &["--version", "3", "--compression", "bzip2"]),
        make_archive_once("v2-gzip", &["--version", "2", "--compression", "gzip"]),
    ];
    for a in &archives {
        for cmd in ["verify", "list"] {
            let (code, sandboxed) = report(&[cmd], a, None);
            assert_eq!(code, 0, "{cmd} {}: {sandboxed}", a.display());
            let (code, free) = report(&["--no-sandbox", cmd], a, None);
            assert_eq!(code, 0);
            assert_eq!(sandboxed, free, "{cmd} {}", a.display());
        }
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let (code, r1) = report(
            &["extract", "--to", d1.path().to_str().unwrap()],
            a,
            Some(d1.path()),
        );
        assert_eq!(code, 0, "extract {}: {r1}", a.display());
        let args = [
            "extract",
            "--no-sandbox",
            "--to",
            d2.path().to_str().unwrap(),
        ];
        let (code, r2) = report(&args, a, Some(d2.path()));
        assert_eq!(code, 0);
        assert_eq!(r1, r2);
        let t1 = tree(d1.path());
        assert!(t1.len() > 10, "{t1:?}");
        assert_eq!(t1, tree(d2.path()), "{}", a.display());
    }
}

/// `qbackup-verify` started with the archive on a stdin pipe that stays empty: it has
/// applied its sandbox (or not) and waits. Returns the child and its `/proc` status once
/// the state settled (seccomp mode 2, or 500 ms after start without the sandbox).
fn waiting(pre: &[&str], args: &[&str], sandboxed: bool) -> (Child, String, String) {
    let mut cmd = match pre.split_first() {
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
    loop {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let name_ok = status.contains("Name:\tqbackup-verify");
        let settled = if sandboxed {
            status.contains("Seccomp:\t2")
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

/// SBX-3, SBX-6: started as root, `verify` runs as nobody with no supplementary groups and
/// no capabilities, under the resource limits, and still verifies.
#[test]
fn root_verify_runs_as_nobody() {
    let args = ["verify", "--jobs", "2", "--max-kdf-memory", "1024"];
    let (child, status, limits) = waiting(&[], &args, true);
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
    assert_eq!(code, 0, "{out}");
}

/// SBX-3: as nobody from the start (via `setpriv`), the identity stays and any inherited
/// capability is gone; the run succeeds.
#[test]
fn non_root_keeps_its_identity() {
    let pre: &[&str] = if is_root() {
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ]
    } else {
        &[]
    };
    // SAFETY: no preconditions.
    let me = if is_root() {
        65534
    } else {
        unsafe { libc::geteuid() }
    };
    let (child, status, _) = waiting(pre, &["list"], true);
    assert_eq!(field(&status, "Uid"), format!("{me} {me} {me} {me}"));
    assert_no_capabilities(&status, false);
    let (code, out) = feed(child, &v4());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("work"), "{out}");
}

/// SBX-3: root extracting into a root-owned destination stays uid 0 with no capabilities
/// at all; the files are root's, and the destination is the only place it can write.
#[test]
fn root_extract_into_root_dir_is_uid_0_without_capabilities() {
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path().to_str().unwrap();
    let (child, status, limits) = waiting(&[], &["extract", "--to", d], true);
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
    assert_eq!(code, 0, "{out}");
    let img = dest.path().join("work/private.img");
    assert_eq!(std::fs::metadata(&img).unwrap().uid(), me);
}

/// SBX-3: root extracting into a directory another user owns becomes that user; the files
/// are that user's.
#[test]
fn root_extract_into_a_users_dir_runs_as_its_owner() {
    if !is_root() {
        eprintln!("needs root to chown the destination; CI runs as root");
        return;
    }
    let dest = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(dest.path(), Some(65534), Some(65534)).unwrap();
    let d = dest.path().to_str().unwrap();
    let (child, status, _) = waiting(&[], &["extract", "--to", d], true);
    assert_eq!(field(&status, "Uid"), "65534 65534 65534 65534", "{status}");
    assert_no_capabilities(&status, true);
    let (code, out) = feed(child, &v4());
    assert_eq!(code, 0, "{out}");
    let m = std::fs::metadata(dest.path().join("work/private.img")).unwrap();
    assert_eq!((m.uid(), m.gid()), (65534, 65534));
}

/// SBX-7: `--no-sandbox` (a global flag, before or after the command) disables every layer.
#[test]
fn no_sandbox_disables_it() {
    for args in [["--no-sandbox", "verify"], ["verify", "--no-sandbox"]] {
        let (child, status, limits) = waiting(&[], &args, false);
        assert_eq!(field(&status, "Seccomp"), "0", "{status}");
        assert_eq!(field(&status, "NoNewPrivs"), "0", "{status}");
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

/// SBX-7: without Landlock or seccomp (simulated: the probe makes their syscalls fail with
/// ENOSYS, then execs the real binary) every command refuses with exit 21 and says how to
/// override; `--no-sandbox` runs.
#[test]
fn fails_closed_with_exit_21() {
    let pass = sources().pass();
    let a = v4();
    let dest = tempfile::tempdir().unwrap();
    for (sim, what) in [("no-landlock", "Landlock"), ("no-seccomp", "seccomp")] {
        for cmd in [
            vec!["verify"],
            vec!["list"],
            vec!["extract", "--to", dest.path().to_str().unwrap()],
        ] {
            let mut args = vec!["verify", "--simulate", sim, "spawn", BIN];
            args.extend(&cmd);
            args.extend([
                "--passphrase-file",
                pass.to_str().unwrap(),
                a.to_str().unwrap(),
            ]);
            let o = Command::new(PROBE).args(&args).output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(21), "{sim} {cmd:?}: {err}");
            assert!(
                err.contains(what) && err.contains("--no-sandbox"),
                "{sim} {cmd:?}: {err}"
            );
            assert!(o.stdout.is_empty(), "nothing verified, nothing reported");
        }
        assert_eq!(std::fs::read_dir(dest.path()).unwrap().count(), 0);
        let args = [
            "verify",
            "--simulate",
            sim,
            "spawn",
            BIN,
            "--no-sandbox",
            "verify",
        ];
        let o = Command::new(PROBE)
            .args(args)
            .args([
                "--passphrase-file",
                pass.to_str().unwrap(),
                a.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

/// SBX-8: without Landlock (simulated), `sandbox-check` says so and exits 21.
#[test]
fn sandbox_check_fails_without_landlock() {
    let o = Command::new(PROBE)
        .args([
            "verify",
            "--simulate",
            "no-landlock",
            "spawn",
            BIN,
            "sandbox-check",
        ])
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(21), "{out}");
    assert!(out.contains("kernel landlock ABI: unavailable"), "{out}");
    assert!(
        out.contains("trial in a child process: applying the policy failed"),
        "{out}"
    );
    assert!(
        out.contains("FAIL: the sandbox cannot be enforced here"),
        "{out}"
    );
}

/// SBX-8: `sandbox-check` names every layer and proves it in a child.
#[test]
fn sandbox_check_reports_what_is_enforced() {
    let o = Command::new(BIN).arg("sandbox-check").output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(0), "{out}");
    let abi: i32 = out
        .lines()
        .find_map(|l| l.strip_prefix("kernel landlock ABI: "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{out}"));
    assert!(abi >= 1);
    for w in [
        "kernel seccomp filters: available",
        "no_new_privs: true",
        "landlock: no filesystem access at all",
        "seccomp: ",
        "rlimit: RLIMIT_AS = ",
        "rlimit: RLIMIT_FSIZE = ",
        "rlimit: RLIMIT_NOFILE = 256",
        "rlimit: RLIMIT_CORE = 0",
        "trial in a child process: applied; socket and exec refused",
        "OK: the sandbox can be enforced on this system",
        "extract: landlock read/write beneath DIR only",
    ] {
        assert!(out.contains(w), "{w}: {out}");
    }
    let identity = if is_root() {
        "identity: drop from root to uid 65534 gid 65534, no supplementary groups"
    } else {
        "identity: unchanged (not root), all capabilities dropped"
    };
    assert!(out.contains(identity), "{out}");
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
    for args in [
        vec!["verify", "--jobs", "2"],
        vec!["verify", "--jobs", "2", "--max-kdf-memory", "2050"],
    ] {
        let (code, out, err) = run(&args, &a);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        assert!(!err.contains("--no-sandbox"), "{err}");
    }
}

/// SBX-4: the progress bar on a terminal (its `TCGETS`/`TIOCGWINSZ` ioctls, clock reads)
/// works inside the sandbox: run under a pseudo-terminal (`script`).
#[test]
fn progress_bar_on_a_terminal_works_in_the_sandbox() {
    let pass = sources().pass();
    let cmd = format!(
        "{BIN} verify --passphrase-file {} {}; echo EXIT=$?",
        pass.display(),
        v4().display()
    );
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .expect("run script");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("EXIT=0"), "{out}");
    assert!(out.contains("ETA"), "no progress bar drawn: {out}");
    assert!(out.contains("OK: every member authenticated"), "{out}");
}

/// SBX-6: limits the caller set lower (here as `nobody`, who could not raise them back)
/// are kept, not raised; the run succeeds.
#[test]
fn lower_limits_are_kept() {
    let mut pre = vec!["prlimit", "--nofile=100:200", "--as=3000000000:3500000000"];
    if is_root() {
        pre = [
            &[
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ][..],
            &pre,
        ]
        .concat();
    }
    let (child, status, limits) = waiting(&pre, &["verify"], true);
    assert_eq!(field(&status, "Seccomp"), "2");
    let line = |name: &str| limit_line(&limits, name);
    // Soft and hard both take the lowest of the policy's, the soft and the hard limit.
    assert_eq!(line("Max open files"), "Max open files 100 100 files");
    assert_eq!(
        line("Max address space"),
        "Max address space 3000000000 3000000000 bytes"
    );
    let (code, out) = feed(child, &v4());
    assert_eq!(code, 0, "{out}");
}

/// SBX-2, SBX-3: DIR inside a 0700 directory of another user: the Landlock rule is taken
/// from DIR while still root, so both the switch to DIR's owner and uid 0 without
/// capabilities (neither can traverse the parent any more) extract through the open DIR.
#[test]
fn root_extract_beneath_a_parent_the_new_identity_cannot_traverse() {
    if !is_root() {
        eprintln!("needs root to chown the parent; CI runs as root");
        return;
    }
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
        let (code, out, err) = run(&["extract", "--to", d], &v4());
        assert_eq!(code, 0, "owner {owner}: {out}{err}");
        let m = std::fs::metadata(dest.join("work/private.img")).unwrap();
        assert_eq!(m.uid(), owner);
    }
}
