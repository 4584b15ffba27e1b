//! `qbackup-pack`: writes Qubes OS backup archives (SPEC.md WRT-1 … WRT-7) from a plan.
//! The binary (`main.rs`) is a thin shell around [`run`] and [`restore::run`] (the
//! privileged restore through a verifier child, SPEC.md RST).

/// Progress counters and reporter, shared with `qbackup-verify`.
pub use qbackup_console::progress;
pub use qbackup_destination::say;

pub mod cancel;
pub mod cli;
pub mod compress;
pub mod estimate;
pub mod from_qubes;
pub mod kdf;
pub mod output;
pub mod params;
pub mod pipeline;
pub mod plan;
pub mod qubesd;
pub mod restore;
pub mod source;

/// `QBACKUP_PACK_TRACE=1`: timestamped pipeline events on stderr (for tuning).
pub fn trace(what: std::fmt::Arguments<'_>) {
    static START: std::sync::OnceLock<(bool, std::time::Instant)> = std::sync::OnceLock::new();
    let (on, t0) = START.get_or_init(|| {
        (
            std::env::var_os("QBACKUP_PACK_TRACE").is_some(),
            std::time::Instant::now(),
        )
    });
    if *on {
        say!("[{:8.3}] {what}", t0.elapsed().as_secs_f64());
    }
}

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use qbackup_format::crypto::scrypt_container::Params;
use qbackup_format::limits::MAX_PASSPHRASE_LEN;
use qbackup_format::{Error, ErrorClass};
use zeroize::Zeroizing;

use cli::Create;
use compress::{Encode, Filter};
use pipeline::{Format, Settings, Stop};

/// Why a run did not produce an archive.
#[derive(Debug)]
pub enum Failure {
    /// Bad arguments or plan: exit 2.
    Usage(String),
    /// A classified error (mostly I/O): the class's exit code.
    Error(Error),
    /// The verifier rejected the archive: its exit code and report.
    Verify { code: i32, report: String },
    /// A restore into Qubes ended with VMs not restored completely (exit 3; QRS-7).
    Incomplete(String),
}

impl Failure {
    pub fn io(msg: impl Into<String>) -> Failure {
        Failure::Error(Error::new(ErrorClass::Io, msg))
    }
    /// The class of a `failed` JSON event: `usage`, or the error class (the verifier's,
    /// from its exit code, when it rejected the archive).
    pub fn class_name(&self) -> &'static str {
        match self {
            Failure::Usage(_) => "usage",
            Failure::Error(e) => e.class().as_str(),
            Failure::Verify { code, .. } => ErrorClass::ALL
                .into_iter()
                .find(|c| c.exit_code() == *code)
                .map_or("verifier-failed", ErrorClass::as_str),
            Failure::Incomplete(_) => "incomplete",
        }
    }
    pub fn exit_code(&self) -> i32 {
        match self {
            Failure::Usage(_) => 2,
            Failure::Error(e) => e.class().exit_code(),
            Failure::Verify { code, .. } => *code,
            Failure::Incomplete(_) => 3,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(m) => f.write_str(m),
            Failure::Error(e) => write!(f, "{e}"),
            Failure::Verify { code, report } => {
                write!(f, "verification failed (exit {code}):\n{report}")
            }
            Failure::Incomplete(m) => f.write_str(m),
        }
    }
}

/// PASS-1: one trailing LF or CRLF removed; 1..=LIM-21 bytes; no NUL, CR, LF.
fn normalize(mut p: Zeroizing<Vec<u8>>) -> Result<Zeroizing<Vec<u8>>, Failure> {
    if p.ends_with(b"\n") {
        p.pop();
        if p.ends_with(b"\r") {
            p.pop();
        }
    }
    if p.is_empty()
        || p.len() > MAX_PASSPHRASE_LEN
        || p.iter().any(|&b| matches!(b, 0 | b'\n' | b'\r'))
    {
        return Err(Failure::Usage(format!(
            "the passphrase must be 1 to {MAX_PASSPHRASE_LEN} bytes without NUL or line breaks"
        )));
    }
    Ok(p)
}

