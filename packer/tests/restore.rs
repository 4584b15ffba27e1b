//! `qbackup-pack restore` end to end through the real child (`qbackup-verify emit`):
//! archives written with the real tools (`tests/fixtures/make-archive.sh`) and by
//! `qbackup-pack create` come out byte-exact; and against a deliberately malicious
//! verifier child (`examples/evil-child.rs`, run with `--verifier-cmd`): every attack is
//! refused with its error class, DIR keeps only complete files, and no temporary is left
//! (SPEC.md RST-1 … RST-6).

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qbackup_tests::binaries::{evil_child_beside, verifier_beside};
use qbackup_tests::manifest::assert_matches_manifest;
use qbackup_tests::sources::{expect_doc, make_archive, sources};
use qbackup_tests::tree::files;

const PACK: &str = env!("CARGO_BIN_EXE_qbackup-pack");

/// target/<profile>/examples/evil-child (cargo builds examples for `cargo test`).
fn evil_child() -> PathBuf {
    evil_child_beside(PACK)
}

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("pass"), "unused by the child\n").expect("pass");
        fs::write(dir.path().join("archive"), b"archive bytes for the child").expect("archive");
        Case { dir }
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out")
    }

    fn restore(&self, scenario: &str, extra: &[&str]) -> Output {
        Command::new(PACK)
            .arg("restore")
            .arg(self.dir.path().join("archive"))
            .arg("--to")
            .arg(self.out())
            .arg("--passphrase-file")
            .arg(self.dir.path().join("pass"))
            .arg("--verifier-cmd")
            .arg(format!("exec {} {scenario}", evil_child().display()))
            .args(extra)
            .output()
            .expect("run qbackup-pack")
    }
}

