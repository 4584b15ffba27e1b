//! `qbackup-pack restore` (SPEC.md RST-1 … RST-7): the privileged side of the split
//! restore. All parsing of the archive happens in the unprivileged verifier child
//! (`qbackup-verify emit -`, or `sh -c CMD` with `--verifier-cmd`); this process pumps
//! the archive into the child's stdin, reads the protocol stream from its stdout as
//! hostile input ([`consume`]), and writes files through the shared destination writer.

pub mod child;
pub mod consume;
pub mod qubes;

use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use qbackup_destination::Destination;
use qbackup_format::limits::MAX_RESTORE_TIMEOUT_SECS;
use qbackup_format::{Error, ErrorClass};

use crate::cli::Restore;
use crate::{cancel, Failure};
use child::{describe, Program, TimedReader, Verifier};

/// Run a restore; on any failure the child is killed, the temporaries are removed, and
/// DIR holds only complete files (RST-4, RST-6).
pub fn run(r: Restore) -> Result<(), Failure> {
    if r.timeout == 0 || r.timeout > MAX_RESTORE_TIMEOUT_SECS {
        return Err(Failure::Usage(format!(
            "--timeout must be 1 … {MAX_RESTORE_TIMEOUT_SECS} seconds (LIM-38)"
        )));
    }
    for vm in r.vms.iter().chain(&r.qubes.exclude).chain(&r.dest_vm) {
        qbackup_format::qubes_xml::validate_vm_name(vm)
            .map_err(|e| Failure::Usage(format!("VM {vm:?}: {e}")))?;
    }
    cancel::install();
    let pass = crate::passphrase(r.passphrase_file.as_deref())?;
    match &r.to {
        Some(to) => {
            let mut dest = Destination::open(to)?;
            let space = dest.limit_space(qbackup_destination::SpaceLimits {
                reserve: r.reserve,
                max_total: r.max_size,
            })?;
            // Say what DIR offers before anything is written (the archive's size: a rough
            // lower bound of the data it restores).
            let archive_len = (r.dest_vm.is_none() && r.archive != Path::new("-"))
                .then(|| std::fs::metadata(&r.archive).ok().map(|m| m.len()))
                .flatten();
            space.announce("qbackup-pack", to, archive_len.map(|n| (n, "the archive")));
            let select = (!r.vms.is_empty()).then_some(r.vms.as_slice());
            let restored =
                with_child(&r, pass, |input| consume::consume(input, &mut dest, select))?;
            for n in &restored.notes {
                crate::say!("qbackup-pack: note: {n}");
            }
            if r.progress_json {
                qbackup_console::event(
                    "done",
                    serde_json::json!({
                        "files": restored.files,
                        "data_bytes": restored.bytes,
                        "to": to.display().to_string(),
                    }),
                );
            } else {
                crate::say!(
                    "qbackup-pack: restored {} files ({} bytes of data) to {}",
                    restored.files,
                    restored.bytes,
                    to.display()
                );
            }
            Ok(())
        }
        None => qubes_run(&r, pass),
    }
}

/// QRS-1: the restore into Qubes; the report is printed whatever happens.
fn qubes_run(r: &Restore, pass: zeroize::Zeroizing<Vec<u8>>) -> Result<(), Failure> {
    qbackup_destination::cancel::add_hook(qubes::incomplete_hook);
    let settings = qubes_settings(r)?;
    let json = r.qubes.json;
    let mut sink = qubes::QubesSink::new(crate::qubesd::Qubesd::from_env(), settings);
    // The child selects too (less work); the plan decides what is restored.
    let result = with_child(r, pass, |input| {
        consume::consume_into(input, &mut sink, qbackup_format::limits::MAX_RESTORE_FILES)
    });
    if let Some(why) = sink.refused.take() {
        return Err(Failure::Usage(why));
    }
    if result.is_err() {
        sink.interrupt();
    }
    let Some(mut report) = sink.report.take() else {
        return result.map(drop);
    };
    if let Err(e) = &result {
        report.stream_error = Some(e.to_string());
        for v in &mut report.vms {
            if v.status == qubes::report::Status::NotStarted {
                v.status = qubes::report::Status::Skipped;
                v.reason = Some("the stream failed first".into());
            }
        }
    }
    report.complete = report.all_done();
    if json {
        println!(
            "{}",
            serde_json::to_string(&report).unwrap_or_else(|_| "{}".into())
        );
    } else {
        crate::say!("qbackup-pack: restore into Qubes:\n{}", report.text());
    }
    result?;
    if report.complete {
        Ok(())
    } else {
        Err(Failure::Incomplete(
            "not every selected VM was restored completely (see the report)".into(),
        ))
    }
}

