//! `--progress-json` (README "JSON output"): on stderr only JSON lines, each with the
//! schema version; progress names bytes, total, percent, the VM and the file; the run ends
//! with `done`, or with `failed` and the error class of the exit code.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_qbackup-verify");

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// (exit code, stdout, JSON events of stderr); fails on a stderr line that is not JSON.
fn run(args: &[&str]) -> (i32, Vec<u8>, Vec<Value>) {
    let out = Command::new(BIN).args(args).output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let events = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect::<Vec<Value>>();
    for e in &events {
        assert_eq!(e["schema"], 1, "{e}");
        assert!(e["event"].is_string(), "{e}");
    }
    (out.status.code().unwrap_or(-1), out.stdout, events)
}

fn pass_arg() -> String {
    example("example.passphrase").display().to_string()
}

#[test]
fn verify_reports_progress_then_done() {
    let archive = example("example-v4.bin");
    let size = std::fs::metadata(&archive).unwrap().len();
    let (code, stdout, events) = run(&[
        "verify",
        "--progress-json",
        "--json",
        "--passphrase-file",
        &pass_arg(),
        archive.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{events:?}");
    let report: Value = serde_json::from_slice(&stdout).unwrap();
    assert_eq!(
        (report["schema"].as_u64(), report["ok"].as_bool()),
        (Some(1), Some(true))
    );
    let (last, rest) = events.split_last().unwrap();
    assert_eq!(last["event"], "done");
    assert_eq!(last["bytes_read"], size);
    let progress = rest.iter().rfind(|e| e["event"] == "progress").unwrap();
    assert_eq!(progress["done_bytes"], size);
    assert_eq!(progress["total_bytes"], size);
    assert_eq!(progress["percent"], 100.0);
    // The last entry decoded: the example's last VM and file.
    assert_eq!(progress["vm"], "standalone");
    assert_eq!(progress["file"], "private.img");
}

#[test]
fn a_failure_is_one_failed_event_with_its_class() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong");
    std::fs::write(&wrong, "not the passphrase\n").unwrap();
    let archive = example("example-v4.bin");
    let (code, _, events) = run(&[
        "verify",
        "--progress-json",
        "--passphrase-file",
        wrong.to_str().unwrap(),
        archive.to_str().unwrap(),
    ]);
    assert_eq!(code, 10);
    let last = events.last().unwrap();
    assert_eq!(last["event"], "failed");
    assert_eq!(last["class"], "wrong-passphrase");
    assert_eq!(last["exit_code"], 10);
    // A usage error, once --progress-json is on the command line.
    let (code, _, events) = run(&["verify", "--progress-json", "--no-such-flag", "x"]);
    assert_eq!(code, 2);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event"], "failed");
    assert_eq!(events[0]["class"], "usage");
}

#[test]
fn extract_says_what_dir_offers_and_emit_reports_as_an_event() {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("out");
    let archive = example("example-v4.bin");
    let (code, _, events) = run(&[
        "extract",
        "--progress-json",
        "--passphrase-file",
        &pass_arg(),
        "--to",
        to.to_str().unwrap(),
        archive.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{events:?}");
    let space = events.iter().find(|e| e["event"] == "space").unwrap();
    assert!(space["available_bytes"].as_u64().unwrap() > 0);
    assert_eq!(
        space["expected_bytes"],
        std::fs::metadata(&archive).unwrap().len()
    );
    assert_eq!(space["fits"], true);
    assert!(to.join("work/private.img").is_file());
    assert_eq!(events.last().unwrap()["event"], "done");

    let (code, stream, events) = run(&[
        "emit",
        "--progress-json",
        "--passphrase-file",
        &pass_arg(),
        archive.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{events:?}");
    assert!(!stream.is_empty());
    let report = events.iter().find(|e| e["event"] == "report").unwrap();
    assert_eq!(
        (report["ok"].as_bool(), report["command"].as_str()),
        (Some(true), Some("emit"))
    );
    assert_eq!(events.last().unwrap()["event"], "done");
}

#[test]
fn version_names_the_git_revision() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("qbackup-verify {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("(git "), "{text}");
}