/// The one complete file every hostile scenario sends before its attack.
fn assert_only_the_complete_file(c: &Case, o: &Output) {
    assert_eq!(
        files(&c.out()),
        ["work/private.img"],
        "stderr: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let data = fs::read(c.out().join("work/private.img")).expect("read");
    assert_eq!(data.len(), 1 << 20);
    assert_eq!(&data[4096..4096 + 19], b"complete and intact");
    assert!(data[..4096].iter().all(|&b| b == 0));
}

fn refused(scenario: &str, code: i32, says: &str, extra: &[&str]) {
    let c = Case::new();
    let o = c.restore(scenario, extra);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{scenario}: {stderr}");
    assert!(
        stderr.contains(says),
        "{scenario}: {stderr:?} lacks {says:?}"
    );
    assert_only_the_complete_file(&c, &o);
}

/// RST-1, RST-3, RST-4, EXT-3, EXT-4: a well-formed stream is restored: files committed under
/// DIR/VM/… and DIR/dom0-home/…, holes kept, an inside symlink recreated, an escaping
/// one skipped and reported.
#[test]
fn a_good_stream_is_restored() {
    let c = Case::new();
    let o = c.restore("good", &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert_eq!(
        files(&c.out()),
        [
            "dom0-home/user/.bashrc",
            "dom0-home/user/link",
            "work/private.img"
        ]
    );
    assert_eq!(
        fs::read(c.out().join("dom0-home/user/.bashrc")).expect("read"),
        b"alias"
    );
    assert_eq!(
        fs::read_link(c.out().join("dom0-home/user/link")).expect("link"),
        Path::new(".bashrc")
    );
    let meta = fs::metadata(c.out().join("work/private.img")).expect("stat");
    assert!(meta.blocks() * 512 < meta.len(), "written dense");
    assert!(stderr.contains("skipped symlink"), "{stderr}");
    // The skipped link is not counted: 3 files were created.
    assert!(stderr.contains("restored 3 files"), "{stderr}");
}

/// RST-1: only the selected VMs are written; a VM the stream lacks is missing-data.
#[test]
fn vm_selection() {
    let c = Case::new();
    let o = c.restore("good", &["dom0"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        files(&c.out()),
        ["dom0-home/user/.bashrc", "dom0-home/user/link"]
    );
    let c = Case::new();
    let o = c.restore("good", &["nosuch"]);
    assert_eq!(o.status.code(), Some(14));
    assert!(files(&c.out()).is_empty());
}

/// RST-2: a traversal name in dom0's home is refused as unsafe-path.
#[test]
fn traversal_names_are_refused() {
    refused("traversal", 16, "unsafe-path", &[]);
    refused("traversal-volume", 16, "unsafe-path", &[]);
}

/// RST-3, EXT-5: a file is never written through a link the stream created, even one
/// that stays inside its VM's directory.
#[test]
fn nothing_is_written_through_a_link() {
    let c = Case::new();
    let o = c.restore("through-link", &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(16), "{stderr}");
    assert!(
        stderr.contains("passes through the symbolic link"),
        "{stderr}"
    );
    assert_eq!(files(&c.out()), ["dom0-home/user/x", "work/private.img"]);
}

/// RST-2: bytes beyond a file's declared size are refused.
#[test]
fn data_beyond_the_declared_size_is_refused() {
    refused("beyond-size", 17, "beyond the logical size", &[]);
}

/// RST-2: endless data is cut off at the declared size, not written to the disk's end.
#[test]
fn endless_data_is_refused() {
    refused("endless", 17, "beyond the logical size", &[]);
}

/// RST-2: a file whose end record carries a digest other than the data's is mac-failure.
#[test]
fn a_lying_hash_is_refused() {
    refused("lying-hash", 12, "digest", &[]);
}

/// RST-2: garbage and unknown record types are malformed.
#[test]
fn garbage_and_unknown_records_are_refused() {
    let c = Case::new();
    let o = c.restore("garbage", &[]);
    assert_eq!(
        o.status.code(),
        Some(17),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(files(&c.out()).is_empty());
    refused("unknown-record", 17, "unknown record type", &[]);
}

/// RST-2: a stream that ends early is truncated.
#[test]
fn early_eof_is_truncated() {
    refused("early-eof", 18, "truncated", &[]);
}

/// RST-2: the same file twice is an order failure; the first copy stays.
#[test]
fn a_duplicate_file_is_refused() {
    refused("duplicate", 13, "sent twice", &[]);
}

/// RST-5: a silent child is killed after the time-out (io), also after its summary.
#[test]
fn silence_times_out() {
    let start = std::time::Instant::now();
    refused("silence", 20, "time-out", &["--timeout", "2"]);
    let c = Case::new();
    let o = c.restore("linger", &["--timeout", "2"]);
    assert_eq!(o.status.code(), Some(20));
    assert!(String::from_utf8_lossy(&o.stderr).contains("time-out"));
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
}

/// RST-6: an error record ends the restore with the class it carries; the file it
/// interrupted is not left behind.
#[test]
fn an_error_record_mid_file_fails_with_its_class() {
    refused(
        "error-mid-file",
        12,
        "the verifier reported: chunk vm3/root.img.012 failed its MAC",
        &[],
    );
}

/// RST-6: a child that exits non-zero after a complete stream is a failure.
#[test]
fn a_failing_child_is_a_failure() {
    let c = Case::new();
    let o = c.restore("exit-nonzero", &[]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(20), "{stderr}");
    assert!(stderr.contains("exited with status 3"), "{stderr}");
    assert!(!files(&c.out())
        .iter()
        .any(|f| f.contains("qbackup-partial")));
}

/// RST-4, EXT-2: an existing file of the same name is never replaced and stays intact.
#[test]
fn an_existing_file_is_never_replaced() {
    let c = Case::new();
    fs::create_dir_all(c.out().join("work")).expect("mkdir");
    fs::write(c.out().join("work/private.img"), b"the user's own file").expect("write");
    let o = c.restore("good", &[]);
    assert_eq!(
        o.status.code(),
        Some(16),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        fs::read(c.out().join("work/private.img")).expect("read"),
        b"the user's own file"
    );
    assert_eq!(files(&c.out()), ["work/private.img"]);
}

/// RST-5, LIM-38: a --timeout of 0 or beyond one day is a usage error.
#[test]
fn timeout_is_bounded() {
    for bad in ["0", "86401"] {
        let c = Case::new();
        let o = c.restore("good", &["--timeout", bad]);
        assert_eq!(o.status.code(), Some(2), "--timeout {bad}");
        assert!(files(&c.out()).is_empty());
    }
}

/// RST-5: with --passphrase-on-stdin the passphrase is the first line of the child's stdin
/// (and not in its environment), followed by the archive.
#[test]
fn passphrase_on_stdin() {
    let c = Case::new();
    let cmd = format!(
        "[ -z \"$QBACKUP_PASSPHRASE\" ] || exit 7; IFS= read -r P; \
         [ \"$P\" = 'unused by the child' ] || exit 8; \
         head -c 27 | grep -q '^archive bytes for the child$' || exit 9; exec {} good",
        evil_child().display()
    );
    let o = Command::new(PACK)
        .arg("restore")
        .arg(c.dir.path().join("archive"))
        .arg("--to")
        .arg(c.out())
        .arg("--passphrase-file")
        .arg(c.dir.path().join("pass"))
        .arg("--passphrase-on-stdin")
        .arg("--verifier-cmd")
        .arg(cmd)
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(files(&c.out()).len(), 3);
}

// ---- through the real child -----------------------------------------------------------

/// target/<profile>/qbackup-verify, the default child (built if missing).
fn real_verifier() -> PathBuf {
    verifier_beside(PACK)
}

/// Restore `archive` into `to` through the default child; panics unless it succeeds.
fn restore_real(archive: &Path, pass: &Path, to: &Path, vms: &[&str]) -> String {
    real_verifier();
    let o = Command::new(PACK)
        .arg("restore")
        .arg(archive)
        .arg("--to")
        .arg(to)
        .arg("--passphrase-file")
        .arg(pass)
        .args(vms)
        .output()
        .expect("run qbackup-pack restore");
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(
        o.status.success(),
        "restore of {} failed: {stderr}",
        archive.display()
    );
    stderr
}

/// RST-1, RST-4, EXT-1 … EXT-4: interop archives (v2, v3, v4; every filter; chunk
/// boundaries) restore byte-exact through the real child; links recreated or reported;
/// nothing else written, no temporary left. `qubes.xml` is not carried by protocol v2.
#[test]
fn interop_archives_restore_byte_exact() {
    let work = tempfile::tempdir().expect("tempdir");
    let pass = sources().pass();
    let variants: &[(&str, &[&str])] = &[
        ("v4_gzip", &["--version", "4", "--compression", "gzip"]),
        (
            "v4_zstd_multichunk",
            &[
                "--version",
                "4",
                "--compression",
                "zstd",
                "--chunk-size",
                "65536",
            ],
        ),
        (
            "v4_none_exact",
            &[
                "--version",
                "4",
                "--compression",
                "none",
                "--chunk-size",
                "20480",
            ],
        ),
        (
            "v4_tarwriter",
            &["--version", "4", "--compression", "gzip", "--tarwriter"],
        ),
        ("v3_xz", &["--version", "3", "--compression", "xz"]),
        (
            "v3_unencrypted",
            &[
                "--version",
                "3",
                "--compression",
                "none",
                "--encrypted",
                "no",
            ],
        ),
        (
            "v2_gzip",
            &[
                "--version",
                "2",
                "--compression",
                "gzip",
                "--chunk-size",
                "204800",
            ],
        ),
    ];
    for (name, args) in variants {
        let archive = make_archive(name, args);
        let expect = expect_doc(&archive);
        let dest = work.path().join(format!("{name}.out"));
        let stderr = restore_real(&archive, &pass, &dest, &[]);
        assert_matches_manifest(name, &expect, &dest, false, |target| {
            stderr.contains("skipped symlink") && stderr.contains(target)
        });
    }
}

/// RST-1, RST-4, EXT-3: a `qbackup-pack create` archive (sparse multi-chunk image, dom0
/// home with a symlink) restores byte-exact through the real child, holes kept.
#[test]
fn packer_archive_restores_byte_exact() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = |p: &str| work.path().join(p);
    let img = fs::File::create(w("private.img")).expect("img");
    img.set_len(6 << 20).expect("size");
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    };
    use std::os::unix::fs::FileExt;
    img.write_all_at(&rnd(70_000), 4096).expect("run");
    img.write_all_at(&rnd(300_000), 4 << 20).expect("run");
    fs::create_dir_all(w("home/user/docs")).expect("home");
    fs::write(w("home/user/docs/a.txt"), rnd(5000)).expect("a");
    std::os::unix::fs::symlink("docs/a.txt", w("home/user/link")).expect("link");
    fs::write(w("pass"), "restore me\n").expect("pass");
    let plan = serde_json::json!({"vms": [{"name": "work", "class": "AppVM", "label": "red",
        "qid": 3, "volumes": [{"name": "private", "path": w("private.img")}]}],
        "dom0_home": w("home/user")});
    fs::write(w("plan.json"), plan.to_string()).expect("plan");
    let o = Command::new(PACK)
        .args(["create", "--plan"])
        .arg(w("plan.json"))
        .arg("--passphrase-file")
        .arg(w("pass"))
        .arg("--out")
        .arg(w("a.bin"))
        .args([
            "--scrypt-log-n",
            "10",
            "--chunk-size",
            "1000000",
            "--no-progress",
        ])
        .output()
        .expect("pack");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let dest = w("out");
    restore_real(&w("a.bin"), &w("pass"), &dest, &[]);
    assert_eq!(
        fs::read(dest.join("work/private.img")).expect("img"),
        fs::read(w("private.img")).expect("src")
    );
    let meta = fs::metadata(dest.join("work/private.img")).expect("stat");
    assert!(meta.blocks() * 512 < meta.len(), "written dense");
    assert_eq!(
        fs::read(dest.join("dom0-home/user/docs/a.txt")).expect("a"),
        fs::read(w("home/user/docs/a.txt")).expect("src")
    );
    assert_eq!(
        fs::read_link(dest.join("dom0-home/user/link")).expect("link"),
        Path::new("docs/a.txt")
    );
    assert!(!files(&dest).iter().any(|f| f.contains("qbackup-partial")));

    // RST-1: a selection reaches the child and the consumer.
    let only = w("only-dom0");
    restore_real(&w("a.bin"), &w("pass"), &only, &["dom0"]);
    assert_eq!(
        files(&only),
        ["dom0-home/user/docs/a.txt", "dom0-home/user/link"]
    );
}

/// RST-1, RST-5: `ARCHIVE` may be `-`: stdin is pumped into the child unchanged.
#[test]
fn archive_from_stdin() {
    let c = Case::new();
    let cmd = format!(
        "head -c 27 | grep -q '^archive bytes for the child$' || exit 9; exec {} good",
        evil_child().display()
    );
    let o = Command::new(PACK)
        .args(["restore", "-", "--to"])
        .arg(c.out())
        .arg("--passphrase-file")
        .arg(c.dir.path().join("pass"))
        .arg("--verifier-cmd")
        .arg(cmd)
        .stdin(fs::File::open(c.dir.path().join("archive")).expect("archive"))
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(files(&c.out()).len(), 3);
}
