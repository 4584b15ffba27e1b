//! The outer container (SPEC.md OUT-1 … OUT-5): a concatenation of POSIX tar archives,
//! one per member, with zero blocks between them.
//!
//! Only regular members (`0`, `\0`) are surfaced; pax `x`/`g` headers are consumed (`x`
//! may override `path` and `size`, OUT-3). Header checksums are verified. The outer
//! container is never authenticated, so everything here is bounded and nothing here is
//! trusted beyond "a name and a length": member bytes are handed on unparsed.

use std::io::Read;

use crate::error::{Error, Result};
use crate::inner_tar::header::{is_zero, parse_header};
use crate::inner_tar::pax::PaxValues;
use crate::limits::{MAX_MEMBERS, MAX_PATH_LEN, MAX_TAR_EXTENSION_LEN};
use crate::paths::escape;

/// Size of a tar block.
pub const BLOCK: usize = 512;

/// One outer member: its untrusted name and size. Its data follows in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub untrusted_name: Vec<u8>,
    pub size: u64,
}

/// Streaming reader of outer members.
pub struct OuterReader<R> {
    inner: R,
    /// Data bytes of the current member not yet read.
    remaining: u64,
    /// Padding bytes after the current member's data.
    padding: u64,
    members: u64,
    /// Bytes consumed from `inner` so far.
    position: u64,
}

impl<R: Read> OuterReader<R> {
    pub fn new(inner: R) -> Self {
        OuterReader {
            inner,
            remaining: 0,
            padding: 0,
            members: 0,
            position: 0,
        }
    }

    /// Bytes consumed from the underlying reader.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The next regular member, skipping zero blocks and pax headers (OUT-1, OUT-2).
    /// `Ok(None)` at a clean end of input (OUT-4). Unread data of the previous member is
    /// skipped.
    pub fn next_member(&mut self) -> Result<Option<Member>> {
        self.skip_rest()?;
        let mut pax_path: Option<Vec<u8>> = None;
        let mut pax_size: Option<u64> = None;
        // OUT-3: an `x` header was read and applies to the next header, which must be a
        // member header.
        let mut pending_x = false;
        loop {
            let mut block = [0u8; BLOCK];
            if !self.read_block_or_eof(&mut block)? {
                if pending_x {
                    return Err(Error::truncated("archive ends after a pax header"));
                }
                return Ok(None);
            }
            if is_zero(&block) {
                if pending_x {
                    return Err(Error::malformed(
                        "a pax x header is followed by a zero block, not a member (OUT-3)",
                    ));
                }
                continue;
            }
            // OUT-5: checksum, magic and numeric fields, with the inner tar's header parser.
            let header = parse_header(&block).map_err(|e| {
                e.context(format!(
                    "outer tar header at offset {}",
                    self.position - BLOCK as u64
                ))
            })?;
            match header.typeflag {
                b'x' | b'g' => {
                    if pending_x {
                        return Err(Error::malformed(
                            "a pax x header is followed by another pax header (OUT-3)",
                        ));
                    }
                    if header.size > MAX_TAR_EXTENSION_LEN {
                        return Err(Error::limit(format!(
                            "outer pax header of {} bytes exceeds LIM-10",
                            header.size
                        )));
                    }
                    let mut data = vec![0u8; header.size as usize];
                    self.read_exact(&mut data)?;
                    self.skip(pad(header.size))?;
                    let values = PaxValues::parse(&data)?;
                    if header.typeflag == b'x' {
                        // OUT-3: `path` and `size` override the ustar fields.
                        pax_path = values.path;
                        pax_size = values.size;
                        pending_x = true;
                    } else if values.sets_path_size_or_sparse() {
                        return Err(Error::unsupported(
                            "a pax global header sets path, size or GNU.sparse.* (OUT-3)",
                        ));
                    }
                }
                b'0' | 0 => {
                    self.members += 1;
                    if self.members > MAX_MEMBERS {
                        return Err(Error::limit(format!(
                            "more than LIM-7 ({MAX_MEMBERS}) members"
                        )));
                    }
                    let name = pax_path.take().unwrap_or(header.name);
                    if name.len() > MAX_PATH_LEN {
                        return Err(Error::limit("outer member name exceeds LIM-8"));
                    }
                    let size = pax_size.take().unwrap_or(header.size);
                    self.remaining = size;
                    self.padding = pad(size);
                    return Ok(Some(Member {
                        untrusted_name: name,
                        size,
                    }));
                }
                other => {
                    return Err(Error::malformed(format!(
                        "outer member {} has type {:?}; only regular files are allowed (OUT-2)",
                        escape(&header.name),
                        other as char
                    )))
                }
            }
        }
    }

