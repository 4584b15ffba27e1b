//! `qbackup-audit report`: the ledger merged into a summary (SPEC.md AUD-9). Per location,
//! its current version is the one listed most recently for the first time; its status is
//! the first that applies of: failing, changed (an earlier version was verified, this one
//! not yet), never-verified, stale (OK longer ago than `--stale-after`), ok.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};

use crate::clock;
use crate::ledger::Records;
use crate::record::{Attempt, Record, Verdict};

/// A location's status, in order of precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Failing,
    Changed,
    NeverVerified,
    Stale,
    Ok,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Failing => "failing",
            Status::Changed => "changed",
            Status::NeverVerified => "never-verified",
            Status::Stale => "stale",
            Status::Ok => "ok",
        }
    }
}

/// One location's line.
#[derive(Debug, Clone)]
pub struct Entry {
    pub location: String,
    pub status: Status,
    pub current: Record,
    /// Versions of this location the ledger holds.
    pub versions: usize,
}

/// The summary of `records` at `now_ms`.
pub fn summarise(records: &Records, now_ms: u64, stale_after_ms: u64) -> Vec<Entry> {
    let mut by_location: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records.values() {
        by_location.entry(&r.location).or_default().push(r);
    }
    let mut out: Vec<Entry> = by_location
        .into_iter()
        .filter_map(|(location, mut versions)| {
            versions.sort_by_key(|r| (r.first_seen_ms, r.attempts));
            let current = (*versions.last()?).clone();
            let earlier_verified = versions[..versions.len() - 1]
                .iter()
                .any(|r| r.verified.is_some());
            let status = match &current.verified {
                Some(a) if a.check.verdict == Verdict::Failed => Status::Failing,
                Some(a) if now_ms.saturating_sub(a.finished_ms()) >= stale_after_ms => {
                    Status::Stale
                }
                Some(_) => Status::Ok,
                None if earlier_verified => Status::Changed,
                None => Status::NeverVerified,
            };
            Some(Entry {
                location: location.to_string(),
                status,
                current,
                versions: versions.len(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.status.cmp(&b.status).then(a.location.cmp(&b.location)));
    out
}

fn attempt_json(a: &Option<Attempt>) -> Value {
    a.as_ref().map_or(Value::Null, |a| {
        json!({
            "verdict": a.check.verdict.as_str(), "class": a.check.class,
            "message": a.check.message, "at": clock::utc(a.finished_ms()),
            "backup_id": a.check.backup_id, "bytes": a.check.bytes, "sha256": a.check.sha256,
            "host": a.host, "shard": a.shard,
        })
    })
}

/// The JSON document.
pub fn to_json(entries: &[Entry], now_ms: u64, stale_after_ms: u64) -> Value {
    let mut counts = BTreeMap::new();
    for s in [
        Status::Failing,
        Status::Changed,
        Status::NeverVerified,
        Status::Stale,
        Status::Ok,
    ] {
        counts.insert(s.as_str(), entries.iter().filter(|e| e.status == s).count());
    }
    qbackup_console::with_schema(json!({
        "generated_at": clock::utc(now_ms),
        "stale_after_seconds": stale_after_ms / 1000,
        "archives": entries.len(),
        "counts": counts,
        "entries": entries.iter().map(|e| json!({
            "location": e.location, "status": e.status.as_str(),
            "version": e.current.version, "versions": e.versions,
            "attempts": e.current.attempts,
            "verified": attempt_json(&e.current.verified),
            "last_attempt": attempt_json(&e.current.last),
        })).collect::<Vec<_>>(),
    }))
}

/// The text report: counts, then one line per location that is not OK.
pub fn to_text(entries: &[Entry]) -> String {
    let count = |s: Status| entries.iter().filter(|e| e.status == s).count();
    let mut out = format!(
        "{} archives: {} ok, {} stale, {} failing, {} changed since last verified, {} never verified\n",
        entries.len(),
        count(Status::Ok),
        count(Status::Stale),
        count(Status::Failing),
        count(Status::Changed),
        count(Status::NeverVerified),
    );
    for e in entries.iter().filter(|e| e.status != Status::Ok) {
        let detail = match (&e.current.verified, &e.current.last) {
            (Some(v), _) => format!(
                "{} {} at {}{}",
                v.check.verdict.as_str(),
                v.check.class.as_deref().unwrap_or(""),
                clock::utc(v.finished_ms()),
                v.check
                    .message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            (None, Some(l)) => format!(
                "last attempt {} at {}{}",
                l.check.verdict.as_str(),
                clock::utc(l.finished_ms()),
                l.check
                    .message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ),
            (None, None) => format!("listed at {}", clock::utc(e.current.first_seen_ms)),
        };
        let _ = writeln!(out, "{:<15} {}  {}", e.status.as_str(), e.location, detail);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::location::Version;
    use crate::record::tests::attempt;

    fn v(etag: &str) -> Version {
        Version::S3 {
            etag: etag.into(),
            size: 10,
        }
    }

    #[test]
    fn statuses_by_precedence() {
        let mut records = Records::new();
        let mut add = |r: Record| {
            records.insert(r.key.clone(), r);
        };
        let day = 86_400_000;
        let now = 100 * day;
        add(Record::of_attempt(
            "s3://b/ok",
            &v("1"),
            attempt(Verdict::Ok, now - day),
        ));
        add(Record::of_attempt(
            "s3://b/old",
            &v("1"),
            attempt(Verdict::Ok, now - 40 * day),
        ));
        add(Record::of_attempt(
            "s3://b/bad",
            &v("1"),
            attempt(Verdict::Failed, now - day),
        ));
        add(Record::pending("s3://b/new", &v("1"), now - day));
        // Verified at version 1, then version 2 appeared and was cut short.
        add(Record::of_attempt(
            "s3://b/moved",
            &v("1"),
            attempt(Verdict::Ok, now - 3 * day),
        ));
        add(Record::of_attempt(
            "s3://b/moved",
            &v("2"),
            attempt(Verdict::Incomplete, now - day),
        ));
        let e = summarise(&records, now, 30 * day);
        let got: Vec<(&str, &str)> = e
            .iter()
            .map(|e| (e.location.as_str(), e.status.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("s3://b/bad", "failing"),
                ("s3://b/moved", "changed"),
                ("s3://b/new", "never-verified"),
                ("s3://b/old", "stale"),
                ("s3://b/ok", "ok"),
            ]
        );
        let text = to_text(&e);
        assert!(
            text.starts_with("5 archives: 1 ok, 1 stale, 1 failing, 1 changed"),
            "{text}"
        );
        assert!(text.contains("last attempt incomplete"), "{text}");
        let doc = to_json(&e, now, 30 * day);
        assert_eq!(doc["counts"]["failing"], 1);
        assert_eq!(doc["entries"][1]["versions"], 2);
    }
}
