//! Command line.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Write Qubes OS backups (format 4, or 3 for compatibility tests) that upstream restores.
///
/// Exit codes: 0 written (and verified with --verify) or restored; 1 internal error; 2
/// usage or plan error (also a restore into Qubes refused before acting); 3 a restore into
/// Qubes finished but not every selected VM is complete (the report says which); 10-20 by
/// error class (`restore`, and `create --verify` when the verifier rejects the archive;
/// 20 also I/O errors); 130 cancelled.
#[derive(Debug, Parser)]
#[command(name = "qbackup-pack", version = qbackup_console::VERSION)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a backup archive.
    Create(Create),
    /// Restore a backup to DIR/<vm>/… and DIR/dom0-home/<user>/… through a verifier child
    /// that does all the parsing (`qbackup-verify emit -`, or --verifier-cmd); this
    /// process only reads the child's checked stream (SPEC.md RST).
    Restore(Restore),
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to", "into_qubes"])))]
pub struct Restore {
    /// The archive file, or `-` for stdin (with --dest-vm: a path inside that VM).
    #[arg(value_name = "ARCHIVE")]
    pub archive: PathBuf,
    /// Destination directory (created if missing). Nothing is written outside it and no
    /// existing file is replaced.
    #[arg(long = "to", value_name = "DIR")]
    pub to: Option<PathBuf>,
    /// Re-create the VMs on this Qubes host through the Admin API (SPEC.md QRS): templates
    /// first, with their properties, features, tags, firewall, notes, menu items and
    /// volume data; dom0's home into a new ~/home-restore-<time>.
    #[arg(long)]
    pub into_qubes: bool,
    /// Read the passphrase from this file (one trailing newline removed); else
    /// $QBACKUP_PASSPHRASE; else a prompt. The child gets it in its environment
    /// (QBACKUP_PASSPHRASE), never on a command line.
    #[arg(short = 'p', long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Run `sh -c CMD` as the verifier: its stdin gets the archive, its stdout must speak
    /// the protocol (e.g. a DisposableVM via `qvm-run --pass-io`). Default: the
    /// `qbackup-verify` next to this program, as `qbackup-verify emit -`.
    #[arg(long, value_name = "CMD", conflicts_with = "dispvm")]
    pub verifier_cmd: Option<String>,
    /// Run the verifier in a DisposableVM (of the default DispVM template, or NAME):
    /// `qvm-run --dispvm[=NAME] --pass-io … qbackup-verify emit -`, the passphrase on its
    /// stdin. The DispVM's template needs qbackup-verify installed.
    #[arg(long, value_name = "NAME", num_args = 0..=1, require_equals = true, default_missing_value = "")]
    pub dispvm: Option<String>,
    /// The archive is a file inside this VM: read with `qvm-run --pass-io VM cat -- ARCHIVE`.
    #[arg(short = 'd', long, value_name = "VM")]
    pub dest_vm: Option<String>,
    /// Send the passphrase and a newline on the child's stdin before the archive, instead
    /// of in its environment: for a --verifier-cmd whose environment does not travel
    /// (`qvm-run --pass-io`); the far side reads it with `IFS= read -r`.
    #[arg(long, requires = "verifier_cmd")]
    pub passphrase_on_stdin: bool,
    /// Give up when the verifier sends nothing for this many seconds (RST-5).
    #[arg(long, value_name = "SECS", default_value_t = qbackup_format::limits::DEFAULT_RESTORE_TIMEOUT_SECS)]
    pub timeout: u64,
    /// Stop (limit-exceeded) before DIR's free space falls below this many bytes
    /// (suffixes K, M, G, T; default: 1 GiB or 5 % of the file system, the smaller; EXT-6).
    #[arg(long, value_name = "SIZE", value_parser = qbackup_destination::parse_size, requires = "to")]
    pub reserve: Option<u64>,
    /// Stop (limit-exceeded) before writing more than this many bytes of data (EXT-6).
    #[arg(long, value_name = "SIZE", value_parser = qbackup_destination::parse_size, requires = "to")]
    pub max_size: Option<u64>,
    #[command(flatten)]
    pub qubes: IntoQubes,
    /// Only these VMs (default: all). Use `dom0` for dom0's home.
    #[arg(value_name = "VM")]
    pub vms: Vec<String>,
    /// Progress and the outcome as JSON lines on stderr (README "JSON output"); the
    /// default verifier child reports the archive's progress (`emit --progress-json`).
    #[arg(long)]
    pub progress_json: bool,
}

