//! The reader state machine shared by [`super::TarReader`] and [`super::MultiVolumeReader`].

use std::collections::HashSet;
use std::io::Read;
use std::mem;

use sha2::{Digest, Sha256};

use super::header::{cstr, is_zero, num_at, parse_header, parse_u64, RawHeader, BLOCK};
use super::pax::{parse_dec, PaxValues};
use super::{DataSink, Discard, Entry, EntryKind, SparseMap};
use crate::bail;
use crate::error::{Error, Result};
use crate::limits::{
    MAX_FILE_SIZE, MAX_INNER_ENTRIES, MAX_PATH_LEN, MAX_SPARSE_ENTRIES, MAX_TAR_EXTENSION_LEN,
    MAX_TAR_TRAILING_ZERO_BYTES,
};

/// Internal read buffer; also the largest slice handed to a [`DataSink`].
const BUF_LEN: usize = 64 << 10;
const BLOCK_U64: u64 = BLOCK as u64;

/// Bytes of padding after `len` bytes of member data.
fn padding(len: u64) -> u64 {
    (BLOCK_U64 - len % BLOCK_U64) % BLOCK_U64
}

/// A buffered view of the current volume.
struct Input<R> {
    cur: R,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    eof: bool,
    /// Bytes consumed from the current volume.
    vol_pos: u64,
}

impl<R: Read> Input<R> {
    fn new(cur: R) -> Self {
        Input {
            cur,
            buf: vec![0; BUF_LEN],
            pos: 0,
            len: 0,
            eof: false,
            vol_pos: 0,
        }
    }

    fn replace(&mut self, next: R) {
        self.cur = next;
        self.pos = 0;
        self.len = 0;
        self.eof = false;
        self.vol_pos = 0;
    }

    /// Buffered bytes, reading more if none are left; empty at EOF.
    fn available(&mut self) -> Result<&[u8]> {
        if self.pos >= self.len && !self.eof {
            self.pos = 0;
            self.len = 0;
            loop {
                match self.cur.read(&mut self.buf) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(n) => {
                        self.len = n.min(self.buf.len());
                        break;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::from_read(e, "inner tar")),
                }
            }
        }
        Ok(self.buf.get(self.pos..self.len).unwrap_or(&[]))
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.len.saturating_sub(self.pos));
        self.pos += n;
        self.vol_pos = self.vol_pos.saturating_add(n as u64);
    }

    /// Fill `out` as far as the volume goes; returns the count.
    fn read_upto(&mut self, out: &mut [u8]) -> Result<usize> {
        let mut got = 0;
        while got < out.len() {
            let avail = self.available()?;
            if avail.is_empty() {
                break;
            }
            let n = avail.len().min(out.len() - got);
            if let (Some(dst), Some(src)) = (out.get_mut(got..got + n), avail.get(..n)) {
                dst.copy_from_slice(src);
            }
            self.consume(n);
            got += n;
        }
        Ok(got)
    }
}

/// The entry whose data is being read.
struct Data {
    path: Vec<u8>,
    size: u64,
    stored: u64,
    done: u64,
    /// Member bytes in the archive (PAX 1.0: map block + stored), for the padding.
    member: u64,
    map: Option<Vec<(u64, u64)>>,
    run: usize,
    run_pos: u64,
    /// `done` when the current volume was opened by a continuation.
    done_at_switch: Option<u64>,
}

enum State {
    Headers,
    Data(Box<Data>),
    Done,
    Failed(Error),
}

/// Extension headers collected before the entry they describe (TAR-4, TAR-5).
#[derive(Default)]
struct Meta {
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
    pax: Option<PaxValues>,
}

impl Meta {
    fn is_empty(&self) -> bool {
        self.long_name.is_none() && self.long_link.is_none() && self.pax.is_none()
    }
}

pub(super) struct Core<R, I> {
    input: Input<R>,
    /// Further volumes (multi-volume mode only).
    more: Option<I>,
    peeked: Option<R>,
    volumes: u64,
    /// Nothing but `V` labels read yet from a volume after the first.
    vol_start: bool,
    state: State,
    entries: u64,
    /// TAR-7: name keys of the regular entries so far (at most LIM-13, 16 bytes each).
    regular_names: HashSet<[u8; 16]>,
}

