//! EXT-6: what a restore may consume of the destination's file system. Data bytes are
//! charged before they are written (holes cost nothing, EXT-3): the total stays within
//! `--max-size`, and the file system's free space never falls below the reserve. Free
//! space is read with `fstatvfs` on DIR's descriptor, again whenever the bytes charged
//! since the last reading reach the headroom it gave (or [`RECHECK_BYTES`]), so other
//! writers on the same file system are noticed too.

use std::os::fd::AsRawFd;

use qbackup_format::limits::DEFAULT_SPACE_RESERVE;
use qbackup_format::{Error, ErrorClass, Result};

/// Free space is read again at least after this many bytes written.
pub const RECHECK_BYTES: u64 = 256 << 20;

/// What the user asked for (`--reserve`, `--max-size`); `None`: the default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpaceLimits {
    /// Free space to leave on the destination's file system; default: the smaller of
    /// LIM-50 and 5 % of the file system's size.
    pub reserve: Option<u64>,
    /// Most data bytes to write in total; default: no limit but the reserve.
    pub max_total: Option<u64>,
}

/// The running account of one destination.
#[derive(Debug)]
pub(crate) struct SpaceGuard {
    reserve: u64,
    max_total: u64,
    written: u64,
    /// Bytes that may still be charged before free space is read again.
    headroom: u64,
    fd: i32,
}

