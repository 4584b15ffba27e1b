//! Fault tests of `restore` and `qbackup-verify extract` (SPEC.md RST-5 … RST-7, EXT-2):
//! the verifier child killed with SIGKILL mid-restore, a full disk (RLIMIT_FSIZE through
//! `prlimit`) during restore and extract, and SIGINT of both. Afterwards DIR holds only
//! complete files, no temporary, and a pre-existing file is intact.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use libc::{SIGINT, SIGKILL};
use qbackup_tests::binaries::{evil_child_beside, verifier_beside};
use qbackup_tests::signals::{self, signal};
use qbackup_tests::tree::files;

const PACK: &str = env!("CARGO_BIN_EXE_qbackup-pack");
const PASS: &str = "fault passphrase";

fn evil_child() -> PathBuf {
    evil_child_beside(PACK)
}

fn verifier() -> PathBuf {
    verifier_beside(PACK)
}

fn temporaries(dir: &Path) -> Vec<String> {
    files(dir)
        .into_iter()
        .filter(|f| f.contains(".qbackup-partial-"))
        .collect()
}

/// The temporaries of `root.img` under `dir`.
fn root_img_temporaries(dir: &Path) -> Vec<String> {
    temporaries(dir)
        .into_iter()
        .filter(|t| t.contains("root.img"))
        .collect()
}

/// Poll `cond` for up to 60 s.
fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    signals::wait_for(what, Duration::from_secs(60), cond);
}

/// Pids whose parent is `pid` (from /proc/*/stat).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may contain spaces, so split after the last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("pass"), format!("{PASS}\n")).expect("pass");
        fs::write(dir.path().join("archive"), b"bytes for the child").expect("archive");
        Fixture { dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// `qbackup-pack restore` with the malicious child playing `scenario`.
    /// `restore` through the evil child's `silence` scenario (stalls after the first
    /// file), spawned with stderr piped.
    fn silent_restore(&self) -> Child {
        self.restore_cmd("silence", &[])
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn")
    }

    fn restore_cmd(&self, scenario: &str, prefix: &[&str]) -> Command {
        let mut c = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(PACK);
                c
            }
            None => Command::new(PACK),
        };
        c.arg("restore")
            .arg(self.path("archive"))
            .arg("--to")
            .arg(self.path("out"))
            .arg("--passphrase-file")
            .arg(self.path("pass"))
            .arg("--verifier-cmd")
            .arg(format!("exec {} {scenario}", evil_child().display()));
        c
    }

    /// A packer-made v4 archive of one VM with a `size`-byte dense image, in many small
    /// chunks, so that extracting it takes a while.
    fn archive(&self, size: usize) -> PathBuf {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let data: Vec<u8> = (0..size)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        fs::write(self.path("private.img"), &data).expect("image");
        let plan = serde_json::json!({"vms": [{"name": "work", "class": "AppVM", "label": "red",
            "qid": 3, "volumes": [{"name": "private", "path": self.path("private.img")}]}]});
        fs::write(self.path("plan.json"), plan.to_string()).expect("plan");
        let out = self.path("a.bin");
        let o = Command::new(PACK)
            .args(["create", "--plan"])
            .arg(self.path("plan.json"))
            .arg("--passphrase-file")
            .arg(self.path("pass"))
            .arg("--out")
            .arg(&out)
            .args([
                "--scrypt-log-n",
                "14",
                "--chunk-size",
                "65536",
                "--compression",
                "none",
                "--no-progress",
            ])
            .output()
            .expect("pack");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out
    }

    fn extract_cmd(&self, archive: &Path, prefix: &[&str]) -> Command {
        let mut c = match prefix.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(verifier());
                c
            }
            None => Command::new(verifier()),
        };
        c.args([
            "extract",
            "--jobs",
            "1",
            "--no-progress",
            "--passphrase-file",
        ])
        .arg(self.path("pass"))
        .arg("--to")
        .arg(self.path("out"))
        .arg(archive);
        c
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// RST-5, RST-6: the verifier child killed with SIGKILL mid-file: the restore reports it
/// (truncated, "killed by signal 9"), the complete file stays, the partial one is gone.
#[test]
fn sigkill_of_the_child_mid_restore() {
    let f = Fixture::new();
    let child = f.silent_restore();
    let out = f.path("out");
    let root_img = || root_img_temporaries(&out);
    wait_for("the partial root.img", || !root_img().is_empty());
    let verifiers = children_of(child.id());
    assert_eq!(verifiers.len(), 1, "one verifier child");
    signal(verifiers[0], SIGKILL);
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(18), "{}", stderr(&o));
    assert!(stderr(&o).contains("killed by signal 9"), "{}", stderr(&o));
    assert_eq!(files(&out), ["work/private.img"]);
}