/// TAR-7: a fixed-size key for an entry name, `.` components dropped (NAME-4) so that a
/// link target and the entry it names compare equal however GNU tar spelled them.
fn name_key(path: &[u8]) -> [u8; 16] {
    let normal = crate::paths::validate_relative(path, crate::paths::DotComponents::Drop);
    let digest = match &normal {
        Ok(p) => Sha256::digest(p.as_bytes()),
        Err(_) => Sha256::digest(path),
    };
    let mut key = [0u8; 16];
    key.copy_from_slice(digest.get(..16).unwrap_or(&[0u8; 16]));
    key
}

/// TAR-9: sorted, non-overlapping, inside the real size, lengths summing to `stored`.
fn validate_map(map: &[(u64, u64)], realsize: u64, stored: u64) -> Result<()> {
    if map.len() > MAX_SPARSE_ENTRIES {
        bail!(
            LimitExceeded,
            "more than {MAX_SPARSE_ENTRIES} sparse entries"
        );
    }
    let mut end = 0u64;
    let mut sum = 0u64;
    for &(off, len) in map {
        if off < end {
            bail!(Malformed, "sparse map entries overlap or are not sorted");
        }
        end = off
            .checked_add(len)
            .ok_or_else(|| Error::malformed("sparse map entry overflows"))?;
        if end > realsize {
            bail!(
                Malformed,
                "sparse map entry ends at {end}, past the real size {realsize}"
            );
        }
        sum = sum
            .checked_add(len)
            .ok_or_else(|| Error::malformed("sparse map overflows"))?;
    }
    if sum != stored {
        bail!(
            Malformed,
            "sparse map covers {sum} bytes, the entry stores {stored}"
        );
    }
    Ok(())
}

/// Old-GNU sparse pairs (TAR-2): `n` pairs of 12-byte octal fields from `start`.
fn take_pairs(
    b: &[u8; BLOCK],
    start: usize,
    n: usize,
    map: &mut Vec<(u64, u64)>,
    ended: &mut bool,
) -> Result<()> {
    for i in 0..n {
        let p = start + i * 24;
        let (Some(off), Some(len)) = (b.get(p..p + 12), b.get(p + 12..p + 24)) else {
            bail!(Malformed, "sparse pair out of block");
        };
        let (o0, l0) = (off.first() == Some(&0), len.first() == Some(&0));
        if o0 && l0 {
            if !is_zero(off) || !is_zero(len) {
                bail!(Malformed, "garbage in an unused GNU sparse pair");
            }
            *ended = true;
            continue;
        }
        if *ended || o0 || l0 {
            bail!(Malformed, "GNU sparse pair after the end of the map");
        }
        if map.len() >= MAX_SPARSE_ENTRIES {
            bail!(
                LimitExceeded,
                "more than {MAX_SPARSE_ENTRIES} sparse entries"
            );
        }
        map.push((
            parse_u64(off, "sparse offset")?,
            parse_u64(len, "sparse numbytes")?,
        ));
    }
    Ok(())
}

fn flag(b: u8) -> Result<bool> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        _ => bail!(Malformed, "GNU sparse isextended flag is {b}"),
    }
}

/// Does a GNU `M` header name the entry `path`? GNU truncates it to the 100-byte field.
fn m_name_matches(m: &RawHeader, path: &[u8]) -> bool {
    m.name == path || (m.name_field_full && path.len() > 100 && path.starts_with(&m.name))
}

impl<R: Read, I: Iterator<Item = R>> Core<R, I> {
    pub(super) fn new(first: R, more: Option<I>) -> Self {
        Core {
            input: Input::new(first),
            more,
            peeked: None,
            volumes: 1,
            vol_start: false,
            state: State::Headers,
            entries: 0,
            regular_names: HashSet::new(),
        }
    }

    pub(super) fn into_inner(self) -> R {
        self.input.cur
    }

    pub(super) fn volumes_used(&self) -> u64 {
        self.volumes
    }

    pub(super) fn next_entry(&mut self) -> Result<Option<Entry>> {
        match &self.state {
            State::Failed(e) => return Err(e.clone()),
            State::Done => return Ok(None),
            _ => {}
        }
        let r = self.pump(&mut Discard).and_then(|()| self.read_headers());
        if let Err(e) = &r {
            self.state = State::Failed(e.clone());
        }
        r
    }

    pub(super) fn read_data(&mut self, sink: &mut dyn DataSink) -> Result<()> {
        if let State::Failed(e) = &self.state {
            return Err(e.clone());
        }
        let r = self.pump(sink);
        if let Err(e) = &r {
            self.state = State::Failed(e.clone());
        }
        r
    }

