//! `qbackup-verify`: the unprivileged reader of Qubes OS backups. Thin: parse arguments,
//! run, map the outcome to an exit code (SPEC.md ERR-3; README "Exit codes").

mod cli;

#[global_allocator]
static ALLOCATOR: qbackup_bigalloc::BigAlloc = qbackup_bigalloc::BigAlloc;

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::path::Path;

use clap::Parser;
use qbackup_format::archive::authenticate::Credentials;
use qbackup_format::crypto::scrypt_container::KdfLimit;
use qbackup_format::{Error, ErrorClass};

use cli::{Cli, Command, Common};
use qbackup_verify::output::{Output, VerifyOnly};
use qbackup_verify::report::Report;
use qbackup_verify::{driver, emit, extract, passphrase, sandbox};

/// Exit code when everything verified.
const EXIT_OK: i32 = 0;

/// Exit code for an internal error (a bug; ERR-3).
const EXIT_INTERNAL: i32 = 1;

/// Exit code when the kernel cannot enforce the sandbox (SBX-7).
const EXIT_SANDBOX: i32 = 21;

fn main() {
    qbackup_bigalloc::configure();
    let cli = Cli::parse();
    let code = match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            qbackup_destination::say!("qbackup-verify: {e}");
            e.class().exit_code()
        }
        Err(_) => {
            qbackup_destination::say!(
                "qbackup-verify: internal error (a bug); nothing was left under a final name"
            );
            EXIT_INTERNAL
        }
    };
    qbackup_destination::cancel::exit(code);
}

fn physical_memory() -> u64 {
    qbackup_bigalloc::physical_memory()
        .unwrap_or(qbackup_format::limits::DEFAULT_SCRYPT_MAX_MEMORY * 2)
}

fn run(cli: Cli) -> Result<i32, Error> {
    let (name, common, extract_to, vms) = match cli.command {
        Command::SandboxCheck => return Ok(sandbox_check()),
        Command::Verify { common } => ("verify", common, None, Vec::new()),
        Command::List { common } => ("list", common, None, Vec::new()),
        Command::Extract {
            common,
            to,
            space,
            vms,
        } => ("extract", common, Some((to, space)), vms),
        Command::Emit {
            mut common,
            mut operands,
        } => {
            // `[VM...] ARCHIVE`: clap put the first operand in `archive`.
            operands.insert(0, common.archive.display().to_string());
            let archive = operands.pop().unwrap_or_default();
            common.archive = archive.into();
            ("emit", common, None, operands)
        }
    };
    // SIGINT/SIGTERM: exit 130, removing extract's temporaries (RST-7).
    qbackup_destination::cancel::install("qbackup-verify");
    let on_stdin = common.archive == Path::new("-");
    let (input, total): (Box<dyn Read + Send>, Option<u64>) = if on_stdin {
        (Box::new(std::io::stdin()), None)
    } else {
        let f = File::open(&common.archive).map_err(|e| {
            Error::new(
                ErrorClass::Io,
                format!("opening {}: {e}", common.archive.display()),
            )
        })?;
        let len = f.metadata().ok().map(|m| m.len());
        (Box::new(f), len)
    };
    let pass = passphrase::obtain(common.passphrase_file.as_deref(), on_stdin)?;
    let settings = settings(&common, pass.to_vec(), name == "list", vms, total);
    let mut extractor = extract_to
        .as_ref()
        .map(|(dir, space)| extract::Extractor::open_limited(dir, space.limits()))
        .transpose()?;
    let extract_to = extract_to.map(|(dir, _)| dir);
    if let Some(code) = enter_sandbox(cli.no_sandbox, name, extract_to.as_deref(), &settings) {
        return Ok(code);
    }
    if name == "emit" {
        return run_emit(input, settings, &common);
    }
    let mut report = match (extract_to, extractor.as_mut()) {
        (Some(dir), Some(out)) => {
            let mut r = driver::run(input, settings, out);
            r.notes.extend(Output::take_notes(out));
            r.extracted_to = Some(dir.display().to_string());
            r
        }
        _ => driver::run(input, settings, &mut VerifyOnly),
    };
    finish_progress();
    emit(&mut report, name, common.json)?;
    Ok(report.first_class().map_or(EXIT_OK, ErrorClass::exit_code))
}

