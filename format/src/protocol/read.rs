//! The consumer side (the privileged restore). Every byte is hostile: record lengths are
//! bounded per type before anything is buffered (PROTO-2), payloads are parsed exactly,
//! and each record passes the state machine before it is returned. The decoder hashes
//! every file itself and refuses an `end` whose digest differs (PROTO-7), so a returned
//! [`Record::End`] means the file is complete and intact.

use std::io::Read;

use sha2::{Digest as _, Sha256};

use super::codec::{self, Cursor, DATA_PREFIX, HEADER_LEN};
use super::state::Checker;
use super::{record_type as t, Manifest, Record, RecordDigest};
use crate::error::{Error, ErrorClass, Result};
use crate::limits::MAX_PROTO_DATA_LEN;

/// Reads a protocol stream from `R`, one checked [`Record`] at a time.
pub struct Decoder<R: Read> {
    input: R,
    checker: Checker,
    transcript: Sha256,
    /// Holds the current record's payload in `..len`; grows with bytes actually
    /// received, never beyond the per-type bound (LIM-28, LIM-29), and is reused from
    /// record to record.
    buf: Vec<u8>,
    len: usize,
    /// The open file's digest so far (PROTO-7).
    hasher: Option<RecordDigest>,
    failed: bool,
    ended: bool,
}

impl<R: Read> Decoder<R> {
    pub fn new(input: R) -> Decoder<R> {
        Decoder {
            input,
            checker: Checker::new(),
            transcript: Sha256::new(),
            buf: Vec::new(),
            len: 0,
            hasher: None,
            failed: false,
            ended: false,
        }
    }

    /// The accepted manifest (empty before the manifest record).
    pub fn manifest(&self) -> &Manifest {
        self.checker.manifest()
    }

