//! Replays every committed fuzz input through the same entry points cargo-fuzz runs
//! (`qbackup_fuzz_targets`), on the stable toolchain and without the fixed-key mode: the
//! seeds `fuzz/corpus/<target>/seed-*` (what a fuzzing session adds there is not committed
//! and not replayed), `fuzz/regressions/<target>/*` and, when present, libFuzzer's crash
//! files `fuzz/artifacts/<target>/*`. No input may panic. See FUZZING.md.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use qbackup_fuzz_targets::{pipeline_verifies, protocol_ops, protocol_records, TARGETS};

/// Regression inputs of findings not fixed yet: `(target, file name, finding)`. They are
/// skipped by `replay_corpus_and_regressions` and run by the ignored test `open_findings`.
const OPEN_FINDINGS: &[(&str, &str, &str)] = &[
    // F1 … F4 are fixed (FUZZING.md); their reproducers replay as regressions.
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repo")
        .join("fuzz")
}

/// Every input file of `target`, sorted.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for dir in ["corpus", "regressions", "artifacts"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir).join(target)) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let seed = e.file_name().to_string_lossy().starts_with("seed-");
            if p.is_file() && (dir != "corpus" || seed) {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

fn is_open_finding(target: &str, file: &Path) -> Option<&'static str> {
    let name = file.file_name()?.to_str()?;
    OPEN_FINDINGS
        .iter()
        .find(|(t, f, _)| *t == target && *f == name)
        .map(|(_, _, why)| *why)
}

/// Run `f` on `file`; the panic message if it panicked.
fn replay(f: fn(&[u8]), file: &Path) -> Option<String> {
    let data = std::fs::read(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    let result = catch_unwind(AssertUnwindSafe(|| f(&data)));
    result.err().map(|p| {
        p.downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "non-string panic".into())
    })
}

#[test]
fn replay_corpus_and_regressions() {
    let mut failures = Vec::new();
    for (target, f) in TARGETS {
        let files = inputs(target);
        assert!(
            !files.is_empty() || *target == "none",
            "target {target} has no corpus"
        );
        for file in files {
            if is_open_finding(target, &file).is_some() {
                continue;
            }
            if let Some(msg) = replay(*f, &file) {
                failures.push(format!("{target}: {}: {msg}", file.display()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "inputs that panic:\n{}",
        failures.join("\n")
    );
}

/// The archive seeds made with real keys verify without the fixed-key mode, so the
/// pipeline corpus starts from archives that reach the end of the verifier.
#[test]
fn real_key_archive_seeds_verify() {
    for seed in [
        "seed-v4-real-scrypt",
        "seed-v3-encrypted",
        "seed-v3-unencrypted",
        "seed-v2-headerless",
    ] {
        let path = fuzz_dir().join("corpus/pipeline").join(seed);
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if let Err(report) = pipeline_verifies(&data) {
            panic!("{seed} does not verify:\n{report}");
        }
    }
}

/// The `protocol_decode` seeds (output of `qbackup-verify emit`, see FUZZING.md) are what
/// they claim: complete streams, or streams ending in an error record; and each
/// `protocol_roundtrip` seed is the same stream as that target's operations
/// ([`protocol_ops`]). PROTO-10: the decoder accepts real emit output to its end.
#[test]
fn protocol_seeds_are_real_streams() {
    let dir = fuzz_dir().join("corpus");
    let mut n = 0;
    for file in inputs("protocol_decode") {
        let name = file.file_name().expect("name").to_owned();
        if !name.to_string_lossy().starts_with("seed-emit-") {
            continue;
        }
        let stream = std::fs::read(&file).expect("read seed");
        let (records, clean) = protocol_records(&stream);
        assert!(clean, "{}: the decoder refuses it", file.display());
        let ops = protocol_ops(&records);
        let path = dir.join("protocol_roundtrip").join(&name);
        if std::env::var_os("QBACKUP_WRITE_PROTOCOL_SEEDS").is_some() {
            std::fs::write(&path, &ops).expect("write seed");
        }
        let committed = std::fs::read(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (regenerate: see FUZZING.md)", path.display()));
        assert!(committed == ops, "{} is stale", path.display());
        n += 1;
    }
    assert!(n >= 5, "only {n} emit seeds");
}

/// Every corpus directory belongs to a target (a renamed target leaves no corpus behind).
#[test]
fn every_corpus_directory_has_a_target() {
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz_dir().join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().is_dir() {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    TARGETS.iter().any(|(t, _)| *t == name),
                    "fuzz/{dir}/{name} has no target"
                );
            }
        }
    }
}

/// The open findings still reproduce (run with `--ignored`; fails once one is fixed, so
/// its entry in OPEN_FINDINGS can go).
#[test]
#[ignore = "open fuzz findings: see FUZZING.md"]
fn open_findings() {
    for (target, file, why) in OPEN_FINDINGS {
        let f = TARGETS
            .iter()
            .find(|(t, _)| t == target)
            .map(|(_, f)| *f)
            .expect("finding names a target");
        let path = fuzz_dir().join("regressions").join(target).join(file);
        assert!(
            replay(f, &path).is_some(),
            "{why} ({target}/{file}) no longer panics: remove it from OPEN_FINDINGS"
        );
    }
}
