//! Faults and resource bounds of `qbackup-verify`, through the release binary (issue 5
//! items 3 and 4): SIGINT/SIGTERM, a consumer closing the pipe early, peak memory on a
//! multi-GiB archive from a pipe (README "Memory and disk"), and decompression bombs and
//! absurd size or cost claims inside correctly authenticated archives, each refused by a
//! limit in bounded time and memory, with nothing written.
//!
//! Peak memory and CPU time are the child's own (`wait4` rusage), so tests running in
//! parallel do not disturb them.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use qbackup_tests::{build, find, members, repo_root, run_ok, Member};

const VERIFY: &str = env!("CARGO_BIN_EXE_qbackup-verify");
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// The committed example: v4, gzip, scrypt logN 10, passphrase `qubes`, backup-id
/// `20161020T123455-1234`; `work` (vm3, backup-size 192512) and `standalone` (vm4).
fn example() -> PathBuf {
    repo_root().join("examples/example-v4.bin")
}
fn example_pass() -> PathBuf {
    repo_root().join("examples/example.passphrase")
}
const BACKUP_ID: &str = "20161020T123455-1234";
const PASS: &str = "qubes";

/// What a finished child did, and what it cost.
struct Measured {
    code: Option<i32>,
    signal: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
    /// Peak resident set (ru_maxrss), bytes.
    peak_rss: u64,
    /// User + system CPU time.
    cpu: Duration,
}

impl Measured {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}\nstderr: {}",
                String::from_utf8_lossy(&self.stdout),
                self.stderr
            )
        })
    }
    fn class(&self) -> String {
        self.json()["error"]["class"]
            .as_str()
            .unwrap_or("(none)")
            .to_string()
    }
    /// No panic message and no internal error, whatever else happened.
    fn assert_clean(&self) {
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("internal error"),
            "{}",
            self.stderr
        );
        assert_ne!(self.code, Some(1), "internal error: {}", self.stderr);
        assert_eq!(self.signal, None, "killed by a signal: {}", self.stderr);
    }
}

/// Reap `child` with `wait4`, collecting its output and its own resource usage.
fn wait_measured(mut child: Child) -> Measured {
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(o) = out.as_mut() {
            let _ = o.read_to_end(&mut v);
        }
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(e) = err.as_mut() {
            let _ = e.read_to_end(&mut v);
        }
        v
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: a zeroed rusage is valid; wait4 on our own child, which std has not reaped.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    assert_eq!(r, pid, "wait4: {}", std::io::Error::last_os_error());
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    Measured {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        stdout: t_out.join().unwrap(),
        stderr: String::from_utf8_lossy(&t_err.join().unwrap()).into_owned(),
        peak_rss: ru.ru_maxrss as u64 * 1024,
        cpu: tv(ru.ru_utime) + tv(ru.ru_stime),
    }
}