    pub(super) fn finish(mut self) -> Result<()> {
        match &self.state {
            State::Done => {}
            State::Failed(e) => return Err(e.clone()),
            _ => bail!(
                Malformed,
                "multi-volume tar: finish before the end of the archive"
            ),
        }
        if self.has_next_volume() {
            bail!(
                Malformed,
                "multi-volume tar: a volume follows the end of the archive"
            );
        }
        Ok(())
    }

    fn has_next_volume(&mut self) -> bool {
        if self.peeked.is_none() {
            self.peeked = self.more.as_mut().and_then(Iterator::next);
        }
        self.peeked.is_some()
    }

    /// EOF inside a header set: Unsupported if the set continues in another volume.
    fn eof_error(&mut self, what: &str) -> Error {
        if self.has_next_volume() {
            Error::unsupported(format!("{what} split across tar volumes"))
        } else {
            Error::truncated(format!("inner tar ends inside {what}"))
        }
    }

    fn switch_volume(&mut self) -> Result<()> {
        if self.input.vol_pos % BLOCK_U64 != 0 {
            bail!(Truncated, "tar volume {} ends inside a block", self.volumes);
        }
        let next = self.peeked.take().or_else(|| self.more.as_mut()?.next());
        let Some(next) = next else {
            bail!(
                Truncated,
                "inner tar ends after volume {} without an end marker",
                self.volumes
            );
        };
        self.input.replace(next);
        self.volumes = self.volumes.saturating_add(1);
        self.vol_start = true;
        Ok(())
    }

    fn count(&mut self) -> Result<()> {
        self.entries += 1;
        if self.entries > MAX_INNER_ENTRIES {
            bail!(
                LimitExceeded,
                "more than {MAX_INNER_ENTRIES} inner tar entries"
            );
        }
        Ok(())
    }

    fn read_block(&mut self, what: &str) -> Result<[u8; BLOCK]> {
        let mut b = [0u8; BLOCK];
        if self.input.read_upto(&mut b)? < BLOCK {
            return Err(self.eof_error(what));
        }
        Ok(b)
    }

    /// TAR-8: the padding after `len` data bytes must be zero bytes.
    fn skip_padding(&mut self, len: u64) -> Result<()> {
        let pad = padding(len) as usize;
        let mut b = [0u8; BLOCK];
        let Some(p) = b.get_mut(..pad) else {
            bail!(Malformed, "padding");
        };
        if self.input.read_upto(p)? < pad {
            bail!(Truncated, "inner tar ends inside entry padding");
        }
        if !is_zero(p) {
            bail!(
                Malformed,
                "non-zero padding after an inner tar entry (TAR-8)"
            );
        }
        Ok(())
    }

    /// Read a whole extension member of `size` bytes (≤ `limit`) and its padding.
    fn read_member(&mut self, size: u64, limit: u64, what: &str) -> Result<Vec<u8>> {
        if size > limit {
            bail!(LimitExceeded, "{what} of {size} bytes exceeds {limit}");
        }
        let mut out = Vec::new();
        let mut left = size;
        while left > 0 {
            let avail = self.input.available()?;
            if avail.is_empty() {
                return Err(self.eof_error(what));
            }
            let n = avail.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            out.extend_from_slice(avail.get(..n).unwrap_or(&[]));
            self.input.consume(n);
            left -= n as u64;
        }
        self.skip_padding(size)?;
        Ok(out)
    }

    /// Stream (or skip) the rest of the current entry's data, then its padding.
    fn pump(&mut self, sink: &mut dyn DataSink) -> Result<()> {
        let State::Data(mut d) = mem::replace(&mut self.state, State::Headers) else {
            return Ok(());
        };
        let d: &mut Data = &mut d;
        while d.done < d.stored {
            let have = self.input.available()?.len();
            if have == 0 {
                self.continue_volume(d)?;
                continue;
            }
            let (off, run_left) = match &d.map {
                None => (d.done, d.stored - d.done),
                Some(map) => loop {
                    let Some(&(o, l)) = map.get(d.run) else {
                        bail!(Malformed, "sparse map shorter than the stored data");
                    };
                    if d.run_pos < l {
                        let off = o
                            .checked_add(d.run_pos)
                            .ok_or_else(|| Error::malformed("sparse offset overflow"))?;
                        break (off, l - d.run_pos);
                    }
                    d.run += 1;
                    d.run_pos = 0;
                },
            };
            let n = (have as u64).min(run_left).min(d.stored - d.done);
            let n = usize::try_from(n).unwrap_or(have);
            let avail = self.input.available()?;
            sink.data(off, avail.get(..n).unwrap_or(&[]))?;
            self.input.consume(n);
            d.done += n as u64;
            d.run_pos += n as u64;
        }
        self.skip_padding(d.member)
    }

