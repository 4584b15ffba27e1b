//! The producer side (the unprivileged verifier): one method per record, each checked by
//! the shared state machine before a byte is written, so a stream this encoder accepts
//! is one the decoder accepts.

use std::io::Write;

use sha2::{Digest as _, Sha256};

use super::codec::{self, HEADER_LEN};
use super::state::Checker;
use super::{record_type as t, Begin, Manifest, RecordDigest, Summary, VmConfig, VmEnd, VERSION};
use crate::error::{Error, ErrorClass, Result};
use crate::limits::{MAX_PROTO_DATA_LEN, MAX_PROTO_MESSAGE_LEN};

/// Header and offset field of a data record, ahead of its bytes in [`Encoder::pending`].
const DATA_HEAD: usize = HEADER_LEN + codec::DATA_PREFIX;

/// Writes a protocol stream to `W`.
///
/// [`Encoder::new`] writes one data record per [`Encoder::data`] call (split at LIM-28).
/// [`Encoder::gathering`] gathers contiguous bytes into records of up to LIM-28 bytes
/// whatever the pieces it is given (the verifier's tar reader yields 64 KiB at a time), each
/// written in one write: the restore then reads 1 MiB records in two reads each instead of
/// 64 KiB ones in five (SPEC.md PROTO-6).
pub struct Encoder<W: Write> {
    out: W,
    checker: Checker,
    transcript: Sha256,
    hasher: Option<RecordDigest>,
    payload: Vec<u8>,
    /// The data record being gathered: header and offset space, then its bytes.
    pending: Vec<u8>,
    /// File offset of the pending bytes.
    pending_offset: u64,
    gather: bool,
    broken: bool,
}

impl<W: Write> Encoder<W> {
    pub fn new(out: W) -> Encoder<W> {
        Encoder {
            out,
            checker: Checker::new(),
            transcript: Sha256::new(),
            hasher: None,
            payload: Vec::new(),
            pending: Vec::new(),
            pending_offset: 0,
            gather: false,
            broken: false,
        }
    }

    /// An encoder that gathers file bytes into full-size data records (PROTO-6).
    pub fn gathering(out: W) -> Encoder<W> {
        Encoder {
            gather: true,
            ..Encoder::new(out)
        }
    }

    /// The underlying writer (e.g. to flush or close it), after the gathered data record
    /// (if any) was written to it.
    pub fn into_inner(mut self) -> W {
        let _ = self.flush_data();
        self.out
    }

