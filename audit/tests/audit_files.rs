//! `qbackup-audit run`/`report` over local files (SPEC.md §29): verdicts and classes, the
//! ledger, `--max-age`, `--max-duration`, shards, interruption, the shared KDF budget.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn report_json(ledger: &Path) -> Value {
    let out = qbackup_tests::run_ok(
        Command::new(AUDIT)
            .args(["report", "--json", "--ledger"])
            .arg(ledger),
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// AUD-1, AUD-2, AUD-4, AUD-8, AUD-9: every archive verified by a verifier child, its
/// verdict and class recorded once per version, fresh ones skipped, a changed file audited
/// as a new version, the report's statuses.
#[test]
fn verdicts_ledger_max_age_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let arch = d.join("archives");
    std::fs::create_dir_all(&arch).unwrap();
    for n in ["a", "b", "c", "d"] {
        make_archive(&arch, n, 600, 10, 256 << 10);
    }
    let mut bytes = std::fs::read(arch.join("d.bin")).unwrap();
    tamper(&mut bytes);
    std::fs::write(arch.join("d.bin"), &bytes).unwrap();
    std::fs::write(arch.join("notes.txt"), "not an archive").unwrap();
    let pass = pass_file(d);
    let ledger = d.join("ledger");
    let run = |extra: &[&str]| {
        let all = [&["--no-progress", "--include", "*.bin"], extra].concat();
        audit_run(&s(&ledger), &pass, &all, &[])
    };

    let first = run(&[&s(&arch)]);
    assert_eq!(first.code, 10, "findings: {}", first.stderr);
    first.assert_verdicts(&[
        ("a.bin", "ok"),
        ("b.bin", "ok"),
        ("c.bin", "ok"),
        ("d.bin", "failed"),
    ]);
    let d_line = first.line("/d.bin");
    assert_eq!(d_line["class"], "mac-failure");
    assert_eq!(d_line["exit_code"], 12);
    let a_line = first.line("/a.bin");
    assert_eq!(
        a_line["sha256"].as_str().unwrap(),
        qbackup_tests::sha256_file(&arch.join("a.bin"))
    );
    assert_eq!(
        a_line["bytes"],
        std::fs::metadata(arch.join("a.bin")).unwrap().len()
    );
    assert!(a_line["backup_id"].as_str().is_some_and(|b| !b.is_empty()));
    // header + qubes.xml + 3 chunks of 256 KiB for 600 KiB.
    assert_eq!(a_line["kdfs"], 5);
    let records = dir_records(&ledger);
    assert_eq!(records.len(), 4);
    assert!(records.iter().all(|r| r["attempts"] == 1));

    // --max-age: the OK ones are fresh; the failing one is verified again.
    let second = run(&["--max-age", "1d", &s(&arch)]);
    assert_eq!(second.code, 10);
    second.assert_verdicts(&[("d.bin", "failed")]);
    assert_eq!(second.line("/d.bin")["attempts"], 2);

    // A rewritten file is a new version: audited although its location is fresh.
    std::thread::sleep(Duration::from_millis(20));
    std::fs::copy(arch.join("a.bin"), arch.join("c.bin.new")).unwrap();
    std::fs::rename(arch.join("c.bin.new"), arch.join("c.bin")).unwrap();
    // --max-duration 0s starts nothing: incomplete, the new version listed as pending.
    let none = run(&["--max-age", "1d", "--max-duration", "0s", &s(&arch)]);
    assert_eq!(none.code, 75, "{}", none.stderr);
    assert!(none.lines.is_empty());
    let rep = report_json(&ledger);
    let status = |loc: &str| -> String {
        rep["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["location"].as_str().unwrap().ends_with(loc))
            .map(|e| e["status"].as_str().unwrap().to_string())
            .unwrap()
    };
    assert_eq!(status("/c.bin"), "changed");
    assert_eq!(status("/d.bin"), "failing");
    assert_eq!(status("/a.bin"), "ok");
    assert_eq!(rep["counts"]["ok"], 2);

    let third = run(&["--max-age", "1d", &s(&arch)]);
    third.assert_verdicts(&[("c.bin", "ok"), ("d.bin", "failed")]);
    let rep = report_json(&ledger);
    assert_eq!(status_of(&rep, "/c.bin"), ("ok".to_string(), 2));
    let text = qbackup_tests::run_ok(
        Command::new(AUDIT)
            .args(["report", "--ledger"])
            .arg(&ledger),
    );
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.starts_with("4 archives: 3 ok, 0 stale, 1 failing"),
        "{text}"
    );
    assert!(text.contains("mac-failure"), "{text}");
}

