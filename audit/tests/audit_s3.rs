//! `qbackup-audit` against a real S3 server (SeaweedFS on 127.0.0.1, started here) and a
//! loopback proxy that cuts connections and answers 503 mid-audit (SPEC.md AUD-3, AUD-4).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use qbackup_tests::fault_proxy::{FaultProxy, Faults};
use qbackup_tests::seaweed::S3Server;
use serde_json::Value;
use sha2::{Digest, Sha256};

fn s(p: &Path) -> String {
    p.display().to_string()
}

fn hex_sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The server's environment with the endpoint replaced by `endpoint`.
fn env_via(server: &S3Server, endpoint: &str) -> Vec<(String, String)> {
    server
        .env()
        .into_iter()
        .map(|(k, v)| {
            if k == "AWS_ENDPOINT_URL" || k == "AWS_ENDPOINT" {
                (k, endpoint.to_string())
            } else {
                (k, v)
            }
        })
        .collect()
}

/// AUD-3: every archive of a bucket verified through a proxy that cuts responses short and
/// answers 503: reads resume at the byte offset, pinned to the listed ETag; the SHA-256
/// of what was read is the object's; the tampered one fails with its class. LIM-61:
/// segments are bounded.
#[test]
fn audits_a_bucket_through_cuts_and_503s() {
    let server = S3Server::start();
    server.create_bucket("backups");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut originals = Vec::new();
    for n in ["one", "two", "three", "bad"] {
        let a = make_archive(d, n, 1200, 10, 256 << 10);
        let mut bytes = std::fs::read(&a).unwrap();
        if n == "bad" {
            tamper(&mut bytes);
        }
        server.put("backups", &format!("site/{n}.bin"), &bytes);
        originals.push((n, bytes));
    }
    // Not under the prefix `site` as a directory: not audited.
    server.put("backups", "sitemap.bin", b"x");
    let proxy = FaultProxy::start(
        server.addr(),
        Faults {
            status_503_every: 3,
            cut_after_bytes: 300 << 10,
            max_cuts: 6,
            ..Faults::default()
        },
    );
    let pass = pass_file(d);
    let r = audit(
        &[
            "run",
            "--no-progress",
            "--jobs",
            "2",
            "--ledger",
            &s(&d.join("ledger")),
            "--passphrase-file",
            &s(&pass),
            "--verifier",
            &s(&verifier()),
            "s3://backups/site",
        ],
        &env_via(&server, &proxy.endpoint()),
    );
    assert_eq!(r.code, 10, "{}\n{}", r.stderr, server.log());
    r.assert_verdicts(&[
        ("bad.bin", "failed"),
        ("one.bin", "ok"),
        ("three.bin", "ok"),
        ("two.bin", "ok"),
    ]);
    assert_eq!(r.line("bad.bin")["class"], "mac-failure");
    for (n, bytes) in &originals {
        let line = r.line(&format!("/{n}.bin"));
        assert_eq!(line["bytes"], bytes.len() as u64);
        if *n != "bad" {
            assert_eq!(line["sha256"].as_str().unwrap(), hex_sha256(bytes), "{n}");
        }
        assert_eq!(line["version"]["kind"], "s3");
        assert!(line["version"]["etag"].as_str().unwrap().starts_with('"'));
    }
    assert!(proxy.cuts() >= 3, "cuts: {}", proxy.cuts());
    // No credentials, and the metadata service forbidden: an error, nothing asked of
    // 169.254.169.254.
    let env: Vec<(String, String)> = env_via(&server, &proxy.endpoint())
        .into_iter()
        .filter(|(k, _)| !k.starts_with("AWS_ACCESS_KEY") && !k.starts_with("AWS_SECRET"))
        .collect();
    let r = Command::new(AUDIT)
        .args(run_args(
            &s(&d.join("ledger")),
            &pass,
            &["s3://backups/site"],
        ))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .envs(env)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(69), "{err}");
    assert!(err.contains("AWS_EC2_METADATA_DISABLED"), "{err}");
    assert!(proxy.served_503() >= 1, "503s: {}", proxy.served_503());
}

