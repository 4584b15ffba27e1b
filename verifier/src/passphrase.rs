//! Where the passphrase comes from (SPEC.md PASS-1): `--passphrase-file F` (F may be `-`
//! when the archive is not on stdin), else `$QBACKUP_PASSPHRASE`, else a no-echo prompt.

use std::io::Read;
use std::path::Path;

use qbackup_format::limits::MAX_PASSPHRASE_LEN;
use qbackup_format::{Error, ErrorClass, Result};
use zeroize::Zeroizing;

/// The environment variable holding the passphrase.
pub const ENV: &str = "QBACKUP_PASSPHRASE";

pub fn obtain(file: Option<&Path>, archive_on_stdin: bool) -> Result<Zeroizing<Vec<u8>>> {
    let raw = match file {
        Some(p) if p == Path::new("-") => {
            if archive_on_stdin {
                return Err(Error::new(
                    ErrorClass::Io,
                    "--passphrase-file - cannot be used when the archive is read from stdin",
                ));
            }
            let mut buf = Zeroizing::new(Vec::new());
            std::io::stdin()
                .take(MAX_PASSPHRASE_LEN as u64 + 3)
                .read_to_end(&mut buf)
                .map_err(|e| Error::new(ErrorClass::Io, format!("reading passphrase: {e}")))?;
            buf
        }
        Some(p) => Zeroizing::new(std::fs::read(p).map_err(|e| {
            Error::new(
                ErrorClass::Io,
                format!("reading passphrase file {}: {e}", p.display()),
            )
        })?),
        None => match std::env::var_os(ENV) {
            Some(v) => {
                Zeroizing::new(std::os::unix::ffi::OsStrExt::as_bytes(v.as_os_str()).to_vec())
            }
            None => {
                let p = rpassword::prompt_password("Backup passphrase: ").map_err(|e| {
                    Error::new(
                        ErrorClass::Io,
                        format!("reading passphrase from the terminal: {e}"),
                    )
                })?;
                Zeroizing::new(p.into_bytes())
            }
        },
    };
    normalize(raw)
}

/// PASS-1: one trailing line break (`\n` or `\r\n`) is not part of the passphrase; the
/// passphrase must be non-empty, at most LIM-21 bytes, and contain no NUL or line break
/// (scrypt's prompt could not have taken one).
pub fn normalize(mut p: Zeroizing<Vec<u8>>) -> Result<Zeroizing<Vec<u8>>> {
    if p.ends_with(b"\n") {
        p.pop();
        if p.ends_with(b"\r") {
            p.pop();
        }
    }
    if p.is_empty() {
        return Err(Error::new(ErrorClass::Io, "the passphrase is empty"));
    }
    if p.len() > MAX_PASSPHRASE_LEN {
        return Err(Error::limit(format!(
            "the passphrase is longer than LIM-21 ({MAX_PASSPHRASE_LEN} bytes)"
        )));
    }
    if p.iter().any(|&b| b == 0 || b == b'\n' || b == b'\r') {
        return Err(Error::new(
            ErrorClass::Io,
            "the passphrase contains a NUL or line break",
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_one_line_break_only() {
        let n = |s: &[u8]| normalize(Zeroizing::new(s.to_vec())).map(|p| p.to_vec());
        assert_eq!(n(b"qubes\n").unwrap(), b"qubes");
        assert_eq!(n(b"qubes\r\n").unwrap(), b"qubes");
        assert_eq!(n(b"qu bes ").unwrap(), b"qu bes ");
        assert!(n(b"\n").is_err());
        assert!(n(b"a\n\n").is_err());
    }
}
