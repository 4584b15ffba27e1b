//! Faults of `qbackup-pack create`, through the release binary (issue 5 item 3): SIGINT
//! and SIGTERM with `--out FILE` (SIGINT alone is in `pack.rs`) and `--out -`, and a
//! consumer closing the pipe early. Each must exit with its documented code (130
//! cancelled, 20 I/O), say what it removed, leave nothing behind, and never panic.

use std::fs;
use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use qbackup_tests::signals::{self, kill};

const PACK: &str = env!("CARGO_BIN_EXE_qbackup-pack");

/// A directory with `private.img` (`mib` MiB of incompressible bytes), a passphrase file and
/// a one-VM plan.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new(mib: usize) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut s: u64 = 0x243f_6a88_85a3_08d3;
        let bytes: Vec<u8> = (0..mib << 17)
            .flat_map(|_| {
                s ^= s >> 12;
                s ^= s << 25;
                s ^= s >> 27;
                s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes()
            })
            .collect();
        fs::write(dir.path().join("private.img"), bytes).unwrap();
        fs::write(dir.path().join("pass"), "fault pass\n").unwrap();
        let plan = serde_json::json!({"vms": [{"name": "work", "class": "AppVM",
            "label": "red", "qid": 3, "volumes": [{"name": "private",
            "path": dir.path().join("private.img")}]}]});
        fs::write(dir.path().join("plan.json"), plan.to_string()).unwrap();
        Fixture { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `create --out OUT` with `extra` options, run in the fixture directory.
    fn create(&self, out: &str, extra: &[&str]) -> Command {
        let mut c = Command::new(PACK);
        c.args(["create", "--plan", "plan.json", "--passphrase-file", "pass"])
            .args(["--out", out, "--no-progress"])
            .args(extra)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// The fixture directory holds its inputs and nothing else.
    fn assert_nothing_left(&self) {
        let mut names: Vec<String> = fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["pass", "plan.json", "private.img"]);
    }
}

/// Slow on purpose: one KDF of logN 17 per 4 KiB chunk, one worker.
const SLOW: &[&str] = &[
    "--scrypt-log-n",
    "17",
    "--jobs",
    "1",
    "--chunk-size",
    "4096",
];

fn wait_for(what: &str, done: impl FnMut() -> bool) {
    signals::wait_for(what, Duration::from_secs(30), done);
}

/// Wait for `child` (its stdout already taken or piped), failing on a hang.
fn finish(child: Child) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output()));
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            // SAFETY: the hung child we spawned.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("qbackup-pack hung");
        }
    }
}

fn assert_no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("internal error"),
        "{stderr}"
    );
}

/// README "qbackup-pack create": SIGTERM (like SIGINT, tested in pack.rs) while writing
/// `--out FILE` removes `FILE.partial`, names it on stderr, exits 130; no `FILE`.
#[test]
fn sigterm_removes_and_names_the_partial_file() {
    let f = Fixture::new(1);
    let child = f.create("c.bin", SLOW).spawn().unwrap();
    let partial = f.path("c.bin.partial");
    wait_for("c.bin.partial", || partial.exists());
    // Let it run a few KDFs (its output is buffered, so the file may still be empty).
    std::thread::sleep(Duration::from_millis(300));
    kill(&child, libc::SIGTERM);
    let o = finish(child);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{stderr}");
    assert!(
        stderr.contains(&format!("removed {}", partial.display()))
            || stderr.contains("removed c.bin.partial"),
        "{stderr}"
    );
    assert_no_panic(&stderr);
    f.assert_nothing_left();
}

/// README "qbackup-pack create": SIGINT or SIGTERM while streaming to stdout (`--out -`)
/// exits 130 with "cancelled" on stderr and no temporary anywhere.
#[test]
fn signals_while_streaming_to_stdout() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let f = Fixture::new(1);
        let mut child = f.create("-", SLOW).spawn().unwrap();
        let mut out = child.stdout.take().unwrap();
        // Wait until the archive has started (the header is written first, WRT-1).
        let mut head = [0u8; 512];
        out.read_exact(&mut head).unwrap();
        assert!(head.starts_with(b"backup-header"));
        let reader = std::thread::spawn(move || {
            let mut rest = Vec::new();
            let _ = out.read_to_end(&mut rest);
        });
        kill(&child, sig);
        let o = finish(child);
        reader.join().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(130), "signal {sig}: {stderr}");
        assert!(stderr.contains("cancelled"), "{stderr}");
        assert_no_panic(&stderr);
        f.assert_nothing_left();
    }
}

