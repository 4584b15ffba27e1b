//! Shared by the audit tests: the binaries, archives made by `qbackup-pack create` from
//! random volumes, tampering, and running `qbackup-audit`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub const AUDIT: &str = env!("CARGO_BIN_EXE_qbackup-audit");

/// `qbackup-verify` beside the audit binary (built if missing).
pub fn verifier() -> PathBuf {
    qbackup_tests::binaries::verifier_beside(AUDIT)
}

pub fn packer() -> PathBuf {
    qbackup_tests::binaries::packer_beside(AUDIT)
}

/// A passphrase file in `dir`.
pub fn pass_file(dir: &Path) -> PathBuf {
    let p = dir.join("pass");
    std::fs::write(&p, "audit test passphrase\n").unwrap();
    p
}

/// A v4 archive `dir/NAME.bin` holding one VM with a `kib` KiB random private volume
/// (incompressible: stored as is), in chunks of `chunk` bytes, scrypt at `log_n`.
pub fn make_archive(dir: &Path, name: &str, kib: usize, log_n: u8, chunk: u64) -> PathBuf {
    let work = dir.join(format!("{name}.src"));
    std::fs::create_dir_all(&work).unwrap();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15 ^ (name.len() as u64) << 32 ^ kib as u64;
    for b in name.bytes() {
        x = x.wrapping_mul(31).wrapping_add(u64::from(b));
    }
    let data: Vec<u8> = (0..kib * 1024 / 8)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()
        })
        .collect();
    std::fs::write(work.join("private.img"), &data).unwrap();
    let plan = serde_json::json!({"vms": [{"name": "work", "class": "AppVM", "label": "red",
        "qid": 3, "volumes": [{"name": "private", "path": work.join("private.img")}]}]});
    std::fs::write(work.join("plan.json"), plan.to_string()).unwrap();
    let out = dir.join(format!("{name}.bin"));
    qbackup_tests::run_ok(
        Command::new(packer())
            .args(["create", "--no-progress", "--compression", "none", "--plan"])
            .arg(work.join("plan.json"))
            .arg("--passphrase-file")
            .arg(pass_file(dir))
            .args(["--scrypt-log-n", &log_n.to_string(), "--jobs", "2"])
            .args(["--chunk-size", &chunk.to_string(), "--out"])
            .arg(&out),
    );
    std::fs::remove_dir_all(&work).unwrap();
    out
}

/// Flip one byte in the middle of `bytes` (a chunk's ciphertext: a MAC failure).
pub fn tamper(bytes: &mut [u8]) {
    let i = bytes.len() / 2;
    bytes[i] ^= 0x40;
}

/// A finished `qbackup-audit` run.
pub struct Run {
    pub code: i32,
    /// The JSON lines of stdout, one per archive.
    pub lines: Vec<Value>,
    pub stderr: String,
}

impl Run {
    /// The line of the archive whose location ends with `suffix`.
    pub fn line(&self, suffix: &str) -> &Value {
        self.lines
            .iter()
            .find(|l| l["location"].as_str().is_some_and(|s| s.ends_with(suffix)))
            .unwrap_or_else(|| panic!("no line for {suffix}: {:#?}\n{}", self.lines, self.stderr))
    }

    /// Whether the archives' verdicts are `want` (file name, verdict), in name order.
    pub fn assert_verdicts(&self, want: &[(&str, &str)]) {
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect();
        assert_eq!(self.verdicts(), want, "{}", self.stderr);
    }

    pub fn verdicts(&self) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = self
            .lines
            .iter()
            .map(|l| {
                let loc = l["location"].as_str().unwrap_or("");
                let name = loc.rsplit('/').next().unwrap_or(loc).to_string();
                (name, l["verdict"].as_str().unwrap_or("").to_string())
            })
            .collect();
        v.sort();
        v
    }
}

/// `run --ledger LEDGER --passphrase-file PASS --verifier V EXTRA...`.
pub fn run_args(ledger: &str, pass: &Path, extra: &[&str]) -> Vec<String> {
    let head = ["run", "--ledger", ledger, "--passphrase-file"];
    head.iter()
        .map(|x| x.to_string())
        .chain([pass.display().to_string(), "--verifier".into()])
        .chain([verifier().display().to_string()])
        .chain(extra.iter().map(|x| x.to_string()))
        .collect()
}

/// [`audit`] with [`run_args`].
pub fn audit_run(ledger: &str, pass: &Path, extra: &[&str], env: &[(String, String)]) -> Run {
    let args = run_args(ledger, pass, extra);
    audit(&args.iter().map(String::as_str).collect::<Vec<_>>(), env)
}

/// Run `qbackup-audit ARGS` with `env` added.
pub fn audit(args: &[&str], env: &[(String, String)]) -> Run {
    let out = Command::new(AUDIT)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("run qbackup-audit");
    parse_run(out)
}

pub fn parse_run(out: std::process::Output) -> Run {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    Run {
        code: out.status.code().unwrap_or(-1),
        lines,
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The records of a directory ledger.
pub fn dir_records(ledger: &Path) -> Vec<Value> {
    let mut out: Vec<Value> = std::fs::read_dir(ledger.join("records"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .map(|e| serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap())
        .collect();
    out.sort_by(|a: &Value, b: &Value| a["location"].as_str().cmp(&b["location"].as_str()));
    out
}
