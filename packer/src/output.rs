//! Where archive bytes go: `FILE.partial` (renamed on success) or stdout, and, with
//! `--verify`, also the stdin of a `qbackup-verify verify -` child.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};

use crate::Failure;

/// The `.partial` name of `out`.
pub fn partial_name(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

/// Create `path` exclusively.
pub fn create_partial(path: &Path) -> Result<File, Failure> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| Failure::io(format!("creating {}: {e}", path.display())))
}

/// The archive sink: the destination plus an optional verifier.
pub struct Tee {
    pub dest: Box<dyn Write + Send>,
    pub verifier: Option<ChildStdin>,
}

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.dest.write_all(buf)?;
        if let Some(v) = self.verifier.as_mut() {
            v.write_all(buf).map_err(|e| {
                io::Error::new(e.kind(), format!("the verifier stopped reading: {e}"))
            })?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        self.dest.flush()?;
        if let Some(v) = self.verifier.as_mut() {
            v.flush()?;
        }
        Ok(())
    }
}

/// Start `verifier verify --no-progress -` with the passphrase in its environment. In JSON
/// mode (`--progress-json`) its stderr lines are passed on as `message` events, so that
/// stderr stays JSON.
pub fn spawn_verifier(path: &Path, passphrase: &[u8]) -> Result<Child, Failure> {
    use std::os::unix::ffi::OsStrExt;
    let json = qbackup_console::json_stderr();
    let mut child = Command::new(path)
        .args(["verify", "--no-progress", "-"])
        .env(
            "QBACKUP_PASSPHRASE",
            std::ffi::OsStr::from_bytes(passphrase),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(if json {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .spawn()
        .map_err(|e| Failure::Usage(format!("starting verifier {}: {e}", path.display())))?;
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in io::BufReader::new(err).lines().map_while(Result::ok) {
                crate::say!("{line}");
            }
        });
    }
    Ok(child)
}

/// The verifier next to this executable.
pub fn default_verifier() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("qbackup-verify")))
        .unwrap_or_else(|| PathBuf::from("qbackup-verify"))
}
