//! The Kubernetes Indexed Job manifest (examples/kubernetes/audit-job.yaml) and its
//! environment contract (SPEC.md AUD-6): every index names a distinct shard of as many as the
//! Job has completions, so the pods together audit every archive exactly once.

use qbackup_audit::shard::{self, Shard};

fn manifest() -> String {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join("examples/kubernetes/audit-job.yaml")).unwrap()
}

/// The value of `key: VALUE` or `- --key=VALUE` in the manifest.
fn value(text: &str, key: &str) -> String {
    text.lines()
        .map(str::trim)
        .find_map(|l| {
            l.strip_prefix(&format!("{key}: "))
                .or_else(|| l.strip_prefix(&format!("- --{key}=")))
        })
        .unwrap_or_else(|| panic!("no {key} in the manifest"))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn indexed_job_indices_cover_every_shard_once() {
    let m = manifest();
    assert_eq!(value(&m, "completionMode"), "Indexed");
    assert_eq!(value(&m, "shard"), "auto");
    let completions: u64 = value(&m, "completions").parse().unwrap();
    let count: u64 = value(&m, "shard-count").parse().unwrap();
    assert_eq!(completions, count, "--shard-count must equal completions");
    let shards: Vec<Shard> = (0..completions)
        .map(|i| {
            let env = move |k: &str| (k == "JOB_COMPLETION_INDEX").then(|| i.to_string());
            shard::from_env(env, Some(count)).unwrap()
        })
        .collect();
    let want: Vec<Shard> = (1..=count).map(|i| Shard::new(i, count).unwrap()).collect();
    assert_eq!(shards, want);
    // Every location lands in exactly one pod's shard.
    for loc in [
        "s3://backups/qubes/a",
        "s3://backups/qubes/b",
        "s3://backups/qubes/c/d",
    ] {
        assert_eq!(shards.iter().filter(|s| s.holds(loc)).count(), 1);
    }
    // Exit codes the policy names are the audit's.
    assert!(m.contains(&format!(
        "- action: FailIndex\n        onExitCodes: {{operator: In, values: [{}, {}]}}",
        qbackup_audit::exit::USAGE,
        qbackup_audit::exit::FINDINGS
    )));
}
