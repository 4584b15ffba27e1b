//! Inner tar headers as GNU tar (`--format=gnu`, the default) writes them (SPEC.md TAR-1,
//! TAR-2, TAR-4, TAR-6, TAR-7): old GNU magic `ustar  ` NUL, old-GNU sparse `S` entries
//! with extension blocks, `L`/`K` long names, and base-256 numbers from 8 GiB.
//!
//! The functions return header bytes only; the caller streams the entry's data after
//! them (for `S` entries: the runs' bytes concatenated), then [`super::padding`] zeros,
//! and after the last entry [`super::END_OF_ARCHIVE`].

use super::{put_number, set_checksum, BLOCK};
use crate::bail;
use crate::error::Result;
use crate::limits::{MAX_FILE_SIZE, MAX_PATH_LEN, MAX_SPARSE_ENTRIES};

/// Mode, owner and time of an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits (`0o7777` at most are written).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// Seconds since the epoch.
    pub mtime: u64,
}

impl Meta {
    /// `0o644`, root, mtime 0.
    pub const FILE: Meta = Meta {
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
    };
}

/// Pairs in the main `S` header and in each extension block (TAR-2).
const MAIN_PAIRS: usize = 4;
const EXT_PAIRS: usize = 21;

fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_PATH_LEN || name.contains('\0') {
        bail!(
            LimitExceeded,
            "inner tar {what} of {} bytes is empty, too long or contains NUL",
            name.len()
        );
    }
    Ok(())
}

fn base(typeflag: u8, name: &str, linkname: &str, size: u64, meta: &Meta) -> Result<[u8; BLOCK]> {
    let mut h = [0u8; BLOCK];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name.as_bytes()[..n]);
    let l = linkname.len().min(100);
    h[157..157 + l].copy_from_slice(&linkname.as_bytes()[..l]);
    let ok = put_number(&mut h[100..108], u64::from(meta.mode & 0o7777), false)
        && put_number(&mut h[108..116], meta.uid, true)
        && put_number(&mut h[116..124], meta.gid, true)
        && put_number(&mut h[124..136], size, true)
        && put_number(&mut h[136..148], meta.mtime, true);
    if !ok {
        bail!(
            LimitExceeded,
            "inner tar entry {name:?}: a number does not fit its field"
        );
    }
    h[156] = typeflag;
    h[257..265].copy_from_slice(b"ustar  \0");
    Ok(h)
}

/// A GNU `L` (name) or `K` (link name) record for values longer than 100 bytes (TAR-4).
fn long_record(out: &mut Vec<u8>, typeflag: u8, value: &str) -> Result<()> {
    if value.len() <= 100 {
        return Ok(());
    }
    let len = value.len() as u64 + 1;
    let mut h = base(typeflag, "././@LongLink", "", len, &Meta::FILE)?;
    set_checksum(&mut h);
    out.extend_from_slice(&h);
    out.extend_from_slice(value.as_bytes());
    out.push(0);
    out.resize(out.len() + super::padding(len), 0);
    Ok(())
}

fn finish(out: &mut Vec<u8>, mut h: [u8; BLOCK]) {
    set_checksum(&mut h);
    out.extend_from_slice(&h);
}

/// A regular file (`0`) of `size` bytes.
pub fn regular(name: &str, size: u64, meta: &Meta) -> Result<Vec<u8>> {
    check_name("name", name)?;
    if size > MAX_FILE_SIZE {
        bail!(LimitExceeded, "{name:?}: {size} bytes exceed LIM-12");
    }
    let mut out = Vec::with_capacity(BLOCK);
    long_record(&mut out, b'L', name)?;
    finish(&mut out, base(b'0', name, "", size, meta)?);
    Ok(out)
}

/// A directory (`5`); GNU tar writes its name with a trailing `/`.
pub fn directory(name: &str, meta: &Meta) -> Result<Vec<u8>> {
    let name = format!("{}/", name.trim_end_matches('/'));
    check_name("name", &name)?;
    let mut out = Vec::with_capacity(BLOCK);
    long_record(&mut out, b'L', &name)?;
    finish(&mut out, base(b'5', &name, "", 0, meta)?);
    Ok(out)
}

/// A symbolic link (`2`) to `target`.
pub fn symlink(name: &str, target: &str, meta: &Meta) -> Result<Vec<u8>> {
    check_name("name", name)?;
    check_name("link target", target)?;
    let mut out = Vec::with_capacity(BLOCK);
    long_record(&mut out, b'K', target)?;
    long_record(&mut out, b'L', name)?;
    finish(&mut out, base(b'2', name, target, 0, meta)?);
    Ok(out)
}

