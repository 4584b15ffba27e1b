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
use std::time::Duration;

use qbackup_tests::binaries::packer_beside;
use qbackup_tests::signals::kill;
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
    // Until it has read what it was given (its handlers are set before it opens the input).
    let io = format!("/proc/{}/io", child.id());
    let start = std::time::Instant::now();
    while read_chars(&io) < 20 << 10 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{command} reads nothing"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // Time to authenticate the header and block on the stalled input.
    std::thread::sleep(Duration::from_millis(100));
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

/// `rchar` of a /proc/PID/io file: bytes the process has read so far.
fn read_chars(io: &str) -> u64 {
    fs::read_to_string(io)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
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
    packer_beside(VERIFY)
}

/// RES-1, LIM-5, README "Memory and disk": `qbackup-pack create --out -` writes a 2.1 GiB
/// archive of incompressible data (zstd, scrypt logN 10) straight into `qbackup-verify
/// verify -`, which must verify it with a peak RSS within the documented bound
/// (jobs + 3) × C + min(jobs × K, B) + D + 64 MiB: C = 100 MiB + 128 per chunk, K = 1 MiB
/// per KDF, D = 8 MiB of zstd window; again with the same archive from `cat`, which fills
/// the queues. Measured: 200–420 MiB straight, 522 MiB from `cat`, of 574 MiB.
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
    // The archive is also kept (`tee`) for a second run with a fast producer.
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
    let mut tee = Command::new("tee")
        .arg("a.bin")
        .current_dir(dir.path())
        .stdin(pack.stdout.take().unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let jobs = 2;
    let verify = |input: Stdio| {
        let m = wait_measured(
            Command::new(VERIFY)
                .args(["verify", "--json", "--no-progress"])
                .args([
                    "--jobs",
                    &jobs.to_string(),
                    "--passphrase-file",
                    "pass",
                    "-",
                ])
                .current_dir(dir.path())
                .stdin(input)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        );
        m.assert_clean();
        assert_eq!(m.code, Some(0), "{}", m.stderr);
        let report = m.json();
        assert_eq!(report["ok"], true);
        // The whole archive went through the pipe.
        let read = report["bytes_read"].as_u64().unwrap();
        assert!(read > size, "{read} <= {size}");
        m
    };
    let straight = verify(Stdio::from(tee.stdout.take().unwrap()));
    let p = pack.wait_with_output().unwrap();
    assert!(p.status.success(), "{}", String::from_utf8_lossy(&p.stderr));
    assert!(tee.wait().unwrap().success());
    fs::remove_file(&image).unwrap();
    // Read from the page cache, the pipe outruns the workers: the queues fill up.
    let mut cat = Command::new("cat")
        .arg("a.bin")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let fast = verify(Stdio::from(cat.stdout.take().unwrap()));
    assert!(cat.wait().unwrap().success());
    fs::remove_file(dir.path().join("a.bin")).unwrap();
    let bound = (jobs + 3) * (100 * MIB + 128) + jobs * MIB + 8 * MIB + 64 * MIB;
    for (how, m) in [("from qbackup-pack", &straight), ("from cat", &fast)] {
        eprintln!(
            "verify {how}: peak RSS {} MiB (bound {} MiB), CPU {:?}",
            m.peak_rss / MIB,
            bound / MIB,
            m.cpu
        );
        assert!(
            m.peak_rss <= bound,
            "{how}: peak RSS {} MiB exceeds the documented bound {} MiB",
            m.peak_rss / MIB,
            bound / MIB
        );
    }
}

// ---------------------------------------------------------------------------------------
// Bombs and absurd claims, inside correctly authenticated archives

