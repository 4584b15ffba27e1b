//! `qbackup-verify emit` end to end: archives written with the real tools
//! (`tests/fixtures/make-archive.sh`) are emitted as protocol streams and decoded with
//! the format crate's decoder; every file's bytes, holes and SHA-256 equal the sources
//! (SPEC.md PROTO-12), and failures end the stream with an error record and the class's
//! exit code.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use qbackup_format::protocol::read::Decoder;
use qbackup_format::protocol::{FileHasher, FileKind, Layout, Manifest, Record, VmConfig, VmEnd};
use qbackup_format::ErrorClass;
use qbackup_tests::sources::{make_archive, sources};
use qbackup_tests::{build, members, Member};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_qbackup-verify");

fn pass() -> PathBuf {
    sources().pass()
}

/// Runs `emit [extra...] ARCHIVE`; returns (exit code, stream, stderr).
fn emit(extra: &[&str], archive: &Path) -> (i32, Vec<u8>, String) {
    let out = Command::new(BIN)
        .arg("emit")
        .arg("--no-progress")
        .arg("--passphrase-file")
        .arg(pass())
        .args(extra)
        .arg(archive)
        .output()
        .expect("run qbackup-verify emit");
    (
        out.status.code().unwrap_or(-1),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One file as the consumer rebuilt it.
#[derive(Debug)]
struct Got {
    kind: FileKind,
    size: u64,
    data_bytes: u64,
    sha256: String,
    ended: bool,
}

/// What a decoded stream held, keyed by (output directory, name) as EXT-1 places them.
#[derive(Debug, Default)]
struct Decoded {
    manifest: Manifest,
    /// PROTO-14: one per manifest VM, in order.
    configs: Vec<VmConfig>,
    /// PROTO-15: manifest index → its vmend (exactly one each).
    ends: BTreeMap<u32, VmEnd>,
    files: BTreeMap<(String, String), Got>,
    /// `Ok(())` for a summary, else the error record's class and message.
    outcome: Option<Result<(), (ErrorClass, String)>>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Decode the whole stream; a decoder error is returned as is.
fn decode(stream: &[u8]) -> qbackup_format::Result<Decoded> {
    let mut d = Decoder::new(stream);
    let mut out = Decoded::default();
    let mut open: Option<((String, String), FileHasher)> = None;
    while let Some(r) = d.read_record()? {
        match r {
            Record::Hello { version } => assert_eq!(version, qbackup_format::protocol::VERSION),
            Record::Manifest(m) => out.manifest = m.clone(),
            Record::Config { config, .. } => out.configs.push(config),
            Record::VmEnd { vm, end } => assert!(out.ends.insert(vm, end).is_none()),
            Record::Begin(b) => {
                let vm = &out.manifest.vms[b.vm as usize];
                let dir = if vm.layout == Layout::Dom0Home {
                    "dom0-home".to_string()
                } else {
                    vm.name.clone()
                };
                let key = (dir, b.name.clone());
                out.files.insert(
                    key.clone(),
                    Got {
                        kind: b.kind.clone(),
                        size: b.size,
                        data_bytes: b.data_bytes,
                        sha256: String::new(),
                        ended: false,
                    },
                );
                open = Some((key, FileHasher::new(b.size)));
            }
            Record::Data { offset, bytes } => {
                open.as_mut()
                    .expect("data in a file")
                    .1
                    .data(offset, bytes)?;
            }
            Record::End { .. } => {
                let (key, h) = open.take().expect("end of a file");
                let got = out.files.get_mut(&key).expect("begun");
                got.sha256 = hex(&h.finish());
                got.ended = true;
            }
            Record::Summary(_) => out.outcome = Some(Ok(())),
            Record::Error { class, message } => out.outcome = Some(Err((class, message))),
        }
    }
    Ok(out)
}

fn expect_doc(archive: &Path) -> Value {
    let path = format!("{}.expect.json", archive.display());
    serde_json::from_slice(&std::fs::read(path).expect("expect json")).expect("expect json parses")
}

/// PROTO-12: emit an archive and check every file of its expect JSON against the
/// decoded stream: regular files by size and SHA-256 of their logical content (holes
/// as zeros), directories and symlinks by kind and target; nothing else in the stream.
fn round_trip(name: &str, args: &[&str]) {
    let archive = make_archive(name, args);
    let (code, stream, stderr) = emit(&[], &archive);
    assert_eq!(code, 0, "{name}: emit failed: {stderr}");
    assert!(
        stderr.contains("OK"),
        "{name}: report goes to stderr: {stderr}"
    );
    let got = decode(&stream).unwrap_or_else(|e| panic!("{name}: stream refused: {e}"));
    assert_eq!(got.outcome, Some(Ok(())), "{name}");
    // PROTO-14, PROTO-15: every VM has its settings and its end.
    assert_eq!(got.configs.len(), got.manifest.vms.len(), "{name}");
    assert_eq!(got.ends.len(), got.manifest.vms.len(), "{name}");
    let expect = expect_doc(&archive);
    let mut checked = 0;
    let mut listed = 0;
    for e in expect["files"].as_array().expect("files") {
        let vm = e["vm"].as_str().expect("vm");
        let path = e["path"].as_str().expect("path");
        if vm == "qubes.xml" || path == "." {
            continue;
        }
        listed += 1;
        let key = (vm.to_string(), path.to_string());
        let g = got
            .files
            .get(&key)
            .unwrap_or_else(|| panic!("{name}: {vm}/{path} not in the stream"));
        assert!(g.ended, "{name}: {vm}/{path} never ended");
        match e["type"].as_str() {
            Some("file") => {
                assert_eq!(g.kind, FileKind::Regular, "{name}: {vm}/{path}");
                assert_eq!(
                    Some(g.size),
                    e["size"].as_u64(),
                    "{name}: size of {vm}/{path}"
                );
                assert_eq!(
                    Some(g.sha256.as_str()),
                    e["sha256"].as_str(),
                    "{name}: content of {vm}/{path}"
                );
                if e["sparse"].as_bool() == Some(true) && g.size >= 1 << 20 {
                    assert!(g.data_bytes < g.size, "{name}: {vm}/{path} sent dense");
                }
                checked += 1;
            }
            Some("dir") => assert_eq!(g.kind, FileKind::Directory, "{name}: {vm}/{path}"),
            Some("symlink") => assert_eq!(
                g.kind,
                FileKind::Symlink {
                    target: e["target"].as_str().expect("target").to_string()
                },
                "{name}: {vm}/{path}"
            ),
            other => panic!("unknown type {other:?}"),
        }
    }
    assert!(checked > 0, "{name}: nothing checked");
    assert_eq!(
        got.files.len(),
        listed,
        "{name}: the stream holds extra files"
    );
}

macro_rules! round_trips {
    ($($test:ident: [$($arg:expr),*];)*) => {$(
        /// PROTO-12: this archive's verified files, byte-exact through the stream.
        #[test]
        fn $test() {
            round_trip(stringify!($test), &[$($arg),*]);
        }
    )*};
}

round_trips! {
    v4_gzip: ["--version", "4", "--compression", "gzip"];
    v4_zstd_multichunk: ["--version", "4", "--compression", "zstd", "--chunk-size", "65536"];
    v4_tarwriter_none_multichunk: ["--version", "4", "--compression", "none", "--tarwriter", "--chunk-size", "100000"];
    v3_gzip: ["--version", "3", "--compression", "gzip"];
    v3_unencrypted_multichunk: ["--version", "3", "--compression", "gzip", "--encrypted", "no", "--chunk-size", "10240"];
    v2_gzip_encrypted: ["--version", "2", "--compression", "gzip", "--chunk-size", "204800"];
    v2_headerless_plain: ["--version", "2", "--compression", "none", "--encrypted", "no", "--v2-headerless", "--chunk-size", "1024000"];
}

fn base_v4() -> &'static (PathBuf, Vec<Member>) {
    static B: OnceLock<(PathBuf, Vec<Member>)> = OnceLock::new();
    B.get_or_init(|| {
        let p = make_archive(
            "emit-base-v4",
            &[
                "--version",
                "4",
                "--compression",
                "gzip",
                "--chunk-size",
                "65536",
            ],
        );
        let m = members(&std::fs::read(&p).expect("read"));
        (p, m)
    })
}

/// PROTO-3, PROTO-12: `emit VM... ARCHIVE` sends only the selected VMs.
#[test]
fn selected_vms_only() {
    let (archive, _) = base_v4();
    let (code, stream, stderr) = emit(&["work", "dom0"], archive);
    assert_eq!(code, 0, "{stderr}");
    let got = decode(&stream).expect("stream");
    let names: Vec<&str> = got.manifest.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["dom0", "work"]);
    assert!(got
        .files
        .keys()
        .all(|(d, _)| d == "work" || d == "dom0-home"));
    assert!(got
        .files
        .contains_key(&("work".into(), "private.img".into())));
    assert!(got.files.keys().any(|(d, _)| d == "dom0-home"));
    let work = &got.manifest.vms[1];
    assert_eq!(work.expected_files, ["private.img"]);
    assert!(work.backup_size > 0);
    assert_eq!(got.manifest.vms[0].layout, Layout::Dom0Home);
    // An unknown VM is missing data, before any file.
    let (code, stream, _) = emit(&["nosuchvm"], archive);
    assert_eq!(code, ErrorClass::MissingData.exit_code());
    let got = decode(&stream).expect("stream");
    assert!(got.files.is_empty());
    assert!(matches!(
        got.outcome,
        Some(Err((ErrorClass::MissingData, _)))
    ));
}

/// PROTO-9, PROTO-12: a tampered chunk ends the stream with an error record of its
/// class; the file it belongs to never gets its end record; exit code = class.
#[test]
fn tampered_archive_ends_in_an_error_record() {
    let (_, m) = base_v4();
    let mut m = m.clone();
    let i = m
        .iter()
        .position(|x| x.name.starts_with("vm3/private.img.001"))
        .expect("multi-chunk private.img");
    let n = m[i].data.len();
    m[i].data[n / 2] ^= 0x40;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tampered.bin");
    std::fs::write(&path, build(&m)).expect("write");
    let (code, stream, stderr) = emit(&[], &path);
    assert_eq!(code, ErrorClass::MacFailure.exit_code(), "{stderr}");
    let got = decode(&stream).expect("a well-formed stream that reports the error");
    match &got.outcome {
        Some(Err((class, message))) => {
            assert_eq!(*class, ErrorClass::MacFailure);
            assert!(message.contains("vm3/private.img"), "{message}");
        }
        other => panic!("expected an error record, got {other:?}"),
    }
    // Its first chunk verified, so the file was begun and partly sent, but never ended.
    let g = got
        .files
        .get(&("work".into(), "private.img".into()))
        .expect("the file's verified start was streamed");
    assert!(!g.ended, "a file whose archive file failed was ended");
}

/// PROTO-9: a wrong passphrase: hello, then the error record; nothing else.
#[test]
fn wrong_passphrase_is_an_error_record_after_hello() {
    let (archive, _) = base_v4();
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not it\n").expect("write");
    let out = Command::new(BIN)
        .args(["emit", "--no-progress", "--passphrase-file"])
        .arg(&wrong)
        .arg(archive)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(ErrorClass::WrongPassphrase.exit_code())
    );
    let got = decode(&out.stdout).expect("stream");
    assert!(got.manifest.vms.is_empty());
    assert!(matches!(
        got.outcome,
        Some(Err((ErrorClass::WrongPassphrase, _)))
    ));
}