    /// The current volume ended inside `d`'s data: open the next one and check its `M`
    /// header (TAR-10).
    fn continue_volume(&mut self, d: &mut Data) -> Result<()> {
        if self.more.is_none() {
            bail!(Truncated, "inner tar ends inside the data of an entry");
        }
        if d.done_at_switch == Some(d.done) {
            bail!(
                Malformed,
                "tar volume {} holds no data of the continued file",
                self.volumes
            );
        }
        self.switch_volume()?;
        d.done_at_switch = Some(d.done);
        let blk = self.read_block("a continuation header")?;
        if is_zero(&blk) {
            bail!(
                Malformed,
                "tar volume {} does not continue the interrupted file",
                self.volumes
            );
        }
        let h = parse_header(&blk)?;
        match h.typeflag {
            b'V' => bail!(Unsupported, "GNU volume label (TAR-1)"),
            b'M' => {
                self.vol_start = false;
                let remaining = d.stored - d.done;
                if !m_name_matches(&h, &d.path) {
                    bail!(
                        Malformed,
                        "tar volume {} continues another file",
                        self.volumes
                    );
                }
                if h.size != remaining {
                    bail!(
                        Malformed,
                        "continuation header says {} bytes remain, {remaining} do",
                        h.size
                    );
                }
                let offset = num_at(&blk, 369, 12, "continuation offset")?;
                if d.size.checked_sub(remaining) != Some(offset) {
                    bail!(
                        Malformed,
                        "continuation header offset {offset} out of sequence"
                    );
                }
                Ok(())
            }
            _ => bail!(
                Malformed,
                "tar volume {} does not start with a continuation header",
                self.volumes
            ),
        }
    }

    /// TAR-8: after the first zero block only zero bytes may follow, at most LIM-23 of
    /// them, and the stream may end anywhere (tarwriter does not pad its last run, TAR-3).
    fn end_of_archive(&mut self) -> Result<()> {
        let mut total = 0u64;
        loop {
            let avail = self.input.available()?;
            if avail.is_empty() {
                return Ok(());
            }
            if !is_zero(avail) {
                bail!(
                    Malformed,
                    "non-zero bytes after the inner tar's end-of-archive block"
                );
            }
            total = total.saturating_add(avail.len() as u64);
            if total > MAX_TAR_TRAILING_ZERO_BYTES {
                bail!(
                    LimitExceeded,
                    "more than {MAX_TAR_TRAILING_ZERO_BYTES} zero bytes after the inner tar's \
                     end-of-archive block (LIM-23)"
                );
            }
            let n = avail.len();
            self.input.consume(n);
        }
    }