/// SBX-2: confine this process once the archive, the destination and the passphrase are
/// open and before any thread starts or any archive byte is read. `Some(code)` to exit
/// with: the kernel cannot enforce it (SBX-7).
fn enter_sandbox(
    no_sandbox: bool,
    command: &str,
    dest: Option<&Path>,
    settings: &driver::Settings,
) -> Option<i32> {
    if no_sandbox {
        qbackup_destination::say!("qbackup-verify: --no-sandbox: running without the sandbox");
        return None;
    }
    let mode = match (command, dest) {
        (_, Some(d)) => sandbox::Mode::Extract { dest: d.into() },
        ("list", None) => sandbox::Mode::List,
        ("emit", None) => sandbox::Mode::Emit,
        _ => sandbox::Mode::Verify,
    };
    let applied = sandbox::request(mode, settings.kdf_budget, settings.jobs)
        .and_then(|req| sandbox::apply(&sandbox::policy(&req)));
    match applied {
        // SBX-9: say when Landlock is missing and what confines the command instead.
        Ok(e) if !matches!(e.confinement, sandbox::FsConfinement::Landlock { .. }) => {
            qbackup_destination::say!(
                "qbackup-verify: the kernel has no Landlock; confinement: {} (see sandbox-check)",
                e.confinement.name()
            );
            None
        }
        Ok(_) => None,
        Err(e) => {
            qbackup_destination::say!("qbackup-verify: {e}");
            Some(EXIT_SANDBOX)
        }
    }
}

/// `sandbox-check` (SBX-8): what this kernel enforces for `verify` and for `extract`, each
/// tried in a child process.
fn sandbox_check() -> i32 {
    let budget = physical_memory() / 2;
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let report = match sandbox::request(sandbox::Mode::Verify, budget, jobs) {
        Ok(req) => sandbox::check(&req),
        Err(e) => {
            qbackup_destination::say!("qbackup-verify: {e}");
            return EXIT_SANDBOX;
        }
    };
    print!("{}", report.render());
    if report.ok {
        EXIT_OK
    } else {
        EXIT_SANDBOX
    }
}

/// `emit`: the stream on stdout (buffered), the report on stderr; exit code = class.
fn run_emit(
    input: Box<dyn Read + Send>,
    settings: driver::Settings,
    common: &Common,
) -> Result<i32, Error> {
    let stdout = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
    let mut out = emit::Emitter::new(stdout, settings.select.clone());
    let mut report = driver::run(input, settings, &mut out);
    report.notes.extend(Output::take_notes(&mut out));
    if let Err(e) = out.finish(&report) {
        if report.findings.is_empty() {
            // A consumer that closed the pipe, or a summary the protocol refused.
            report.fail(e, None, None);
        }
    }
    finish_progress();
    report_to(
        &mut report,
        "emit",
        common.json,
        &mut std::io::stderr().lock(),
    )?;
    Ok(report.first_class().map_or(EXIT_OK, ErrorClass::exit_code))
}

static PROGRESS: std::sync::OnceLock<indicatif::ProgressBar> = std::sync::OnceLock::new();

fn finish_progress() {
    if let Some(bar) = PROGRESS.get() {
        bar.finish_and_clear();
    }
}

fn settings(
    common: &Common,
    pass: Vec<u8>,
    list_only: bool,
    vms: Vec<String>,
    total: Option<u64>,
) -> driver::Settings {
    let ram = physical_memory();
    let budget = common
        .max_kdf_memory
        .map_or(ram / 2, |mib| mib.saturating_mul(1 << 20));
    let limit = KdfLimit {
        max_memory: budget,
        ..KdfLimit::default()
    };
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let progress: Option<Box<dyn Fn(u64) + Send + Sync>> =
        if !common.no_progress && std::io::stderr().is_terminal() {
            let bar = match total {
                Some(t) => indicatif::ProgressBar::new(t),
                None => indicatif::ProgressBar::no_length(),
            };
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "{bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec} ETA {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            let bar = PROGRESS.get_or_init(|| bar);
            Some(Box::new(move |n| bar.set_position(n)))
        } else {
            None
        };
    driver::Settings {
        credentials: Credentials::new(pass, limit),
        jobs: common.jobs.unwrap_or(cpus),
        kdf_budget: budget,
        list_only,
        backup_size: if common.strict_backup_size {
            driver::BackupSizeCheck::Strict
        } else if common.ignore_backup_size {
            driver::BackupSizeCheck::Ignore
        } else {
            driver::BackupSizeCheck::Warn
        },
        select: (!vms.is_empty()).then_some(vms),
        progress,
    }
}

fn emit(report: &mut Report, command: &str, json: bool) -> Result<(), Error> {
    report_to(report, command, json, &mut std::io::stdout().lock())
}

fn report_to(
    report: &mut Report,
    command: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), Error> {
    let text = if json {
        let mut s = serde_json::to_string_pretty(&report.to_json(command))
            .map_err(|e| Error::new(ErrorClass::Io, e.to_string()))?;
        s.push('\n');
        s
    } else {
        report.human(command, command == "list")
    };
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        // A consumer that closed the pipe early is not an error of ours.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Error::new(ErrorClass::Io, format!("writing report: {e}"))),
    }
}
