//! `qbackup-audit run`: select, verify in parallel, record (SPEC.md AUD-5 … AUD-8).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::child::{self, Budget, Children, Outcome, Verifier};
use crate::clock;
use crate::estimate::{assumed_kdfs, Model, Sample};
use crate::inputs::{self, file_version, Inputs};
use crate::interrupt;
use crate::ledger::{Ledger, Records};
use crate::location::{Location, Version};
use crate::passphrases::Passphrases;
use crate::progress::{Counters, Reporter};
use crate::record::{Attempt, Check, Record, Verdict};
use crate::s3::Storage;
use crate::select::{select, Task};
use crate::shard::Shard;

/// An archive is started under `--max-duration` only when this multiple of its estimate
/// still fits.
const DEADLINE_MARGIN: f64 = 1.25;

/// Everything `run` needs, validated.
pub struct Options {
    pub inputs: Inputs,
    pub ledger: String,
    pub passphrases: Passphrases,
    pub shard: Shard,
    pub max_age: Option<Duration>,
    pub max_duration: Option<Duration>,
    pub jobs: usize,
    pub kdf_memory_mib: u64,
    pub verifier: Verifier,
    pub progress_json: bool,
    pub no_progress: bool,
}

/// What a run came to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Summary {
    pub selected: usize,
    pub ok: usize,
    pub failed: usize,
    pub incomplete: usize,
    pub changed: usize,
    pub errors: usize,
    pub fresh: usize,
    pub elsewhere: usize,
    /// Not started: `--max-duration` or a stop.
    pub left: usize,
    /// Storage, ledger or sandbox failures that stopped the run early.
    pub fatal: Option<String>,
}

impl Summary {
    /// AUD-8: infrastructure, then incomplete, then findings.
    pub fn exit_code(&self) -> i32 {
        use crate::exit::*;
        if self.fatal.is_some() || self.errors > 0 {
            INFRASTRUCTURE
        } else if self.incomplete + self.changed + self.left > 0 {
            INCOMPLETE
        } else if self.failed > 0 {
            FINDINGS
        } else {
            ALL_VERIFIED
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "selected": self.selected, "ok": self.ok, "failed": self.failed,
            "incomplete": self.incomplete, "changed": self.changed, "errors": self.errors,
            "fresh": self.fresh, "other_shards": self.elsewhere, "left": self.left,
            "fatal": self.fatal, "exit_code": self.exit_code(),
        })
    }
}

/// State shared by the workers.
struct Shared {
    opts: Options,
    ledger: Ledger,
    storage: Option<Arc<Storage>>,
    queue: Mutex<VecDeque<(Task, f64)>>,
    /// Archives whose KDF needs more than a parallel share of the budget: run alone at
    /// the end with all of it.
    solo: Mutex<Vec<(Task, f64)>>,
    model: Mutex<(Model, Vec<Sample>)>,
    summary: Mutex<Summary>,
    counters: Arc<Counters>,
    children: Children,
    stop: AtomicBool,
    /// Every worker has returned.
    done: AtomicBool,
    deadline: Option<Instant>,
    host: String,
}