    fn read_headers(&mut self) -> Result<Option<Entry>> {
        let mut meta = Meta::default();
        let mut pending_m: Option<RawHeader> = None;
        loop {
            let mut blk = [0u8; BLOCK];
            let n = self.input.read_upto(&mut blk)?;
            if n == 0 && self.more.is_some() && meta.is_empty() && pending_m.is_none() {
                self.switch_volume()?;
                continue;
            }
            if n < BLOCK {
                if n == 0 && (!meta.is_empty() || pending_m.is_some()) {
                    return Err(self.eof_error("an entry's header set"));
                }
                bail!(Truncated, "inner tar ends without an end-of-archive marker");
            }
            let at_vol_start = mem::replace(&mut self.vol_start, false);
            if is_zero(&blk) {
                if !meta.is_empty() || pending_m.is_some() {
                    bail!(Malformed, "end of archive right after an extended header");
                }
                self.end_of_archive()?;
                self.state = State::Done;
                return Ok(None);
            }
            let h = parse_header(&blk)?;
            match h.typeflag {
                b'g' => {
                    self.count()?;
                    let data =
                        self.read_member(h.size, MAX_TAR_EXTENSION_LEN, "pax global header")?;
                    super::pax::for_each_record(&data, |_, _| Ok(()))?;
                }
                b'x' => {
                    if meta.pax.is_some() {
                        bail!(Malformed, "two pax headers for one entry");
                    }
                    let data = self.read_member(h.size, MAX_TAR_EXTENSION_LEN, "pax header")?;
                    meta.pax = Some(PaxValues::parse(&data)?);
                }
                b'L' | b'K' => {
                    let limit = (MAX_PATH_LEN as u64 + 1).min(MAX_TAR_EXTENSION_LEN);
                    let data = self.read_member(h.size, limit, "GNU long name")?;
                    let name = cstr(&data);
                    if name.is_empty() || !is_zero(data.get(name.len()..).unwrap_or(&[])) {
                        bail!(
                            Malformed,
                            "GNU long name is empty or has bytes after its NUL"
                        );
                    }
                    let slot = if h.typeflag == b'L' {
                        &mut meta.long_name
                    } else {
                        &mut meta.long_link
                    };
                    if slot.replace(name.to_vec()).is_some() {
                        bail!(Malformed, "two GNU long names for one entry");
                    }
                }
                b'M' => {
                    if self.more.is_none() {
                        bail!(
                            Unsupported,
                            "GNU multi-volume continuation in a single-volume inner tar"
                        );
                    }
                    if !at_vol_start || !meta.is_empty() || pending_m.is_some() {
                        bail!(
                            Malformed,
                            "continuation header not at the start of a volume"
                        );
                    }
                    if num_at(&blk, 369, 12, "continuation offset")? != 0 {
                        bail!(Malformed, "continuation of a file that was not interrupted");
                    }
                    pending_m = Some(h);
                }
                _ => {
                    let entry = self.build_entry(&blk, h, meta)?;
                    if let Some(m) = pending_m {
                        if !m_name_matches(&m, &entry.path)
                            || (m.size != entry.stored && m.size != entry.size)
                        {
                            bail!(
                                Malformed,
                                "continuation header does not match the next entry"
                            );
                        }
                    }
                    return Ok(Some(entry));
                }
            }
        }
    }

    fn read_old_sparse_map(&mut self, blk: &[u8; BLOCK]) -> Result<Vec<(u64, u64)>> {
        let mut map = Vec::new();
        let mut ended = false;
        take_pairs(blk, 386, 4, &mut map, &mut ended)?;
        let mut ext = flag(blk[482])?;
        while ext {
            if ended {
                bail!(Malformed, "GNU sparse extension after the end of the map");
            }
            let b = self.read_block("a GNU sparse extension block")?;
            take_pairs(&b, 0, 21, &mut map, &mut ended)?;
            ext = flag(b[504])?;
        }
        Ok(map)
    }

    fn map_byte(&mut self, used: &mut u64, member: u64) -> Result<u8> {
        if *used >= member {
            bail!(Malformed, "PAX 1.0 sparse map runs past the entry data");
        }
        let b = self.input.available()?.first().copied();
        let Some(b) = b else {
            return Err(self.eof_error("a PAX 1.0 sparse map"));
        };
        self.input.consume(1);
        *used += 1;
        Ok(b)
    }

    fn map_number(&mut self, used: &mut u64, member: u64) -> Result<u64> {
        let mut digits = [0u8; 20];
        let mut n = 0;
        loop {
            let b = self.map_byte(used, member)?;
            if b == b'\n' {
                break;
            }
            let Some(slot) = digits.get_mut(n) else {
                bail!(Malformed, "PAX 1.0 sparse map number too long");
            };
            *slot = b;
            n += 1;
        }
        parse_dec(digits.get(..n).unwrap_or(&[]), "PAX 1.0 sparse map")
    }

    /// TAR-3: the decimal map at the start of a PAX 1.0 member; returns it and the bytes
    /// it takes (a multiple of 512).
    fn read_pax1_map(&mut self, member: u64) -> Result<(Vec<(u64, u64)>, u64)> {
        let mut used = 0u64;
        let count = self.map_number(&mut used, member)?;
        if count > MAX_SPARSE_ENTRIES as u64 {
            bail!(
                LimitExceeded,
                "more than {MAX_SPARSE_ENTRIES} sparse entries"
            );
        }
        let mut map = Vec::new();
        for _ in 0..count {
            let off = self.map_number(&mut used, member)?;
            let len = self.map_number(&mut used, member)?;
            map.push((off, len));
        }
        while used % BLOCK_U64 != 0 {
            if self.map_byte(&mut used, member)? != 0 {
                bail!(Malformed, "PAX 1.0 sparse map not padded with NUL");
            }
        }
        Ok((map, used))
    }

