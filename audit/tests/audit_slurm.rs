//! `examples/slurm/audit.sbatch` on a real one-node Slurm cluster on loopback, auditing a
//! bucket of a real S3 server (SeaweedFS on 127.0.0.1) in three shards with one ledger in
//! the bucket (SPEC.md AUD-4 … AUD-6): one task is cancelled while it verifies an archive,
//! the array runs again, and every archive ends with exactly one current record, the
//! tampered one reported with its class, nothing verified twice without need.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use qbackup_tests::seaweed::S3Server;
use qbackup_tests::slurm::Cluster;
use serde_json::Value;

const TASKS: u64 = 3;

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// Wait until every task of `job` has ended (bounded).
fn wait_for(cluster: &Cluster, job: &str, limit: Duration) {
    let t = Instant::now();
    loop {
        let tasks = cluster.array_tasks(job);
        if tasks.iter().all(|(_, s)| {
            !matches!(
                s.as_str(),
                "PENDING" | "RUNNING" | "CONFIGURING" | "COMPLETING"
            )
        }) {
            return;
        }
        assert!(
            t.elapsed() < limit,
            "job {job} still running: {tasks:?}\n{}",
            cluster.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_job_array_audits_a_bucket_and_resumes_after_a_cancelled_task() {
    let server = S3Server::start();
    server.create_bucket("vault");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A slow archive (64 chunks at scrypt logN 16) to cancel mid-verification, and small ones.
    let slow = std::fs::read(make_archive(d, "slow", 4096, 16, 64 << 10)).unwrap();
    server.put("vault", "b/slow.bin", &slow);
    let names = ["a", "b", "c", "d", "e"];
    for n in names {
        let mut bytes = std::fs::read(make_archive(d, n, 100, 10, 1 << 20)).unwrap();
        if n == "c" {
            tamper(&mut bytes);
        }
        server.put("vault", &format!("b/{n}.bin"), &bytes);
    }
    let map = d.join("passphrases.map");
    std::fs::write(&map, format!("s3://vault/ {}\n", pass_file(d).display())).unwrap();
    let slow_loc = "s3://vault/b/slow.bin";
    let slow_task = qbackup_audit::shard::slot(slow_loc, TASKS) + 1;

    let cluster = Cluster::start();
    let script = qbackup_tests::repo_root().join("examples/slurm/audit.sbatch");
    let sbatch = |run: &str, wait: bool| -> String {
        let mut c = cluster.command("sbatch");
        c.arg("--parsable")
            .arg(format!("--array=1-{TASKS}"))
            .arg(format!("--output={}/{run}-%a.jsonl", d.display()))
            .arg(format!("--error={}/{run}-%a.log", d.display()))
            // The one test node is small: override the example's resource requests.
            .args(["--cpus-per-task=1", "--mem-per-cpu=64M"]);
        if wait {
            c.arg("--wait");
        }
        c.arg(&script)
            .envs(server.env())
            .env("QBACKUP_AUDIT", AUDIT)
            .env("QBACKUP_AUDIT_INPUTS", "s3://vault/b/")
            .env("QBACKUP_AUDIT_LEDGER", "s3://vault/ledger")
            .env("QBACKUP_AUDIT_PASSPHRASES", &map)
            .env("QBACKUP_AUDIT_OPTIONS", "--progress-json");
        let out = c.output().unwrap();
        // `--wait` exits non-zero when a task does (findings: 10).
        let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            !id.is_empty(),
            "sbatch: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.log()
        );
        id.split(';').next().unwrap().to_string()
    };

    // Run 1: cancel the slow archive's task once it is verifying it.
    let job = sbatch("run1", false);
    let log = d.join(format!("run1-{slow_task}.log"));
    let t = Instant::now();
    loop {
        let busy = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                serde_json::from_str::<Value>(l).is_ok_and(|v| {
                    v["event"] == "progress"
                        && v["running"]
                            .as_array()
                            .is_some_and(|r| r.iter().any(|x| x == slow_loc))
                        && v["done_bytes"].as_u64() > Some(0)
                })
            });
        if busy {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(90),
            "task {slow_task} never verified the slow archive: {}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            cluster.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    qbackup_tests::run_ok(cluster.command("scancel").arg(format!("{job}_{slow_task}")));
    wait_for(&cluster, &job, Duration::from_secs(120));
    let first: Vec<Value> = (1..=TASKS)
        .flat_map(|i| lines(&d.join(format!("run1-{i}.jsonl"))))
        .collect();
    let verdict_of = |lines: &[Value], loc: &str| -> Option<String> {
        lines
            .iter()
            .find(|l| l["location"] == loc)
            .map(|l| l["verdict"].as_str().unwrap().to_string())
    };
    assert_eq!(
        verdict_of(&first, slow_loc).as_deref(),
        Some("incomplete"),
        "the cancelled task records the archive in flight: {first:#?}\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let ok_in_first: Vec<String> = first
        .iter()
        .filter(|l| l["verdict"] == "ok")
        .map(|l| l["location"].as_str().unwrap().to_string())
        .collect();

    // Run 2: the same array again.
    let job2 = sbatch("run2", true);
    wait_for(&cluster, &job2, Duration::from_secs(120));
    let second: Vec<Value> = (1..=TASKS)
        .flat_map(|i| lines(&d.join(format!("run2-{i}.jsonl"))))
        .collect();
    assert_eq!(
        verdict_of(&second, slow_loc).as_deref(),
        Some("ok"),
        "{second:#?}"
    );
    for loc in &ok_in_first {
        assert_eq!(verdict_of(&second, loc), None, "{loc} was verified again");
    }

    let out = qbackup_tests::run_ok(
        std::process::Command::new(AUDIT)
            .args(["report", "--json", "--ledger", "s3://vault/ledger"])
            .envs(server.env()),
    );
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries: BTreeMap<String, &Value> = rep["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["location"].as_str().unwrap().to_string(), e))
        .collect();
    assert_eq!(entries.len(), names.len() + 1, "{rep:#}");
    for (loc, e) in &entries {
        assert_eq!(e["versions"], 1, "{loc}: one current record");
        let want = if loc.ends_with("/c.bin") {
            "failing"
        } else {
            "ok"
        };
        assert_eq!(e["status"], want, "{loc}: {e:#}");
    }
    let tampered = entries["s3://vault/b/c.bin"];
    assert_eq!(tampered["verified"]["class"], "mac-failure");
    assert_eq!(entries[slow_loc]["attempts"], 2);
    assert_eq!(entries[slow_loc]["last_attempt"]["verdict"], "ok");
    assert_eq!(
        server.list("vault", "ledger/records/").len(),
        names.len() + 1
    );
}
