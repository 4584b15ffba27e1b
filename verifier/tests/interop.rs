//! Interop: archives written with the real tools exactly as upstream writes them
//! (`tests/fixtures/make-archive.sh`: GNU tar, openssl, scrypt, split, compressors) are
//! verified and extracted byte-exact by `qbackup-verify`; tampered copies fail with the
//! right error class (SPEC.md VER-1, EXT-1 … EXT-3, ERR-2).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use qbackup_tests::manifest::assert_matches_manifest;
use qbackup_tests::sources::{expect_doc, make_archive, sources};
use qbackup_tests::tree::entries;
use qbackup_tests::{build, find, members, sha256_file, Member};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_qbackup-verify");

/// Run qbackup-verify with `--json`; returns (exit code, JSON document).
fn verify_json(args: &[&str], archive: &Path) -> (i32, Value) {
    let out = Command::new(BIN)
        .args(args)
        .arg("--json")
        .arg("--passphrase-file")
        .arg(sources().pass())
        .arg(archive)
        .output()
        .expect("run qbackup-verify");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "qbackup-verify printed no JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), doc)
}

/// Verify, extract, and compare every file of the manifest byte for byte (holes kept,
/// EXT-3).
fn round_trip(name: &str, args: &[&str]) {
    let archive = make_archive(name, args);
    let (code, doc) = verify_json(&["verify"], &archive);
    assert_eq!(code, 0, "{name}: verify failed: {doc:#}");
    assert_eq!(doc["ok"], Value::Bool(true));

    let expect = expect_doc(&archive);
    let version = expect["version"].as_u64().expect("version");
    assert_eq!(doc["archive"]["version"].as_u64(), Some(version), "{name}");

    let to = tempfile::tempdir().expect("tempdir");
    let dest = to.path().join("out");
    let (code, doc) = verify_json(&["extract", "--to", dest.to_str().expect("utf8")], &archive);
    assert_eq!(code, 0, "{name}: extract failed: {doc:#}");
    let notes: Vec<String> = doc["notes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|n| n.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();

    assert_matches_manifest(name, &expect, &dest, true, |target| {
        notes
            .iter()
            .any(|n| n.contains("skipped symlink") && n.contains(target))
    });
}

macro_rules! round_trips {
    ($($test:ident: [$($arg:expr),*];)*) => {$(
        #[test]
        fn $test() {
            round_trip(stringify!($test), &[$($arg),*]);
        }
    )*};
}

round_trips! {
    v4_gzip: ["--version", "4", "--compression", "gzip"];
    v4_bzip2: ["--version", "4", "--compression", "bzip2"];
    v4_xz: ["--version", "4", "--compression", "xz"];
    v4_zstd: ["--version", "4", "--compression", "zstd"];
    v4_none: ["--version", "4", "--compression", "none"];
    v4_gzip_multichunk: ["--version", "4", "--compression", "gzip", "--chunk-size", "65536"];
    // GNU tar output is a multiple of 10240 bytes, so 20480-byte chunks end several files
    // exactly on a boundary: upstream then writes an empty final chunk (checked below).
    v4_none_exact_multiple_chunks: ["--version", "4", "--compression", "none", "--chunk-size", "20480"];
    v4_tarwriter_gzip: ["--version", "4", "--compression", "gzip", "--tarwriter"];
    v4_tarwriter_none_multichunk: ["--version", "4", "--compression", "none", "--tarwriter", "--chunk-size", "100000"];
    v3_gzip: ["--version", "3", "--compression", "gzip"];
    v3_bzip2: ["--version", "3", "--compression", "bzip2"];
    v3_xz: ["--version", "3", "--compression", "xz"];
    v3_zstd: ["--version", "3", "--compression", "zstd"];
    v3_none: ["--version", "3", "--compression", "none"];
    v3_gzip_multichunk: ["--version", "3", "--compression", "gzip", "--chunk-size", "65536"];
    v3_unencrypted: ["--version", "3", "--compression", "none", "--encrypted", "no"];
    v3_unencrypted_gzip_multichunk: ["--version", "3", "--compression", "gzip", "--encrypted", "no", "--chunk-size", "10240"];
    v3_sha256_xz: ["--version", "3", "--compression", "xz", "--hmac", "sha256"];
    v2_gzip_encrypted: ["--version", "2", "--compression", "gzip", "--chunk-size", "204800"];
    v2_none_encrypted: ["--version", "2", "--compression", "none", "--chunk-size", "204800"];
    v2_gzip_unencrypted: ["--version", "2", "--compression", "gzip", "--encrypted", "no", "--chunk-size", "204800"];
    v2_headerless_plain: ["--version", "2", "--compression", "none", "--encrypted", "no", "--v2-headerless", "--chunk-size", "1024000"];
    v2_default_volumes: ["--version", "2", "--compression", "gzip"];
}

#[test]
fn empty_final_chunks_are_present_in_the_exact_multiple_case() {
    let archive = make_archive(
        "empty-chunks",
        &[
            "--version",
            "4",
            "--compression",
            "none",
            "--chunk-size",
            "20480",
        ],
    );
    let m = members(&std::fs::read(&archive).expect("read"));
    // A v4 container of an empty chunk is exactly its 128 bytes of overhead.
    let empty = m
        .iter()
        .filter(|x| x.data.len() == 128 && x.name.ends_with(".enc"))
        .count();
    assert!(
        empty > 0,
        "the fixture no longer exercises empty final chunks"
    );
    let (code, doc) = verify_json(&["verify"], &archive);
    assert_eq!(code, 0, "{doc:#}");
}

// ---- tampering: every copy fails with its class ------------------------------------------

/// A small multi-chunk archive of each modern version, made once.
fn base(version: &str) -> &'static (PathBuf, Vec<Member>) {
    static V4: OnceLock<(PathBuf, Vec<Member>)> = OnceLock::new();
    static V3: OnceLock<(PathBuf, Vec<Member>)> = OnceLock::new();
    let cell = if version == "4" { &V4 } else { &V3 };
    cell.get_or_init(|| {
        let path = make_archive(
            &format!("tamper-base-v{version}"),
            &[
                "--version",
                version,
                "--compression",
                "gzip",
                "--chunk-size",
                "65536",
            ],
        );
        let m = members(&std::fs::read(&path).expect("read archive"));
        (path, m)
    })
}