/// RST-5, RST-6: the real verifier child (`qbackup-verify emit`) killed with SIGKILL
/// while it streams an image: reported, and the image is not left, neither under its
/// final name nor as a temporary.
#[test]
fn sigkill_of_the_real_verifier_mid_restore() {
    let f = Fixture::new();
    let archive = f.archive(6 << 20);
    verifier();
    let child = Command::new(PACK)
        .arg("restore")
        .arg(&archive)
        .arg("--to")
        .arg(f.path("out"))
        .arg("--passphrase-file")
        .arg(f.path("pass"))
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = f.path("out");
    wait_for("the temporary of private.img", || {
        !temporaries(&out).is_empty()
    });
    let verifiers = children_of(child.id());
    assert_eq!(verifiers.len(), 1, "one verifier child");
    signal(verifiers[0], SIGKILL);
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(18), "{}", stderr(&o));
    assert!(stderr(&o).contains("killed by signal 9"), "{}", stderr(&o));
    assert!(files(&out).is_empty(), "{:?}", files(&out));
}

/// RST-7: SIGINT of `restore`: the child is killed, each temporary is removed and named
/// on stderr, the exit code is 130, and the complete file stays.
#[test]
fn sigint_of_restore() {
    let f = Fixture::new();
    let child = f.silent_restore();
    let out = f.path("out");
    let root_img = || root_img_temporaries(&out);
    wait_for("the partial root.img", || !root_img().is_empty());
    let temp = root_img().remove(0);
    let verifiers = children_of(child.id());
    signal(child.id(), SIGINT);
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("removed {}", out.join(&temp).display())),
        "{}",
        stderr(&o)
    );
    assert_eq!(files(&out), ["work/private.img"]);
    for v in verifiers {
        wait_for("the verifier to be gone", || {
            fs::read_to_string(format!("/proc/{v}/stat"))
                .map_or(true, |s| s.rsplit_once(") Z").is_some())
        });
    }
}

/// RST-7, EXT-2: SIGINT of `qbackup-verify extract`: temporaries removed and named, 130.
#[test]
fn sigint_of_extract() {
    let f = Fixture::new();
    let archive = f.archive(6 << 20);
    let child = f
        .extract_cmd(&archive, &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let out = f.path("out");
    let image = || -> Vec<String> {
        temporaries(&out)
            .into_iter()
            .filter(|t| t.contains("private.img"))
            .collect()
    };
    wait_for("the temporary of private.img", || !image().is_empty());
    let temp = image().remove(0);
    signal(child.id(), SIGINT);
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("removed {}", out.join(&temp).display())),
        "{}",
        stderr(&o)
    );
    // qubes.xml was complete and committed before the image started.
    assert_eq!(files(&out), ["qubes.xml"]);
}

/// RST-4, EXT-2: disk full (RLIMIT_FSIZE) during restore: io, no partial file under a
/// final name, no temporary; a pre-existing file of the same name is never touched.
#[test]
fn disk_full_during_restore() {
    let f = Fixture::new();
    let o = f
        .restore_cmd("good", &["prlimit", "--fsize=65536", "--"])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(20), "{}", stderr(&o));
    assert!(stderr(&o).contains("File too large"), "{}", stderr(&o));
    assert!(
        files(&f.path("out")).is_empty(),
        "{:?}",
        files(&f.path("out"))
    );

    let f = Fixture::new();
    fs::create_dir_all(f.path("out/work")).expect("mkdir");
    fs::write(f.path("out/work/private.img"), b"old").expect("old");
    let o = f
        .restore_cmd("good", &["prlimit", "--fsize=65536", "--"])
        .output()
        .expect("run");
    assert_ne!(o.status.code(), Some(0));
    assert_eq!(
        fs::read(f.path("out/work/private.img")).expect("old"),
        b"old"
    );
    assert_eq!(files(&f.path("out")), ["work/private.img"]);
}

/// EXT-2: disk full during `extract`: io, nothing under the final name, no temporary;
/// a pre-existing file of the same name is intact.
#[test]
fn disk_full_during_extract() {
    let f = Fixture::new();
    let archive = f.archive(1 << 20);
    fs::create_dir_all(f.path("out/work")).expect("mkdir");
    let o = f
        .extract_cmd(&archive, &["prlimit", "--fsize=262144", "--"])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(20), "{}", stderr(&o));
    assert_eq!(files(&f.path("out")), ["qubes.xml"]);
    fs::remove_file(f.path("out/qubes.xml")).expect("rm");

    fs::write(f.path("out/work/private.img"), b"old").expect("old");
    let o = f
        .extract_cmd(&archive, &["prlimit", "--fsize=262144", "--"])
        .output()
        .expect("run");
    assert_eq!(o.status.code(), Some(20), "{}", stderr(&o));
    assert_eq!(
        fs::read(f.path("out/work/private.img")).expect("old"),
        b"old"
    );
    assert_eq!(files(&f.path("out")), ["qubes.xml", "work/private.img"]);
}
