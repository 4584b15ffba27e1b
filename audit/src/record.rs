//! The ledger's record of one archive version, and how two of them merge (SPEC.md AUD-4).

use serde::{Deserialize, Serialize};

use crate::location::{record_key, Version};

/// The version of the record layout.
pub const RECORD_SCHEMA: u32 = 1;

/// What one attempt to verify an archive version came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every byte verified (`qbackup-verify verify` exit 0).
    Ok,
    /// The verifier reported a finding: `class` says which (mac-failure, truncated, …).
    Failed,
    /// Interrupted (a signal, `--max-duration` ran out mid-archive): run again.
    Incomplete,
    /// The object changed while it was read; nothing was mixed (AUD-3).
    Changed,
    /// Our side failed: storage unreachable, the verifier could not run.
    Error,
}

impl Verdict {
    /// A verdict about the archive's bytes, which a new attempt on the same version would
    /// repeat; the others say nothing about them.
    pub fn is_definitive(self) -> bool {
        matches!(self, Verdict::Ok | Verdict::Failed)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Ok => "ok",
            Verdict::Failed => "failed",
            Verdict::Incomplete => "incomplete",
            Verdict::Changed => "changed",
            Verdict::Error => "error",
        }
    }
}

/// What verifying an archive found: the verifier's side of an attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub verdict: Verdict,
    /// The verifier's error class (`Failed`), or `changed`/`storage`/`verifier`/`interrupted`.
    pub class: Option<String>,
    /// The verifier's exit code, when it exited.
    pub exit_code: Option<i32>,
    pub message: Option<String>,
    pub backup_id: Option<String>,
    /// Archive bytes read and handed to the verifier.
    pub bytes: u64,
    /// SHA-256 of all the archive's bytes, when all were read.
    pub sha256: Option<String>,
    /// scrypt KDFs the archive cost (v4), from the verifier's report: for estimates.
    pub kdfs: Option<u64>,
}

impl Check {
    /// An attempt that says nothing about the archive's bytes beyond `bytes` read.
    pub fn without_verdict(verdict: Verdict, class: &str, message: String, bytes: u64) -> Check {
        Check {
            verdict,
            class: Some(class.to_string()),
            exit_code: None,
            message: Some(message),
            backup_id: None,
            bytes,
            sha256: None,
            kdfs: None,
        }
    }
}

/// One attempt: what it found, when, where.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    #[serde(flatten)]
    pub check: Check,
    pub started_ms: u64,
    pub started_at: String,
    pub duration_seconds: f64,
    pub host: String,
    pub shard: String,
}

impl Attempt {
    pub fn finished_ms(&self) -> u64 {
        self.started_ms
            .saturating_add((self.duration_seconds.max(0.0) * 1000.0) as u64)
    }
}

/// Everything the ledger knows of one archive version (one record per version).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub schema: u32,
    pub key: String,
    pub location: String,
    pub version: Version,
    /// When an audit first listed this version.
    pub first_seen_ms: u64,
    pub attempts: u32,
    /// The latest attempt, whatever it came to.
    pub last: Option<Attempt>,
    /// The latest attempt with a definitive verdict (ok or failed).
    pub verified: Option<Attempt>,
}

impl Record {
    /// A version listed but not yet attempted.
    pub fn pending(location: &str, version: &Version, now_ms: u64) -> Record {
        Record {
            schema: RECORD_SCHEMA,
            key: record_key(location, version),
            location: location.to_string(),
            version: version.clone(),
            first_seen_ms: now_ms,
            attempts: 0,
            last: None,
            verified: None,
        }
    }

    /// A record of one attempt.
    pub fn of_attempt(location: &str, version: &Version, attempt: Attempt) -> Record {
        let mut r = Record::pending(location, version, attempt.started_ms);
        r.attempts = 1;
        r.verified = attempt
            .check
            .verdict
            .is_definitive()
            .then(|| attempt.clone());
        r.last = Some(attempt);
        r
    }

    /// Whether this version verified OK within `max_age_ms` of `now_ms`.
    pub fn fresh(&self, now_ms: u64, max_age_ms: u64) -> bool {
        self.verified.as_ref().is_some_and(|v| {
            v.check.verdict == Verdict::Ok && now_ms.saturating_sub(v.finished_ms()) < max_age_ms
        })
    }

    /// When this version last got a definitive verdict (for least-recently-verified first).
    pub fn verified_ms(&self) -> Option<u64> {
        self.verified.as_ref().map(Attempt::finished_ms)
    }

    /// Combine `self` (stored) with `new` (being written) for the same key: attempts add
    /// up, the earliest sighting stays, and the later `last` and later `verified` win, so a
    /// later incomplete attempt never erases an earlier verdict. Order-independent, so
    /// concurrent writers retrying a conditional put converge.
    pub fn merge(&self, new: &Record) -> Record {
        fn later(a: &Option<Attempt>, b: &Option<Attempt>) -> Option<Attempt> {
            match (a, b) {
                (Some(x), Some(y)) => Some(if y.started_ms >= x.started_ms {
                    y.clone()
                } else {
                    x.clone()
                }),
                (x, None) => x.clone(),
                (None, y) => y.clone(),
            }
        }
        Record {
            schema: RECORD_SCHEMA,
            key: self.key.clone(),
            location: self.location.clone(),
            version: self.version.clone(),
            first_seen_ms: self.first_seen_ms.min(new.first_seen_ms),
            attempts: self.attempts.saturating_add(new.attempts),
            last: later(&self.last, &new.last),
            verified: later(&self.verified, &new.verified),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn attempt(verdict: Verdict, started_ms: u64) -> Attempt {
        Attempt {
            check: Check {
                verdict,
                class: (verdict == Verdict::Failed).then(|| "mac-failure".into()),
                exit_code: Some(0),
                message: None,
                backup_id: None,
                bytes: 10,
                sha256: None,
                kdfs: Some(3),
            },
            started_ms,
            started_at: crate::clock::utc(started_ms),
            duration_seconds: 2.0,
            host: "h".into(),
            shard: "1/1".into(),
        }
    }

    #[test]
    fn a_later_incomplete_attempt_keeps_the_earlier_verdict() {
        let v = Version::S3 {
            etag: "\"e\"".into(),
            size: 10,
        };
        let ok = Record::of_attempt("s3://b/k", &v, attempt(Verdict::Ok, 1000));
        let cut = Record::of_attempt("s3://b/k", &v, attempt(Verdict::Incomplete, 5000));
        for merged in [ok.merge(&cut), cut.merge(&ok)] {
            assert_eq!(merged.attempts, 2);
            assert_eq!(
                merged.last.as_ref().unwrap().check.verdict,
                Verdict::Incomplete
            );
            assert_eq!(merged.verified.as_ref().unwrap().check.verdict, Verdict::Ok);
            assert_eq!(merged.first_seen_ms, 1000);
        }
        assert!(ok.fresh(3000, 10_000));
        assert!(!ok.fresh(30_000, 10_000));
        assert!(!cut.fresh(6000, 10_000));
        let failed = Record::of_attempt("s3://b/k", &v, attempt(Verdict::Failed, 9000));
        let m = ok.merge(&failed);
        assert_eq!(m.verified.unwrap().check.verdict, Verdict::Failed);
        assert!(!failed.fresh(9500, 10_000), "only OK verdicts are fresh");
    }
}
