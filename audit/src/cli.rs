//! Command line (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Audit many Qubes OS backups: resumable, sharded integrity checks of files and
/// S3-compatible object storage, with a ledger of every archive version's verdict.
///
/// Exit codes of `run`: 0 all verified, 2 usage, 10 findings, 75 incomplete (run again),
/// 69 infrastructure error (see README "Auditing many archives").
#[derive(Debug, Parser)]
#[command(name = "qbackup-audit", version = qbackup_console::VERSION)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Verify the archives of this shard that need it, least recently verified first, and
    /// record each verdict in the ledger. One JSON line per archive on stdout.
    Run(Box<RunArgs>),
    /// Summarise the ledger: never verified, failing, stale, changed since last verified.
    Report(ReportArgs),
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Archive files, directories (recursive), globs, or s3://bucket/prefix.
    #[arg(value_name = "INPUT")]
    pub inputs: Vec<String>,
    /// A file with one INPUT per line.
    #[arg(long = "list", value_name = "FILE")]
    pub lists: Vec<PathBuf>,
    /// Only archives whose name (last path component) matches this glob.
    #[arg(long, value_name = "GLOB")]
    pub include: Option<String>,
    /// The ledger: a directory, or s3://bucket/prefix.
    #[arg(long, value_name = "DIR|URL")]
    pub ledger: String,
    /// The passphrase of every archive.
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "passphrase_map",
        required_unless_present = "passphrase_map"
    )]
    pub passphrase_file: Option<PathBuf>,
    /// Lines of `PATTERN PASSPHRASE-FILE` (a prefix, or a glob with * ? [ ]); first match wins.
    #[arg(long, value_name = "FILE")]
    pub passphrase_map: Option<PathBuf>,
    /// Audit shard i of n (1 ≤ i ≤ n) by a stable hash of each location, or `auto`: from
    /// QBACKUP_SHARD, a Slurm job array, or a Kubernetes Indexed Job.
    #[arg(long, value_name = "i/n|auto")]
    pub shard: Option<String>,
    /// With --shard auto on Kubernetes: the number of shards (the Job's completions).
    #[arg(long, value_name = "N")]
    pub shard_count: Option<u64>,
    /// Skip archives verified OK within this long (e.g. 30d, 12h).
    #[arg(long, value_name = "AGE", value_parser = crate::span::parse)]
    pub max_age: Option<std::time::Duration>,
    /// Start no archive that cannot finish within this long of the start (e.g. 2h).
    #[arg(long, value_name = "TIME", value_parser = crate::span::parse)]
    pub max_duration: Option<std::time::Duration>,
    /// CPUs to use: archives verified in parallel times KDF threads each (default: CPUs).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// scrypt memory of all verifiers together, MiB (default: half the RAM).
    #[arg(long, value_name = "MIB")]
    pub max_kdf_memory: Option<u64>,
    /// Pass --strict-backup-size to the verifier.
    #[arg(long)]
    pub strict_backup_size: bool,
    /// The qbackup-verify program (default: beside this one, else on PATH).
    #[arg(long, value_name = "PATH")]
    pub verifier: Option<PathBuf>,
    /// Run the verifiers without their sandbox (only where the kernel cannot enforce it).
    #[arg(long)]
    pub no_sandbox: bool,
    /// Never show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Progress and the outcome as JSON lines on stderr.
    #[arg(long, conflicts_with = "no_progress")]
    pub progress_json: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The ledger: a directory, or s3://bucket/prefix.
    #[arg(long, value_name = "DIR|URL")]
    pub ledger: String,
    /// One JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// An OK verdict older than this is stale.
    #[arg(long, value_name = "AGE", default_value = "30d", value_parser = crate::span::parse)]
    pub stale_after: std::time::Duration,
}
