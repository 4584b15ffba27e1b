//! `qbackup-pack restore` (SPEC.md RST-1 … RST-7): the privileged side of the split
//! restore. All parsing of the archive happens in the unprivileged verifier child
//! (`qbackup-verify emit -`, or `sh -c CMD` with `--verifier-cmd`); this process pumps
//! the archive into the child's stdin, reads the protocol stream from its stdout as
//! hostile input ([`consume`]), and writes files through the shared destination writer.

pub mod child;
pub mod consume;

use std::io::Read;
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
    for vm in &r.vms {
        qbackup_format::qubes_xml::validate_vm_name(vm)
            .map_err(|e| Failure::Usage(format!("VM {vm:?}: {e}")))?;
    }
    let timeout = Duration::from_secs(r.timeout);
    cancel::install();
    let on_stdin = r.archive == Path::new("-");
    let file = if on_stdin {
        None
    } else {
        Some(
            std::fs::File::open(&r.archive)
                .map_err(|e| Failure::io(format!("opening {}: {e}", r.archive.display())))?,
        )
    };
    let pass = crate::passphrase(r.passphrase_file.as_deref())?;
    let mut dest = Destination::open(&r.to)?;
    let space = dest.limit_space(qbackup_destination::SpaceLimits {
        reserve: r.reserve,
        max_total: r.max_size,
    })?;
    // Say what DIR offers before anything is written (the archive's size: a rough lower
    // bound of the data it restores).
    let archive_len = file
        .as_ref()
        .and_then(|f| f.metadata().ok())
        .map(|m| m.len());
    space.announce(
        "qbackup-pack",
        &r.to,
        archive_len.map(|n| (n, "the archive")),
    );

    let default_verifier;
    let child_args;
    let program = match &r.verifier_cmd {
        Some(cmd) => Program::Shell(cmd),
        None => {
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
    // RST-5: the passphrase goes into the child's environment, or on its stdin ahead of
    // the archive (`--passphrase-on-stdin`); never on a command line.
    let mut prefix = zeroize::Zeroizing::new(Vec::new());
    if r.passphrase_on_stdin {
        prefix.extend_from_slice(&pass);
        prefix.push(b'\n');
    }
    // An archive file with nothing to send ahead of it becomes the child's stdin: the
    // child reads it directly, read-only, with no path access and no copy through here.
    // Otherwise (stdin, or the passphrase line first) a thread pumps it into a pipe.
    let (stdin, input): (Stdio, Option<Box<dyn Read + Send>>) = match file {
        Some(f) if !r.passphrase_on_stdin => (Stdio::from(f), None),
        Some(f) => (Stdio::piped(), Some(Box::new(f))),
        None => (Stdio::piped(), Some(Box::new(std::io::stdin()))),
    };
    let env_pass = (!r.passphrase_on_stdin).then_some(&pass[..]);
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

    let select = (!r.vms.is_empty()).then_some(r.vms.as_slice());
    let result = consume::consume(TimedReader::new(stdout, timeout), &mut dest, select);
    let outcome = match result {
        Ok(restored) => verifier.wait(timeout).and_then(|status| {
            if status.success() {
                Ok(restored)
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
    let restored = match (outcome, pumped) {
        // A failing archive read is the cause of whatever the child said.
        (Err(_), Err(read)) => return Err(read.into()),
        (Err(e), Ok(_)) => return Err(e.into()),
        (Ok(_), Err(read)) => return Err(read.into()),
        (Ok(restored), Ok(_)) => restored,
    };
    for n in &restored.notes {
        crate::say!("qbackup-pack: note: {n}");
    }
    if r.progress_json {
        qbackup_console::event(
            "done",
            serde_json::json!({
                "files": restored.files,
                "data_bytes": restored.bytes,
                "to": r.to.display().to_string(),
            }),
        );
    } else {
        crate::say!(
            "qbackup-pack: restored {} files ({} bytes of data) to {}",
            restored.files,
            restored.bytes,
            r.to.display()
        );
    }
    Ok(())
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
}
