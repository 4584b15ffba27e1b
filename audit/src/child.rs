//! One archive through a sandboxed `qbackup-verify verify -` child (SPEC.md AUD-1): this
//! process pipes the archive's bytes in (hashing them with SHA-256 on the way) and reads
//! only the child's JSON report; it never parses an archive byte itself.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::interrupt;
use crate::location::hex;
use crate::progress::Counters;
use crate::record::{Check, Verdict};
use crate::s3::ReadError;

/// The verifier's JSON report is read up to this size (LIM-64); a larger one is an
/// error of the run, not of the archive.
pub const MAX_REPORT_BYTES: u64 = 64 << 20;

/// The tail of the verifier's stderr kept for messages.
const STDERR_TAIL: usize = 16 << 10;

/// Read size from storage.
const BLOCK: usize = 1 << 20;

/// The verifier's exit codes this process acts on (README "Exit codes").
const EXIT_IO: i32 = 20;
const EXIT_SANDBOX: i32 = 21;
const EXIT_INTERRUPTED: i32 = 130;

/// How to run the verifier.
#[derive(Debug, Clone)]
pub struct Verifier {
    pub program: PathBuf,
    pub no_sandbox: bool,
    pub strict_backup_size: bool,
}

/// What one child may use: KDF threads and its share of the KDF memory budget (AUD-7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub kdf_threads: usize,
    pub kdf_memory_mib: u64,
}

/// What verifying one archive came to, and what the scheduler must act on.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub check: Check,
    /// The verifier refused a KDF above its share of the memory budget: worth one more
    /// try with the whole budget.
    pub kdf_budget_refusal: bool,
    /// The sandbox cannot be enforced here: every archive would fail the same way.
    pub sandbox_unavailable: bool,
}

impl From<Check> for Outcome {
    fn from(check: Check) -> Outcome {
        Outcome {
            check,
            kdf_budget_refusal: false,
            sandbox_unavailable: false,
        }
    }
}

fn failure(verdict: Verdict, class: &str, message: String, bytes: u64) -> Outcome {
    Check::without_verdict(verdict, class, message, bytes).into()
}

/// Live verifier children, to stop them on SIGINT/SIGTERM.
#[derive(Default)]
pub struct Children(Mutex<Vec<u32>>);

impl Children {
    fn add(&self, pid: u32) {
        if let Ok(mut v) = self.0.lock() {
            v.push(pid);
        }
    }
    fn remove(&self, pid: u32) {
        if let Ok(mut v) = self.0.lock() {
            v.retain(|&p| p != pid);
        }
    }
    /// SIGTERM to every live child (it exits 130 and removes nothing: `verify` writes
    /// nothing).
    pub fn terminate_all(&self) {
        if let Ok(v) = self.0.lock() {
            for &pid in v.iter() {
                if let Ok(pid) = libc::pid_t::try_from(pid) {
                    // SAFETY: kill(2) on a child we spawned and have not yet reaped.
                    unsafe { libc::kill(pid, libc::SIGTERM) };
                }
            }
        }
    }
}

/// Verify the archive `source` yields, with the passphrase in `passphrase_file`.
pub fn verify(
    source: &mut dyn Read,
    passphrase_file: &Path,
    verifier: &Verifier,
    budget: Budget,
    counters: &Counters,
    children: &Children,
) -> Outcome {
    let mut cmd = Command::new(&verifier.program);
    if verifier.no_sandbox {
        cmd.arg("--no-sandbox");
    }
    cmd.args(["verify", "--json", "--no-progress", "--jobs"])
        .arg(budget.kdf_threads.to_string())
        .arg("--max-kdf-memory")
        .arg(budget.kdf_memory_mib.to_string())
        .arg("--passphrase-file")
        .arg(passphrase_file);
    if verifier.strict_backup_size {
        cmd.arg("--strict-backup-size");
    }
    cmd.arg("-")
        .env_remove("QBACKUP_PASSPHRASE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return failure(
                Verdict::Error,
                "verifier",
                format!("starting {}: {e}", verifier.program.display()),
                0,
            )
        }
    };
    children.add(child.id());
    let outcome = feed_and_wait(&mut child, source, counters);
    children.remove(child.id());
    outcome
}