    fn build_entry(&mut self, blk: &[u8; BLOCK], h: RawHeader, meta: Meta) -> Result<Entry> {
        self.count()?;
        let pax = meta.pax.unwrap_or_default();
        let target = || {
            pax.linkpath
                .clone()
                .or(meta.long_link.clone())
                .unwrap_or(h.linkname.clone())
        };
        let kind = match h.typeflag {
            // TAR-1: `7` (contiguous file) is a regular file.
            b'0' | 0 | b'7' | b'S' => EntryKind::Regular,
            b'5' => EntryKind::Directory,
            b'2' => EntryKind::Symlink { target: target() },
            b'1' => EntryKind::HardLink { target: target() },
            t @ (b'3' | b'4' | b'6') => EntryKind::Other(t),
            t => bail!(Unsupported, "inner tar entry type {:?}", char::from(t)),
        };
        let mut path = pax.path.clone().or(meta.long_name).unwrap_or(h.name);
        let member = pax.size.unwrap_or(h.size);
        let (size, stored, map) = if h.typeflag == b'S' {
            if pax.is_sparse() {
                bail!(Malformed, "GNU sparse entry with pax sparse keys");
            }
            let realsize = num_at(blk, 483, 12, "sparse realsize")?;
            if realsize > MAX_FILE_SIZE {
                bail!(
                    LimitExceeded,
                    "file size {realsize} exceeds {MAX_FILE_SIZE}"
                );
            }
            (realsize, member, Some(self.read_old_sparse_map(blk)?))
        } else if pax.is_sparse() {
            if kind != EntryKind::Regular {
                bail!(Malformed, "pax sparse keys on a non-regular entry");
            }
            if let Some(n) = pax.sparse_name {
                path = n;
            }
            let Some(realsize) = pax.sparse_realsize else {
                bail!(Malformed, "pax sparse entry without GNU.sparse.realsize");
            };
            if realsize > MAX_FILE_SIZE {
                bail!(
                    LimitExceeded,
                    "file size {realsize} exceeds {MAX_FILE_SIZE}"
                );
            }
            match (pax.sparse_major, pax.sparse_minor) {
                (Some(1), Some(0)) => {
                    let (map, used) = self.read_pax1_map(member)?;
                    (realsize, member - used, Some(map))
                }
                // TAR-3: 0.0 and 0.1 (no major/minor) and other versions are unsupported.
                (major, minor) => bail!(
                    Unsupported,
                    "pax sparse format {}.{}",
                    major.unwrap_or(0),
                    minor.unwrap_or(0)
                ),
            }
        } else {
            (member, member, None)
        };
        if kind != EntryKind::Regular && member != 0 {
            bail!(Malformed, "a non-regular inner tar entry carries data");
        }
        if size > MAX_FILE_SIZE {
            bail!(LimitExceeded, "file size {size} exceeds {MAX_FILE_SIZE}");
        }
        if let Some(map) = &map {
            validate_map(map, size, stored)?;
        }
        if path.len() > MAX_PATH_LEN {
            bail!(
                LimitExceeded,
                "inner tar path longer than {MAX_PATH_LEN} bytes"
            );
        }
        match &kind {
            EntryKind::Regular => {
                self.regular_names.insert(name_key(&path));
            }
            EntryKind::HardLink { target } if !self.regular_names.contains(&name_key(target)) => {
                bail!(
                    Malformed,
                    "hard link {} names no earlier regular entry (TAR-7)",
                    crate::paths::escape(&path)
                );
            }
            _ => {}
        }
        let entry = Entry {
            path: path.clone(),
            kind,
            size,
            stored,
            sparse: map.clone().map(|entries| SparseMap { entries }),
            mode: h.mode,
            mtime: pax.mtime.or(h.mtime),
            uid: pax.uid.unwrap_or(h.uid),
            gid: pax.gid.unwrap_or(h.gid),
        };
        self.state = State::Data(Box::new(Data {
            path,
            size,
            stored,
            done: 0,
            member,
            map,
            run: 0,
            run_pos: 0,
            done_at_switch: None,
        }));
        Ok(entry)
    }
}