    /// Read the whole current member into `buf` (cleared first), refusing members larger
    /// than `max` before reading any of their data.
    pub fn read_member(&mut self, buf: &mut Vec<u8>, max: u64, what: &str) -> Result<()> {
        if self.remaining > max {
            return Err(Error::limit(format!(
                "{what}: member of {} bytes exceeds the limit of {max}",
                self.remaining
            )));
        }
        buf.clear();
        // `remaining <= max`, which callers take from limits that fit in memory.
        buf.resize(self.remaining as usize, 0);
        self.read_exact(buf)?;
        self.remaining = 0;
        Ok(())
    }

    fn skip_rest(&mut self) -> Result<()> {
        let n = self.remaining + self.padding;
        self.remaining = 0;
        self.padding = 0;
        self.skip(n)
    }

    fn skip(&mut self, n: u64) -> Result<()> {
        let copied = std::io::copy(&mut (&mut self.inner).take(n), &mut std::io::sink())
            .map_err(|e| Error::from_read(e, "reading archive"))?;
        self.position += copied;
        if copied != n {
            return Err(Error::truncated("archive ends inside a member"));
        }
        Ok(())
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<()> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.inner.read(&mut buf[filled..]) {
                Ok(0) => return Err(Error::truncated("archive ends inside a member")),
                Ok(n) => {
                    filled += n;
                    self.position += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::from_read(e, "reading archive")),
            }
        }
        Ok(())
    }

    /// `false` on EOF exactly at a block boundary; EOF inside a block is truncation.
    fn read_block_or_eof(&mut self, block: &mut [u8; BLOCK]) -> Result<bool> {
        let mut filled = 0;
        while filled < BLOCK {
            match self.inner.read(&mut block[filled..]) {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => return Err(Error::truncated("archive ends inside a tar block")),
                Ok(n) => {
                    filled += n;
                    self.position += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::from_read(e, "reading archive")),
            }
        }
        Ok(true)
    }
}