pub(crate) fn passphrase(file: Option<&Path>) -> Result<Zeroizing<Vec<u8>>, Failure> {
    if let Some(f) = file {
        let mut buf = Zeroizing::new(Vec::new());
        std::fs::File::open(f)
            .and_then(|h| h.take(MAX_PASSPHRASE_LEN as u64 + 3).read_to_end(&mut buf))
            .map_err(|e| Failure::Usage(format!("passphrase file {}: {e}", f.display())))?;
        return normalize(buf);
    }
    if let Some(v) = std::env::var_os("QBACKUP_PASSPHRASE") {
        return normalize(Zeroizing::new(
            std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec(),
        ));
    }
    let read = |prompt: &str| {
        rpassword::prompt_password(prompt)
            .map(|s| Zeroizing::new(s.into_bytes()))
            .map_err(|e| Failure::Usage(format!("reading the passphrase: {e}")))
    };
    let a = read("Backup passphrase: ")?;
    let b = read("Confirm passphrase: ")?;
    if *a != *b {
        return Err(Failure::Usage("the passphrases differ".into()));
    }
    normalize(a)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `YYYYMMDDTHHMMSS-PID` in UTC, like upstream's (which uses local time).
fn backup_id(secs: u64) -> String {
    let c = qbackup_console::utc::civil(secs);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}-{}",
        c.year,
        c.month,
        c.day,
        c.hour,
        c.minute,
        c.second,
        std::process::id()
    )
}

