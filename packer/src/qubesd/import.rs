//! Volume data into a VM (SPEC.md QAPI-3): `admin.vm.volume.ImportWithSize` run as dom0's
//! own tools run it, `DIR/admin.vm.volume.ImportWithSize VOLUME` with
//! `QREXEC_REMOTE_DOMAIN=dom0` and `QREXEC_REQUESTED_TARGET=VM`, its stdin `SIZE\n` and then
//! exactly SIZE bytes (holes as zeros), its stdout a qubesd reply.
//!
//! qubesd commits the new data only when exactly SIZE bytes arrived and the stream then
//! ended; anything else discards it and leaves the volume as it was. So the last byte is
//! held back until [`Import::finish`]: an import that is dropped or aborted — the stream
//! broke, a digest did not match, the restore was cancelled — has always sent too few bytes,
//! and fails.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::process::{Child, ChildStdin, Command, Stdio};

use super::{parse_reply, CallError, CallResult, Qubesd};

static ZEROS: [u8; 1 << 16] = [0; 1 << 16];

/// An import in progress.
pub struct Import {
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    size: u64,
    /// Bytes written to the script after the size line.
    written: u64,
    /// The volume's last byte, held back until [`Import::finish`].
    last: u8,
    what: String,
}

impl Qubesd {
    /// QAPI-3: starts importing `size` bytes into `vm`'s `volume`.
    pub fn import_with_size(&self, vm: &str, volume: &str, size: u64) -> CallResult<Import> {
        super::check_request("admin.vm.volume.ImportWithSize", vm, volume)?;
        let script = self.rpc_dir.join("admin.vm.volume.ImportWithSize");
        let mut cmd = if unsafe_geteuid() == 0 {
            Command::new(&script)
        } else {
            let mut c = Command::new("sudo");
            c.arg(&script);
            c
        };
        cmd.arg(volume)
            .env("QREXEC_REMOTE_DOMAIN", "dom0")
            .env("QREXEC_REQUESTED_TARGET", vm)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("import of {vm}:{volume}");
        let mut child = cmd.spawn().map_err(|e| {
            CallError::Transport(format!("{what}: running {}: {e}", script.display()))
        })?;
        let stdin = child.stdin.take();
        if let Some(s) = &stdin {
            // SAFETY: F_SETPIPE_SZ on a pipe descriptor we own; failure only keeps the
            // default size.
            unsafe { libc::fcntl(s.as_raw_fd(), libc::F_SETPIPE_SZ, 1 << 20) };
        }
        let mut import = Import {
            child: Some(child),
            stdin,
            size,
            written: 0,
            last: 0,
            what,
        };
        import.send(format!("{size}\n").as_bytes())?;
        Ok(import)
    }
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

impl Import {
    fn send(&mut self, bytes: &[u8]) -> CallResult<()> {
        let Some(stdin) = self.stdin.as_mut() else {
            return Err(CallError::Transport(format!(
                "{}: already failed",
                self.what
            )));
        };
        if let Err(e) = stdin.write_all(bytes) {
            // The script stopped reading: its reply says why.
            self.stdin = None;
            return Err(self
                .reap()
                .err()
                .unwrap_or_else(|| CallError::Transport(format!("{}: writing: {e}", self.what))));
        }
        Ok(())
    }

    fn zeros(&mut self, mut n: u64) -> CallResult<()> {
        while n > 0 {
            let k = usize::try_from(n).map_or(ZEROS.len(), |n| n.min(ZEROS.len()));
            self.send(&ZEROS[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// `bytes` at logical `offset` (increasing, within the size; the protocol decoder
    /// checked both): the gap before them is sent as zeros; the volume's last byte is kept
    /// back.
    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> CallResult<()> {
        let end = offset.saturating_add(bytes.len() as u64);
        if offset < self.written || end > self.size {
            return Err(CallError::Invalid(format!(
                "{}: data at {offset}+{} out of order or beyond {}",
                self.what,
                bytes.len(),
                self.size
            )));
        }
        self.zeros(offset - self.written)?;
        let (now, held) = if end == self.size {
            match bytes.split_last() {
                Some((last, rest)) => (rest, Some(*last)),
                None => (bytes, None),
            }
        } else {
            (bytes, None)
        };
        self.send(now)?;
        self.written = offset.saturating_add(now.len() as u64);
        if let Some(b) = held {
            self.last = b;
        }
        Ok(())
    }

    /// Sends the rest (trailing zeros, the held byte), ends the stream and returns
    /// qubesd's verdict.
    pub fn finish(mut self) -> CallResult<()> {
        if self.size > 0 {
            let rest = self.size.saturating_sub(1).saturating_sub(self.written);
            self.zeros(rest)?;
            let last = [self.last];
            self.send(&last)?;
        }
        self.stdin = None;
        self.reap()
    }

    /// Waits for the script and reads its reply (QAPI-1 via stdout; its exit status is
    /// not trusted on its own, as dom0's own client does not).
    fn reap(&mut self) -> CallResult<()> {
        let Some(mut child) = self.child.take() else {
            return Err(CallError::Transport(format!(
                "{}: already ended",
                self.what
            )));
        };
        self.stdin = None;
        let mut out = Vec::new();
        let mut err = Vec::new();
        if let Some(o) = child.stdout.take() {
            let _ = o.take(1 << 20).read_to_end(&mut out);
        }
        if let Some(e) = child.stderr.take() {
            let _ = e.take(4096).read_to_end(&mut err);
        }
        let status = child
            .wait()
            .map_err(|e| CallError::Transport(format!("{}: {e}", self.what)))?;
        match parse_reply(&out) {
            Ok(_) if status.success() => Ok(()),
            Ok(_) => Err(CallError::Transport(format!(
                "{}: the import script {status} after reporting success",
                self.what
            ))),
            Err(CallError::Transport(m)) => Err(CallError::Transport(format!(
                "{}: {m}; {status}; stderr: {}",
                self.what,
                qbackup_format::paths::escape(&err)
            ))),
            Err(e) => Err(e),
        }
    }

    /// Ends the import without its last byte: qubesd discards the data (QAPI-3).
    pub fn abort(mut self) -> CallResult<()> {
        self.stdin = None;
        match self.reap() {
            Ok(()) => Err(CallError::Transport(format!(
                "{}: the import reported success for a stream cut short",
                self.what
            ))),
            Err(_) => Ok(()),
        }
    }
}

impl Drop for Import {
    fn drop(&mut self) {
        // Close the stream short (the import fails) and reap the script.
        self.stdin = None;
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}
