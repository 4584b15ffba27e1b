//! The ledger (SPEC.md AUD-4): one record per archive version, in a local directory or
//! in object storage. Every write merges with what is stored ([`Record::merge`]) under a
//! lock (directory) or a conditional put (S3), so concurrent shards never lose or corrupt
//! a record; a record is written whole or not at all, right after its archive, so a
//! crash loses at most the archives in flight.

mod dir;
mod object;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::record::Record;
use crate::s3::{S3Url, Storage};

pub use dir::DirLedger;
pub use object::ObjectLedger;

/// A ledger record is at most this long (LIM-65): a real one is about 2 KiB; an object
/// ledger can be written by anyone who can write its bucket.
pub const MAX_RECORD_BYTES: u64 = 1 << 20;

/// Records by key.
pub type Records = HashMap<String, Record>;

/// Where the records live.
pub enum Ledger {
    Dir(DirLedger),
    Object(ObjectLedger),
}

impl Ledger {
    /// `s3://bucket/prefix` or a directory (created if missing).
    pub fn open(spec: &str, storage: &mut Option<Arc<Storage>>) -> Result<Ledger, String> {
        if let Some(url) = S3Url::parse(spec) {
            if storage.is_none() {
                *storage = Some(Storage::new()?);
            }
            let s = storage.clone().ok_or("no S3 client")?;
            return Ok(Ledger::Object(ObjectLedger::new(s, url)));
        }
        if spec.starts_with("s3:") {
            return Err(format!("--ledger {spec:?}: expected s3://bucket[/prefix]"));
        }
        Ok(Ledger::Dir(DirLedger::open(PathBuf::from(spec))?))
    }

    /// Every record.
    pub fn load(&self) -> Result<Records, String> {
        match self {
            Ledger::Dir(d) => d.load(),
            Ledger::Object(o) => o.load(),
        }
    }

    /// Store `new`, merged with the stored record of its key; returns what is stored now.
    pub fn write(&self, new: &Record) -> Result<Record, String> {
        match self {
            Ledger::Dir(d) => d.write(new),
            Ledger::Object(o) => o.write(new),
        }
    }

    /// Store `pending` only if its key has no record yet (a version seen for the first time).
    pub fn add_if_absent(&self, pending: &Record) -> Result<(), String> {
        match self {
            Ledger::Dir(d) => d.add_if_absent(pending),
            Ledger::Object(o) => o.add_if_absent(pending),
        }
    }
}

/// A record read back: its schema must be known, and its key its file's.
pub fn parse(bytes: &[u8], key: &str, origin: &str) -> Result<Record, String> {
    let r: Record = serde_json::from_slice(bytes)
        .map_err(|e| format!("ledger record {origin} is unreadable: {e}"))?;
    if r.schema != crate::record::RECORD_SCHEMA {
        return Err(format!(
            "ledger record {origin} has schema {}, not {}: written by another version",
            r.schema,
            crate::record::RECORD_SCHEMA
        ));
    }
    if r.key != key {
        return Err(format!("ledger record {origin} holds key {}", r.key));
    }
    Ok(r)
}

/// Whether `name` is a record's name (`<32 hex>.json`): its key.
fn key_of(name: &str) -> Option<&str> {
    let key = name.strip_suffix(".json")?;
    (key.len() == 32 && key.bytes().all(|b| b.is_ascii_hexdigit())).then_some(key)
}
