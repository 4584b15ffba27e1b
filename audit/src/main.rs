//! `qbackup-audit`: thin: parse arguments, run, map the outcome to an exit code
//! (SPEC.md AUD-8; README "Auditing many archives").

use std::path::PathBuf;

use qbackup_audit::child::Verifier;
use qbackup_audit::cli::{Cli, Command, ReportArgs, RunArgs};
use qbackup_audit::inputs::Inputs;
use qbackup_audit::passphrases::Passphrases;
use qbackup_audit::shard::{self, Shard};
use qbackup_audit::{clock, exit, interrupt, ledger, report, run};

fn main() {
    let cli: Cli = qbackup_console::parse_args();
    let code = match cli.command {
        Command::Run(args) => audit(*args),
        Command::Report(args) => summary(args),
    };
    std::process::exit(code);
}

fn audit(args: RunArgs) -> i32 {
    let opts = match options(args) {
        Ok(o) => o,
        Err(e) => {
            fail("usage", exit::USAGE, &e);
            return exit::USAGE;
        }
    };
    interrupt::install();
    let json = opts.progress_json;
    match run::run(opts) {
        Ok(summary) => {
            let code = summary.exit_code();
            if json {
                qbackup_console::event("done", summary.to_json());
            } else {
                qbackup_console::say!(
                    "qbackup-audit: {} selected: {} ok, {} failed, {} incomplete, {} changed, \
                     {} errors; {} left to run; {} fresh (--max-age), {} in other shards",
                    summary.selected,
                    summary.ok,
                    summary.failed,
                    summary.incomplete,
                    summary.changed,
                    summary.errors,
                    summary.left,
                    summary.fresh,
                    summary.elsewhere
                );
                if let Some(f) = &summary.fatal {
                    qbackup_console::say!("qbackup-audit: stopped early: {f}");
                }
            }
            code
        }
        Err(e) => {
            fail("infrastructure", exit::INFRASTRUCTURE, &e);
            exit::INFRASTRUCTURE
        }
    }
}

fn fail(class: &str, code: i32, message: &str) {
    if qbackup_console::json_stderr() {
        qbackup_console::failed(class, code, message);
    } else {
        qbackup_console::say!("qbackup-audit: {message}");
    }
}

/// Validate the command line into [`run::Options`].
fn options(a: RunArgs) -> Result<run::Options, String> {
    if a.inputs.is_empty() && a.lists.is_empty() {
        return Err(
            "nothing to audit: give files, directories, globs, s3:// URLs or --list".into(),
        );
    }
    let passphrases = match (&a.passphrase_file, &a.passphrase_map) {
        (Some(f), None) => Passphrases::one(f)?,
        (None, Some(m)) => Passphrases::load_map(m)?,
        _ => return Err("give --passphrase-file or --passphrase-map".into()),
    };
    let shard = match a.shard.as_deref() {
        None => Shard::ALL,
        Some("auto") => shard::from_env(|k| std::env::var(k).ok(), a.shard_count)?,
        Some(s) => Shard::parse(s)?,
    };
    let include = a
        .include
        .as_deref()
        .map(glob::Pattern::new)
        .transpose()
        .map_err(|e| format!("--include: {e}"))?;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let jobs = a.jobs.unwrap_or(cpus);
    if jobs == 0 {
        return Err("--jobs must be at least 1".into());
    }
    let half_ram_mib = physical_memory_mib() / 2;
    Ok(run::Options {
        inputs: Inputs {
            operands: a.inputs,
            lists: a.lists,
            include,
        },
        ledger: a.ledger,
        passphrases,
        shard,
        max_age: a.max_age,
        max_duration: a.max_duration,
        jobs,
        kdf_memory_mib: a.max_kdf_memory.unwrap_or(half_ram_mib).max(1),
        verifier: Verifier {
            program: a.verifier.unwrap_or_else(default_verifier),
            no_sandbox: a.no_sandbox,
            strict_backup_size: a.strict_backup_size,
        },
        progress_json: a.progress_json,
        no_progress: a.no_progress,
    })
}

/// `qbackup-verify` beside this program, else on PATH.
fn default_verifier() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("qbackup-verify")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("qbackup-verify"))
}

fn physical_memory_mib() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    match (u64::try_from(pages), u64::try_from(size)) {
        (Ok(p), Ok(s)) if p > 0 && s > 0 => p.saturating_mul(s) >> 20,
        _ => 8192,
    }
}

fn summary(a: ReportArgs) -> i32 {
    let mut storage = None;
    let records = ledger::Ledger::open(&a.ledger, &mut storage).and_then(|l| l.load());
    let records = match records {
        Ok(r) => r,
        Err(e) => {
            fail("infrastructure", exit::INFRASTRUCTURE, &e);
            return exit::INFRASTRUCTURE;
        }
    };
    let now = clock::now_ms();
    let stale = u64::try_from(a.stale_after.as_millis()).unwrap_or(u64::MAX);
    let entries = report::summarise(&records, now, stale);
    if a.json {
        println!("{:#}", report::to_json(&entries, now, stale));
    } else {
        print!("{}", report::to_text(&entries));
    }
    exit::ALL_VERIFIED
}
