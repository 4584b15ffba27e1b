//! The tar stream inside each backed-up file (SPEC.md TAR-1 … TAR-10).
//!
//! After decryption and decompression every backed-up file is a tar stream written by
//! GNU tar (`tar -Pc --sparse`, GNU format: old-GNU `S` sparse entries, `L`/`K` long
//! names, base-256 numbers), by Qubes' `qubes/tarwriter.py` (PAX 1.0 sparse with an
//! unpadded last data run), or, for v2, by `tar -M` as a GNU multi-volume set. The bytes
//! are authenticated but still untrusted: this reader is hand-written with bounded memory,
//! checked arithmetic and no panics. We do not use the `tar` crate: it has no PAX 1.0
//! sparse support and interleaves header parsing with reading, where we want the whole
//! header set (extension headers, sparse map) validated before any data is handed out.
//!
//! [`TarReader`] reads one stream; [`MultiVolumeReader`] reads a GNU multi-volume set fed
//! volume after volume (TAR-10). Both present entries through [`Entry`] and stream data
//! runs to a [`DataSink`] at their logical offsets (holes are implicit).
//!
//! Accepted: typeflags `0`/`\0`, `5`, `2`, `1`, `3`/`4`/`6` (as [`EntryKind::Other`]),
//! GNU `S` with extension blocks (TAR-2), `L`/`K` (TAR-4), pax `x` (`path`, `linkpath`,
//! `size`, `mtime`, `uid`, `gid`, TAR-5) and `g` (grammar checked, values ignored), `V`
//! labels at the start of a volume (skipped), `M` in multi-volume sets only; ustar and old
//! GNU magic, checksum unsigned or signed; octal or base-256 numbers (TAR-6); PAX sparse
//! 1.0 (TAR-3, map in the data), 0.1 (`GNU.sparse.map`) and 0.0 (`offset`/`numbytes`).
//! Anything else is Unsupported.
//!
//! Stricter than GNU tar (one reading for every byte sequence): at most one `x`, one `L`
//! and one `K` header per entry; non-regular entries carry no data; a lone zero block is
//! Malformed; GNU sparse pairs after the end of the map, and a PAX 1.0 map not padded
//! with NUL, are Malformed; only a PAX 1.0 sparse entry may lack its final padding, and
//! only when the two end blocks follow it directly (tarwriter's quirk, TAR-3, TAR-8).
//!
//! Memory: a 64 KiB buffer, one extension header (≤ `MAX_TAR_EXTENSION_LEN`), and the
//! current sparse map twice (reader and [`Entry`], 16 bytes per entry, ≤
//! `MAX_SPARSE_ENTRIES`), grown as entries are read, never sized from a count.

pub(crate) mod header;
pub(crate) mod pax;
mod reader;

#[cfg(test)]
mod tests;

use std::io::Read;

use crate::error::Result;
use reader::Core;

/// Receives the stored data runs of an entry, in increasing offset order.
pub trait DataSink {
    /// `bytes` belong at logical `offset` of the file; `offset + bytes.len() <= size`.
    fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<()>;
}

impl<F: FnMut(u64, &[u8]) -> Result<()>> DataSink for F {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        self(offset, bytes)
    }
}

/// A sink that drops the data (the reader still checks the stream's structure).
#[derive(Debug, Default, Clone, Copy)]
pub struct Discard;

impl DataSink for Discard {
    fn data(&mut self, _offset: u64, _bytes: &[u8]) -> Result<()> {
        Ok(())
    }
}

/// What an entry is (TAR-1, TAR-7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// `0`, `\0`, GNU `S` sparse, or pax-sparse regular file.
    Regular,
    /// `5`.
    Directory,
    /// `2`, with the raw target.
    Symlink { target: Vec<u8> },
    /// `1`, with the raw target path.
    HardLink { target: Vec<u8> },
    /// `3` (char device), `4` (block device), `6` (fifo): reported, carry no data.
    Other(u8),
}

/// The holes-and-data layout of a sparse file (TAR-9): `(offset, len)` data runs, sorted,
/// non-overlapping, within the logical size; zero-length runs (such as GNU's final
/// `(size, 0)`) are kept as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseMap {
    pub entries: Vec<(u64, u64)>,
}

/// One entry, with every extended header (GNU `L`/`K`, pax `x`) applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Raw name after GNU long name / pax `path` / `GNU.sparse.name`; NOT validated.
    pub path: Vec<u8>,
    pub kind: EntryKind,
    /// Logical size of the file (a sparse file's real size).
    pub size: u64,
    /// Data bytes stored in the archive (for PAX 1.0 sparse, without the map block).
    pub stored: u64,
    /// `None` for dense files.
    pub sparse: Option<SparseMap>,
    pub mode: u32,
    /// `None` when the header has no mtime (empty field).
    pub mtime: Option<i64>,
    pub uid: u64,
    pub gid: u64,
}