/// Run the audit; `Err` only for failures before any archive was started.
pub fn run(opts: Options) -> Result<Summary, String> {
    let mut storage = None;
    let candidates = inputs::enumerate(&opts.inputs, &mut storage)?;
    let ledger = Ledger::open(&opts.ledger, &mut storage)?;
    let records = ledger.load()?;
    let now = clock::now_ms();
    let max_age_ms = opts
        .max_age
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let selection = select(candidates, &records, opts.shard, max_age_ms, now);
    for t in selection.tasks.iter().filter(|t| t.previous.is_none()) {
        let c = &t.candidate;
        ledger.add_if_absent(&Record::pending(&c.location.to_string(), &c.version, now))?;
    }
    let samples = samples(&records);
    let model = Model::fit(&samples);
    let parallel = opts.jobs.min(selection.tasks.len()).max(1);
    let counters = Arc::new(Counters::default());
    let mut queue = VecDeque::new();
    let mut queued = 0.0;
    for t in selection.tasks {
        let kdfs = expected_kdfs(&t);
        let est = model.seconds(kdfs, t.candidate.size());
        counters
            .total_bytes
            .fetch_add(t.candidate.size(), Ordering::Relaxed);
        counters.kdfs_total.fetch_add(kdfs, Ordering::Relaxed);
        queued += est;
        queue.push_back((t, est));
    }
    counters
        .archives_total
        .store(queue.len() as u64, Ordering::Relaxed);
    counters.parallel.store(parallel as u64, Ordering::Relaxed);
    *counters
        .queued_seconds
        .lock()
        .map_err(|_| "progress lock poisoned")? = queued;
    let summary = Summary {
        selected: queue.len(),
        fresh: selection.fresh,
        elsewhere: selection.elsewhere,
        ..Summary::default()
    };
    let deadline = opts.max_duration.map(|d| Instant::now() + d);
    let reporter = Reporter::start(counters.clone(), opts.progress_json, !opts.no_progress);
    let shared = Arc::new(Shared {
        opts,
        ledger,
        storage,
        queue: Mutex::new(queue),
        solo: Mutex::new(Vec::new()),
        model: Mutex::new((model, samples)),
        summary: Mutex::new(summary),
        counters,
        children: Children::default(),
        stop: AtomicBool::new(false),
        done: AtomicBool::new(false),
        deadline,
        host: hostname(),
    });

    // AUD-7: `jobs` CPUs as `parallel` archives × `threads` KDF threads; the KDF memory
    // budget divided between them, never multiplied.
    let threads = (shared.opts.jobs / parallel).max(1);
    let share = Budget {
        kdf_threads: threads,
        kdf_memory_mib: (shared.opts.kdf_memory_mib / parallel as u64).max(1),
    };
    let workers: Vec<_> = (0..parallel)
        .map(|slot| {
            let s = shared.clone();
            std::thread::spawn(move || worker(&s, slot, share, parallel > 1))
        })
        .collect();
    let watcher = {
        let s = shared.clone();
        std::thread::spawn(move || watch_signals(&s))
    };
    for w in workers {
        let _ = w.join();
    }
    // Alone, with every CPU and the whole budget.
    let solo: Vec<(Task, f64)> = shared
        .solo
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default();
    let whole = Budget {
        kdf_threads: shared.opts.jobs.max(1),
        kdf_memory_mib: shared.opts.kdf_memory_mib,
    };
    for (task, est) in solo {
        if shared.stop.load(Ordering::SeqCst) || interrupt::requested() || !fits(&shared, est) {
            lock(&shared.summary).left += 1;
            continue;
        }
        verify_one(&shared, 0, task, est, whole, false);
    }
    shared.done.store(true, Ordering::SeqCst);
    let _ = watcher.join();
    let mut summary = lock(&shared.summary).clone();
    summary.left += lock(&shared.queue).len();
    reporter.finish();
    Ok(summary)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Stop the verifiers on SIGINT/SIGTERM (they exit 130; the workers record incomplete).
fn watch_signals(s: &Shared) {
    while !s.done.load(Ordering::SeqCst) {
        if interrupt::requested() {
            s.children.terminate_all();
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether an archive estimated at `est` seconds may start now.
fn fits(s: &Shared, est: f64) -> bool {
    s.deadline.is_none_or(|d| {
        let left = d.saturating_duration_since(Instant::now()).as_secs_f64();
        est * DEADLINE_MARGIN <= left
    })
}

fn worker(s: &Shared, slot: usize, budget: Budget, shared_budget: bool) {
    loop {
        if s.stop.load(Ordering::SeqCst) || interrupt::requested() {
            return;
        }
        // The first queued archive that can still finish in time (AUD-5).
        let next = {
            let mut q = lock(&s.queue);
            let pos = q.iter().position(|(_, est)| fits(s, *est));
            pos.and_then(|p| q.remove(p))
        };
        let Some((task, est)) = next else { return };
        {
            let mut queued = lock(&s.counters.queued_seconds);
            *queued = (*queued - est).max(0.0);
        }
        verify_one(s, slot, task, est, budget, shared_budget);
    }
}

/// Verify one archive, record the attempt, print its JSON line.
fn verify_one(s: &Shared, slot: usize, task: Task, est: f64, budget: Budget, shared_budget: bool) {
    let c = &task.candidate;
    let location = c.location.to_string();
    lock(&s.counters.running).insert(slot, (location.clone(), Instant::now(), est));
    let started_ms = clock::now_ms();
    let started = Instant::now();
    let outcome = match s.opts.passphrases.for_location(&location) {
        None => Outcome::from(Check::without_verdict(
            Verdict::Error,
            "no-passphrase",
            format!("no rule of the passphrase map matches {location}"),
            0,
        )),
        Some(pass) => verify_source(s, &c.location, &c.version, pass, budget),
    };
    lock(&s.counters.running).remove(&slot);
    if outcome.kdf_budget_refusal && shared_budget {
        lock(&s.solo).push((task, est));
        return;
    }
    let check = outcome.check;
    if outcome.sandbox_unavailable {
        lock(&s.summary).fatal = Some(format!(
            "the verifier's sandbox cannot be enforced here: {}",
            check.message.as_deref().unwrap_or("")
        ));
        s.stop.store(true, Ordering::SeqCst);
    }
    let attempt = Attempt {
        check,
        started_ms,
        started_at: clock::utc(started_ms),
        duration_seconds: (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        host: s.host.clone(),
        shard: s.opts.shard.to_string(),
    };
    let record = Record::of_attempt(&location, &c.version, attempt.clone());
    let stored = match s.ledger.write(&record) {
        Ok(r) => r,
        Err(e) => {
            // Unrecorded work is lost work: stop starting more.
            lock(&s.summary).fatal = Some(e);
            s.stop.store(true, Ordering::SeqCst);
            record
        }
    };
    let check = &attempt.check;
    {
        let mut sum = lock(&s.summary);
        match check.verdict {
            Verdict::Ok => sum.ok += 1,
            Verdict::Failed => sum.failed += 1,
            Verdict::Incomplete => sum.incomplete += 1,
            Verdict::Changed => sum.changed += 1,
            Verdict::Error => sum.errors += 1,
        }
    }
    let counters = &s.counters;
    counters.archives_done.fetch_add(1, Ordering::Relaxed);
    if let Some(k) = check.kdfs {
        counters.kdfs_done.fetch_add(k, Ordering::Relaxed);
        if check.verdict == Verdict::Ok {
            let mut m = lock(&s.model);
            m.1.push(Sample {
                kdfs: k,
                bytes: check.bytes,
                seconds: attempt.duration_seconds,
            });
            m.0 = Model::fit(&m.1);
        }
    }
    print_line(&location, &c.version, &attempt, stored.attempts);
}

/// An attempt that found nothing about the archive.
fn unverified(verdict: Verdict, class: &str, message: String) -> Outcome {
    Check::without_verdict(verdict, class, message, 0).into()
}

/// Open the archive at its listed version and verify it; a file that is replaced or
/// modified while read is `changed` (AUD-3).
fn verify_source(
    s: &Shared,
    location: &Location,
    version: &Version,
    pass: &Path,
    budget: Budget,
) -> Outcome {
    let verify = |source: &mut dyn Read| {
        child::verify(
            source,
            pass,
            &s.opts.verifier,
            budget,
            &s.counters,
            &s.children,
        )
    };
    match (location, version) {
        (Location::File(path), Version::File { size, mtime_ns, .. }) => {
            let mut f = match File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    let m = format!("{} was removed", path.display());
                    return unverified(Verdict::Changed, "changed", m);
                }
                Err(e) => {
                    let m = format!("opening {}: {e}", path.display());
                    return unverified(Verdict::Error, "storage", m);
                }
            };
            if f.metadata().map(|m| file_version(&m)).ok().as_ref() != Some(version) {
                let m = format!("{} changed since it was listed", path.display());
                return unverified(Verdict::Changed, "changed", m);
            }
            let outcome = verify(&mut f);
            let unchanged = f.metadata().is_ok_and(|m| {
                let now_ns = m
                    .mtime()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(m.mtime_nsec());
                m.size() == *size && now_ns == *mtime_ns
            });
            if unchanged || outcome.check.verdict == Verdict::Incomplete {
                outcome
            } else {
                let m = format!("{} was modified while it was read", path.display());
                Check::without_verdict(Verdict::Changed, "changed", m, outcome.check.bytes).into()
            }
        }
        (Location::S3 { bucket, key }, Version::S3 { etag, size }) => {
            let Some(storage) = &s.storage else {
                return unverified(Verdict::Error, "storage", "no S3 client".into());
            };
            match storage.open(bucket, key, etag, *size) {
                Ok(mut r) => verify(&mut r),
                Err(e) => unverified(Verdict::Error, "storage", e),
            }
        }
        _ => unverified(
            Verdict::Error,
            "storage",
            format!("{location}: a version of another kind of storage"),
        ),
    }
}

/// The archive's JSON line on stdout (AUD-8).
fn print_line(location: &str, version: &Version, attempt: &Attempt, attempts: u32) {
    let mut v = serde_json::to_value(attempt).unwrap_or(Value::Null);
    v["location"] = json!(location);
    v["version"] = serde_json::to_value(version).unwrap_or(Value::Null);
    v["attempts"] = json!(attempts);
    let line = qbackup_console::with_schema(v).to_string();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Measured archives from the ledger, for the first estimates.
fn samples(records: &Records) -> Vec<Sample> {
    records
        .values()
        .filter_map(|r| r.verified.as_ref())
        .filter(|a| a.check.verdict == Verdict::Ok)
        .filter_map(|a| {
            Some(Sample {
                kdfs: a.check.kdfs?,
                bytes: a.check.bytes,
                seconds: a.duration_seconds,
            })
        })
        .collect()
}

/// KDFs of a task: as measured last time, else assumed (v4).
fn expected_kdfs(t: &Task) -> u64 {
    t.previous
        .as_ref()
        .and_then(|r| r.verified.as_ref().or(r.last.as_ref()))
        .and_then(|a| a.check.kdfs)
        .unwrap_or_else(|| assumed_kdfs(t.candidate.size()))
}

/// This machine's name, for the ledger.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}
