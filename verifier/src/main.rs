//! `qbackup-verify`: the unprivileged reader of Qubes OS backups. Thin: parse arguments,
//! run, map the outcome to an exit code (SPEC.md ERR-3; README "Exit codes").

#[global_allocator]
static ALLOCATOR: qbackup_bigalloc::BigAlloc = qbackup_bigalloc::BigAlloc;

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;

use qbackup_console::progress::{Mode, Progress, Reporter};
use qbackup_format::archive::authenticate::Credentials;
use qbackup_format::crypto::scrypt_container::KdfLimit;
use qbackup_format::{Error, ErrorClass};

use qbackup_verify::cli::{Cli, Command, Common};
use qbackup_verify::output::{Output, VerifyOnly};
use qbackup_verify::progress::Tracked;
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
    let cli: Cli = qbackup_console::parse_args();
    let code = match std::panic::catch_unwind(|| run(cli)) {
        Ok(Ok(code)) => code,
        // JSON mode (--progress-json): the failure is one `failed` event with its class.
        Ok(Err(e)) if qbackup_console::json_stderr() => {
            let class = e.class();
            qbackup_console::failed(class.as_str(), class.exit_code(), e.message());
            class.exit_code()
        }
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
        (Box::new(std::io::stdin()), stdin_file_len())
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
    let progress = Arc::new(Progress::default());
    if let Some(t) = total {
        progress.set_total(t);
    }
    let settings = settings(&common, pass.to_vec(), name == "list", vms, &progress);
    let mut extractor = extract_to
        .as_ref()
        .map(|(dir, space)| extract::Extractor::open_limited(dir, space.limits()))
        .transpose()?;
    let extract_to = extract_to.map(|(dir, _)| dir);
    if let (Some(dir), Some(ex)) = (&extract_to, &extractor) {
        // Say what DIR offers before writing; the archive's size is a rough lower bound of
        // the data it restores (EXT-6 stops at the reserve in any case).
        let expected = total.map(|t| (t, "the archive"));
        ex.space().announce("qbackup-verify", dir, expected);
    }
    if let Some(code) = enter_sandbox(cli.no_sandbox, name, extract_to.as_deref(), &settings) {
        if common.progress_json {
            qbackup_console::failed(
                "sandbox-unavailable",
                code,
                "the sandbox cannot be enforced",
            );
        }
        return Ok(code);
    }
    // After the sandbox (SBX-2): the reporter is a thread.
    let reporter = Reporter::start(
        progress.clone(),
        Mode::choose(common.progress_json, common.no_progress),
    );
    if name == "emit" {
        return run_emit(input, settings, &common, reporter, progress);
    }
    let mut report = match (extract_to, extractor.as_mut()) {
        (Some(dir), Some(out)) => {
            let mut tracked = Tracked {
                inner: out,
                progress: progress.clone(),
            };
            let mut r = driver::run(input, settings, &mut tracked);
            r.notes.extend(Output::take_notes(out));
            r.extracted_to = Some(dir.display().to_string());
            r
        }
        _ => {
            let mut tracked = Tracked {
                inner: &mut VerifyOnly,
                progress: progress.clone(),
            };
            driver::run(input, settings, &mut tracked)
        }
    };
    reporter.finish();
    emit(&mut report, name, common.json)?;
    Ok(outcome(&report, common.progress_json))
}

/// The exit code of a finished run; with `--progress-json`, also its `done` or `failed`
/// event (class and message of the first finding).
fn outcome(report: &Report, json: bool) -> i32 {
    match report.findings.first() {
        None => {
            if json {
                qbackup_console::event(
                    "done",
                    serde_json::json!({"bytes_read": report.bytes_read}),
                );
            }
            EXIT_OK
        }
        Some(f) => {
            let class = f.error.class();
            if json {
                qbackup_console::failed(class.as_str(), class.exit_code(), f.error.message());
            }
            class.exit_code()
        }
    }
}

/// The size of stdin when it is a regular file (`restore` hands the archive file over as
/// the child's stdin): the progress total. `None` for a pipe.
fn stdin_file_len() -> Option<u64> {
    use std::os::fd::AsFd;
    let fd = std::io::stdin().as_fd().try_clone_to_owned().ok()?;
    let md = File::from(fd).metadata().ok()?;
    md.is_file().then_some(md.len())
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
    reporter: Reporter,
    progress: Arc<Progress>,
) -> Result<i32, Error> {
    let stdout = std::io::BufWriter::with_capacity(1 << 20, std::io::stdout());
    let mut out = emit::Emitter::new(stdout, settings.select.clone());
    let mut tracked = Tracked {
        inner: &mut out,
        progress,
    };
    let mut report = driver::run(input, settings, &mut tracked);
    report.notes.extend(Output::take_notes(&mut out));
    if let Err(e) = out.finish(&report) {
        if report.findings.is_empty() {
            // A consumer that closed the pipe, or a summary the protocol refused.
            report.fail(e, None, None);
        }
    }
    reporter.finish();
    if common.progress_json {
        // JSON lines on stderr: the report is one `report` event.
        qbackup_console::event("report", report.to_json("emit"));
    } else {
        report_to(
            &mut report,
            "emit",
            common.json,
            &mut std::io::stderr().lock(),
        )?;
    }
    Ok(outcome(&report, common.progress_json))
}

fn settings(
    common: &Common,
    pass: Vec<u8>,
    list_only: bool,
    vms: Vec<String>,
    shown: &Arc<Progress>,
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
    let shown = shown.clone();
    let progress: Option<Box<dyn Fn(u64) + Send + Sync>> =
        Some(Box::new(move |n| shown.set_done(n)));
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