/// A streaming reader of one tar stream (TAR-1 … TAR-9). A GNU `M` continuation header
/// is Unsupported here; use [`MultiVolumeReader`].
pub struct TarReader<R: Read> {
    core: Core<R, std::iter::Empty<R>>,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> Self {
        TarReader {
            core: Core::new(inner, None),
        }
    }

    /// Next entry header; skips any unread data of the previous entry. `Ok(None)` at the end
    /// of archive (two zero blocks, TAR-8), after checking that everything after it is zero
    /// padding (at most [`crate::limits::MAX_TAR_TRAILING_ZERO_BYTES`]). EOF without the
    /// end marker is Truncated. After an error every call returns that error again.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        self.core.next_entry()
    }

    /// Stream the current entry's stored data runs to `sink`, in increasing offset order, in
    /// slices of at most 64 KiB. Does nothing if the data was already read.
    pub fn read_data(&mut self, sink: &mut dyn DataSink) -> Result<()> {
        self.core.read_data(sink)
    }

    pub fn into_inner(self) -> R {
        self.core.into_inner()
    }
}

/// A GNU multi-volume tar set (TAR-10, format v2), read from `volumes` in order: a volume is
/// requested when the previous one reaches EOF before the end-of-archive marker.
///
/// What GNU tar 1.34 writes and this reader accepts:
/// * a non-final volume simply stops (no end marker) at a block boundary;
/// * a volume that starts inside a file's data begins with an `M` header (optionally after
///   a `V` label): no magic, the name (GNU truncates it to 100 bytes), `size` = stored bytes
///   still to come, `offset` (byte 369) = logical size − remaining (for sparse files GNU
///   uses the real size in that formula too). All three are checked;
/// * a volume that starts at an entry boundary may begin with an `M` header of offset 0
///   for the entry whose header follows; its name and size are checked against it;
/// * old-GNU sparse files continue across volumes like dense ones (the data runs follow
///   the map read in the first volume).
///
/// Unsupported: a volume boundary inside a header set (a `L`/`K`/`x` header and its entry,
/// a sparse extension block, or a PAX 1.0 map).
pub struct MultiVolumeReader<I: Iterator>
where
    I::Item: Read,
{
    core: Core<I::Item, I>,
}

impl<I: Iterator> MultiVolumeReader<I>
where
    I::Item: Read,
{
    /// Start with the first volume of `volumes`; Truncated if there is none.
    pub fn new(mut volumes: I) -> Result<Self> {
        let Some(first) = volumes.next() else {
            crate::bail!(Truncated, "multi-volume tar: no volume");
        };
        Ok(MultiVolumeReader {
            core: Core::new(first, Some(volumes)),
        })
    }

    /// As [`TarReader::next_entry`], moving on to the next volume where needed.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        self.core.next_entry()
    }

    /// As [`TarReader::read_data`], following the data into later volumes.
    pub fn read_data(&mut self, sink: &mut dyn DataSink) -> Result<()> {
        self.core.read_data(sink)
    }

    /// Volumes opened so far (1 for the first).
    pub fn volumes_used(&self) -> u64 {
        self.core.volumes_used()
    }

    /// After `next_entry` returned `Ok(None)`: Malformed if `volumes` still has a volume
    /// (data after the end of the set).
    pub fn finish(self) -> Result<()> {
        self.core.finish()
    }
}

/// Either reader, as a stream of entries (one walk serves single- and multi-volume tars).
pub trait EntrySource {
    fn next_entry(&mut self) -> Result<Option<Entry>>;
    fn read_data(&mut self, sink: &mut dyn DataSink) -> Result<()>;
}

impl<R: Read> EntrySource for TarReader<R> {
    fn next_entry(&mut self) -> Result<Option<Entry>> {
        TarReader::next_entry(self)
    }
    fn read_data(&mut self, sink: &mut dyn DataSink) -> Result<()> {
        TarReader::read_data(self, sink)
    }
}

impl<I: Iterator> EntrySource for MultiVolumeReader<I>
where
    I::Item: Read,
{
    fn next_entry(&mut self) -> Result<Option<Entry>> {
        MultiVolumeReader::next_entry(self)
    }
    fn read_data(&mut self, sink: &mut dyn DataSink) -> Result<()> {
        MultiVolumeReader::read_data(self, sink)
    }
}
