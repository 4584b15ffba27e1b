//! Regressions for issue 9 item 6: `qbackup-pack create` with a qubes.xml the writer
//! refuses printed `archive incomplete: producer stopped (io)` and exited 20. The error
//! that explains a failure must be the one the user sees, with its own exit code (README
//! "qbackup-pack create": 2 for a refused plan, 20 for I/O), and a refused plan writes
//! nothing. Each test runs the release binary.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const PACK: &str = env!("CARGO_BIN_EXE_qbackup-pack");
const PASS: &str = "issue nine";

/// Incompressible bytes.
fn noise(len: usize, mut s: u64) -> Vec<u8> {
    (0..len.div_ceil(8))
        .flat_map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            s.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes()
        })
        .take(len)
        .collect()
}

fn assert_no_producer_stopped(stderr: &str) {
    assert!(!stderr.contains("producer stopped"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// The directory's entries, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// One core3 domain of a hand-written qubes.xml (the writer itself refuses shared qids).
fn domain(name: &str, qid: u32) -> String {
    format!(
        "<domain id=\"domain-{qid}\" class=\"AppVM\"><properties>\
         <property name=\"qid\">{qid}</property><property name=\"name\">{name}</property>\
         <property name=\"label\">label-1</property></properties><features/>\
         <volume-config><volume name=\"private\" save_on_stop=\"True\"/></volume-config>\
         </domain>"
    )
}

/// A `--qubes-dir` tree whose qubes.xml gives `work` and `mail` both qid 10 (as upstream's
/// own v4 test qubes.xml does for two DispVM templates): the reader accepts it (XML-3), the
/// writer cannot name both `vm10/`.
fn shared_qid_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("qubes");
    let xml = format!(
        "<?xml version='1.0' encoding='UTF-8'?>\n<qubes><labels><label id=\"label-1\">red</label>\
         </labels><properties/><domains><domain id=\"domain-0\" class=\"AdminVM\"><properties>\
         <property name=\"qid\">0</property><property name=\"label\">label-1</property>\
         </properties></domain>{}{}</domains></qubes>\n",
        domain("work", 10),
        domain("mail", 10)
    );
    for vm in ["work", "mail"] {
        fs::create_dir_all(d.join("appvms").join(vm)).unwrap();
        fs::write(
            d.join("appvms").join(vm).join("private.img"),
            noise(5000, 7),
        )
        .unwrap();
    }
    fs::write(d.join("qubes.xml"), xml).unwrap();
    dir
}

fn create_qubes_dir(dir: &Path, out: &str, extra: &[&str]) -> Output {
    Command::new(PACK)
        .args(["create", "--qubes-dir", "qubes", "--out", out])
        .args(["--scrypt-log-n", "10", "--no-progress"])
        .args(extra)
        .current_dir(dir)
        .env("QBACKUP_PASSPHRASE", PASS)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn issue9_refused_qubes_xml_is_reported_with_exit_2_and_writes_nothing() {
    let dir = shared_qid_dir();
    let before = listing(dir.path());
    for extra in [&[][..], &["--format", "3"][..]] {
        let o = create_qubes_dir(dir.path(), "a.bin", extra);
        let e = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {e}");
        // Format 3 orders VMs by name (WRT-6), format 4 as qubes.xml does.
        assert!(
            e.contains("qubes.xml writer: duplicate qid 10: VMs \"work\" and \"mail\"")
                || e.contains("qubes.xml writer: duplicate qid 10: VMs \"mail\" and \"work\""),
            "{extra:?}: {e}"
        );
        assert_no_producer_stopped(&e);
        assert!(!e.contains("removed"), "no partial file to remove: {e}");
        // Refused before the output was opened: no a.bin, no a.bin.partial.
        assert_eq!(listing(dir.path()), before);
    }
}

#[test]
fn issue9_refused_qubes_xml_writes_nothing_to_stdout() {
    let dir = shared_qid_dir();
    let o = create_qubes_dir(dir.path(), "-", &[]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("duplicate qid 10"), "{e}");
    assert_no_producer_stopped(&e);
    assert!(o.stdout.is_empty(), "{} bytes on stdout", o.stdout.len());
}

#[test]
fn issue9_refused_qubes_xml_with_verify_starts_no_verifier() {
    let dir = shared_qid_dir();
    // A verifier that does not exist would fail with "starting verifier" if it were
    // started; the refusal comes first.
    let o = create_qubes_dir(
        dir.path(),
        "a.bin",
        &["--verify", "--verifier", "/nonexistent/qbackup-verify"],
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{e}");
    assert!(e.contains("duplicate qid 10"), "{e}");
    assert!(!e.contains("starting verifier"), "{e}");
    assert_no_producer_stopped(&e);
    assert!(!dir.path().join("a.bin.partial").exists());
}

/// A plan with `big` (many small chunks behind a slow KDF) before `late`, whose image is
/// deleted once the run has started: the producer reaches it only after every chunk of
/// `big` went through the one KDF worker.
struct Vanishing {
    dir: tempfile::TempDir,
}

impl Vanishing {
    fn new() -> Vanishing {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        fs::write(p.join("big.img"), noise(256 << 10, 3)).unwrap();
        fs::write(p.join("late.img"), noise(4096, 5)).unwrap();
        let plan = serde_json::json!({"vms": [
            {"name": "big", "class": "AppVM", "label": "red", "qid": 3,
             "volumes": [{"name": "private", "path": p.join("big.img")}]},
            {"name": "late", "class": "AppVM", "label": "red", "qid": 4,
             "volumes": [{"name": "private", "path": p.join("late.img")}]}]});
        fs::write(p.join("plan.json"), plan.to_string()).unwrap();
        Vanishing { dir }
    }

    fn late(&self) -> PathBuf {
        self.dir.path().join("late.img")
    }

    /// Run `create --out out`, delete late.img as soon as `started` says so, and wait.
    fn run(&self, out: &str, extra: &[&str], started: impl Fn(&Path) -> bool) -> Output {
        let child = Command::new(PACK)
            .args([
                "create",
                "--plan",
                "plan.json",
                "--out",
                out,
                "--no-progress",
            ])
            .args([
                "--scrypt-log-n",
                "14",
                "--jobs",
                "1",
                "--chunk-size",
                "4096",
            ])
            .args(["--compression", "none"])
            .args(extra)
            .current_dir(self.dir.path())
            .env("QBACKUP_PASSPHRASE", PASS)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while !started(self.dir.path()) {
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the run never started"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        fs::remove_file(self.late()).unwrap();
        child.wait_with_output().unwrap()
    }
}

/// The .partial file exists: the plan was accepted and the sizes measured.
fn partial_exists(dir: &Path) -> bool {
    dir.join("v.bin.partial").exists()
}

#[test]
fn issue9_volume_vanishing_mid_run_is_an_io_error_naming_it() {
    let v = Vanishing::new();
    let o = v.run("v.bin", &[], partial_exists);
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(20), "{e}");
    let late = v.late().display().to_string();
    assert!(
        e.lines()
            .any(|l| l.contains(&late) && l.contains("No such file or directory")),
        "{e}"
    );
    assert_no_producer_stopped(&e);
    assert!(e.contains("removed"), "{e}");
    assert!(!v.dir.path().join("v.bin").exists());
    assert!(!v.dir.path().join("v.bin.partial").exists());
}

#[test]
fn issue9_volume_vanishing_with_verify_is_still_the_reported_error() {
    // With --verify, the verifier sees an incomplete archive and rejects it; the missing
    // file is what explains that, and it is what the user sees.
    let verifier = qbackup_tests::binaries::verifier_beside(PACK);
    let v = Vanishing::new();
    let o = v.run(
        "v.bin",
        &["--verify", "--verifier", verifier.to_str().unwrap()],
        partial_exists,
    );
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(20), "{e}");
    assert!(e.contains(&v.late().display().to_string()), "{e}");
    assert!(!e.contains("verification failed"), "{e}");
    assert_no_producer_stopped(&e);
    assert!(!v.dir.path().join("v.bin.partial").exists());
}