/// An old-GNU sparse entry (`S`, TAR-2): `realsize` logical bytes, data `runs` as
/// (offset, length) in increasing, non-overlapping order (TAR-9). When the file ends in
/// a hole (or has no data) a final `(realsize, 0)` run is added, as GNU tar does. The
/// entry's size is the sum of the lengths; its data is the runs' bytes concatenated.
pub fn sparse(name: &str, realsize: u64, runs: &[(u64, u64)], meta: &Meta) -> Result<Vec<u8>> {
    check_name("name", name)?;
    if realsize > MAX_FILE_SIZE {
        bail!(LimitExceeded, "{name:?}: {realsize} bytes exceed LIM-12");
    }
    let mut map: Vec<(u64, u64)> = Vec::with_capacity(runs.len().saturating_add(1));
    let mut end = 0u64;
    let mut stored = 0u64;
    for &(off, len) in runs {
        let Some(run_end) = off
            .checked_add(len)
            .filter(|&e| off >= end && e <= realsize)
        else {
            bail!(
                Malformed,
                "{name:?}: sparse run ({off}, {len}) out of order or beyond {realsize} (TAR-9)"
            );
        };
        if len == 0 {
            continue;
        }
        end = run_end;
        stored = stored.saturating_add(len);
        map.push((off, len));
    }
    if end < realsize || map.is_empty() {
        map.push((realsize, 0));
    }
    if map.len() > MAX_SPARSE_ENTRIES {
        bail!(
            LimitExceeded,
            "{name:?}: {} sparse runs exceed LIM-11",
            map.len()
        );
    }
    let mut out = Vec::with_capacity(BLOCK * (2 + map.len() / EXT_PAIRS));
    long_record(&mut out, b'L', name)?;
    let mut h = base(b'S', name, "", stored, meta)?;
    let (first, rest) = map.split_at(map.len().min(MAIN_PAIRS));
    for (i, &(off, len)) in first.iter().enumerate() {
        let at = 386 + 24 * i;
        if !(put_number(&mut h[at..at + 12], off, true)
            && put_number(&mut h[at + 12..at + 24], len, true))
        {
            bail!(LimitExceeded, "{name:?}: sparse run does not fit");
        }
    }
    h[482] = u8::from(!rest.is_empty());
    if !put_number(&mut h[483..495], realsize, true) {
        bail!(LimitExceeded, "{name:?}: realsize does not fit");
    }
    finish(&mut out, h);
    let blocks: Vec<&[(u64, u64)]> = rest.chunks(EXT_PAIRS).collect();
    for (b, pairs) in blocks.iter().enumerate() {
        let mut e = [0u8; BLOCK];
        for (i, &(off, len)) in pairs.iter().enumerate() {
            let at = 24 * i;
            if !(put_number(&mut e[at..at + 12], off, true)
                && put_number(&mut e[at + 12..at + 24], len, true))
            {
                bail!(LimitExceeded, "{name:?}: sparse run does not fit");
            }
        }
        e[504] = u8::from(b + 1 < blocks.len());
        out.extend_from_slice(&e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inner_tar::{DataSink, EntryKind, TarReader};

    struct Collect(Vec<(u64, Vec<u8>)>);
    impl DataSink for Collect {
        fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
            self.0.push((offset, bytes.to_vec()));
            Ok(())
        }
    }

    fn data_for(runs: &[(u64, u64)]) -> Vec<u8> {
        let total: u64 = runs.iter().map(|r| r.1).sum();
        (0..total).map(|i| (i % 251) as u8 + 1).collect()
    }

    #[test]
    fn sparse_with_extension_blocks_reads_back() {
        let runs: Vec<(u64, u64)> = (0..60).map(|i| (i * 8192, 100 + i)).collect();
        let realsize = 60 * 8192 + 4096;
        let data = data_for(&runs);
        let mut t = sparse("vm3/private.img", realsize, &runs, &Meta::FILE).unwrap();
        t.extend_from_slice(&data);
        t.resize(t.len() + super::super::padding(data.len() as u64), 0);
        t.extend_from_slice(&super::super::END_OF_ARCHIVE);
        let mut r = TarReader::new(&t[..]);
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(e.path, b"vm3/private.img");
        assert_eq!(e.size, realsize);
        assert_eq!(e.stored, data.len() as u64);
        let map = e.sparse.as_ref().unwrap();
        assert_eq!(map.entries.len(), 61);
        let mut c = Collect(Vec::new());
        r.read_data(&mut c).unwrap();
        let mut got = Vec::new();
        for (_, b) in &c.0 {
            got.extend_from_slice(b);
        }
        assert_eq!(got, data);
        assert!(r.next_entry().unwrap().is_none());
    }

    #[test]
    fn long_names_dirs_links_and_big_numbers() {
        let long = format!("dom0-home/user/{}", "n".repeat(150));
        let mut t = directory("dom0-home/user", &Meta::FILE).unwrap();
        t.extend(regular(&long, 3, &Meta::FILE).unwrap());
        t.extend_from_slice(b"abc");
        t.resize(t.len() + 509, 0);
        t.extend(symlink("dom0-home/user/l", &"t".repeat(200), &Meta::FILE).unwrap());
        // 9 GiB of holes: realsize in base-256.
        t.extend(sparse("dom0-home/user/big", 9 << 30, &[], &Meta::FILE).unwrap());
        t.extend_from_slice(&super::super::END_OF_ARCHIVE);
        let mut r = TarReader::new(&t[..]);
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(e.kind, EntryKind::Directory);
        assert_eq!(e.path, b"dom0-home/user/");
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(e.path, long.as_bytes());
        r.read_data(&mut Collect(Vec::new())).unwrap();
        let e = r.next_entry().unwrap().unwrap();
        assert!(matches!(e.kind, EntryKind::Symlink { ref target } if target.len() == 200));
        let e = r.next_entry().unwrap().unwrap();
        assert_eq!(e.size, 9 << 30);
        assert_eq!(e.stored, 0);
        r.read_data(&mut Collect(Vec::new())).unwrap();
        assert!(r.next_entry().unwrap().is_none());
    }

    #[test]
    fn refuses_bad_runs() {
        assert!(sparse("a", 10, &[(5, 2), (4, 1)], &Meta::FILE).is_err());
        assert!(sparse("a", 10, &[(5, 6)], &Meta::FILE).is_err());
    }
}
