//! Outer container members as `tar -cO --posix` writes them, minus the pax header
//! (SPEC.md OUT-1, OUT-5, WRT-2): typeflag `0`, POSIX magic `ustar` NUL `00`, octal
//! numbers only (upstream's VM-side reader understands nothing else), and names of at
//! most 100 bytes or split at a `/` into prefix (155) and name (100).

use super::{put_number, set_checksum, BLOCK};
use crate::bail;
use crate::error::Result;

/// Longest name an outer header can carry (prefix ‖ `/` ‖ name).
pub const MAX_NAME_LEN: usize = 155 + 1 + 100;

/// The 512-byte header of an outer member `name` with `size` data bytes (WRT-2).
/// `mtime` is seconds since the epoch. Names must be printable ASCII (NAME-3) and fit
/// the ustar fields; sizes must fit 11 octal digits (chunks are ≤ 100 MiB + 128).
pub fn member_header(name: &str, size: u64, mtime: u64) -> Result<[u8; BLOCK]> {
    if name.is_empty() || !name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        bail!(
            UnsafePath,
            "outer member name {name:?} is not printable ASCII (NAME-3)"
        );
    }
    let (prefix, base) = split_name(name)?;
    let mut h = [0u8; BLOCK];
    h[..base.len()].copy_from_slice(base.as_bytes());
    h[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    let ok = put_number(&mut h[100..108], 0o644, false)
        && put_number(&mut h[108..116], 0, false)
        && put_number(&mut h[116..124], 0, false)
        && put_number(&mut h[124..136], size, false)
        && put_number(&mut h[136..148], mtime, false);
    if !ok {
        bail!(
            LimitExceeded,
            "outer member {name:?}: size {size} or mtime {mtime} does not fit an octal field"
        );
    }
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[265..269].copy_from_slice(b"root");
    h[297..301].copy_from_slice(b"root");
    set_checksum(&mut h);
    Ok(h)
}

/// Split `name` into (prefix, name) fields: whole in `name` when ≤ 100 bytes, else at the
/// last `/` that leaves ≤ 155 bytes of prefix and 1..=100 bytes of name.
fn split_name(name: &str) -> Result<(&str, &str)> {
    if name.len() <= 100 {
        return Ok(("", name));
    }
    let found = name
        .rmatch_indices('/')
        .map(|(i, _)| i)
        .find(|&i| i <= 155 && name.len() - i - 1 <= 100 && i + 1 < name.len());
    match found {
        Some(i) => Ok((&name[..i], &name[i + 1..])),
        None => bail!(
            LimitExceeded,
            "outer member name of {} bytes cannot be split into ustar prefix and name",
            name.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outer_tar::OuterReader;

    #[test]
    fn members_read_back() {
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let mut bytes = Vec::new();
        for (name, data) in [
            ("backup-header", &b"abc"[..]),
            (long.as_str(), &[7u8; 600][..]),
        ] {
            bytes.extend_from_slice(&member_header(name, data.len() as u64, 1).unwrap());
            bytes.extend_from_slice(data);
            bytes.resize(bytes.len() + super::super::padding(data.len() as u64), 0);
        }
        bytes.extend_from_slice(&super::super::END_OF_ARCHIVE);
        let mut r = OuterReader::new(&bytes[..]);
        let m = r.next_member().unwrap().unwrap();
        assert_eq!(m.untrusted_name, b"backup-header");
        let mut buf = Vec::new();
        r.read_member(&mut buf, 10, "x").unwrap();
        assert_eq!(buf, b"abc");
        let m = r.next_member().unwrap().unwrap();
        assert_eq!(m.untrusted_name, long.as_bytes());
        assert_eq!(m.size, 600);
        r.read_member(&mut buf, 1000, "x").unwrap();
        assert!(r.next_member().unwrap().is_none());
    }

    #[test]
    fn refuses_what_it_cannot_encode() {
        assert!(member_header("a\nb", 1, 0).is_err());
        assert!(member_header(&"x".repeat(101), 1, 0).is_err());
        assert!(member_header("a", 1 << 33, 0).is_err());
    }
}