/// The settings of `--into-qubes` from the command line and the environment.
fn qubes_settings(r: &Restore) -> Result<qubes::Settings, Failure> {
    let q = &r.qubes;
    let mut pool_for = Vec::new();
    for p in &q.pool_for {
        let Some((vol, pool)) = p.split_once('=') else {
            return Err(Failure::Usage(format!("--pool-for {p:?}: VOLUME=POOL")));
        };
        if !matches!(vol, "root" | "private" | "volatile" | "kernel") || !safe_word(pool) {
            return Err(Failure::Usage(format!("--pool-for {p:?}: VOLUME=POOL")));
        }
        pool_for.push((vol.to_owned(), pool.to_owned()));
    }
    if let Some(p) = q.pool.as_deref().filter(|p| !safe_word(p)) {
        return Err(Failure::Usage(format!("--pool {p:?}: not a pool name")));
    }
    let user = std::env::var("SUDO_USER")
        .or_else(|_| std::env::var("USER"))
        .unwrap_or_else(|_| "user".into());
    let home = match &q.home_dir {
        Some(d) => Some(d.clone()),
        None => home_of(&user),
    };
    Ok(qubes::Settings {
        options: qubes::plan::Options {
            only: r.vms.clone(),
            exclude: q.exclude.clone(),
            skip_broken: q.skip_broken,
            ignore_missing: q.ignore_missing,
            skip_conflicting: q.skip_conflicting,
            rename_conflicting: q.rename_conflicting,
            skip_dom0_home: q.skip_dom0_home,
        },
        verify_only: q.verify_only,
        pool: q.pool.clone(),
        pool_for,
        restore_devices: q.restore_devices,
        ignore_username_mismatch: q.ignore_username_mismatch,
        yes: q.yes,
        home: home.map(|h| (h, user)),
        date: local_time("%Y-%m-%d"),
        time: local_time("%Y-%m-%d-%H%M%S"),
        quiet: q.json,
    })
}

/// A pool name as the Admin API payload carries it: no space, `=` or control bytes.
fn safe_word(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `user`'s home directory from the password database.
fn home_of(user: &str) -> Option<std::path::PathBuf> {
    let c = std::ffi::CString::new(user).ok()?;
    // SAFETY: getpwnam returns a pointer into static storage or NULL; read at once.
    let pw = unsafe { libc::getpwnam(c.as_ptr()) };
    if pw.is_null() {
        return None;
    }
    // SAFETY: pw is non-null and pw_dir a NUL-terminated string.
    let dir = unsafe { std::ffi::CStr::from_ptr((*pw).pw_dir) };
    Some(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(
        dir.to_bytes(),
    )))
}

/// The local time in a `strftime` format.
fn local_time(format: &str) -> String {
    let fmt = std::ffi::CString::new(format).unwrap_or_default();
    let mut buf = [0u8; 64];
    // SAFETY: time/localtime_r/strftime with valid pointers and the buffer's length.
    let n = unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&t, &mut tm);
        libc::strftime(buf.as_mut_ptr().cast(), buf.len(), fmt.as_ptr(), &tm)
    };
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// The program that runs a command in a VM (`qvm-run`; `QBACKUP_QVM_RUN` for tests).
fn qvm_run() -> std::ffi::OsString {
    std::env::var_os("QBACKUP_QVM_RUN")
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "qvm-run".into())
}