fn feed_and_wait(child: &mut Child, source: &mut dyn Read, counters: &Counters) -> Outcome {
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.take(MAX_REPORT_BYTES).read_to_end(&mut buf);
            // Drain the rest so the child never blocks on a full pipe.
            let _ = io::copy(s, &mut io::sink());
        }
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let mut buf = [0u8; 8192];
            while let Ok(n) = s.read(&mut buf) {
                if n == 0 {
                    break;
                }
                all.extend_from_slice(&buf[..n]);
                if all.len() > 2 * STDERR_TAIL {
                    all.drain(..all.len() - STDERR_TAIL);
                }
            }
        }
        String::from_utf8_lossy(&all[all.len().saturating_sub(STDERR_TAIL)..]).into_owned()
    });

    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut source_error: Option<io::Error> = None;
    let mut complete = false;
    let mut stdin = child.stdin.take();
    let mut buf = vec![0u8; BLOCK];
    while let Some(input) = stdin.as_mut() {
        if interrupt::requested() {
            break;
        }
        let n = match source.read(&mut buf) {
            Ok(0) => {
                complete = true;
                break;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                source_error = Some(e);
                break;
            }
        };
        hasher.update(&buf[..n]);
        bytes += n as u64;
        counters.done_bytes.fetch_add(n as u64, Ordering::Relaxed);
        if input.write_all(&buf[..n]).is_err() {
            // The verifier stopped reading: it has its verdict.
            break;
        }
    }
    drop(stdin);
    let stopped_early = source_error.is_some() || interrupt::requested();
    if stopped_early {
        // Its input ended short: whatever it says now is not about the archive.
        let _ = child.kill();
    }
    let status = child.wait();
    let report = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();

    if let Some(e) = source_error {
        return match e.get_ref().and_then(|i| i.downcast_ref::<ReadError>()) {
            Some(ReadError::Changed(m)) => failure(Verdict::Changed, "changed", m.clone(), bytes),
            Some(ReadError::Storage(m)) => failure(Verdict::Error, "storage", m.clone(), bytes),
            None => failure(Verdict::Error, "storage", format!("reading: {e}"), bytes),
        };
    }
    let status = match status {
        Ok(s) => s,
        Err(e) => return failure(Verdict::Error, "verifier", format!("waiting: {e}"), bytes),
    };
    let code = status.code();
    if interrupt::requested() || code == Some(EXIT_INTERRUPTED) || code.is_none() {
        let what = if interrupt::requested() {
            "interrupted".to_string()
        } else {
            format!("the verifier was stopped ({status})")
        };
        return failure(Verdict::Incomplete, "interrupted", what, bytes);
    }
    let doc: Option<Value> = serde_json::from_slice(&report).ok();
    let field = |path: &[&str]| -> Option<String> {
        let mut v = doc.as_ref()?;
        for p in path {
            v = v.get(p)?;
        }
        v.as_str().map(str::to_string)
    };
    let backup_id = field(&["archive", "backup_id"]);
    let kdfs = doc.as_ref().and_then(kdf_count);
    let sha256 = complete.then(|| hex(&hasher.finalize()));
    let base = Check {
        verdict: Verdict::Ok,
        class: None,
        exit_code: code,
        message: None,
        backup_id,
        bytes,
        sha256,
        kdfs,
    };
    let tail = || stderr.trim().lines().last().unwrap_or("").to_string();
    let judged = |verdict: Verdict, class: String, message: String| Check {
        verdict,
        class: Some(class),
        message: Some(message),
        ..base.clone()
    };
    match code {
        Some(0) if doc.as_ref().and_then(|d| d["ok"].as_bool()) == Some(true) && complete => {
            base.into()
        }
        Some(0) => judged(
            Verdict::Error,
            "verifier".into(),
            "the verifier exited 0 without a complete report".into(),
        )
        .into(),
        Some(c @ 10..=19) => {
            let class = field(&["error", "class"]).unwrap_or_else(|| format!("exit-{c}"));
            let message = field(&["error", "message"]).unwrap_or_else(tail);
            Outcome {
                kdf_budget_refusal: class == "limit-exceeded"
                    && message.contains("--max-kdf-memory"),
                ..judged(Verdict::Failed, class, message).into()
            }
        }
        Some(c) => {
            let class = if c == EXIT_IO {
                "verifier-io"
            } else {
                "verifier"
            };
            Outcome {
                sandbox_unavailable: c == EXIT_SANDBOX,
                ..judged(
                    Verdict::Error,
                    class.into(),
                    format!("the verifier exited {c}: {}", tail()),
                )
                .into()
            }
        }
        // Killed by a signal: handled above.
        None => judged(
            Verdict::Incomplete,
            "interrupted".into(),
            "interrupted".into(),
        )
        .into(),
    }
}

/// KDFs the archive cost, from the report: one per member of a v4 archive (the header,
/// qubes.xml and every chunk), none for v2/v3.
pub fn kdf_count(doc: &Value) -> Option<u64> {
    let archive = doc.get("archive")?;
    if archive.get("kdf").is_none_or(Value::is_null) {
        return Some(0);
    }
    let chunks: u64 = doc
        .get("vms")?
        .as_array()?
        .iter()
        .filter_map(|vm| vm.get("files")?.as_array())
        .flatten()
        .filter_map(|f| f.get("chunks")?.as_u64())
        .sum();
    Some(chunks.saturating_add(2))
}
