//! Which slice of the archives this process audits (SPEC.md AUD-6): `i/n` by a stable hash
//! of the location, never Rust's randomly keyed hasher, so every machine and every run
//! agrees on the split.

use sha2::{Digest, Sha256};

/// Shard `index` (1-based) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u64,
    pub count: u64,
}

impl Shard {
    /// Everything.
    pub const ALL: Shard = Shard { index: 1, count: 1 };

    /// `i/n` with 1 ≤ i ≤ n.
    pub fn parse(s: &str) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("shard {s:?}: expected i/n, e.g. 2/8"))?;
        let index: u64 = i
            .trim()
            .parse()
            .map_err(|_| format!("shard {s:?}: {i:?} is not a number"))?;
        let count: u64 = n
            .trim()
            .parse()
            .map_err(|_| format!("shard {s:?}: {n:?} is not a number"))?;
        Shard::new(index, count).ok_or_else(|| format!("shard {s:?}: need 1 <= i <= n"))
    }

    pub fn new(index: u64, count: u64) -> Option<Shard> {
        (count >= 1 && (1..=count).contains(&index)).then_some(Shard { index, count })
    }

    /// Whether `location` (its display form) falls in this shard: the first 8 bytes of
    /// SHA-256 of the location, big-endian, modulo n, equal i − 1.
    pub fn holds(&self, location: &str) -> bool {
        slot(location, self.count) == self.index - 1
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The 0-based slot of `location` among `count` shards.
pub fn slot(location: &str, count: u64) -> u64 {
    let d = Sha256::digest(location.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&d[..8]);
    u64::from_be_bytes(first) % count.max(1)
}

/// `--shard auto`: the shard a batch system gives this process, from its environment
/// (`env` looks a variable up), in this order:
///
/// 1. `QBACKUP_SHARD=i/n`;
/// 2. Slurm job arrays: `SLURM_ARRAY_TASK_ID` among `SLURM_ARRAY_TASK_MIN`,
///    `SLURM_ARRAY_TASK_MAX`, `SLURM_ARRAY_TASK_STEP` (default 1) and
///    `SLURM_ARRAY_TASK_COUNT`: the task's position in an evenly stepped range;
/// 3. Kubernetes Indexed Jobs: `JOB_COMPLETION_INDEX` (0-based) of `shard_count`
///    (`--shard-count`, the Job's `completions`).
pub fn from_env(
    env: impl Fn(&str) -> Option<String>,
    shard_count: Option<u64>,
) -> Result<Shard, String> {
    if let Some(s) = env("QBACKUP_SHARD") {
        return Shard::parse(&s).map_err(|e| format!("QBACKUP_SHARD: {e}"));
    }
    let num = |name: &str| -> Result<Option<u64>, String> {
        env(name)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("{name}={v:?} is not a number"))
            })
            .transpose()
    };
    if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
        let (Some(min), Some(max), Some(count)) = (
            num("SLURM_ARRAY_TASK_MIN")?,
            num("SLURM_ARRAY_TASK_MAX")?,
            num("SLURM_ARRAY_TASK_COUNT")?,
        ) else {
            return Err("SLURM_ARRAY_TASK_ID is set without SLURM_ARRAY_TASK_MIN, \
                 _MAX and _COUNT"
                .into());
        };
        let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
        let evenly = max >= min
            && id >= min
            && (id - min) % step == 0
            && (max - min) / step + 1 == count
            && (max - min) % step == 0;
        if !evenly {
            return Err(format!(
                "the Slurm array is not an evenly stepped range (task {id} of {min}-{max}:{step}, \
                 {count} tasks): use --array=A-B[:S], or --shard i/n"
            ));
        }
        let index = (id - min) / step + 1;
        return Shard::new(index, count).ok_or_else(|| "bad Slurm array variables".into());
    }
    if let Some(i) = num("JOB_COMPLETION_INDEX")? {
        let n = shard_count
            .ok_or("JOB_COMPLETION_INDEX is set: give the Job's completions as --shard-count N")?;
        return Shard::new(i + 1, n)
            .ok_or_else(|| format!("JOB_COMPLETION_INDEX={i} is not below --shard-count {n}"));
    }
    Err(
        "--shard auto: none of QBACKUP_SHARD, SLURM_ARRAY_TASK_ID or \
         JOB_COMPLETION_INDEX is set"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn parse_and_hold() {
        assert_eq!(Shard::parse("2/8"), Ok(Shard { index: 2, count: 8 }));
        for bad in ["0/4", "5/4", "1/0", "x/2", "3", ""] {
            assert!(Shard::parse(bad).is_err(), "{bad}");
        }
        // Fixed values: the split must never change between builds or machines.
        assert_eq!(slot("s3://backups/qubes-backup-2026-12-01T010203", 8), 0);
        assert_eq!(slot("/srv/backups/a.bin", 3), 0);
        assert_eq!(slot("/srv/backups/b.bin", 3), 1);
        // Every location is in exactly one shard.
        for loc in ["/a", "/b", "s3://x/y", "/srv/c.bin"] {
            let holders = (1..=5)
                .filter(|&i| Shard::new(i, 5).unwrap().holds(loc))
                .count();
            assert_eq!(holders, 1, "{loc}");
        }
    }

    #[test]
    fn auto_from_slurm_kubernetes_and_qbackup_shard() {
        let slurm = env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "7"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(from_env(&slurm, None), Ok(Shard { index: 3, count: 4 }));
        let zero_based = env(&[
            ("SLURM_ARRAY_TASK_ID", "0"),
            ("SLURM_ARRAY_TASK_MIN", "0"),
            ("SLURM_ARRAY_TASK_MAX", "3"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert_eq!(
            from_env(&zero_based, None),
            Ok(Shard { index: 1, count: 4 })
        );
        // A list like --array=1,5,7 has no position to shard by.
        let list = env(&[
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_MAX", "7"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ]);
        assert!(from_env(&list, None).unwrap_err().contains("evenly"));
        let k8s = env(&[("JOB_COMPLETION_INDEX", "2")]);
        assert_eq!(from_env(&k8s, Some(3)), Ok(Shard { index: 3, count: 3 }));
        assert!(from_env(&k8s, None).unwrap_err().contains("--shard-count"));
        assert!(from_env(&k8s, Some(2)).is_err());
        let own = env(&[("QBACKUP_SHARD", "1/2"), ("JOB_COMPLETION_INDEX", "1")]);
        assert_eq!(from_env(&own, Some(9)), Ok(Shard { index: 1, count: 2 }));
        assert!(from_env(env(&[]), None).is_err());
    }
}