fn pad(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    /// A minimal ustar header for tests (the interop tests use GNU tar itself).
    pub(crate) fn header(name: &str, size: u64, typeflag: u8) -> [u8; BLOCK] {
        let mut b = [0u8; BLOCK];
        b[..name.len()].copy_from_slice(name.as_bytes());
        b[100..107].copy_from_slice(b"0000644");
        b[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
        b[156] = typeflag;
        b[257..263].copy_from_slice(b"ustar\0");
        b[263..265].copy_from_slice(b"00");
        b[148..156].fill(b' ');
        let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
        b[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        b
    }

    fn member(name: &str, data: &[u8]) -> Vec<u8> {
        let mut v = header(name, data.len() as u64, b'0').to_vec();
        v.extend_from_slice(data);
        v.resize(v.len() + pad(data.len() as u64) as usize, 0);
        v.extend_from_slice(&[0u8; 1024]);
        v
    }

    #[test]
    fn reads_concatenated_members_across_zero_blocks() {
        let mut archive = member("backup-header", b"version=4\n");
        archive.extend(member("vm3/private.img.000.enc", &[7u8; 700]));
        let mut r = OuterReader::new(&archive[..]);
        let m = r.next_member().unwrap().unwrap();
        assert_eq!(m.untrusted_name, b"backup-header");
        let mut buf = Vec::new();
        r.read_member(&mut buf, 100, "x").unwrap();
        assert_eq!(buf, b"version=4\n");
        let m = r.next_member().unwrap().unwrap();
        assert_eq!(
            (m.untrusted_name.as_slice(), m.size),
            (&b"vm3/private.img.000.enc"[..], 700)
        );
        assert!(r.next_member().unwrap().is_none());
    }

    #[test]
    fn pax_path_and_size_override() {
        let records = b"32 path=vm3/private.img.000.enc\n";
        let mut archive = header("PaxHeaders/x", records.len() as u64, b'x').to_vec();
        archive.extend_from_slice(records);
        archive.resize(1024, 0);
        archive.extend(member("short", b"abc"));
        let mut r = OuterReader::new(&archive[..]);
        let m = r.next_member().unwrap().unwrap();
        assert_eq!(m.untrusted_name, b"vm3/private.img.000.enc");
    }

    fn pax(typeflag: u8, records: &[u8]) -> Vec<u8> {
        let mut v = header("PaxHeaders/x", records.len() as u64, typeflag).to_vec();
        v.extend_from_slice(records);
        v.resize(BLOCK + records.len().div_ceil(BLOCK) * BLOCK, 0);
        v
    }

    fn first_class(archive: &[u8]) -> ErrorClass {
        OuterReader::new(archive).next_member().unwrap_err().class()
    }

    /// OUT-3: an `x` header must be followed by a member header; a `g` header must not
    /// set path, size or sparse records.
    #[test]
    fn pax_header_placement_and_global_records() {
        let x = pax(b'x', b"11 mtime=1\n");
        let two = [x.clone(), x.clone(), member("a.000", b"x")].concat();
        assert_eq!(first_class(&two), ErrorClass::Malformed);
        let x_then_g = [x.clone(), pax(b'g', b"11 mtime=1\n"), member("a.000", b"x")].concat();
        assert_eq!(first_class(&x_then_g), ErrorClass::Malformed);
        let x_then_end = [x.clone(), vec![0u8; 1024]].concat();
        assert_eq!(first_class(&x_then_end), ErrorClass::Malformed);
        assert_eq!(first_class(&x), ErrorClass::Truncated);
        for records in [
            &b"12 path=a.0\n"[..],
            b"8 size=\n",
            b"22 GNU.sparse.major=1\n",
        ] {
            let g = [pax(b'g', records), member("a.000", b"x")].concat();
            assert_eq!(first_class(&g), ErrorClass::Unsupported, "{records:?}");
        }
        let g = [pax(b'g', b"11 mtime=1\n"), member("a.000", b"x")].concat();
        let m = OuterReader::new(&g[..]).next_member().unwrap().unwrap();
        assert_eq!(m.untrusted_name, b"a.000");
    }

    #[test]
    fn refuses_other_types_bad_checksums_and_truncation() {
        let mut dir = member("vm3/", b"");
        dir[156] = b'5';
        // fix checksum after changing the type
        let fixed = header("vm3/", 0, b'5');
        dir[..BLOCK].copy_from_slice(&fixed);
        let mut r = OuterReader::new(&dir[..]);
        assert_eq!(r.next_member().unwrap_err().class(), ErrorClass::Malformed);

        let mut bad = member("a.000", b"x");
        bad[0] = b'b';
        assert_eq!(
            OuterReader::new(&bad[..])
                .next_member()
                .unwrap_err()
                .class(),
            ErrorClass::Malformed
        );

        let good = member("a.000", &[1u8; 600]);
        for cut in [100, 512, 700, 1024] {
            let mut r = OuterReader::new(&good[..cut]);
            let res = r.next_member().and_then(|_| {
                let mut buf = Vec::new();
                r.read_member(&mut buf, 1 << 20, "x")
            });
            assert_eq!(
                res.unwrap_err().class(),
                ErrorClass::Truncated,
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn refuses_oversized_members_before_reading_them() {
        let archive = member("a.000", &[1u8; 600]);
        let mut r = OuterReader::new(&archive[..]);
        r.next_member().unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            r.read_member(&mut buf, 599, "x").unwrap_err().class(),
            ErrorClass::LimitExceeded
        );
        assert!(buf.is_empty());
    }
}