/// AUD-4, LIM-63: two audits of the same archives at once write one S3 ledger with
/// conditional puts: no attempt is lost. AUD-3: an object replaced while the audit runs
/// is reported `changed`, never verified as a mix; the next run audits its new version.
#[test]
fn an_s3_ledger_loses_nothing_and_a_replaced_object_is_changed() {
    let server = S3Server::start();
    server.create_bucket("vault");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Location order is the order of a first audit: the slow one runs first.
    let slow = std::fs::read(make_archive(d, "0slow", 2048, 15, 64 << 10)).unwrap();
    server.put("vault", "b/0slow.bin", &slow);
    let mut small = Vec::new();
    for n in ["1victim", "2x", "3y"] {
        let bytes = std::fs::read(make_archive(d, n, 100, 10, 1 << 20)).unwrap();
        server.put("vault", &format!("b/{n}.bin"), &bytes);
        small.push(bytes);
    }
    let pass = pass_file(d);
    let env = server.env();
    let ledger = "s3://vault/ledger";
    let args = |extra: &[&str]| -> Vec<String> {
        [
            "run",
            "--jobs",
            "1",
            "--ledger",
            ledger,
            "--passphrase-file",
            &s(&pass),
            "--verifier",
            &s(&verifier()),
        ]
        .iter()
        .chain(extra)
        .map(|x| x.to_string())
        .collect()
    };

    // The victim is replaced (by another valid archive) while the slow one is verified.
    let mut child = Command::new(AUDIT)
        .args(args(&["--progress-json", "s3://vault/b/"]))
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = stderr.next().expect("progress").unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["event"] == "progress" && v["done_bytes"].as_u64() > Some(0) {
            assert_eq!(v["running"], serde_json::json!(["s3://vault/b/0slow.bin"]));
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no progress");
    }
    server.put("vault", "b/1victim.bin", &small[1]);
    let drain = std::thread::spawn(move || stderr.map_while(Result::ok).collect::<Vec<_>>());
    let r = parse_run(child.wait_with_output().unwrap());
    let err = drain.join().unwrap().join("\n");
    assert_eq!(r.code, 75, "{err}");
    r.assert_verdicts(&[
        ("0slow.bin", "ok"),
        ("1victim.bin", "changed"),
        ("2x.bin", "ok"),
        ("3y.bin", "ok"),
    ]);
    assert!(r.line("1victim.bin")["message"]
        .as_str()
        .unwrap()
        .contains("changed"));

    // Two whole audits at once on one ledger: every record ends with both attempts.
    let spawn = || {
        Command::new(AUDIT)
            .args(args(&[
                "--no-progress",
                "s3://vault/b/2x.bin",
                "s3://vault/b/3y.bin",
                "s3://vault/b/1victim.bin",
            ]))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for c in [a, b] {
        let r = parse_run(c.wait_with_output().unwrap());
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(r.lines.len(), 3);
    }
    let out = qbackup_tests::run_ok(
        Command::new(AUDIT)
            .args(["report", "--json", "--ledger", ledger])
            .envs(env.iter().map(|(k, v)| (k, v))),
    );
    let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(rep["counts"]["ok"], 4, "{rep:#}");
    for e in rep["entries"].as_array().unwrap() {
        let loc = e["location"].as_str().unwrap();
        let want = match loc.rsplit('/').next().unwrap() {
            "0slow.bin" => 1,
            // Its new version: two concurrent attempts.
            "1victim.bin" => 2,
            _ => 3,
        };
        assert_eq!(e["attempts"], want, "{loc}: {e:#}");
    }
    let victim = rep["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["location"].as_str().unwrap().ends_with("1victim.bin"))
        .unwrap();
    assert_eq!(victim["versions"], 2);
    assert_eq!(server.list("vault", "ledger/records/").len(), 5);
}

/// AUD-3, LIM-62, LIM-66: an object the server lists but never serves ends as an `error`
/// of class `storage` after MAX_STALLS failed reads of (1 + CLIENT_RETRIES) requests each
/// (a bounded number, never the client's default of up to 11 per read), exit 69; served
/// again, the next run verifies it.
#[test]
fn an_object_that_is_never_served_is_a_bounded_storage_error() {
    use qbackup_audit::s3::{CLIENT_RETRIES, MAX_STALLS};
    let server = S3Server::start();
    server.create_bucket("dead");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bytes = std::fs::read(make_archive(d, "a", 300, 10, 1 << 20)).unwrap();
    server.put("dead", "q/a.bin", &bytes);
    let proxy = FaultProxy::start(
        server.addr(),
        Faults {
            object_gets_503: true,
            ..Faults::default()
        },
    );
    let pass = pass_file(d);
    let ledger = s(&d.join("ledger"));
    let extra = ["--no-progress", "s3://dead/q/"];
    let r = audit_run(&ledger, &pass, &extra, &env_via(&server, &proxy.endpoint()));
    assert_eq!(r.code, 69, "{}", r.stderr);
    r.assert_verdicts(&[("a.bin", "error")]);
    let line = r.line("/a.bin");
    assert_eq!(line["class"], "storage", "{line}");
    let message = line["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{MAX_STALLS} requests in a row failed at byte 0")),
        "{message}"
    );
    assert_eq!(
        proxy.served_503(),
        MAX_STALLS as usize * (1 + CLIENT_RETRIES),
        "object GETs answered 503"
    );
    let r = audit_run(&ledger, &pass, &extra, &server.env());
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.assert_verdicts(&[("a.bin", "ok")]);
    assert_eq!(r.line("/a.bin")["attempts"], 2);
    assert_eq!(r.line("/a.bin")["sha256"], hex_sha256(&bytes));
}
