//! What an audited archive is: where it lives and which version of it (SPEC.md AUD-2).

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Where an archive lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Location {
    /// An absolute path.
    File(PathBuf),
    S3 {
        bucket: String,
        key: String,
    },
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::File(p) => write!(f, "{}", p.display()),
            Location::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
        }
    }
}

/// Which bytes: a changed archive is a new version, audited anew (AUD-2).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Version {
    /// A file: device, inode, size and modification time (ns since the epoch).
    File {
        dev: u64,
        ino: u64,
        size: u64,
        mtime_ns: i64,
    },
    /// An object: its ETag (as the server quotes it) and size.
    S3 { etag: String, size: u64 },
}

impl Version {
    pub fn size(&self) -> u64 {
        match self {
            Version::File { size, .. } | Version::S3 { size, .. } => *size,
        }
    }

    fn tag(&self) -> String {
        match self {
            Version::File {
                dev,
                ino,
                size,
                mtime_ns,
            } => format!("file:{dev}:{ino}:{size}:{mtime_ns}"),
            Version::S3 { etag, size } => format!("s3:{etag}:{size}"),
        }
    }
}

/// One archive version found in the inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub location: Location,
    pub version: Version,
}

impl Candidate {
    pub fn size(&self) -> u64 {
        self.version.size()
    }

    /// The ledger key of this archive version: 32 hex digits of SHA-256 over the location
    /// and the version (AUD-2).
    pub fn key(&self) -> String {
        record_key(&self.location.to_string(), &self.version)
    }
}

/// The ledger key of `location` at `version` (see [`Candidate::key`]).
pub fn record_key(location: &str, version: &Version) -> String {
    let mut h = Sha256::new();
    h.update(location.as_bytes());
    h.update(b"\n");
    h.update(version.tag().as_bytes());
    hex(&h.finalize()[..16])
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_version_is_a_new_key_and_the_key_is_stable() {
        let loc = "s3://b/qubes-backup-2026-12-01";
        let v1 = Version::S3 {
            etag: "\"abc\"".into(),
            size: 10,
        };
        let v2 = Version::S3 {
            etag: "\"abd\"".into(),
            size: 10,
        };
        assert_ne!(record_key(loc, &v1), record_key(loc, &v2));
        assert_ne!(record_key(loc, &v1), record_key("s3://b/other", &v1));
        // Fixed: the ledger outlives builds, so the key must never change.
        assert_eq!(record_key(loc, &v1), "0d9d9d5eec8e9d83b628280127001b74");
    }
}