/// Verify a modified copy and return the error class it failed with.
fn class_of(tag: &str, archive: Vec<u8>) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join(format!("{tag}.bin"));
    std::fs::write(&path, archive).expect("write tampered copy");
    let (code, doc) = verify_json(&["verify"], &path);
    assert_ne!(code, 0, "{tag}: a tampered archive verified: {doc:#}");
    assert_eq!(doc["ok"], Value::Bool(false), "{tag}");
    let class = doc["error"]["class"].as_str().unwrap_or("?").to_string();
    let expected_code = qbackup_format::ErrorClass::parse(&class).map(|c| c.exit_code());
    assert_eq!(
        Some(code),
        expected_code,
        "{tag}: exit code does not match class {class}"
    );
    class
}

fn flip(m: &mut Member, at: usize) {
    let i = at.min(m.data.len() - 1);
    m.data[i] ^= 0x40;
}

/// Index of the first member whose name starts with `prefix`.
fn first(m: &[Member], prefix: &str) -> usize {
    m.iter()
        .position(|x| x.name.starts_with(prefix))
        .unwrap_or_else(|| panic!("no member {prefix}"))
}

/// A named mutation of an archive's members and the class it must fail with.
type Case = (
    &'static str,
    Box<dyn FnOnce(&mut Vec<Member>)>,
    &'static str,
);

