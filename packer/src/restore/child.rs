//! The verifier child of `restore` (SPEC.md RST-5): started in its own process group so
//! that killing the group also ends `sh -c CMD` and whatever it started; the passphrase
//! travels in its environment, never on a command line; its stdout is read with a
//! time-out on silence.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use qbackup_format::{Error, ErrorClass, Result};
use zeroize::Zeroizing;

use crate::cancel;

/// The environment variable that carries the passphrase to the child (PASS-1).
pub const PASSPHRASE_ENV: &str = "QBACKUP_PASSPHRASE";

/// Socket buffer asked for each end of the stream (root may exceed `wmem_max`).
const SOCKET_BUFFER: libc::c_int = 4 << 20;

/// How the child is started.
pub enum Program<'a> {
    /// `VERIFIER emit [VM...] -` (the sibling `qbackup-verify` by default); the VM names
    /// were validated (they cannot be options).
    Verifier(&'a Path, &'a [String]),
    /// `sh -c CMD`: any command whose stdio speaks the protocol.
    Shell(&'a str),
}

/// A running verifier child.
pub struct Verifier {
    child: Child,
    /// This end of the child's stdout.
    stdout: Option<UnixStream>,
    reaped: Option<ExitStatus>,
}

/// Ask for `size` bytes of send and receive buffer on `fd`, forcing it past the
/// system's default maximum when privileged. Best effort.
fn enlarge_buffers(fd: &impl AsRawFd, size: libc::c_int) {
    for (force, plain) in [
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
    ] {
        for opt in [force, plain] {
            // SAFETY: setsockopt with a valid int option value on a socket we own.
            let r = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    std::ptr::from_ref(&size).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            if r == 0 {
                break;
            }
        }
    }
}

impl Verifier {
    /// Start the child with piped stdin/stdout (stderr inherited) and register it for
    /// cancellation.
    /// `passphrase`: put in the child's environment; `None` when it travels on stdin.
    /// `stdin`: the archive file itself when the child can read it directly (no copy
    /// through this process), else a pipe for [`pump`].
    pub fn spawn(
        program: Program<'_>,
        passphrase: Option<&[u8]>,
        stdin: Stdio,
    ) -> Result<Verifier> {
        use std::os::unix::ffi::OsStrExt;
        let mut cmd = match program {
            Program::Verifier(path, vms) => {
                let mut c = Command::new(path);
                c.arg("emit").args(vms).arg("-");
                c
            }
            Program::Shell(line) => {
                let mut c = Command::new("/bin/sh");
                c.args(["-c", line]);
                c
            }
        };
        match passphrase {
            Some(p) => cmd.env(PASSPHRASE_ENV, std::ffi::OsStr::from_bytes(p)),
            None => cmd.env_remove(PASSPHRASE_ENV),
        };
        // The stream travels over a Unix socket pair rather than a pipe: a pipe's writer
        // holds the pipe's lock while it copies each large write, and the reader spins on
        // that lock (measured: an eighth of the restore's CPU, bench/restore-bench.py).
        let (ours, theirs) = UnixStream::pair()
            .map_err(|e| Error::new(ErrorClass::Io, format!("a socket for the stream: {e}")))?;
        enlarge_buffers(&ours, SOCKET_BUFFER);
        enlarge_buffers(&theirs, SOCKET_BUFFER);
        let child = cmd
            .stdin(stdin)
            .stdout(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .stderr(Stdio::inherit())
            .process_group(0)
            .spawn()
            .map_err(|e| Error::new(ErrorClass::Io, format!("starting the verifier: {e}")))?;
        let pid = i32::try_from(child.id()).unwrap_or(0);
        cancel::CHILD.store(-pid, std::sync::atomic::Ordering::SeqCst);
        // `cmd` still holds a copy of the child's end; only the child may keep it, so that
        // this end sees end of stream when the child exits.
        drop(cmd);
        Ok(Verifier {
            child,
            stdout: Some(ours),
            reaped: None,
        })
    }

    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    pub fn take_stdout(&mut self) -> Option<UnixStream> {
        self.stdout.take()
    }

    /// RST-5: kill the child's whole process group and reap the child.
    pub fn kill(&mut self) -> Option<ExitStatus> {
        if self.reaped.is_none() {
            let pid = i32::try_from(self.child.id()).unwrap_or(0);
            if pid > 0 {
                // SAFETY: kill on the process group of the child we spawned (it is not
                // reaped yet, so the id cannot have been reused).
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            self.reaped = self.child.wait().ok();
            cancel::CHILD.store(0, std::sync::atomic::Ordering::SeqCst);
        }
        self.reaped
    }

    /// Wait up to `d` for the child to exit by itself.
    pub fn exited_within(&mut self, d: Duration) -> Result<Option<ExitStatus>> {
        let start = Instant::now();
        while self.reaped.is_none() {
            match self.child.try_wait() {
                Ok(Some(status)) => {
                    self.reaped = Some(status);
                    cancel::CHILD.store(0, std::sync::atomic::Ordering::SeqCst);
                }
                Ok(None) if start.elapsed() < d => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => break,
                Err(e) => return Err(Error::new(ErrorClass::Io, format!("waiting: {e}"))),
            }
        }
        Ok(self.reaped)
    }

    /// Wait up to `timeout` for the child to exit by itself; then kill it (RST-5).
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        if let Some(s) = self.exited_within(timeout)? {
            return Ok(s);
        }
        self.kill();
        Err(Error::new(
            ErrorClass::Io,
            format!(
                "the verifier did not exit within {} s after its stream ended; killed (RST-5)",
                timeout.as_secs()
            ),
        ))
    }
}

impl Drop for Verifier {
    fn drop(&mut self) {
        self.kill();
    }
}

/// How an exit status reads in a message.
pub fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(s)) => format!("was killed by signal {s}"),
        _ => "ended".to_string(),
    }
}

/// The child's stdout, read with a time-out on silence (RST-5).
pub struct TimedReader {
    inner: UnixStream,
    timeout: Duration,
}

impl TimedReader {
    pub fn new(inner: UnixStream, timeout: Duration) -> TimedReader {
        TimedReader { inner, timeout }
    }
}

impl Read for TimedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let deadline = Instant::now() + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
            let mut fds = libc::pollfd {
                fd: self.inner.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for a descriptor we own.
            let n = unsafe { libc::poll(&mut fds, 1, ms) };
            if n > 0 {
                return self.inner.read(buf);
            }
            if n == 0 && left.is_zero() {
                return Err(Error::new(
                    ErrorClass::Io,
                    format!(
                        "the verifier sent nothing for {} s; time-out (RST-5)",
                        self.timeout.as_secs()
                    ),
                )
                .into_io());
            }
            let e = io::Error::last_os_error();
            if n < 0 && e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Copy `prefix` (the passphrase line, or nothing) and then the archive into the child's
/// stdin (on its own thread). A child that stops reading is not an error here (its
/// stream says why); a failing archive read is.
pub fn pump(
    prefix: Zeroizing<Vec<u8>>,
    mut from: Box<dyn Read + Send>,
    mut to: ChildStdin,
) -> Result<u64> {
    if to.write_all(&prefix).is_err() {
        return Ok(0);
    }
    drop(prefix);
    let mut buf = vec![0u8; 1 << 20];
    let mut total: u64 = 0;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::from_read(e, "reading the archive")),
        };
        if to.write_all(buf.get(..n).unwrap_or(&[])).is_err() {
            return Ok(total);
        }
        total = total.saturating_add(n as u64);
    }
}