    /// The next record, or `None` once the stream ended cleanly: a summary or error
    /// record followed by end of input. Any failure is final.
    pub fn read_record(&mut self) -> Result<Option<Record<'_>>> {
        if self.failed {
            return Err(Error::malformed("protocol: decoder failed earlier"));
        }
        if self.ended {
            return Ok(None);
        }
        match self.step() {
            Ok(Some(kind)) => Ok(Some(self.record(kind)?)),
            Ok(None) => {
                self.ended = true;
                Ok(None)
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
    }

    /// Reads the header; `Ok(false)` on end of input exactly at a record boundary.
    fn read_header(&mut self) -> Result<Option<[u8; HEADER_LEN]>> {
        let mut header = [0u8; HEADER_LEN];
        let mut got = 0;
        while got < HEADER_LEN {
            let Some(slot) = header.get_mut(got..) else {
                break;
            };
            match self.input.read(slot) {
                Ok(0) if got == 0 => return Ok(None),
                Ok(0) => {
                    return Err(Error::truncated(
                        "protocol: stream ends inside a record header",
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::from_read(e, "protocol: reading")),
            }
        }
        Ok(Some(header))
    }

    /// Reads and checks one record, leaving its payload in `buf`; returns the pending
    /// record kind, or `None` at a clean end.
    fn step(&mut self) -> Result<Option<Pending>> {
        if self.checker.is_done() {
            // PROTO-10: end of input must follow the last record.
            let mut byte = [0u8; 1];
            loop {
                return match self.input.read(&mut byte) {
                    Ok(0) => Ok(None),
                    Ok(_) => Err(Error::malformed("protocol: bytes after the last record")),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(Error::from_read(e, "protocol: reading")),
                };
            }
        }
        let Some(header) = self.read_header()? else {
            return Err(Error::truncated(
                "protocol: stream ended before its summary",
            ));
        };
        let [record_type, l0, l1, l2, l3] = header;
        let untrusted_len = u32::from_be_bytes([l0, l1, l2, l3]);
        let Some((min, max)) = codec::length_bounds(record_type) else {
            return Err(Error::malformed(format!(
                "protocol: unknown record type {record_type:#04x}"
            )));
        };
        let len = usize::try_from(untrusted_len).unwrap_or(usize::MAX);
        if min == max && len != min {
            return Err(Error::malformed(format!(
                "protocol: record type {record_type:#04x} of {len} bytes, not {min}"
            )));
        }
        if len > max {
            return Err(Error::limit(format!(
                "protocol: record type {record_type:#04x} of {untrusted_len} bytes exceeds {max}"
            )));
        }
        if len < min {
            return Err(Error::malformed(format!(
                "protocol: record type {record_type:#04x} of {len} bytes is shorter than {min}"
            )));
        }
        // The payload is read straight into `buf`, in as few reads as the pipe allows;
        // `buf` grows (to twice what arrived, at least 64 KiB) only when the bytes received
        // filled it.
        let mut got = 0;
        while got < len {
            if got == self.buf.len() {
                self.buf
                    .resize(got.saturating_mul(2).max(64 << 10).min(len), 0);
            }
            let end = len.min(self.buf.len());
            let Some(slot) = self.buf.get_mut(got..end) else {
                break;
            };
            match self.input.read(slot) {
                Ok(0) => {
                    return Err(Error::truncated(format!(
                        "protocol: stream ends {got} bytes into a record of {len}"
                    )))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::from_read(e, "protocol: reading")),
            }
        }
        self.len = len;
        let hashed = if record_type == t::DATA {
            DATA_PREFIX
        } else {
            len
        };
        let pending = self.check(record_type)?;
        if record_type != t::SUMMARY {
            self.transcript.update(header);
            self.transcript
                .update(self.buf.get(..hashed.min(self.len)).unwrap_or(&[]));
        }
        Ok(Some(pending))
    }

    /// Parses the payload in `buf` and runs it through the state machine.
    fn check(&mut self, record_type: u8) -> Result<Pending> {
        let mut c = Cursor::new(self.buf.get(..self.len).unwrap_or(&[]));
        let pending = match record_type {
            t::HELLO => {
                let version = codec::get_hello(&mut c)?;
                c.finish()?;
                self.checker.hello(version)?;
                Pending::Hello(version)
            }
            t::MANIFEST => {
                let m = codec::get_manifest(&mut c)?;
                c.finish()?;
                self.checker.accept_manifest(m)?;
                Pending::Manifest
            }
            t::CONFIG => {
                let (vm, config) = codec::get_config(&mut c)?;
                c.finish()?;
                self.checker.config(vm, &config)?;
                Pending::Config(vm, config)
            }
            t::VM_END => {
                let (vm, end) = codec::get_vm_end(&mut c)?;
                c.finish()?;
                self.checker.vm_end(vm, &end)?;
                Pending::VmEnd(vm, end)
            }
            t::BEGIN => {
                let b = codec::get_begin(&mut c)?;
                c.finish()?;
                self.checker.begin(&b)?;
                self.hasher = Some(RecordDigest::new(b.size, b.data_bytes));
                Pending::Begin(b)
            }
            t::DATA => {
                let offset = c.u64()?;
                let bytes = c.rest();
                debug_assert!(bytes.len() <= MAX_PROTO_DATA_LEN);
                self.checker.data(offset, bytes.len())?;
                if let Some(h) = self.hasher.as_mut() {
                    h.record(offset, bytes);
                }
                Pending::Data(offset)
            }
            t::END => {
                let digest = c.file_digest()?;
                c.finish()?;
                self.checker.end()?;
                let got = self.hasher.take().map(RecordDigest::finish);
                if got != Some(digest) {
                    return Err(Error::mac(
                        "protocol: file digest in end record differs from the data received",
                    ));
                }
                Pending::End(digest)
            }
            t::SUMMARY => {
                let s = codec::get_summary(&mut c)?;
                c.finish()?;
                let want: [u8; 32] = self.transcript.clone().finalize().into();
                if s.transcript != want {
                    return Err(Error::malformed(
                        "protocol: summary transcript does not match the records received",
                    ));
                }
                self.checker.summary(&s)?;
                Pending::Summary(s)
            }
            t::ERROR => {
                let (class, message) = codec::get_error(&mut c)?;
                c.finish()?;
                self.checker.error(&message)?;
                Pending::Error(class, message)
            }
            other => {
                return Err(Error::malformed(format!(
                    "protocol: unknown record type {other:#04x}"
                )))
            }
        };
        Ok(pending)
    }

    fn record(&self, pending: Pending) -> Result<Record<'_>> {
        Ok(match pending {
            Pending::Hello(version) => Record::Hello { version },
            Pending::Manifest => Record::Manifest(self.checker.manifest()),
            Pending::Config(vm, config) => Record::Config { vm, config },
            Pending::VmEnd(vm, end) => Record::VmEnd { vm, end },
            Pending::Begin(b) => Record::Begin(b),
            Pending::Data(offset) => Record::Data {
                offset,
                bytes: self.buf.get(DATA_PREFIX..self.len).unwrap_or(&[]),
            },
            Pending::End(digest) => Record::End { digest },
            Pending::Summary(s) => Record::Summary(s),
            Pending::Error(class, message) => Record::Error { class, message },
        })
    }
}

/// A record checked but not yet handed out (its borrowed parts live in the decoder).
enum Pending {
    Hello(u16),
    Manifest,
    Config(u32, super::VmConfig),
    VmEnd(u32, super::VmEnd),
    Begin(super::Begin),
    Data(u64),
    End(super::FileDigest),
    Summary(super::Summary),
    Error(ErrorClass, String),
}