/// Run `script` under bash with `input` on stdin; its stdout.
fn sh(script: &str, input: &[u8]) -> Vec<u8> {
    let mut child = Command::new("bash")
        .args(["-c", &format!("set -euo pipefail\n{script}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let o = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(
        o.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

/// `gzip` or `zstd` output of `data`, by the real tool.
fn compress(filter: &str, data: &[u8]) -> Vec<u8> {
    sh(&format!("{filter} -c -q"), data)
}

/// A compressed frame (gzip member, zstd frame) expanding to 64 MiB of zeros; frames
/// concatenate (CMP: every `-d` reads concatenated members).
fn zeros_frame(filter: &str) -> Vec<u8> {
    sh(&format!("head -c 64M /dev/zero | {filter} -c -q -9"), b"")
}

/// A v4 chunk as upstream seals it: `scrypt enc` with `BACKUP-ID!NAME!PASS` (V4-2).
fn seal_chunk(name: &str, plain: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in"), dir.path().join("out"));
    fs::write(&input, plain).unwrap();
    let pass = format!("{BACKUP_ID}!{name}!{PASS}\n");
    let mut cmd = Command::new("scrypt");
    cmd.args(["enc", "-P", "--logN", "10", "-r", "8", "-p", "1"])
        .arg(&input)
        .arg(&output)
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(pass.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    fs::read(&output).unwrap()
}

/// Write `v` into the numeric field `b[off..off + len]`: octal, or GNU base-256 (TAR-6)
/// when it does not fit.
fn tar_number(b: &mut [u8], off: usize, len: usize, v: u64) {
    let octal = format!("{v:0w$o}\0", w = len - 1);
    if octal.len() == len {
        b[off..off + len].copy_from_slice(octal.as_bytes());
    } else {
        b[off..off + len].fill(0);
        b[off] = 0x80;
        b[off + len - 8..off + len].copy_from_slice(&v.to_be_bytes());
    }
}

/// An inner tar header; `gnu` selects the old GNU magic (which `S` entries carry).
fn tar_header(name: &str, typeflag: u8, size: u64, gnu: bool) -> [u8; 512] {
    let mut b = [0u8; 512];
    b[..name.len()].copy_from_slice(name.as_bytes());
    tar_number(&mut b, 100, 8, 0o644);
    tar_number(&mut b, 108, 8, 0);
    tar_number(&mut b, 116, 8, 0);
    tar_number(&mut b, 124, 12, size);
    tar_number(&mut b, 136, 12, 1_600_000_000);
    b[156] = typeflag;
    b[257..265].copy_from_slice(if gnu { b"ustar  \0" } else { b"ustar\x0000" });
    b
}

fn checksum(b: &mut [u8; 512]) {
    b[148..156].fill(b' ');
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// One pax record `LEN key=value\n` (TAR-5), LEN counting itself.
fn pax_record(key: &str, value: &str) -> String {
    let body = format!(" {key}={value}\n");
    let mut len = body.len() + 1;
    while format!("{len}{body}").len() != len {
        len += 1;
    }
    format!("{len}{body}")
}

fn pad512(v: &mut Vec<u8>) {
    v.resize(v.len().div_ceil(512) * 512, 0);
}

/// `base` with `vm3/private.img` replaced by the chunks of `stream` (the compressed inner
/// tar), each sealed as upstream does: authentic, so only the layers below the MAC can
/// refuse it.
fn with_private_img(base: &[u8], stream: &[u8]) -> Vec<u8> {
    let mut ms = members(base);
    let at = find(&ms, "vm3/private.img.000.enc");
    ms.retain(|m| !m.name.starts_with("vm3/private.img."));
    let chunks: Vec<Member> = stream
        .chunks(100 << 20)
        .enumerate()
        .map(|(i, c)| {
            let name = format!("vm3/private.img.{i:03}");
            Member {
                data: seal_chunk(&name, c),
                name: format!("{name}.enc"),
            }
        })
        .collect();
    ms.splice(at..at, chunks);
    build(&ms)
}

/// A v4 archive compressed by `filter` with `work` (vm3, backup-size 188 KiB) in it, the
/// example's passphrase and backup-id: the example itself for gzip, else made by the
/// fixture scripts with the real tools.
fn base_archive(filter: &str) -> Vec<u8> {
    if filter == "gzip" {
        return fs::read(example()).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("src"), dir.path().join("z.bin"));
    let scripts = repo_root().join("tests/fixtures");
    run_ok(Command::new(scripts.join("make-sources.sh")).arg(&src));
    run_ok(
        Command::new(scripts.join("make-archive.sh"))
            .args(["--version", "4", "--compression", filter, "--vms", "work"])
            .args(["--backup-id", BACKUP_ID, "--passphrase-file"])
            .arg(example_pass())
            .arg(&src)
            .arg(&out),
    );
    fs::read(&out).unwrap()
}

/// An archive file in a fresh directory, which the run must leave as it found it.
struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new(archive: &[u8]) -> Case {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.bin"), archive).unwrap();
        Case { dir }
    }

    /// `verify --json a.bin EXTRA…` in the directory, which must still hold only a.bin.
    fn verify(&self, extra: &[&str]) -> Measured {
        let m = measure(
            verifier(&["verify", "--json"])
                .args(extra)
                .arg("a.bin")
                .current_dir(self.dir.path()),
        );
        m.assert_clean();
        let names: Vec<_> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.bin"], "verify wrote something");
        m
    }

    /// `extract --json --to out a.bin work EXTRA…`; fails unless nothing of vm3's private
    /// image is left (final or temporary) and no file under `out` is large or uses disk
    /// beyond the small files of the example.
    fn extract(&self, extra: &[&str]) -> Measured {
        let out = self.dir.path().join("out");
        let m = measure(
            verifier(&["extract", "--json", "--to", "out"])
                .args(extra)
                .args(["a.bin", "work"])
                .current_dir(self.dir.path()),
        );
        m.assert_clean();
        for f in walk(&out) {
            let meta = fs::symlink_metadata(&f).unwrap();
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            assert!(!name.contains("private.img"), "left {}", f.display());
            assert!(!name.contains("qbackup-partial"), "left {}", f.display());
            assert!(meta.len() < MIB && meta.blocks() < 2048, "{}", f.display());
        }
        m
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Refused with `class` (exit code `code`) in bounded time and memory; its message
/// contains `says`.
fn assert_refused(m: &Measured, code: i32, class: &str, says: &str, cpu: Duration, rss: u64) {
    let msg = m.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        (m.code, m.class().as_str()),
        (Some(code), class),
        "{msg}\n{}",
        m.stderr
    );
    eprintln!(
        "refused ({class}) in {:?} CPU, peak RSS {} MiB: {msg}",
        m.cpu,
        m.peak_rss / MIB
    );
    assert!(msg.contains(says), "{msg:?} does not say {says:?}");
    assert!(m.cpu < cpu, "CPU {:?} >= {cpu:?}: {msg}", m.cpu);
    assert!(
        m.peak_rss < rss,
        "peak RSS {} MiB >= {} MiB: {msg}",
        m.peak_rss / MIB,
        rss / MIB
    );
}

/// Small bounds for a refusal: the example costs a few KDFs at logN 10.
const QUICK: Duration = Duration::from_secs(3);
const SMALL: u64 = 96 * MIB;

/// `vm3/private.img` as a regular entry of `claimed` bytes followed by `frames` × 64 MiB
/// of compressed zeros (a complete bomb when `claimed` = `frames` × 64 MiB).
fn regular_bomb(filter: &str, claimed: u64, frames: usize) -> Vec<u8> {
    let mut h = tar_header("vm3/private.img", b'0', claimed, false);
    checksum(&mut h);
    let mut s = compress(filter, &h);
    let frame = zeros_frame(filter);
    for _ in 0..frames {
        s.extend_from_slice(&frame);
    }
    s.extend_from_slice(&compress(filter, &[0u8; 1024]));
    s
}

/// VER-4, LIM-49, LIM-27: a gzip bomb (16 GiB of zeros in 16 MiB) and a zstd bomb (64 GiB
/// in a few MiB) as `private.img` of authentic archives, whose volume-config says the
/// volume has 2 GiB (and whose VM declares a backup-size of 188 KiB), are refused as
/// `limit-exceeded` from the entry header, before any of the data is inflated: by default
/// (the volume's size) and with `--strict-backup-size` (the declared size), in seconds of
/// CPU and little memory, with nothing written by verify or extract.
#[test]
fn decompression_bombs_stop_at_the_volume_size() {
    for (filter, claimed, frames) in [("gzip", 16 * GIB, 256), ("zstd", 64 * GIB, 1024)] {
        let stream = regular_bomb(filter, claimed, frames);
        let archive = with_private_img(&base_archive(filter), &stream);
        for args in [&[][..], &["--strict-backup-size"][..]] {
            let case = Case::new(&archive);
            let m = case.verify(args);
            assert_refused(&m, 15, "limit-exceeded", "VER-4", QUICK, SMALL);
            let m = case.extract(args);
            assert_refused(&m, 15, "limit-exceeded", "VER-4", QUICK, SMALL);
        }
    }
}

/// VER-4, DEV-14: a VM holding more data than its declared backup-size (here 1 GiB of
/// zeros in `work`, which declares 188 KiB) verifies; the excess is a warning
/// in the JSON report with both figures, and in the text report; `--strict-backup-size`
/// refuses it.
#[test]
fn backup_size_is_advisory_and_reported_with_both_figures() {
    let case = Case::new(&with_private_img(
        &base_archive("gzip"),
        &regular_bomb("gzip", GIB, 16),
    ));
    let m = case.verify(&[]);
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    let doc = m.json();
    assert_eq!(doc["ok"], true);
    let w = &doc["warnings"][0];
    assert_eq!(w["kind"], "backup-size", "{doc}");
    assert_eq!(w["vm"], "work");
    assert_eq!(w["declared"], 192_512);
    assert!(w["data"].as_u64().unwrap() >= GIB, "{w}");
    let text = verifier(&["verify", "a.bin"])
        .current_dir(case.dir.path())
        .output()
        .unwrap();
    assert_eq!(text.status.code(), Some(0));
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(
        out.contains("warning [VM work]") && out.contains("192512"),
        "{out}"
    );
    let m = case.verify(&["--strict-backup-size"]);
    assert_refused(&m, 15, "limit-exceeded", "backup-size", QUICK, SMALL);
}

/// VER-4 opt-out (`--ignore-backup-size`, DEV-14): what bounds a bomb then is LIM-12 on
/// each file's logical size, checked from the entry header (a 32 TiB claim is refused
/// before any data is inflated), and the verifier's streaming (RES-1): a complete 2 GiB
/// zstd bomb verifies in constant memory with nothing written, costing CPU in proportion
/// to its expanded size (README "Memory and disk"), and extracts as a hole (EXT-3).
#[test]
fn without_the_backup_size_check_file_size_and_streaming_bound_a_bomb() {
    let base = base_archive("zstd");
    let claim = 32u64 << 40;
    let case = Case::new(&with_private_img(&base, &regular_bomb("zstd", claim, 4)));
    let m = case.verify(&["--ignore-backup-size"]);
    assert_refused(&m, 15, "limit-exceeded", "exceeds", QUICK, SMALL);
    let m = case.extract(&["--ignore-backup-size"]);
    assert_refused(&m, 15, "limit-exceeded", "exceeds", QUICK, SMALL);

    let case = Case::new(&with_private_img(&base, &regular_bomb("zstd", 2 * GIB, 32)));
    let m = case.verify(&["--ignore-backup-size"]);
    eprintln!(
        "2 GiB bomb verified in {:?} CPU, peak RSS {} MiB",
        m.cpu,
        m.peak_rss / MIB
    );
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    let notes = m.json()["notes"].to_string();
    assert!(notes.contains("VER-4"), "{notes}");
    assert!(m.peak_rss < SMALL, "{} MiB", m.peak_rss / MIB);
    // Against the same archive with the strict check: refused at once.
    let checked = case.verify(&["--strict-backup-size"]);
    assert_refused(&checked, 15, "limit-exceeded", "VER-4", QUICK, SMALL);
    assert!(m.cpu > checked.cpu, "the bomb was not inflated");
    let out = case.dir.path().join("out");
    let m = measure(
        verifier(&["extract", "--json", "--ignore-backup-size", "--to", "out"])
            .args(["a.bin", "work"])
            .current_dir(case.dir.path()),
    );
    m.assert_clean();
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    let img = fs::metadata(out.join("work/private.img")).unwrap();
    assert_eq!(img.len(), 2 * GIB);
    assert!(img.blocks() < 64, "{} blocks written", img.blocks());
}

/// LIM-23, TAR-8: a bomb after the inner tar's end (a valid 512-byte entry, the end
/// marker, then 64 GiB of compressed zeros) stops after LIM-23 bytes of padding.
#[test]
fn zeros_after_the_inner_tar_stop_at_the_padding_limit() {
    let mut h = tar_header("vm3/private.img", b'0', 512, false);
    checksum(&mut h);
    let mut tar = h.to_vec();
    tar.extend_from_slice(&[b'x'; 512]);
    tar.extend_from_slice(&[0u8; 1024]);
    let mut stream = compress("zstd", &tar);
    let frame = zeros_frame("zstd");
    for _ in 0..1024 {
        stream.extend_from_slice(&frame);
    }
    let case = Case::new(&with_private_img(&base_archive("zstd"), &stream));
    for m in [case.verify(&[]), case.extract(&[])] {
        assert_refused(&m, 15, "limit-exceeded", "zero bytes after", QUICK, SMALL);
    }
}

/// TAR-2, TAR-9, LIM-12: a GNU old sparse entry whose realsize is 2^60 bytes (one 512-byte
/// run, base-256 realsize) is refused from its header in verify and extract; no huge
/// sparse file is created.
#[test]
fn gnu_sparse_map_claiming_an_exabyte_is_refused() {
    let mut h = tar_header("vm3/private.img", b'S', 512, true);
    tar_number(&mut h, 386, 12, 0);
    tar_number(&mut h, 398, 12, 512);
    h[482] = 0;
    tar_number(&mut h, 483, 12, 1 << 60);
    checksum(&mut h);
    let mut tar = h.to_vec();
    tar.extend_from_slice(&[b'x'; 512]);
    tar.extend_from_slice(&[0u8; 1024]);
    let case = Case::new(&with_private_img(
        &base_archive("gzip"),
        &compress("gzip", &tar),
    ));
    for m in [case.verify(&[]), case.extract(&[])] {
        assert_refused(&m, 15, "limit-exceeded", "exceeds", QUICK, SMALL);
    }
}

/// TAR-3, TAR-9, LIM-12: the same claim as PAX 1.0 sparse (`GNU.sparse.realsize` of 2^60,
/// upstream `qubes.tarwriter` layout) is refused in verify and extract; no file created.
#[test]
fn pax_sparse_map_claiming_an_exabyte_is_refused() {
    let records = [
        pax_record("GNU.sparse.major", "1"),
        pax_record("GNU.sparse.minor", "0"),
        pax_record("GNU.sparse.name", "vm3/private.img"),
        pax_record("GNU.sparse.realsize", &(1u64 << 60).to_string()),
    ]
    .concat();
    let mut x = tar_header(
        "vm3/PaxHeaders.0/private.img",
        b'x',
        records.len() as u64,
        false,
    );
    checksum(&mut x);
    let mut tar = x.to_vec();
    tar.extend_from_slice(records.as_bytes());
    pad512(&mut tar);
    let mut map = b"1\n0\n512\n".to_vec();
    pad512(&mut map);
    let mut h = tar_header("vm3/GNUSparseFile.0/private.img", b'0', 1024, false);
    checksum(&mut h);
    tar.extend_from_slice(&h);
    tar.extend_from_slice(&map);
    tar.extend_from_slice(&[b'x'; 512]);
    tar.extend_from_slice(&[0u8; 1024]);
    let case = Case::new(&with_private_img(
        &base_archive("gzip"),
        &compress("gzip", &tar),
    ));
    for m in [case.verify(&[]), case.extract(&[])] {
        assert_refused(&m, 15, "limit-exceeded", "exceeds", QUICK, SMALL);
    }
}

/// A scrypt container prefix (V4-1) with the given parameters, a valid checksum, and a
/// header MAC and payload that no KDF ever gets to check.
fn scrypt_container(log_n: u8, r: u32, p: u32) -> Vec<u8> {
    let mut c = b"scrypt\0".to_vec();
    c.push(log_n);
    c.extend_from_slice(&r.to_be_bytes());
    c.extend_from_slice(&p.to_be_bytes());
    c.extend_from_slice(&[7u8; 32]);
    let digest = String::from_utf8(sh("sha256sum", &c)).unwrap();
    for i in 0..16 {
        c.push(u8::from_str_radix(&digest[2 * i..2 * i + 2], 16).unwrap());
    }
    c.extend_from_slice(&[0u8; 32 + 64 + 32]);
    c
}

/// V4-4, LIM-19: scrypt containers demanding 2^60 bytes of KDF memory (logN 40, r 8192,
/// p 1) — as `backup-header.hmac` and as a data chunk — are refused before any KDF runs.
#[test]
fn scrypt_demanding_an_exabyte_is_refused_before_the_kdf() {
    let forged = scrypt_container(40, 8192, 1);
    for member in ["backup-header.hmac", "vm3/private.img.000.enc"] {
        let mut ms = members(&fs::read(example()).unwrap());
        let i = find(&ms, member);
        ms[i].data = forged.clone();
        let case = Case::new(&build(&ms));
        let m = case.verify(&[]);
        assert_refused(&m, 15, "limit-exceeded", "LIM-19", QUICK, SMALL);
        assert!(m.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("1152921504606846976 bytes"));
    }
}

/// LIM-1, LIM-2, LIM-3, OUT-5: `backup-header` and `backup-header.hmac` at their limit
/// (4096 bytes) are read and fail authentication; one byte more, or an outer header
/// claiming 8 GiB with no data behind it, is refused as `limit-exceeded` from the outer
/// header, before any data is read; a `qubes.xml.000.enc` of LIM-3 + 1 bytes likewise.
#[test]
fn header_and_mac_members_at_their_size_limits() {
    let base = members(&fs::read(example()).unwrap());
    let resized = |name: &str, len: usize| {
        let mut ms = base.clone();
        let i = find(&ms, name);
        ms[i].data.resize(len, b'\n');
        build(&ms)
    };
    for (name, len, code, class) in [
        ("backup-header", 4096, 11, "header-failure"),
        ("backup-header", 4097, 15, "limit-exceeded"),
        ("backup-header.hmac", 4096, 11, "header-failure"),
        ("backup-header.hmac", 4097, 15, "limit-exceeded"),
        ("qubes.xml.000.enc", (1 << 20) + 1, 15, "limit-exceeded"),
    ] {
        let m = Case::new(&resized(name, len)).verify(&[]);
        let says = if code == 15 { "exceeds the limit" } else { "" };
        assert_refused(&m, code, class, says, QUICK, SMALL);
    }
    let mut huge = qbackup_tests::ustar_header("backup-header", (8 << 30) - 1, b'0').to_vec();
    huge.extend_from_slice(&[b'v'; 512]);
    let m = Case::new(&huge).verify(&[]);
    assert_refused(&m, 15, "limit-exceeded", "exceeds the limit", QUICK, SMALL);
}

/// The example with `work`'s declared backup-size set to 0, which upstream means as
/// "unlimited" (VER-4 applies to non-zero sizes only): qubes.xml extracted by the verifier,
/// edited, and sealed again with the real tools (GNU tar, gzip, scrypt).
fn example_with_unlimited_work() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    run_ok(
        Command::new(VERIFY)
            .args(["extract", "--no-progress", "--passphrase-file"])
            .arg(example_pass())
            .arg("--to")
            .arg(dir.path().join("out"))
            .arg(example()),
    );
    let xml = fs::read_to_string(dir.path().join("out/qubes.xml")).unwrap();
    let edited = xml.replacen(
        "<feature name=\"backup-size\">192512</feature>",
        "<feature name=\"backup-size\">0</feature>",
        1,
    );
    assert_ne!(xml, edited);
    fs::write(dir.path().join("qubes.xml"), edited).unwrap();
    let tar = sh(
        &format!(
            "tar -C '{}' -cf - qubes.xml | gzip -c",
            dir.path().display()
        ),
        b"",
    );
    let mut ms = members(&fs::read(example()).unwrap());
    let i = find(&ms, "qubes.xml.000.enc");
    ms[i].data = seal_chunk("qubes.xml.000", &tar);
    build(&ms)
}

/// VER-4, LIM-12: a VM whose declared backup-size is 0 (upstream: unlimited) is bounded
/// like `--ignore-backup-size`: a 32 TiB claim is refused from the entry header; a
/// complete 2 GiB gzip bomb verifies in constant memory with nothing written.
#[test]
fn a_vm_declaring_size_zero_is_bounded_by_the_file_size_limit() {
    let base = example_with_unlimited_work();
    let case = Case::new(&with_private_img(&base, &regular_bomb("gzip", 32 << 40, 2)));
    let m = case.verify(&[]);
    assert_refused(&m, 15, "limit-exceeded", "exceeds", QUICK, SMALL);
    let case = Case::new(&with_private_img(&base, &regular_bomb("gzip", 2 * GIB, 32)));
    let m = case.verify(&[]);
    eprintln!(
        "2 GiB gzip bomb in a size-0 VM verified in {:?} CPU, peak RSS {} MiB",
        m.cpu,
        m.peak_rss / MIB
    );
    assert_eq!(m.code, Some(0), "{}", m.stderr);
    assert!(m.peak_rss < SMALL, "{} MiB", m.peak_rss / MIB);
}

/// ERR-3: a closed stderr (its reader gone) does not turn a finding into a crash: the
/// exit code stays the finding's (20 for an archive that cannot be opened, 15 for a
/// refused bomb), not 101 from a panic while printing.
#[test]
fn closed_stderr_keeps_the_exit_code() {
    let mut child = verifier(&["verify"])
        .arg("/nonexistent/a.bin")
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let m = wait_measured(child);
    assert_eq!(m.code, Some(20));
    let mut ms = members(&fs::read(example()).unwrap());
    let i = find(&ms, "backup-header");
    ms[i].data.resize(4097, b'\n');
    let case = Case::new(&build(&ms));
    let mut child = verifier(&["verify"])
        .arg("a.bin")
        .current_dir(case.dir.path())
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let m = wait_measured(child);
    assert_eq!(m.code, Some(15));
}