/// Options of `restore --into-qubes` (SPEC.md QRS-2 … QRS-7), as `qvm-backup-restore`
/// names them where it has them.
#[derive(Debug, Args, Default)]
pub struct IntoQubes {
    /// Verify the whole archive (every byte, every inner tar) and create nothing.
    #[arg(long, conflicts_with = "to")]
    pub verify_only: bool,
    /// Skip VMs that cannot be restored as asked (missing template or netvm, name taken)
    /// instead of stopping before acting.
    #[arg(long, conflicts_with = "to")]
    pub skip_broken: bool,
    /// Use the host's default template and netvm where the backup's are missing.
    #[arg(long, conflicts_with = "to")]
    pub ignore_missing: bool,
    /// Skip VMs whose name exists on the host.
    #[arg(long, conflicts_with = "to", conflicts_with = "rename_conflicting")]
    pub skip_conflicting: bool,
    /// Restore VMs whose name exists on the host under a new name (NAME-1, NAME-2, …).
    #[arg(long, conflicts_with = "to")]
    pub rename_conflicting: bool,
    /// Do not restore this VM (repeatable).
    #[arg(
        short = 'x',
        long = "exclude",
        value_name = "VM",
        conflicts_with = "to"
    )]
    pub exclude: Vec<String>,
    /// Do not restore dom0's home.
    #[arg(long, conflicts_with = "to")]
    pub skip_dom0_home: bool,
    /// Restore dom0's home even when the backup's user differs from this host's.
    #[arg(long, conflicts_with = "to")]
    pub ignore_username_mismatch: bool,
    /// Create every volume in this storage pool (admin.vm.CreateInPool).
    #[arg(
        long,
        value_name = "POOL",
        conflicts_with = "to",
        conflicts_with = "pool_for"
    )]
    pub pool: Option<String>,
    /// Create this volume (root, private, volatile, kernel) in this pool (repeatable).
    #[arg(long, value_name = "VOLUME=POOL", conflicts_with = "to")]
    pub pool_for: Vec<String>,
    /// Also restore PCI/USB/block device assignments (off by default: a hostile backup
    /// must not take a controller).
    #[arg(long, conflicts_with = "to")]
    pub restore_devices: bool,
    /// Act without showing the plan for confirmation.
    #[arg(short = 'y', long, conflicts_with = "to")]
    pub yes: bool,
    /// Print the per-VM report as JSON on stdout.
    #[arg(long, conflicts_with = "to")]
    pub json: bool,
    /// The home directory dom0's home is restored into (default: that of $SUDO_USER or
    /// the current user).
    #[arg(long, value_name = "DIR", conflicts_with = "to")]
    pub home_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct Create {
    /// The backup plan (JSON, see packer/PLAN.md).
    #[arg(long, value_name = "PLAN.json", conflicts_with = "qubes_dir")]
    pub plan: Option<PathBuf>,
    /// A directory laid out like dom0's /var/lib/qubes, with an R4 qubes.xml.
    #[arg(long, value_name = "DIR", conflicts_with = "from_qubes")]
    pub qubes_dir: Option<PathBuf>,
    /// Back up this Qubes R4 host (run in dom0, as root to read the volumes): qubes and
    /// their settings from qubesd (the Admin API), volume data from the storage pools
    /// (lvm_thin, file-reflink, file), as `qvm-backup` does (README "Backing up a Qubes
    /// system").
    #[arg(long, conflicts_with = "plan")]
    pub from_qubes: bool,
    /// With --qubes-dir: also back up this dom0 home directory. With --from-qubes: back
    /// up this directory as dom0's home (default: the home of the first member of group
    /// `qubes`).
    #[arg(long, value_name = "DIR")]
    pub dom0_home: Option<PathBuf>,
    /// The VMs to back up. --qubes-dir: default every VM with files under DIR;
    /// --from-qubes: default every qube with `include_in_backups` (dom0: its home).
    #[arg(value_name = "VM")]
    pub vms: Vec<String>,
    /// With --from-qubes: do not back up this qube (repeatable; `dom0`: its home).
    #[arg(
        short = 'x',
        long = "exclude",
        value_name = "VM",
        requires = "from_qubes"
    )]
    pub exclude: Vec<String>,
    /// Output file (written as FILE.partial, renamed on success), or `-` for stdout.
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Read the passphrase from this file (one trailing newline removed); else
    /// $QBACKUP_PASSPHRASE; else a prompt.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Archive format version: 4 (default) or 3.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(3..=4))]
    pub format: u8,
    /// Compression: gzip (default), bzip2, xz, zstd, none.
    #[arg(long, default_value = "gzip", value_name = "FILTER")]
    pub compression: String,
    /// Compression level (default: the program's own default).
    #[arg(long, value_name = "N")]
    pub compression_level: Option<u32>,
    /// scrypt log2(N) (default: as strong as `scrypt enc` picks on this machine: ~5 s of
    /// CPU, at most 1/8 of RAM).
    #[arg(long, value_name = "N")]
    pub scrypt_log_n: Option<u8>,
    /// scrypt r (default 8).
    #[arg(long = "scrypt-r", value_name = "R")]
    pub scrypt_r: Option<u32>,
    /// scrypt p (default 1, or what the cost calibration picks).
    #[arg(long = "scrypt-p", value_name = "P")]
    pub scrypt_p: Option<u32>,
    /// Chunk size in bytes (default 104857600 = 100 MiB, as upstream).
    #[arg(long, value_name = "BYTES", default_value_t = 104_857_600)]
    pub chunk_size: usize,
    /// KDF threads (default: number of CPUs, within half of the RAM).
    #[arg(long, value_name = "N")]
    pub jobs: Option<usize>,
    /// Verify the archive while it is written with `qbackup-verify verify -`.
    #[arg(long)]
    pub verify: bool,
    /// The verifier binary (default: qbackup-verify next to this program).
    #[arg(long, value_name = "PATH", requires = "verify")]
    pub verifier: Option<PathBuf>,
    /// Progress and the outcome as JSON lines on stderr; nothing else goes there
    /// (README "JSON output").
    #[arg(long, conflicts_with = "no_progress")]
    pub progress_json: bool,
    /// Print what would be backed up, the estimated archive size and time, and the free
    /// space at --out; write nothing (README "qbackup-pack create").
    #[arg(long)]
    pub dry_run: bool,
    /// With --dry-run: the estimate as one JSON document on stdout.
    #[arg(long, requires = "dry_run")]
    pub json: bool,
    /// Write even when --out's file system seems to lack the space for the estimated
    /// archive (checked before the passphrase prompt).
    #[arg(long)]
    pub no_space_check: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
}
