//! Fuzzing-only fixed-key mode. This module exists only when the crate is compiled with
//! `--cfg fuzzing` (cargo-fuzz sets it); no normal build can reach it.
//!
//! In this mode [`crate::archive::authenticate`] uses the two functions below instead of
//! the real checks, so a fuzzer can build members that pass authentication and reach the
//! parsers behind the MAC (MAC-1):
//! - an HMAC "verifies" when the `.hmac` line parsed and its length matches the digest
//!   (so algorithm guessing, MAC-2, and the header agreement check, MAC-3, still run);
//! - a scrypt container is parsed and its cost checked as usual (V4-1, V4-4, V4-5), but the
//!   KDF is skipped, both MACs are accepted and the body is taken as plaintext: a "fuzz
//!   container" is the 96-byte header, the plaintext and 32 arbitrary bytes.
//!
//! Everything else (order, limits, compression, tar, qubes.xml) runs unchanged.

use crate::crypto::scrypt_container::{self, KdfLimit, HEADER_LEN, OVERHEAD};
use crate::error::Result;

/// Fixed-key stand-in for [`crate::crypto::hmac_file::verify_mac`]: lengths only.
pub(crate) fn verify_mac(expected: &[u8], computed: &[u8]) -> bool {
    expected.len() == computed.len()
}

/// Fixed-key stand-in for opening a scrypt container in place: header parsed and cost
/// checked, no KDF, no MAC, no decryption.
pub(crate) fn open_container(
    _passphrase: &[u8],
    container: &mut Vec<u8>,
    limit: &KdfLimit,
) -> Result<()> {
    let header = scrypt_container::parse_header(container)?;
    scrypt_container::check_cost(&header.params, limit)?;
    let Some(end) = container.len().checked_sub(OVERHEAD - HEADER_LEN) else {
        crate::bail!(Truncated, "fuzz container shorter than {OVERHEAD} bytes");
    };
    if end < HEADER_LEN {
        crate::bail!(Truncated, "fuzz container shorter than {OVERHEAD} bytes");
    }
    container.truncate(end);
    container.drain(..HEADER_LEN);
    Ok(())
}