/// `qbackup-pack create`.
pub fn run(c: Create) -> Result<(), Failure> {
    let plan = match (&c.plan, &c.qubes_dir, c.from_qubes) {
        (Some(p), None, false) => {
            if !c.vms.is_empty() || c.dom0_home.is_some() {
                return Err(Failure::Usage(
                    "with --plan, the VMs and dom0_home are in the plan file".into(),
                ));
            }
            let text = std::fs::read(p)
                .map_err(|e| Failure::Usage(format!("plan {}: {e}", p.display())))?;
            plan::from_json(&text)?
        }
        (None, Some(d), false) => plan::from_qubes_dir(d, &c.vms, c.dom0_home.as_deref())?,
        (None, None, true) => {
            if c.format == 3 {
                return Err(Failure::Usage(
                    "--from-qubes reads an R4 host: format 3 (R3) cannot describe it".into(),
                ));
            }
            from_qubes::plan(
                &qubesd::Qubesd::from_env(),
                &from_qubes::Selection {
                    vms: &c.vms,
                    exclude: &c.exclude,
                    dom0_home: c.dom0_home.as_deref(),
                },
            )?
        }
        _ => {
            return Err(Failure::Usage(
                "give one of --plan PLAN.json, --qubes-dir DIR, --from-qubes".into(),
            ))
        }
    };
    let format = if c.format == 3 {
        Format::V3
    } else {
        Format::V4
    };
    // Everything the writers can refuse, before the passphrase prompt, the scrypt
    // calibration and the first byte of output (issue 9 item 6).
    let layout = pipeline::prepare(&plan, format)?;
    let filter = Filter::for_writing(&c.compression).ok_or_else(|| {
        Failure::Usage(format!(
            "unknown compression {:?} (gzip, bzip2, xz, zstd, none)",
            c.compression
        ))
    })?;
    let params = match (c.scrypt_log_n, c.scrypt_r, c.scrypt_p) {
        // v3 runs no KDF: the parameters are unused.
        _ if format == Format::V3 => Params {
            log_n: 1,
            r: 1,
            p: 1,
        },
        (None, None, None) => params::calibrate(),
        (n, r, p) => Params {
            log_n: n.unwrap_or_else(params::calibrate_log_n_default),
            r: r.unwrap_or(8),
            p: p.unwrap_or(1),
        },
    };
    params
        .validate()
        .map_err(|e| Failure::Usage(format!("scrypt parameters: {e}")))?;
    if c.chunk_size == 0 || c.chunk_size as u64 > qbackup_format::limits::MAX_CHUNK_LEN - 128 {
        return Err(Failure::Usage(
            "--chunk-size must be 1 .. 128 MiB - 128".into(),
        ));
    }
    let level = c.compression_level.unwrap_or(filter.default_level());
    let ram = params::physical_memory();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let by_memory = usize::try_from((ram / 2) / params.memory_bytes().max(1)).unwrap_or(usize::MAX);
    let kdf_threads = c.jobs.unwrap_or(cpus).min(by_memory).max(1);
    let to_stdout = c.out == Path::new("-");
    if c.dry_run || (!to_stdout && !c.no_space_check) {
        check_space(
            &c,
            &layout,
            &estimate::Setup {
                filter,
                level,
                params: &params,
                format,
                chunk_size: c.chunk_size,
                kdf_threads,
                compress_threads: cpus,
            },
        )?;
        if c.dry_run {
            return Ok(());
        }
    }
    if !to_stdout && c.out.exists() {
        return Err(Failure::Usage(format!(
            "{} exists; not overwriting a backup",
            c.out.display()
        )));
    }
    let pass = passphrase(c.passphrase_file.as_deref())?;
    let settings = Settings {
        format,
        filter,
        level,
        chunk_size: c.chunk_size,
        params,
        kdf_threads,
        compress_threads: cpus,
        passphrase: pass,
        backup_id: backup_id(now()),
        mtime: now(),
    };

    cancel::install();
    let partial = output::partial_name(&c.out);
    let dest: Box<dyn Write + Send> = if to_stdout {
        Box::new(std::io::stdout())
    } else {
        let f = output::create_partial(&partial)?;
        if let Ok(mut g) = cancel::PARTIAL.lock() {
            *g = Some(partial.clone());
        }
        Box::new(std::io::BufWriter::with_capacity(1 << 20, f))
    };
    let dest_failed = Arc::new(AtomicBool::new(false));
    let dest = Box::new(Watched {
        inner: dest,
        failed: dest_failed.clone(),
    });
    let mut child = if c.verify {
        let path = c.verifier.clone().unwrap_or_else(output::default_verifier);
        let ch = output::spawn_verifier(&path, &settings.passphrase)?;
        cancel::CHILD.store(
            i32::try_from(ch.id()).unwrap_or(0),
            std::sync::atomic::Ordering::SeqCst,
        );
        Some(ch)
    } else {
        None
    };
    let tee = output::Tee {
        dest,
        verifier: child.as_mut().and_then(|ch| ch.stdin.take()),
    };
    let progress = Arc::new(progress::Progress::writer());
    let mode = progress::Mode::choose(c.progress_json, c.no_progress);
    let reporter = progress::Reporter::start(progress.clone(), mode);
    let result = pipeline::write_archive(layout, &settings, Box::new(tee), progress.clone());
    reporter.finish();
    // The writer thread has dropped the tee: the verifier sees EOF.
    let verdict = match child {
        Some(ch) => {
            let out = ch.wait_with_output();
            cancel::CHILD.store(0, std::sync::atomic::Ordering::SeqCst);
            match out {
                Ok(o) if o.status.success() => Ok(()),
                Ok(o) => Err(Failure::Verify {
                    code: o.status.code().unwrap_or(1),
                    report: String::from_utf8_lossy(&o.stdout).into_owned(),
                }),
                Err(e) => Err(Failure::io(format!("waiting for the verifier: {e}"))),
            }
        }
        None => Ok(()),
    };
    let outcome = match (result, verdict) {
        // Writing failed but the destination took every byte: the verifier stopped
        // reading, and its verdict is the better explanation.
        (Err(Stop::Output(_)), Err(v)) if !dest_failed.load(Ordering::SeqCst) => Err(v),
        // Otherwise the archive is incomplete because of this error, whatever the
        // verifier says about the incomplete archive.
        (Err(e), _) => Err(e.into()),
        (Ok(_), Err(v)) => Err(v),
        (Ok(notes), Ok(())) => {
            for n in notes {
                say!("qbackup-pack: note: {n}");
            }
            Ok(())
        }
    };
    let mut guard = cancel::PARTIAL
        .lock()
        .map_err(|_| Failure::io("lock poisoned"))?;
    if cancel::signalled() {
        drop(guard);
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    match (&outcome, to_stdout) {
        (_, true) => {}
        (Ok(()), false) => {
            std::fs::rename(&partial, &c.out).map_err(|e| {
                let _ = std::fs::remove_file(&partial);
                Failure::io(format!(
                    "renaming {} to {}: {e}",
                    partial.display(),
                    c.out.display()
                ))
            })?;
            *guard = None;
        }
        (Err(_), false) => {
            match std::fs::remove_file(&partial) {
                Ok(()) => say!("qbackup-pack: removed {}", partial.display()),
                Err(e) => say!("qbackup-pack: could not remove {}: {e}", partial.display()),
            }
            *guard = None;
        }
    }
    // The `failed` event is main's, for every error.
    if c.progress_json && outcome.is_ok() {
        qbackup_console::event(
            "done",
            serde_json::json!({
                "out": c.out.display().to_string(),
                "written_bytes": progress.written(),
            }),
        );
    }
    if outcome.is_ok() && !c.progress_json {
        let kdf = match format {
            Format::V4 => format!(
                ", scrypt logN {} r {} p {}",
                settings.params.log_n, settings.params.r, settings.params.p
            ),
            Format::V3 => String::new(),
        };
        say!(
            "qbackup-pack: wrote {} ({} bytes, format {}{kdf})",
            c.out.display(),
            progress.written(),
            c.format,
        );
    }
    outcome
}

/// `--dry-run`: print the estimate (and the space at `--out`). Otherwise (`--out FILE`):
/// say how much space the archive needs and `--out`'s file system has, and refuse when the
/// estimate does not fit (`limit-exceeded`; `--no-space-check` writes anyway).
fn check_space(
    c: &Create,
    layout: &pipeline::Layout<'_>,
    setup: &estimate::Setup<'_>,
) -> Result<(), Failure> {
    let est = estimate::estimate(layout, setup)?;
    let est = if c.dry_run && setup.format == Format::V4 {
        est.with_kdf_time(setup, estimate::measure_kdf(setup.params))
    } else {
        est
    };
    let dir = estimate::out_dir(&c.out);
    let space = if c.out == Path::new("-") {
        None
    } else {
        Some(
            qbackup_destination::space_at(
                dir,
                qbackup_destination::SpaceLimits {
                    reserve: Some(0),
                    max_total: None,
                },
            )
            .map_err(|e| {
                Failure::io(format!("reading the free space of {}: {e}", dir.display()))
            })?,
        )
    };
    if c.dry_run {
        let text = if c.json {
            format!("{:#}\n", est.to_json(space.as_ref()))
        } else {
            est.human(space.as_ref().map(|s| (dir, s)))
        };
        return std::io::stdout()
            .lock()
            .write_all(text.as_bytes())
            .map_err(|e| Failure::io(format!("writing the estimate: {e}")));
    }
    let Some(space) = space else { return Ok(()) };
    space.announce(
        "qbackup-pack",
        dir,
        Some((est.archive_bytes, "the archive, estimated")),
    );
    if est.archive_bytes > space.usable() {
        return Err(Failure::Error(Error::limit(format!(
            "{} has {} bytes free, the archive is estimated at {} bytes (--dry-run shows why; --no-space-check writes anyway)",
            dir.display(),
            space.available,
            est.archive_bytes
        ))));
    }
    Ok(())
}

/// The destination half of the output, remembering whether a write to it failed, so
/// that a failed write is blamed on the right reader (the destination or the verifier).
struct Watched {
    inner: Box<dyn Write + Send>,
    failed: Arc<AtomicBool>,
}

impl Write for Watched {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.inner.write(buf).inspect_err(|e| {
            if e.kind() != std::io::ErrorKind::Interrupted {
                self.failed.store(true, Ordering::SeqCst);
            }
        })
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush().inspect_err(|_| {
            self.failed.store(true, Ordering::SeqCst);
        })
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Error(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `failed` event names the class of the exit-code table (README "JSON output").
    #[test]
    fn failures_name_their_class() {
        assert_eq!(Failure::Usage("x".into()).class_name(), "usage");
        assert_eq!(
            Failure::Error(Error::limit("too big")).class_name(),
            "limit-exceeded"
        );
        let verify = |code| Failure::Verify {
            code,
            report: String::new(),
        };
        assert_eq!(verify(12).class_name(), "mac-failure");
        assert_eq!(verify(12).exit_code(), 12);
        assert_eq!(verify(1).class_name(), "verifier-failed");
    }
}
