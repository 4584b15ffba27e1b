//! File digests: [`RecordDigest`], the one the protocol carries (PROTO-7), costs time
//! linear in the data bytes only; [`FileHasher`] is the SHA-256 of a file's logical
//! content with holes as zeros (what `sha256sum` of the restored file prints), whose cost
//! is linear in the logical size and which the protocol therefore does not use.

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// Zero bytes hashed per step for holes.
const ZERO_BLOCK: usize = 64 << 10;
static ZEROS: [u8; ZERO_BLOCK] = [0; ZERO_BLOCK];

/// Hashes a file of known logical size from its data runs in increasing offset order;
/// the gaps (holes) and the tail up to the size are hashed as zeros, a block at a time.
/// Cost is linear in the logical size, holes included.
#[derive(Debug, Clone)]
pub struct FileHasher {
    sha: Sha256,
    pos: u64,
    size: u64,
}

impl FileHasher {
    pub fn new(size: u64) -> FileHasher {
        FileHasher {
            sha: Sha256::new(),
            pos: 0,
            size,
        }
    }

    fn zeros_to(&mut self, until: u64) {
        while self.pos < until {
            let n = usize::try_from(until - self.pos).map_or(ZERO_BLOCK, |n| n.min(ZERO_BLOCK));
            self.sha.update(&ZEROS[..n]);
            self.pos += n as u64;
        }
    }

    /// `bytes` at logical `offset`: not before the end of the previous run, within the size.
    pub fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        let end = offset
            .checked_add(bytes.len() as u64)
            .filter(|e| offset >= self.pos && *e <= self.size)
            .ok_or_else(|| {
                Error::malformed(format!(
                    "data at {offset}+{} out of order or beyond size {}",
                    bytes.len(),
                    self.size
                ))
            })?;
        self.zeros_to(offset);
        self.sha.update(bytes);
        self.pos = end;
        Ok(())
    }

    /// The digest of the whole logical content (the tail after the last run is zeros).
    pub fn finish(mut self) -> [u8; 32] {
        self.zeros_to(self.size);
        self.sha.finalize().into()
    }
}

/// Domain separation of the per-file digest (PROTO-7).
const RECORD_DIGEST_DOMAIN: &[u8; 16] = b"qbackup-file-v5\0";

/// PROTO-7: the digest an `end` record carries: XXH3-128 over
/// `"qbackup-file-v5\0" ‖ size:u64 ‖ data_bytes:u64` and then, per data record,
/// `offset:u64 ‖ length:u32 ‖ bytes` (big-endian), as 16 big-endian bytes. It covers every
/// byte and every offset the records carried, and holes cost nothing. It detects
/// corruption and desynchronisation, not forgery (the producer computes it): a fast
/// non-cryptographic hash does that as well as a cryptographic one, and both sides hash
/// every data byte of a restore (BLAKE3 there cost a fifth of the restore's CPU).
#[derive(Clone)]
pub struct RecordDigest {
    sha: xxhash_rust::xxh3::Xxh3,
}

impl std::fmt::Debug for RecordDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordDigest(..)")
    }
}

impl RecordDigest {
    /// Starts the digest of a file announced with `size` and `data_bytes`.
    pub fn new(size: u64, data_bytes: u64) -> RecordDigest {
        let mut sha = xxhash_rust::xxh3::Xxh3::new();
        sha.update(RECORD_DIGEST_DOMAIN);
        sha.update(&size.to_be_bytes());
        sha.update(&data_bytes.to_be_bytes());
        RecordDigest { sha }
    }

    /// One data record (its length is at most LIM-28, so it fits 32 bits).
    pub fn record(&mut self, offset: u64, bytes: &[u8]) {
        self.sha.update(&offset.to_be_bytes());
        self.sha
            .update(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
        self.sha.update(bytes);
    }

    pub fn finish(self) -> super::FileDigest {
        self.sha.digest128().to_be_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_hash_as_zeros() {
        let mut logical = vec![0u8; 200_000];
        logical[70_000..70_003].copy_from_slice(b"abc");
        logical[150_000] = 9;
        let mut h = FileHasher::new(200_000);
        h.data(70_000, b"abc").unwrap();
        h.data(150_000, &[9]).unwrap();
        let want: [u8; 32] = Sha256::digest(&logical).into();
        assert_eq!(h.finish(), want);
    }

    #[test]
    fn refuses_overlap_and_overrun() {
        let mut h = FileHasher::new(10);
        h.data(2, b"ab").unwrap();
        assert!(h.data(3, b"x").is_err());
        assert!(h.data(9, b"xy").is_err());
        assert!(h.data(u64::MAX, b"x").is_err());
    }
}