/// `qbackup-verify ARGS` with the example passphrase, no progress, output captured.
fn verifier(args: &[&str]) -> Command {
    let mut c = Command::new(VERIFY);
    c.args(args)
        .arg("--no-progress")
        .arg("--passphrase-file")
        .arg(example_pass())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn measure(cmd: &mut Command) -> Measured {
    wait_measured(cmd.spawn().expect("spawning qbackup-verify"))
}

fn kill(child: &Child, sig: i32) {
    // SAFETY: signalling the child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

// ---------------------------------------------------------------------------------------
// Signals

/// A verifier reading `input` (a FIFO path, or `-` for a stdin pipe) that received the
/// first 20 KiB of the example archive and then stalls; signalled mid-run.
fn interrupt(command: &str, input: &str, sig: i32) -> Measured {
    let archive = fs::read(example()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = verifier(&[command, "--json"]);
    cmd.current_dir(dir.path());
    let (child, mut feed): (Child, Box<dyn Write>) = if input == "-" {
        let mut child = cmd.arg("-").stdin(Stdio::piped()).spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        (child, Box::new(stdin))
    } else {
        let fifo = dir.path().join(input);
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path in our own temporary directory.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let child = cmd.arg(&fifo).spawn().unwrap();
        (
            child,
            Box::new(fs::OpenOptions::new().write(true).open(&fifo).unwrap()),
        )
    };
    feed.write_all(&archive[..20 << 10]).unwrap();
    feed.flush().unwrap();
    // Time to authenticate the header and block on the stalled input.
    std::thread::sleep(Duration::from_millis(400));
    kill(&child, sig);
    let m = wait_measured(child);
    drop(feed);
    let left: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n != input)
        .collect();
    assert!(left.is_empty(), "{command} wrote {left:?}");
    m
}

/// README "Exit codes": `verify` and `list` interrupted by SIGINT or SIGTERM, reading a
/// pipe or a path, exit 130 with one line on stderr, no panic, no report and no file
/// (RES-1: they write nothing, so there is nothing to remove).
#[test]
fn signals_stop_verify_and_list_cleanly() {
    for (command, input, sig) in [
        ("verify", "-", libc::SIGINT),
        ("verify", "-", libc::SIGTERM),
        ("verify", "archive.fifo", libc::SIGINT),
        ("verify", "archive.fifo", libc::SIGTERM),
        ("list", "-", libc::SIGINT),
        ("list", "archive.fifo", libc::SIGTERM),
    ] {
        let m = interrupt(command, input, sig);
        let what = format!("{command} {input} signal {sig}: {}", m.stderr);
        assert_eq!(m.signal, None, "{what}");
        assert_eq!(m.code, Some(130), "{what}");
        assert!(m.stderr.contains("interrupted"), "{what}");
        assert!(!m.stderr.contains("panicked"), "{what}");
        assert!(m.stdout.is_empty(), "{what}");
    }
}

// ---------------------------------------------------------------------------------------
// A consumer that closes the pipe early

/// README "Exit codes": the report's reader going away is not a finding. With the read
/// end closed before the report is written (EPIPE for certain), `verify --json` and
/// `list` still exit with the verdict's code (0 here), without a panic or a hang.
#[test]
fn closed_stdout_is_not_an_error() {
    for args in [&["verify", "--json"][..], &["list"], &["list", "--json"]] {
        let mut child = verifier(args).arg(example()).spawn().unwrap();
        drop(child.stdout.take());
        let m = wait_measured(child);
        m.assert_clean();
        assert_eq!(m.code, Some(0), "{args:?}: {}", m.stderr);
    }
}

/// The same through a real shell pipeline, `qbackup-verify … | head -c 10`.
#[test]
fn head_closing_the_pipe() {
    for command in ["verify --json", "list", "list --json"] {
        let script = format!(
            "'{VERIFY}' {command} --no-progress --passphrase-file '{}' '{}' 2>err | head -c 10 >/dev/null; \
             echo ${{PIPESTATUS[0]}}; cat err",
            example_pass().display(),
            example().display()
        );
        let dir = tempfile::tempdir().unwrap();
        let o = run_ok(
            Command::new("timeout")
                .args(["60", "bash", "-c", &script])
                .current_dir(dir.path()),
        );
        let text = String::from_utf8_lossy(&o.stdout);
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("0"), "{command}: {text}");
        assert!(!text.contains("panicked") && !text.contains("internal error"));
    }
}

// ---------------------------------------------------------------------------------------
// Peak memory on a multi-GiB archive from a pipe

/// Deterministic incompressible bytes (xorshift64*), written in 1 MiB blocks.
fn write_random(path: &Path, len: u64) {
    let mut f = std::io::BufWriter::with_capacity(1 << 20, fs::File::create(path).unwrap());
    let mut s: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for w in block.chunks_exact_mut(8) {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            w.copy_from_slice(&s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        let n = left.min(block.len() as u64) as usize;
        f.write_all(&block[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
}

/// `target/<profile>/qbackup-pack`, built if this test binary was built without it.
fn packer_binary() -> PathBuf {
    let bin = Path::new(VERIFY).with_file_name("qbackup-pack");
    if !bin.exists() {
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", "qbackup-pack", "--bin", "qbackup-pack"]);
        if bin.parent().is_some_and(|p| p.ends_with("release")) {
            cmd.arg("--release");
        }
        run_ok(&mut cmd);
    }
    bin
}

/// RES-1, LIM-5, README "Memory and disk": `qbackup-pack create --out -` writes a 2.1 GiB
/// archive of incompressible data (zstd, scrypt logN 10) straight into `qbackup-verify
/// verify -`, which must verify it with a peak RSS within the documented bound
/// (jobs + 3) × C + jobs × K + D + 64 MiB: C = 100 MiB + 128 chunks, K = 1 MiB per KDF,
/// D = 8 MiB zstd window. Measured: 522 MiB of 566 MiB.
#[test]
fn multi_gib_archive_from_a_pipe_stays_within_the_memory_bound() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("private.img");
    let size = 2 * GIB + 100 * MIB;
    write_random(&image, size);
    fs::write(dir.path().join("pass"), "big pass\n").unwrap();
    let plan = serde_json::json!({"vms": [{"name": "big", "class": "AppVM", "label": "red",
        "qid": 3, "volumes": [{"name": "private", "path": image}]}]});
    fs::write(dir.path().join("plan.json"), plan.to_string()).unwrap();
    let mut pack = Command::new(packer_binary())
        .args(["create", "--plan", "plan.json", "--passphrase-file", "pass"])
        .args([
            "--out",
            "-",
            "--compression",
            "zstd",
            "--scrypt-log-n",
            "10",
        ])
        .args(["--no-progress"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let jobs = 2;
    let verify = Command::new(VERIFY)
        .args([
            "verify",
            "--json",
            "--no-progress",
            "--jobs",
            &jobs.to_string(),
        ])
        .args(["--passphrase-file", "pass", "-"])
        .current_dir(dir.path())
        .stdin(pack.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let m = wait_measured(verify);
    let p = pack.wait_with_output().unwrap();
    fs::remove_file(&image).unwrap();
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    m.assert_clean();
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    let report = m.json();
    assert_eq!(report["ok"], true);
    let bound = (jobs + 3) * (100 * MIB + 128) + jobs * MIB + 8 * MIB + 64 * MIB;
    eprintln!(
        "verify: peak RSS {} MiB (bound {} MiB), CPU {:?}",
        m.peak_rss / MIB,
        bound / MIB,
        m.cpu
    );
    assert!(
        m.peak_rss <= bound,
        "peak RSS {} MiB exceeds the documented bound {} MiB",
        m.peak_rss / MIB,
        bound / MIB
    );
    // The whole archive went through the pipe.
    let read = report["bytes_read"].as_u64().unwrap();
    assert!(read > size, "{read} <= {size}");
}
