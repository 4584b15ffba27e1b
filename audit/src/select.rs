//! Which archives this run verifies, in which order (SPEC.md AUD-5, AUD-6): the shard's
//! archives, less those verified OK within `--max-age`, least recently verified first
//! (never verified first of all), then by location.

use crate::ledger::Records;
use crate::location::Candidate;
use crate::record::Record;
use crate::shard::Shard;

/// One archive to verify, with what the ledger knew of it.
#[derive(Debug, Clone)]
pub struct Task {
    pub candidate: Candidate,
    pub previous: Option<Record>,
}

/// The selection.
#[derive(Debug, Default)]
pub struct Selection {
    pub tasks: Vec<Task>,
    /// In this shard, verified OK within `--max-age`.
    pub fresh: usize,
    /// In other shards.
    pub elsewhere: usize,
}

pub fn select(
    candidates: Vec<Candidate>,
    records: &Records,
    shard: Shard,
    max_age_ms: Option<u64>,
    now_ms: u64,
) -> Selection {
    let mut s = Selection::default();
    for c in candidates {
        if !shard.holds(&c.location.to_string()) {
            s.elsewhere += 1;
            continue;
        }
        let previous = records.get(&c.key()).cloned();
        if let (Some(age), Some(r)) = (max_age_ms, &previous) {
            if r.fresh(now_ms, age) {
                s.fresh += 1;
                continue;
            }
        }
        s.tasks.push(Task {
            candidate: c,
            previous,
        });
    }
    s.tasks.sort_by(|a, b| {
        let when = |t: &Task| t.previous.as_ref().and_then(Record::verified_ms);
        when(a)
            .cmp(&when(b))
            .then_with(|| a.candidate.location.cmp(&b.candidate.location))
    });
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::location::{Location, Version};
    use crate::record::tests::attempt;
    use crate::record::Verdict;

    fn cand(name: &str) -> Candidate {
        Candidate {
            location: Location::S3 {
                bucket: "b".into(),
                key: name.into(),
            },
            version: Version::S3 {
                etag: "\"e\"".into(),
                size: 100,
            },
        }
    }

    #[test]
    fn least_recently_verified_first_and_fresh_ones_skipped() {
        let names = ["a", "b", "c", "d", "e"];
        let mut records = Records::new();
        let mut put = |n: &str, v: Verdict, t: u64| {
            let c = cand(n);
            let r = Record::of_attempt(&c.location.to_string(), &c.version, attempt(v, t));
            records.insert(c.key(), r);
        };
        put("a", Verdict::Ok, 50_000); // fresh at 60 s with a 30 s max age
        put("b", Verdict::Ok, 1_000); // stale
        put("c", Verdict::Failed, 2_000);
        put("d", Verdict::Incomplete, 55_000); // never got a verdict
        let all: Vec<Candidate> = names.iter().map(|n| cand(n)).collect();
        let s = select(all.clone(), &records, Shard::ALL, Some(30_000), 60_000);
        let order: Vec<String> = s
            .tasks
            .iter()
            .map(|t| t.candidate.location.to_string())
            .collect();
        assert_eq!(order, ["s3://b/d", "s3://b/e", "s3://b/b", "s3://b/c"]);
        assert_eq!(s.fresh, 1);
        // Without --max-age everything is verified again, the freshest last.
        let s = select(all.clone(), &records, Shard::ALL, None, 60_000);
        assert_eq!(
            s.tasks.last().unwrap().candidate.location.to_string(),
            "s3://b/a"
        );
        // Shards split the candidates without overlap.
        let mut seen = 0;
        for i in 1..=3 {
            let s = select(
                all.clone(),
                &records,
                Shard::new(i, 3).unwrap(),
                None,
                60_000,
            );
            assert_eq!(s.tasks.len() + s.elsewhere, names.len());
            seen += s.tasks.len();
        }
        assert_eq!(seen, names.len());
    }
}
