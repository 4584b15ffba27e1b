//! Command line, as typed (clap) and as validated. A library module so that `dist` can
//! generate the man pages and completions from it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Verify, list and extract Qubes OS backups (formats 2, 3 and 4) without Qubes.
///
/// Every byte is authenticated before anything parses it. Exit codes: 0 verified,
/// 2 usage, 10–20 by error class, 21 sandbox unavailable (see README "Exit codes").
#[derive(Debug, Parser)]
#[command(name = "qbackup-verify", version = qbackup_console::VERSION)]
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
        #[command(flatten)]
        space: SpaceArgs,
        /// Only these VMs (default: all). Use `dom0` for dom0's home.
        #[arg(value_name = "VM", trailing_var_arg = true)]
        vms: Vec<String>,
    },
    /// Show what the sandbox enforces on this machine; exit 0 if all of it can be (else 21).
    SandboxCheck,
    /// Write verified VM data to stdout as the protocol stream of SPEC.md §21 for
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
    /// Do not compare each VM's data with its declared backup-size at all (SPEC.md VER-4).
    #[arg(long, conflicts_with = "strict_backup_size")]
    pub ignore_backup_size: bool,
    /// Fail (limit-exceeded) when a VM holds more than 16 MiB beyond its declared
    /// backup-size, checked while decoding (SPEC.md VER-4, LIM-27). Default: a warning, as
    /// upstream's figure is disk usage and real archives exceed it.
    #[arg(long)]
    pub strict_backup_size: bool,
    /// Never show a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Progress and the outcome as JSON lines on stderr, and nothing else there (README
    /// "JSON output"); `emit`'s report becomes one `report` event.
    #[arg(long, conflicts_with = "no_progress")]
    pub progress_json: bool,
    /// The archive file, or `-` for stdin.
    #[arg(value_name = "ARCHIVE")]
    pub archive: PathBuf,
}

/// EXT-6: how much of the destination's file system a restore may use.
#[derive(Debug, Args, Clone, Copy)]
pub struct SpaceArgs {
    /// Stop (limit-exceeded) before the destination's free space falls below this many
    /// bytes (suffixes K, M, G, T; default: 1 GiB or 5 % of the file system, the smaller).
    #[arg(long, value_name = "SIZE", value_parser = qbackup_destination::parse_size)]
    pub reserve: Option<u64>,
    /// Stop (limit-exceeded) before writing more than this many bytes of data in total.
    #[arg(long, value_name = "SIZE", value_parser = qbackup_destination::parse_size)]
    pub max_size: Option<u64>,
}

impl SpaceArgs {
    pub fn limits(self) -> qbackup_destination::SpaceLimits {
        qbackup_destination::SpaceLimits {
            reserve: self.reserve,
            max_total: self.max_size,
        }
    }
}