/// Apply every case to a fresh copy of the base archive; report all mismatches at once.
fn expect_classes(version: &str, cases: Vec<Case>) {
    let mut failures = Vec::new();
    for (tag, f, want) in cases {
        let got = tamper(version, tag, f);
        if got != want {
            failures.push(format!("{tag}: got {got}, want {want}"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

fn tamper(version: &str, tag: &str, f: impl FnOnce(&mut Vec<Member>)) -> String {
    let mut m = base(version).1.clone();
    f(&mut m);
    class_of(&format!("v{version}-{tag}"), build(&m))
}

#[test]
fn tampered_v4_copies_fail_with_their_class() {
    let v = "4";
    let cases: Vec<Case> = vec![
        (
            "flip-data",
            Box::new(|m| {
                let i = first(m, "vm3/private.img.001");
                flip(&mut m[i], 5000)
            }),
            "mac-failure",
        ),
        (
            "flip-final-mac",
            Box::new(|m| {
                let i = first(m, "vm3/private.img.000");
                let n = m[i].data.len();
                flip(&mut m[i], n - 1)
            }),
            "mac-failure",
        ),
        (
            "flip-header",
            Box::new(|m| flip(&mut m[0], 3)),
            "header-failure",
        ),
        (
            "flip-header-mac",
            Box::new(|m| {
                let n = m[1].data.len();
                flip(&mut m[1], n - 1)
            }),
            "header-failure",
        ),
        (
            "flip-xml",
            Box::new(|m| flip(&mut m[2], 200)),
            "mac-failure",
        ),
        (
            "drop-middle-chunk",
            Box::new(|m| {
                let i = first(m, "vm3/private.img.001");
                m.remove(i);
            }),
            "order-failure",
        ),
        (
            "drop-last-chunks",
            Box::new(|m| {
                let last = m
                    .iter()
                    .rposition(|x| x.name.starts_with("vm3/private.img."))
                    .expect("chunks");
                assert!(
                    last > first(m, "vm3/private.img.000"),
                    "fixture needs a multi-chunk image"
                );
                m.remove(last);
            }),
            "truncated",
        ),
        (
            "drop-whole-volume",
            Box::new(|m| m.retain(|x| !x.name.starts_with("vm4/root.img"))),
            "missing-data",
        ),
        (
            "drop-whole-vm",
            Box::new(|m| m.retain(|x| !x.name.starts_with("vm5/"))),
            "missing-data",
        ),
        (
            "swap-chunks",
            Box::new(|m| {
                let a = first(m, "vm3/private.img.000");
                m.swap(a, a + 1)
            }),
            "order-failure",
        ),
        (
            "rename-chunk",
            Box::new(|m| {
                // Two chunks trade names: order holds, but each is bound to its own name (V4-2).
                let a = first(m, "vm3/private.img.000");
                let (x, y) = (m[a].data.clone(), m[a + 1].data.clone());
                m[a].data = y;
                m[a + 1].data = x;
            }),
            "mac-failure",
        ),
        (
            "foreign-file",
            Box::new(|m| {
                m.push(Member {
                    name: "vm77/private.img.000.enc".into(),
                    data: m[3].data.clone(),
                })
            }),
            "order-failure",
        ),
        (
            "unsafe-name",
            Box::new(|m| m[3].name = "../../etc/passwd.000.enc".into()),
            "unsafe-path",
        ),
        (
            "repeat-file",
            Box::new(|m| {
                let i = first(m, "vm3/notes.txt");
                let d = m[i].clone();
                m.push(d)
            }),
            "order-failure",
        ),
        (
            "hmac-suffix-in-v4",
            Box::new(|m| {
                let i = first(m, "vm3/notes.txt");
                m[i].name = "vm3/notes.txt.000.hmac".into()
            }),
            "order-failure",
        ),
        (
            "no-header",
            Box::new(|m| {
                m.remove(0);
            }),
            "header-failure",
        ),
        (
            "wrong-xml-position",
            Box::new(|m| m.swap(2, 3)),
            "order-failure",
        ),
    ];
    expect_classes(v, cases);
}

#[test]
fn tampered_v3_copies_fail_with_their_class() {
    let v = "3";
    let cases: Vec<Case> = vec![
        (
            "flip-data",
            Box::new(|m| {
                let i = first(m, "vm5/private.img.001");
                flip(&mut m[i], 100)
            }),
            "mac-failure",
        ),
        (
            "wrong-hmac-digit",
            Box::new(|m| {
                let i = first(m, "vm5/private.img.000.hmac");
                let n = m[i].data.len();
                let d = &mut m[i].data[n - 3];
                *d = if *d == b'0' { b'1' } else { b'0' };
            }),
            "mac-failure",
        ),
        (
            "garbled-hmac",
            Box::new(|m| {
                let i = first(m, "vm5/private.img.000.hmac");
                m[i].data = b"garbage\n".to_vec()
            }),
            "malformed",
        ),
        (
            "flip-header",
            Box::new(|m| flip(&mut m[0], 3)),
            "wrong-passphrase",
        ),
        (
            "drop-hmac",
            Box::new(|m| {
                let i = first(m, "vm5/private.img.000.hmac");
                m.remove(i);
            }),
            "order-failure",
        ),
        (
            "drop-last-chunk-pair",
            Box::new(|m| {
                let last = m
                    .iter()
                    .rposition(|x| {
                        x.name.starts_with("vm5/private.img.") && !x.name.ends_with(".hmac")
                    })
                    .expect("chunks");
                assert!(
                    last > first(m, "vm5/private.img.000"),
                    "fixture needs a multi-chunk image"
                );
                m.drain(last..last + 2);
            }),
            "truncated",
        ),
        (
            "drop-template-dir",
            Box::new(|m| m.retain(|x| !x.name.starts_with("vm9/"))),
            "missing-data",
        ),
        (
            "enc-suffix-in-v3",
            Box::new(|m| {
                let i = first(m, "vm5/private.img.000");
                m[i].name = "vm5/private.img.000.enc".into()
            }),
            // NAME-5: `.enc` is v4 only; a v3 `.enc` name is malformed.
            "malformed",
        ),
    ];
    expect_classes(v, cases);
}

#[test]
fn wrong_passphrase_is_its_own_class() {
    for v in ["4", "3"] {
        let (path, _) = base(v);
        let dir = tempfile::tempdir().expect("tempdir");
        let wrong = dir.path().join("wrong");
        std::fs::write(&wrong, "not the passphrase\n").expect("write");
        let out = Command::new(BIN)
            .args(["verify", "--json", "--passphrase-file"])
            .arg(&wrong)
            .arg(path)
            .output()
            .expect("run");
        let doc: Value = serde_json::from_slice(&out.stdout).expect("json");
        assert_eq!(doc["error"]["class"], "wrong-passphrase", "v{v}: {doc:#}");
        assert_eq!(out.status.code(), Some(10));
    }
}

#[test]
fn truncated_archive_is_truncated() {
    let (path, _) = base("4");
    let bytes = std::fs::read(path).expect("read");
    for cut in [bytes.len() / 2 + 100, bytes.len() - 3000] {
        assert_eq!(
            class_of("cut", bytes[..cut].to_vec()),
            "truncated",
            "cut at {cut}"
        );
    }
}

#[test]
fn kdf_cost_is_refused_before_the_kdf_runs() {
    // Raise logN in backup-header.hmac to 30 (128 GiB) and fix the header checksum: the
    // verifier must refuse it from the parameters alone (V4-4), instantly.
    let mut m = base("4").1.clone();
    let hmac = &mut m[find(&base("4").1, "backup-header.hmac")].data;
    hmac[7] = 30;
    let digest = sha256(&hmac[..48]);
    hmac[48..64].copy_from_slice(&digest[..16]);
    let started = std::time::Instant::now();
    assert_eq!(class_of("kdf-bomb", build(&m)), "limit-exceeded");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

fn sha256(data: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("x");
    std::fs::write(&p, data).expect("write");
    hex_decode(&sha256_file(&p))
}

fn hex_decode(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
fn reads_from_a_pipe_and_selects_vms() {
    let (path, _) = base("4");
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("out");
    let out = Command::new(BIN)
        .args(["extract", "--json", "--to"])
        .arg(&dest)
        .arg("-")
        .arg("work")
        .env("QBACKUP_PASSPHRASE", "correct horse!battery")
        .stdin(std::fs::File::open(path).expect("open"))
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(dest.join("work/private.img").is_file());
    assert!(!dest.join("standalone").exists(), "unselected VM extracted");
}

#[test]
fn existing_files_are_never_replaced() {
    let (path, _) = base("4");
    let dir = tempfile::tempdir().expect("tempdir");
    let dest = dir.path().join("out");
    std::fs::create_dir_all(dest.join("work")).expect("mkdir");
    std::fs::write(dest.join("work/notes.txt"), "keep me").expect("write");
    let (code, doc) = verify_json(&["extract", "--to", dest.to_str().expect("utf8")], path);
    assert_eq!(doc["error"]["class"], "unsafe-path", "{doc:#}");
    assert_eq!(code, 16);
    assert_eq!(
        std::fs::read_to_string(dest.join("work/notes.txt")).expect("read"),
        "keep me"
    );
    for entry in entries(&dest) {
        let n = entry
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        assert!(!n.contains("qbackup-partial"), "temporary left: {n}");
    }
}