/// RST-5: run the verifier child on the archive and hand its stream, read with the
/// time-out on silence, to `consume`; kill and reap it on any failure.
fn with_child<T>(
    r: &Restore,
    pass: zeroize::Zeroizing<Vec<u8>>,
    consume: impl FnOnce(TimedReader) -> qbackup_format::Result<T>,
) -> Result<T, Failure> {
    let timeout = Duration::from_secs(r.timeout);
    let dispvm_cmd;
    let default_verifier;
    let on_stdin = r.passphrase_on_stdin || r.dispvm.is_some();
    let child_args;
    let program = match (&r.verifier_cmd, &r.dispvm) {
        (Some(cmd), _) => Program::Shell(cmd),
        (None, Some(name)) => {
            dispvm_cmd = dispvm_command(&qvm_run().to_string_lossy(), name);
            Program::Shell(&dispvm_cmd)
        }
        (None, None) => {
            default_verifier = crate::output::default_verifier();
            // The child selects too (less work); the consumer still filters (RST-1).
            // With --progress-json it reports the archive's progress as JSON lines on the
            // stderr it shares with this process.
            child_args = std::iter::once("--progress-json".to_string())
                .filter(|_| r.progress_json)
                .chain(r.vms.iter().cloned())
                .collect::<Vec<_>>();
            Program::Verifier(&default_verifier, &child_args)
        }
    };
    // The archive: a file, stdin, or a file inside a VM read by qvm-run.
    let mut source = None;
    let archive = match (&r.dest_vm, r.archive == Path::new("-")) {
        (Some(vm), _) => {
            let mut cmd = std::process::Command::new(qvm_run());
            cmd.args(["--pass-io", "--no-gui", "--", vm])
                .arg(format!(
                    "cat -- {}",
                    shell_quote(&r.archive.to_string_lossy())
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::piped());
            let mut child = cmd
                .spawn()
                .map_err(|e| Failure::io(format!("running qvm-run for VM {vm}: {e}")))?;
            let out = child
                .stdout
                .take()
                .ok_or_else(|| Failure::io("qvm-run has no stdout"))?;
            source = Some(child);
            Archive::Stream(Box::new(out))
        }
        (None, true) => Archive::Stream(Box::new(std::io::stdin())),
        (None, false) => Archive::File(
            std::fs::File::open(&r.archive)
                .map_err(|e| Failure::io(format!("opening {}: {e}", r.archive.display())))?,
        ),
    };
    // RST-5: the passphrase goes into the child's environment, or on its stdin ahead of
    // the archive; never on a command line.
    let mut prefix = zeroize::Zeroizing::new(Vec::new());
    if on_stdin {
        prefix.extend_from_slice(&pass);
        prefix.push(b'\n');
    }
    // An archive file with nothing to send ahead of it becomes the child's stdin: the
    // child reads it directly, read-only, with no path access and no copy through here.
    // Otherwise a thread pumps it into a pipe.
    let (stdin, input): (Stdio, Option<Box<dyn Read + Send>>) = match archive {
        Archive::File(f) if !on_stdin => (Stdio::from(f), None),
        Archive::File(f) => (Stdio::piped(), Some(Box::new(f))),
        Archive::Stream(s) => (Stdio::piped(), Some(s)),
    };
    let env_pass = (!on_stdin).then_some(&pass[..]);
    let mut verifier = Verifier::spawn(program, env_pass, stdin)?;
    drop(pass);
    let stdout = verifier
        .take_stdout()
        .ok_or_else(|| Failure::io("the verifier has no stdout"))?;
    let pumper = match input {
        Some(input) => {
            let stdin = verifier
                .take_stdin()
                .ok_or_else(|| Failure::io("the verifier has no stdin"))?;
            Some(std::thread::spawn(move || {
                child::pump(prefix, input, stdin)
            }))
        }
        None => None,
    };

    let result = consume(TimedReader::new(stdout, timeout));
    let outcome = match result {
        Ok(done) => verifier.wait(timeout).and_then(|status| {
            if status.success() {
                Ok(done)
            } else {
                // RST-6: a complete stream but a failing child is a failure.
                Err(Error::new(
                    ErrorClass::Io,
                    format!("the verifier {} after a complete stream", describe(status)),
                ))
            }
        }),
        Err(e) => {
            // After an early end of its stream, say how the child ended (killed, crashed).
            let own = if e.class() == ErrorClass::Truncated {
                verifier
                    .exited_within(Duration::from_millis(500))
                    .ok()
                    .flatten()
            } else {
                None
            };
            verifier.kill();
            Err(match own {
                Some(s) if !s.success() => e.context(format!("the verifier {}", describe(s))),
                _ => e,
            })
        }
    };
    // The child is gone: its stdin is closed and the pump ends.
    let pumped = match pumper {
        Some(p) => p
            .join()
            .unwrap_or_else(|_| Err(Error::new(ErrorClass::Io, "the archive pump panicked"))),
        None => Ok(0),
    };
    let sourced = match source {
        Some(mut c) => {
            if outcome.is_err() {
                let _ = c.kill();
            }
            match c.wait() {
                Ok(s) if s.success() || outcome.is_err() => Ok(0),
                Ok(s) => Err(Error::new(
                    ErrorClass::Io,
                    format!("reading the archive from VM: qvm-run {}", describe(s)),
                )),
                Err(e) => Err(Error::new(ErrorClass::Io, format!("qvm-run: {e}"))),
            }
        }
        None => Ok(0),
    };
    match (outcome, pumped.and(sourced)) {
        // A failing archive read is the cause of whatever the child said.
        (Err(_), Err(read)) => Err(read.into()),
        (Err(e), Ok(_)) => Err(e.into()),
        (Ok(_), Err(read)) => Err(read.into()),
        (Ok(done), Ok(_)) => Ok(done),
    }
}

/// Where the archive bytes come from.
enum Archive {
    /// A file the child can read directly.
    File(std::fs::File),
    /// Stdin, or `qvm-run`'s output: copied into the child's stdin.
    Stream(Box<dyn Read + Send>),
}

/// `s` as one single-quoted shell word.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// QRS-1: `--dispvm[=NAME]`: the verifier in a DisposableVM, the passphrase as the first
/// line of its stdin.
pub fn dispvm_command(qvm_run: &str, name: &str) -> String {
    let dispvm = if name.is_empty() {
        "--dispvm".to_owned()
    } else {
        format!("--dispvm={name}")
    };
    format!(
        "{} {dispvm} --pass-io --no-gui -- {}",
        shell_quote(qvm_run),
        shell_quote(
            "IFS= read -r QBACKUP_PASSPHRASE && export QBACKUP_PASSPHRASE && \
             exec qbackup-verify emit -"
        )
    )
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::cli::{Cli, Command};

    /// RST-5, LIM-37: the time-out on silence defaults to five minutes.
    #[test]
    fn default_timeout() {
        let cli = Cli::parse_from(["qbackup-pack", "restore", "a.bin", "--to", "out"]);
        let Command::Restore(r) = cli.command else {
            panic!("not restore")
        };
        assert_eq!(
            r.timeout,
            qbackup_format::limits::DEFAULT_RESTORE_TIMEOUT_SECS
        );
        assert_eq!(r.timeout, 300);
        assert!(r.verifier_cmd.is_none() && r.vms.is_empty());
    }

    /// QRS-1: the DispVM command keeps the passphrase off its command line.
    #[test]
    fn dispvm_command() {
        let c = super::dispvm_command("qvm-run", "");
        assert!(c.starts_with("'qvm-run' --dispvm --pass-io --no-gui -- 'IFS= read -r"));
        assert!(c.ends_with("exec qbackup-verify emit -'"));
        let c = super::dispvm_command("qvm-run", "my-dvm");
        assert!(c.contains("--dispvm=my-dvm "));
    }

    /// --to and --into-qubes: exactly one; the Qubes options need --into-qubes.
    #[test]
    fn targets() {
        assert!(Cli::try_parse_from(["qbackup-pack", "restore", "a.bin"]).is_err());
        assert!(Cli::try_parse_from([
            "qbackup-pack",
            "restore",
            "a.bin",
            "--to",
            "x",
            "--into-qubes"
        ])
        .is_err());
        assert!(Cli::try_parse_from([
            "qbackup-pack",
            "restore",
            "a.bin",
            "--to",
            "x",
            "--skip-broken"
        ])
        .is_err());
        let cli = Cli::parse_from([
            "qbackup-pack",
            "restore",
            "a.bin",
            "--into-qubes",
            "-x",
            "work",
            "--dispvm",
            "--pool",
            "lvm",
            "-y",
        ]);
        let Command::Restore(r) = cli.command else {
            panic!("not restore")
        };
        assert_eq!(r.dispvm.as_deref(), Some(""));
        assert_eq!(r.qubes.exclude, ["work"]);
        assert!(r.qubes.yes && r.into_qubes);
    }
}