    /// The underlying writer, e.g. to flush it.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.out
    }

    /// True after [`Encoder::summary`] or [`Encoder::error`]: the stream is complete.
    pub fn is_done(&self) -> bool {
        self.checker.is_done()
    }

    /// True between [`Encoder::begin`] and [`Encoder::end`].
    pub fn in_file(&self) -> bool {
        self.checker.in_file()
    }

    /// Usable, and the gathered data record written: every record but data starts here,
    /// so the file digest and the transcript see the data first.
    fn ready(&mut self) -> Result<()> {
        self.usable()?;
        self.flush_data()
    }

    fn usable(&self) -> Result<()> {
        if self.broken {
            return Err(Error::new(
                ErrorClass::Io,
                "protocol: stream broken by an earlier write error",
            ));
        }
        Ok(())
    }

    /// Writes header and payload; `hashed` bytes of the payload go into the transcript
    /// (all of it except the file bytes of data records, PROTO-8).
    fn emit(&mut self, record_type: u8, payload: &[&[u8]], hashed: usize) -> Result<()> {
        let len: usize = payload.iter().map(|p| p.len()).sum();
        let len32 = u32::try_from(len)
            .map_err(|_| Error::limit(format!("protocol: record of {len} bytes")))?;
        let mut header = [0u8; HEADER_LEN];
        header[0] = record_type;
        header[1..].copy_from_slice(&len32.to_be_bytes());
        if record_type != t::SUMMARY {
            self.transcript.update(header);
            let mut left = hashed;
            for p in payload {
                let n = left.min(p.len());
                self.transcript.update(&p[..n]);
                left -= n;
            }
        }
        let mut write = || -> std::io::Result<()> {
            self.out.write_all(&header)?;
            for p in payload {
                self.out.write_all(p)?;
            }
            Ok(())
        };
        write().map_err(|e| {
            self.broken = true;
            Error::new(ErrorClass::Io, format!("protocol: writing: {e}"))
        })
    }

    fn emit_payload(&mut self, record_type: u8) -> Result<()> {
        let payload = std::mem::take(&mut self.payload);
        let r = self.emit(record_type, &[&payload], payload.len());
        self.payload = payload;
        self.payload.clear();
        r
    }

    /// PROTO-1: the first record.
    pub fn hello(&mut self) -> Result<()> {
        self.ready()?;
        self.checker.hello(VERSION)?;
        self.payload.clear();
        codec::put_hello(&mut self.payload, VERSION);
        self.emit_payload(t::HELLO)
    }

    /// PROTO-3: exactly once, after hello.
    pub fn manifest(&mut self, m: &Manifest) -> Result<()> {
        self.ready()?;
        self.payload.clear();
        codec::put_manifest(&mut self.payload, m)?;
        if self.payload.len() > crate::limits::MAX_PROTO_MANIFEST_LEN {
            return Err(Error::limit(format!(
                "protocol: manifest of {} bytes exceeds LIM-29",
                self.payload.len()
            )));
        }
        self.checker.accept_manifest(m.clone())?;
        self.emit_payload(t::MANIFEST)
    }

    /// PROTO-14: the settings of manifest VM `vm`, once per VM in manifest order, right
    /// after the manifest.
    pub fn config(&mut self, vm: u32, c: &VmConfig) -> Result<()> {
        self.ready()?;
        self.payload.clear();
        codec::put_config(&mut self.payload, vm, c)?;
        if self.payload.len() > crate::limits::MAX_PROTO_CONFIG_LEN {
            return Err(Error::limit(format!(
                "protocol: config of {} bytes exceeds LIM-59",
                self.payload.len()
            )));
        }
        self.checker.config(vm, c)?;
        self.emit_payload(t::CONFIG)
    }

    /// PROTO-15: closes manifest VM `vm` after its files (if any).
    pub fn vm_end(&mut self, vm: u32, e: &VmEnd) -> Result<()> {
        self.ready()?;
        self.payload.clear();
        codec::put_vm_end(&mut self.payload, vm, e)?;
        if self.payload.len() > crate::limits::MAX_PROTO_VMEND_LEN {
            return Err(Error::limit(format!(
                "protocol: vmend of {} bytes exceeds LIM-60",
                self.payload.len()
            )));
        }
        self.checker.vm_end(vm, e)?;
        self.emit_payload(t::VM_END)
    }

    /// PROTO-4, PROTO-5: opens a file of a manifest VM.
    pub fn begin(&mut self, b: &Begin) -> Result<()> {
        self.ready()?;
        self.payload.clear();
        codec::put_begin(&mut self.payload, b)?;
        self.checker.begin(b)?;
        self.hasher = Some(RecordDigest::new(b.size, b.data_bytes));
        self.emit_payload(t::BEGIN)
    }

    /// PROTO-6: file bytes at `offset`, checked at once; records of at most LIM-28 bytes
    /// (gathering: with the bytes that precede them contiguously, written when full, when
    /// the next bytes are not contiguous, and before any other record); an empty slice
    /// writes nothing.
    pub fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        self.usable()?;
        let mut offset = offset;
        let mut rest = bytes;
        while !rest.is_empty() {
            let gathered = self.pending.len().saturating_sub(DATA_HEAD);
            let contiguous = self.pending_offset.checked_add(gathered as u64) == Some(offset);
            if gathered > 0 && (!contiguous || gathered == MAX_PROTO_DATA_LEN) {
                self.flush_data()?;
            }
            if self.pending.is_empty() {
                if self.gather {
                    // Once: `clear` keeps the capacity for every later record.
                    self.pending.reserve_exact(DATA_HEAD + MAX_PROTO_DATA_LEN);
                }
                self.pending.resize(DATA_HEAD, 0);
                self.pending_offset = offset;
            }
            let room = DATA_HEAD + MAX_PROTO_DATA_LEN - self.pending.len();
            let (piece, tail) = rest.split_at(room.min(rest.len()));
            self.checker.data(offset, piece.len())?;
            self.pending.extend_from_slice(piece);
            offset = offset.saturating_add(piece.len() as u64);
            rest = tail;
            if !self.gather {
                self.flush_data()?;
            }
        }
        Ok(())
    }

    /// Writes the gathered data record, if any, in one write (PROTO-6, PROTO-7).
    fn flush_data(&mut self) -> Result<()> {
        if self.pending.len() <= DATA_HEAD {
            return Ok(());
        }
        let len = self.pending.len() - HEADER_LEN;
        let len32 = u32::try_from(len)
            .map_err(|_| Error::limit(format!("protocol: record of {len} bytes")))?;
        self.pending[0] = t::DATA;
        self.pending[1..HEADER_LEN].copy_from_slice(&len32.to_be_bytes());
        self.pending[HEADER_LEN..DATA_HEAD].copy_from_slice(&self.pending_offset.to_be_bytes());
        if let Some(h) = &mut self.hasher {
            h.record(self.pending_offset, &self.pending[DATA_HEAD..]);
        }
        self.transcript.update(&self.pending[..DATA_HEAD]);
        let written = self.out.write_all(&self.pending);
        self.pending.clear();
        written.map_err(|e| {
            self.broken = true;
            Error::new(ErrorClass::Io, format!("protocol: writing: {e}"))
        })
    }

    /// PROTO-7: closes the file; returns the digest it sent ([`RecordDigest`] of the data
    /// records written).
    pub fn end(&mut self) -> Result<super::FileDigest> {
        self.ready()?;
        self.checker.end()?;
        let digest = self
            .hasher
            .take()
            .map(RecordDigest::finish)
            .unwrap_or_default();
        self.emit(t::END, &[&digest], digest.len())?;
        Ok(digest)
    }

    /// PROTO-8: the last record; totals and transcript are computed here.
    pub fn summary(&mut self) -> Result<Summary> {
        self.ready()?;
        let mut s = self.checker.totals();
        s.transcript = self.transcript.clone().finalize().into();
        self.checker.summary(&s)?;
        self.payload.clear();
        codec::put_summary(&mut self.payload, &s);
        self.emit_payload(t::SUMMARY)?;
        Ok(s)
    }

    /// PROTO-9: gives up. The message is made safe to send: control characters become
    /// `?` and it is cut to LIM-31 bytes.
    pub fn error(&mut self, class: ErrorClass, message: &str) -> Result<()> {
        self.ready()?;
        let mut clean = String::new();
        for c in message.chars() {
            let c = if c.is_control() { '?' } else { c };
            if clean.len() + c.len_utf8() > MAX_PROTO_MESSAGE_LEN {
                break;
            }
            clean.push(c);
        }
        self.checker.error(&clean)?;
        self.payload.clear();
        codec::put_error(&mut self.payload, class, &clean)?;
        self.emit_payload(t::ERROR)
    }
}