/// A consumer that stops reading: `create --out -` with its stdout closed, at once or
/// after 1000 bytes, exits 20 (I/O) with a one-line reason, no panic, no hang, and
/// leaves nothing behind (the archive is incomplete, so success would be a lie).
#[test]
fn consumer_closing_the_pipe_early() {
    let f = Fixture::new(8);
    let fast = ["--scrypt-log-n", "10", "--compression", "none"];
    // Closed before the first byte.
    let mut child = f.create("-", &fast).spawn().unwrap();
    drop(child.stdout.take());
    let o = finish(child);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(20), "{stderr}");
    assert!(stderr.contains("Broken pipe"), "{stderr}");
    assert_no_panic(&stderr);
    f.assert_nothing_left();
    // After 1000 bytes, with a real shell pipeline.
    let script = format!(
        "'{PACK}' create --plan plan.json --passphrase-file pass --out - --no-progress \
         --scrypt-log-n 10 --compression none 2>err | head -c 1000 | wc -c; \
         echo ${{PIPESTATUS[0]}}; cat err; rm err"
    );
    let o = Command::new("timeout")
        .args(["60", "bash", "-c", &script])
        .current_dir(f.dir.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.first().map(|l| l.trim()), Some("1000"), "{text}");
    assert_eq!(lines.get(1), Some(&"20"), "{text}");
    assert!(text.contains("Broken pipe"), "{text}");
    assert_no_panic(&text);
    f.assert_nothing_left();
}

/// A closed stderr (its reader gone, EPIPE) changes nothing: a successful `create`
/// still exits 0 with its archive in place, and SIGINT still removes `FILE.partial`
/// and exits 130 instead of hanging.
#[test]
fn closed_stderr_changes_nothing() {
    let f = Fixture::new(1);
    let mut child = f
        .create("ok.bin", &["--scrypt-log-n", "10"])
        .spawn()
        .unwrap();
    drop(child.stderr.take());
    let o = finish(child);
    assert_eq!(o.status.code(), Some(0));
    assert!(f.path("ok.bin").exists() && !f.path("ok.bin.partial").exists());
    fs::remove_file(f.path("ok.bin")).unwrap();

    let mut child = f.create("c.bin", SLOW).spawn().unwrap();
    drop(child.stderr.take());
    let partial = f.path("c.bin.partial");
    wait_for("c.bin.partial", || partial.exists());
    std::thread::sleep(Duration::from_millis(300));
    kill(&child, libc::SIGINT);
    let o = finish(child);
    assert_eq!(o.status.code(), Some(130));
    f.assert_nothing_left();
}

/// README "qbackup-pack create", RST-7: SIGINT during `--verify` also kills the verifier
/// child, removes `FILE.partial` and leaves no process behind.
#[test]
fn sigint_with_verify_stops_the_verifier_child() {
    let f = Fixture::new(1);
    let verifier = PathBuf::from(PACK).with_file_name("qbackup-verify");
    if !verifier.exists() {
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "-p", "qbackup-verify", "--bin", "qbackup-verify"]);
        if verifier.parent().is_some_and(|p| p.ends_with("release")) {
            build.arg("--release");
        }
        assert!(build.status().unwrap().success());
    }
    let child = f
        .create("v.bin", SLOW)
        .args(["--verify", "--verifier"])
        .arg(&verifier)
        .spawn()
        .unwrap();
    let pid = child.id();
    let children = format!("/proc/{pid}/task/{pid}/children");
    let mut kid = 0;
    wait_for("the verifier child", || {
        kid = fs::read_to_string(&children)
            .unwrap_or_default()
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        kid > 0
    });
    std::thread::sleep(Duration::from_millis(300));
    kill(&child, libc::SIGINT);
    let o = finish(child);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("removed"), "{stderr}");
    assert_no_panic(&stderr);
    f.assert_nothing_left();
    // The child was reaped by init or is gone: it must not live on.
    wait_for("the verifier child to end", || {
        fs::read_to_string(format!("/proc/{kid}/stat")).map_or(true, |s| {
            s.contains(") Z ") || !s.contains("qbackup-verify")
        })
    });
}
