//! Issue 12 for `qbackup-pack`: `restore --progress-json` (the child's progress, the
//! space check and the outcome, all JSON lines), and `create --dry-run`, whose estimate
//! must come close to the archive `create` then writes.

use std::path::{Path, PathBuf};
use std::process::Command;

use qbackup_tests::binaries::verifier_beside;
use serde_json::Value;

const PACK: &str = env!("CARGO_BIN_EXE_qbackup-pack");

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

/// JSON events of a stderr that must hold nothing else.
fn events(stderr: &[u8]) -> Vec<Value> {
    let text = String::from_utf8_lossy(stderr);
    let v: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(v.iter().all(|e| e["schema"] == 1), "{v:?}");
    v
}

#[test]
fn restore_progress_json_reports_the_childs_progress_and_the_outcome() {
    verifier_beside(PACK);
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("out");
    let archive = example("example-v4.bin");
    let o = Command::new(PACK)
        .arg("restore")
        .arg(&archive)
        .arg("--to")
        .arg(&to)
        .arg("--passphrase-file")
        .arg(example("example.passphrase"))
        .arg("--progress-json")
        .output()
        .unwrap();
    let ev = events(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{ev:?}");
    let space = ev.iter().find(|e| e["event"] == "space").expect("space");
    assert_eq!(
        space["expected_bytes"],
        std::fs::metadata(&archive).unwrap().len()
    );
    let progress: Vec<&Value> = ev.iter().filter(|e| e["event"] == "progress").collect();
    let last = progress.last().expect("the child's progress");
    assert_eq!(last["percent"], 100.0);
    assert!(last["vm"].as_str().is_some_and(|v| !v.is_empty()), "{last}");
    let done = ev.last().unwrap();
    assert_eq!(done["event"], "done");
    assert_eq!(done["files"], 5);
    assert!(to.join("standalone/root.img").is_file());
}

#[test]
fn dry_run_estimates_what_create_writes() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("private.img");
    // 256 MiB logical; 8 MiB of random data and 8 MiB of text; the rest holes.
    let f = std::fs::File::create(&img).unwrap();
    f.set_len(256 << 20).unwrap();
    let mut random = vec![0u8; 8 << 20];
    getrandom::fill(&mut random).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&random, 16 << 20).unwrap();
    let text: Vec<u8> = (0..)
        .flat_map(|i: u32| format!("{i} audit: op=read ok\n").into_bytes())
        .take(8 << 20)
        .collect();
    f.write_all_at(&text, 128 << 20).unwrap();
    drop(f);
    let plan = dir.path().join("plan.json");
    std::fs::write(
        &plan,
        format!(
            r#"{{"vms": [{{"name": "work", "class": "AppVM", "label": "red",
                "volumes": [{{"name": "private", "path": "{}"}}], "files": []}}]}}"#,
            img.display()
        ),
    )
    .unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "dry run\n").unwrap();
    let out = dir.path().join("a.bin");
    let create = |extra: &[&str]| {
        Command::new(PACK)
            .args(["create", "--plan"])
            .arg(&plan)
            .arg("--passphrase-file")
            .arg(&pass)
            .arg("--out")
            .arg(&out)
            .args(["--scrypt-log-n", "10", "--no-progress"])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = create(&["--dry-run", "--json"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.exists(), "a dry run writes nothing");
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["schema"], 1);
    assert_eq!(doc["space"]["fits"], true);
    let file = &doc["files"][1];
    assert_eq!(
        (file["vm"].as_str(), file["logical_bytes"].as_u64()),
        (Some("work"), Some(256 << 20))
    );
    assert_eq!(file["data_bytes"], 16 << 20);
    let estimated = doc["estimated_archive_bytes"].as_u64().unwrap();
    assert!(doc["max_archive_bytes"].as_u64().unwrap() >= 16 << 20);
    assert!(doc["estimated_seconds"].as_u64().is_some());

    let o = create(&[]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("free; the archive, estimated"), "{stderr}");
    let written = std::fs::metadata(&out).unwrap().len();
    let off = (estimated as f64 / written as f64 - 1.0).abs();
    assert!(off < 0.10, "estimated {estimated}, written {written}");
}