/// The file system of `fd`: (bytes available to us, total bytes).
// The field types differ by platform (u32 on some 32-bit targets).
#[allow(clippy::useless_conversion)]
fn statvfs(fd: i32) -> std::io::Result<(u64, u64)> {
    // SAFETY: fstatvfs writes a statvfs the kernel fills in; zeroed is a valid start.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is DIR's open descriptor, owned by the Destination that owns us.
    if unsafe { libc::fstatvfs(fd, &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let frsize = u64::from(st.f_frsize);
    Ok((
        u64::from(st.f_bavail).saturating_mul(frsize),
        u64::from(st.f_blocks).saturating_mul(frsize),
    ))
}

impl SpaceLimits {
    /// The reserve on a file system of `total` bytes: `--reserve`, else the smaller of
    /// LIM-50 and 5 % of it.
    pub fn reserve_for(&self, total: u64) -> u64 {
        self.reserve
            .unwrap_or_else(|| DEFAULT_SPACE_RESERVE.min(total / 20))
    }
}

/// A file system's space, read before writing starts, so that a command can say what it
/// may use (`extract`, `restore`, `create --out`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Bytes available to this process.
    pub available: u64,
    /// The file system's size.
    pub total: u64,
    /// What must stay free (EXT-6); 0 for `create`.
    pub reserve: u64,
    /// `--max-size`, if any.
    pub max_total: Option<u64>,
}

impl Space {
    /// Bytes that may be written: the available space above the reserve, within
    /// `--max-size`.
    pub fn usable(&self) -> u64 {
        let usable = self.available.saturating_sub(self.reserve);
        self.max_total.map_or(usable, |m| usable.min(m))
    }

    /// Say what `dir` offers, on stderr (a `space` event in JSON mode); `expected`: bytes
    /// the command expects to write, with what they are. A warning when they do not fit.
    pub fn announce(&self, program: &str, dir: &std::path::Path, expected: Option<(u64, &str)>) {
        let fits = expected.is_none_or(|(n, _)| n <= self.usable());
        if qbackup_console::json_stderr() {
            qbackup_console::event(
                "space",
                serde_json::json!({
                    "path": dir.display().to_string(),
                    "available_bytes": self.available,
                    "reserve_bytes": self.reserve,
                    "max_bytes": self.max_total,
                    "usable_bytes": self.usable(),
                    "expected_bytes": expected.map(|e| e.0),
                    "fits": fits,
                }),
            );
            return;
        }
        let mut line = format!(
            "{program}: {} has {} free",
            dir.display(),
            human_bytes(self.available)
        );
        if self.reserve > 0 {
            line += &format!(
                ", {} kept in reserve (--reserve)",
                human_bytes(self.reserve)
            );
        }
        if let Some(m) = self.max_total {
            line += &format!(", at most {} written (--max-size)", human_bytes(m));
        }
        if let Some((n, what)) = expected {
            line += &format!("; {what}: {}", human_bytes(n));
            if !fits {
                line += &format!(" (more than the {} usable)", human_bytes(self.usable()));
            }
        }
        qbackup_console::say!("{line}");
    }
}

/// `1.5 GiB`, `512 B`: for messages.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// The space of the file system holding `dir` (a directory), with `limits` resolved.
pub fn space_at(dir: &std::path::Path, limits: SpaceLimits) -> std::io::Result<Space> {
    let d = std::fs::File::open(dir)?;
    space_of(&d, limits)
}

pub(crate) fn space_of(dir: &impl AsRawFd, limits: SpaceLimits) -> std::io::Result<Space> {
    let (available, total) = statvfs(dir.as_raw_fd())?;
    Ok(Space {
        available,
        total,
        reserve: limits.reserve_for(total),
        max_total: limits.max_total,
    })
}

impl SpaceGuard {
    /// Resolve the defaults against the file system of `dir`.
    pub(crate) fn new(dir: &impl AsRawFd, limits: SpaceLimits) -> Result<SpaceGuard> {
        let fd = dir.as_raw_fd();
        let (_, total) = statvfs(fd)
            .map_err(|e| Error::new(ErrorClass::Io, format!("reading free space: {e}")))?;
        Ok(SpaceGuard {
            reserve: limits.reserve_for(total),
            max_total: limits.max_total.unwrap_or(u64::MAX),
            written: 0,
            headroom: 0,
            fd,
        })
    }

    /// EXT-6: account for `n` data bytes about to be written, or refuse them.
    pub(crate) fn charge(&mut self, n: u64) -> Result<()> {
        let written = self.written.saturating_add(n);
        if written > self.max_total {
            return Err(Error::limit(format!(
                "the restore would write more than --max-size {} bytes of data (EXT-6)",
                self.max_total
            )));
        }
        if n > self.headroom {
            let (free, _) = statvfs(self.fd)
                .map_err(|e| Error::new(ErrorClass::Io, format!("reading free space: {e}")))?;
            let usable = free.saturating_sub(self.reserve);
            if n > usable {
                return Err(Error::limit(format!(
                    "the destination has {free} bytes free; writing {n} more would leave less than the reserve of {} bytes (EXT-6, --reserve)",
                    self.reserve
                )));
            }
            self.headroom = usable.min(RECHECK_BYTES.max(n));
        }
        self.headroom -= n;
        self.written = written;
        Ok(())
    }
}

/// `--reserve` and `--max-size` values: bytes, or a number with a binary suffix `K`,
/// `M`, `G`, `T` (optionally followed by `iB`): `512M`, `2GiB`.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("iB").unwrap_or(t);
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("unknown size suffix in {text:?} (K, M, G, T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{text:?} is not a size (e.g. 1073741824, 512M, 2GiB)"
        ));
    }
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("{text:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_space_leaves_the_reserve_and_keeps_max_size() {
        let s = Space {
            available: 100,
            total: 1000,
            reserve: 30,
            max_total: None,
        };
        assert_eq!(s.usable(), 70);
        assert_eq!(
            Space {
                max_total: Some(10),
                ..s
            }
            .usable(),
            10
        );
        assert_eq!(Space { reserve: 200, ..s }.usable(), 0);
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        let dir = tempfile::tempdir().unwrap();
        let got = space_at(dir.path(), SpaceLimits::default()).unwrap();
        assert!(got.total >= got.available && got.total > 0);
        assert_eq!(got.reserve, DEFAULT_SPACE_RESERVE.min(got.total / 20));
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1t"), Ok(1 << 40));
        for bad in [
            "",
            "M",
            "-1",
            "1.5G",
            "3X",
            "99999999999999999999",
            "16777216T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    /// EXT-6, LIM-50: the total is enforced exactly; a reserve larger than the free space
    /// refuses the first byte; the default reserve is LIM-50 or 5 % of the file system.
    #[test]
    fn charges_stop_at_the_total_and_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::File::open(dir.path()).unwrap();
        let (_, total) = statvfs(f.as_raw_fd()).unwrap();
        let g = SpaceGuard::new(&f, SpaceLimits::default()).unwrap();
        assert_eq!(g.reserve, DEFAULT_SPACE_RESERVE.min(total / 20));
        assert_eq!(g.max_total, u64::MAX);
        let mut g = SpaceGuard::new(
            &f,
            SpaceLimits {
                reserve: Some(0),
                max_total: Some(10),
            },
        )
        .unwrap();
        g.charge(6).unwrap();
        g.charge(4).unwrap();
        let e = g.charge(1).unwrap_err();
        assert_eq!(e.class(), ErrorClass::LimitExceeded);
        assert!(e.message().contains("--max-size"), "{e}");

        let mut g = SpaceGuard::new(
            &f,
            SpaceLimits {
                reserve: Some(u64::MAX),
                max_total: None,
            },
        )
        .unwrap();
        let e = g.charge(1).unwrap_err();
        assert_eq!(e.class(), ErrorClass::LimitExceeded);
        assert!(e.message().contains("reserve"), "{e}");
    }
}
