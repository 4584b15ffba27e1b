//! Command line, as typed (clap) and as validated.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Verify, list and extract Qubes OS backups (formats 2, 3 and 4) without Qubes.
///
/// Every byte is authenticated before anything parses it. Exit codes: 0 verified,
/// 2 usage, 10–20 by error class, 21 sandbox unavailable (see README "Exit codes").
#[derive(Debug, Parser)]
#[command(name = "qbackup-verify", version)]
pub struct Cli {
    /// Run without the sandbox (SPEC.md SBX-7): only for kernels where it cannot be
    /// enforced (no seccomp; for `extract`, neither Landlock nor a mount namespace), where
    /// the commands otherwise refuse to run (exit 21).
    #[arg(long, global = true)]
    pub no_sandbox: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Authenticate, decrypt, decompress and parse every member; check every VM's data is complete.
    Verify {
        #[command(flatten)]
        common: Common,
    },
    /// Show the header, KDF parameters and the VMs of the verified qubes.xml.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Restore files to DIR/<vm>/… and DIR/dom0-home/<user>/… (emergency restore).
    Extract {
        #[command(flatten)]
        common: Common,
        /// Destination directory (created if missing). Nothing is written outside it.
        #[arg(long = "to", value_name = "DIR")]
        to: PathBuf,
        /// Only these VMs (default: all). Use `dom0` for dom0's home.
        #[arg(value_name = "VM", trailing_var_arg = true)]
        vms: Vec<String>,
    },
    /// Show what the sandbox enforces on this machine; exit 0 if all of it can be (else 21).
    SandboxCheck,
    /// Write verified VM data to stdout as a protocol v2 stream (SPEC.md §21) for
    /// `qbackup-pack restore`; the report goes to stderr. Operands: `[VM...] ARCHIVE`
    /// (the last operand is the archive, `-` for stdin; VMs default to all).
    #[command(override_usage = "qbackup-verify emit [OPTIONS] [VM]... <ARCHIVE|->")]
    Emit {
        #[command(flatten)]
        common: Common,
        /// With VMs, the archive comes last: `emit work dom0 backup.bin`.
        #[arg(value_name = "ARCHIVE", trailing_var_arg = true)]
        operands: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct Common {
    /// Read the passphrase from this file (`-` for stdin); else $QBACKUP_PASSPHRASE, else a prompt.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Print one JSON document on stdout instead of the human report.
    #[arg(long)]
    pub json: bool,
    /// Refuse scrypt containers demanding more KDF memory than this many MiB
    /// (default: half of this machine's RAM).
    #[arg(long, value_name = "MIB")]
    pub max_kdf_memory: Option<u64>,
    /// KDF worker threads (default: number of CPUs, within the KDF memory budget).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Do not check each VM's data against its declared backup-size (SPEC.md VER-4); upstream's
    /// size is disk usage and can undercount on compressing file systems.
    #[arg(long)]
    pub ignore_backup_size: bool,
    /// Never show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// The archive file, or `-` for stdin.
    #[arg(value_name = "ARCHIVE")]
    pub archive: PathBuf,
}