fn status_of(rep: &Value, loc: &str) -> (String, u64) {
    let e = rep["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["location"].as_str().unwrap().ends_with(loc))
        .unwrap();
    (
        e["status"].as_str().unwrap().to_string(),
        e["versions"].as_u64().unwrap(),
    )
}

/// AUD-6: shards split the archives without overlap; `--shard auto` reads QBACKUP_SHARD.
#[test]
fn shards_split_the_archives() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for i in 0..6 {
        make_archive(d, &format!("s{i}"), 64, 10, 1 << 20);
    }
    let pass = pass_file(d);
    let ledger = d.join("ledger");
    let mut seen = Vec::new();
    for (shard, env) in [("1/2", None), ("auto", Some("2/2"))] {
        let env: Vec<(String, String)> = env
            .map(|v| vec![("QBACKUP_SHARD".to_string(), v.to_string())])
            .unwrap_or_default();
        let extra = [
            "--no-progress",
            "--include",
            "*.bin",
            "--shard",
            shard,
            &s(d),
        ];
        let r = audit_run(&s(&ledger), &pass, &extra, &env);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r
            .lines
            .iter()
            .all(|l| l["shard"] == shard.replace("auto", "2/2")));
        seen.extend(r.verdicts());
    }
    seen.sort();
    let names: Vec<String> = seen.iter().map(|(n, _)| n.clone()).collect();
    assert_eq!(
        names,
        (0..6).map(|i| format!("s{i}.bin")).collect::<Vec<_>>()
    );
    assert_eq!(dir_records(&ledger).len(), 6);
    let bad = audit_run(&s(&ledger), &pass, &["--shard", "3/2", &s(d)], &[]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);
}

/// AUD-5, AUD-8: SIGTERM stops the verifier; the archive in flight is recorded incomplete
/// and the run exits 75; the next run verifies it.
#[test]
fn an_interrupted_archive_is_recorded_incomplete() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // 40 chunks at logN 15: a few seconds with one KDF thread.
    make_archive(d, "slow", 2560, 15, 64 << 10);
    let pass = pass_file(d);
    let ledger = d.join("ledger");
    let slow = s(&d.join("slow.bin"));
    let mut child = Command::new(AUDIT)
        .args(run_args(
            &s(&ledger),
            &pass,
            &["--progress-json", "--jobs", "1", &slow],
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let t = Instant::now();
    for line in BufReader::new(stderr).lines() {
        let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
        if v["event"] == "progress" && v["done_bytes"].as_u64() > Some(0) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no progress");
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    let r = parse_run(out);
    assert_eq!(r.code, 75);
    r.assert_verdicts(&[("slow.bin", "incomplete")]);
    let rec = &dir_records(&ledger)[0];
    assert_eq!(rec["last"]["verdict"], "incomplete");
    assert!(rec["verified"].is_null());
    let again = audit_run(
        &s(&ledger),
        &pass,
        &["--no-progress", "--jobs", "1", &slow],
        &[],
    );
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.line("slow.bin")["attempts"], 2);
}

/// AUD-7: two archives in parallel share the KDF memory budget; one whose KDF needs
/// more than a share is verified again alone with all of it, never reported as failing.
#[test]
fn a_kdf_above_the_parallel_share_is_verified_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // logN 16, r 8: 64 MiB per KDF; a share of 100 MiB over 2 archives is 50 MiB.
    make_archive(d, "k1", 64, 16, 1 << 20);
    make_archive(d, "k2", 64, 16, 1 << 20);
    let pass = pass_file(d);
    let budget = |ledger: &str, jobs: &str, mib: &str, input: &Path| {
        let input = s(input);
        let extra = ["--no-progress", "--include", "*.bin", "--jobs", jobs];
        let extra = [&extra[..], &["--max-kdf-memory", mib, &input]].concat();
        audit_run(&s(&d.join(ledger)), &pass, &extra, &[])
    };
    let r = budget("ledger", "2", "100", d);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.assert_verdicts(&[("k1.bin", "ok"), ("k2.bin", "ok")]);
    // Below one KDF's need even alone: a finding of its class, as verify reports it.
    let r = budget("ledger2", "1", "32", &d.join("k1.bin"));
    assert_eq!(r.code, 10);
    assert_eq!(r.line("k1.bin")["class"], "limit-exceeded");
}

/// AUD-1, AUD-8, LIM-64: only the verifier's exit code and bounded JSON report count: a
/// report beyond the limit, or a verifier that cannot sandbox itself, is an infrastructure
/// error (exit 69), never an archive's verdict.
#[test]
fn a_misbehaving_verifier_is_an_infrastructure_error() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let archive = make_archive(d, "x", 64, 10, 1 << 20);
    let pass = pass_file(d);
    let fake = |name: &str, body: &str| {
        let p = d.join(name);
        std::fs::write(&p, format!("#!/bin/sh\ncat > /dev/null\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    };
    let huge = fake(
        "huge",
        "head -c 70000000 /dev/zero | tr '\\0' ' '; echo '{\"ok\": true}'",
    );
    let nosandbox = fake("nosandbox", "echo 'sandbox unavailable' >&2; exit 21");
    for (verifier, class) in [(huge, "verifier"), (nosandbox, "verifier")] {
        let args = [
            "run",
            "--no-progress",
            "--ledger",
            &s(&d.join("ledger")),
            "--passphrase-file",
            &s(&pass),
            "--verifier",
            &s(&verifier),
            &s(&archive),
        ];
        let r = audit(&args, &[]);
        assert_eq!(r.code, 69, "{}", r.stderr);
        r.assert_verdicts(&[("x.bin", "error")]);
        assert_eq!(r.line("x.bin")["class"], class);
    }
    let rec = &dir_records(&d.join("ledger"))[0];
    assert!(
        rec["verified"].is_null(),
        "no verdict about the archive: {rec:#}"
    );
}