/// PROTO-12: the archive may come on stdin (`-`), as from `qvm-run --pass-io`.
#[test]
fn archive_on_stdin() {
    let (archive, _) = base_v4();
    let out = Command::new(BIN)
        .args(["emit", "--no-progress", "--json", "--passphrase-file"])
        .arg(pass())
        .arg("-")
        .stdin(std::fs::File::open(archive).expect("open"))
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(0));
    let report: Value = serde_json::from_slice(&out.stderr).expect("JSON report on stderr");
    assert_eq!(report["ok"], Value::Bool(true));
    let got = decode(&out.stdout).expect("stream");
    assert_eq!(got.outcome, Some(Ok(())));
    assert!(got.files.len() > 10);
}

/// PROTO-12: a consumer that closes the pipe early: emit exits with the io class, no
/// panic (exit code 1) and no signal death.
#[test]
fn consumer_closing_the_pipe_is_a_clean_io_exit() {
    let (archive, _) = base_v4();
    let mut child = Command::new(BIN)
        .args(["emit", "--no-progress", "--passphrase-file"])
        .arg(pass())
        .arg(archive)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).expect("the stream starts");
    assert_eq!(&first[5..13], b"QBKPSTRM");
    drop(stdout);
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("stderr");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(ErrorClass::Io.exit_code()), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
