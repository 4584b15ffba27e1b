//! Decode pipelines from authenticated chunk payloads to an inner tar stream
//! (SPEC.md V3-3, V3-4, V3-5, V4-1, CMP-1 … CMP-3).
//!
//! ```text
//! v4: chunk → scrypt open (per chunk) ┐
//!                                     ├→ concatenate → decompress → inner tar
//! v3: chunk → HMAC check ─────────────┘   (v3: CBC-decrypt the concatenation first)
//! v2: chunk → HMAC check → decrypt (own `Salted__`) → zlib/gzip → one tar volume
//! ```

use std::io::{self, Read};

use crate::compression::Filter;
use crate::crypto::openssl_enc::{CbcDecryptReader, Cipher};
use crate::error::{Error, Result};
use crate::header::{Header, Version};

use super::authenticate::Credentials;

/// A `Read` over a sequence of authenticated chunk payloads, pulled one at a time from
/// `next` (`None` ends the stream; an `Err` is surfaced as a classified read error).
pub struct ChunkReader<F> {
    next: F,
    current: Vec<u8>,
    offset: usize,
    done: bool,
}

impl<F: FnMut() -> Option<Result<Vec<u8>>>> ChunkReader<F> {
    pub fn new(next: F) -> Self {
        ChunkReader {
            next,
            current: Vec::new(),
            offset: 0,
            done: false,
        }
    }
}

impl<F: FnMut() -> Option<Result<Vec<u8>>>> Read for ChunkReader<F> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.offset == self.current.len() {
            if self.done {
                return Ok(0);
            }
            // Free the spent chunk before waiting for the next (RES-1: chunks in flight).
            self.current = Vec::new();
            self.offset = 0;
            match (self.next)() {
                None => {
                    self.done = true;
                    self.current = Vec::new();
                    self.offset = 0;
                }
                Some(Ok(chunk)) => {
                    self.current = chunk;
                    self.offset = 0;
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Err(e.into_io());
                }
            }
        }
        let n = buf.len().min(self.current.len() - self.offset);
        buf[..n].copy_from_slice(&self.current[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

/// The cipher a v2/v3 header names (V3-6).
pub fn header_cipher(header: &Header) -> Result<Cipher> {
    let name = header.crypto_algorithm.as_deref().unwrap_or("aes-256-cbc");
    Cipher::from_name(name).ok_or_else(|| {
        Error::unsupported(format!("crypto-algorithm {name:?} is not supported (V3-6)"))
    })
}

/// v3/v4: the inner tar byte stream of one file from the concatenation of its
/// authenticated chunk payloads (v4: plaintexts; v3: ciphertexts or, unencrypted,
/// compressed bytes).
pub fn file_stream<'a, R: Read + Send + 'a>(
    header: &Header,
    credentials: &Credentials,
    payload: R,
) -> Result<Box<dyn Read + Send + 'a>> {
    let filter = Filter::from_header(header.compressed, header.compression_filter.as_deref())?;
    match header.version {
        Version::V4 => filter.decoder(payload),
        Version::V3 if header.encrypted => {
            let cipher = header_cipher(header)?;
            filter.decoder(
                CbcDecryptReader::new(payload, cipher, credentials.passphrase())
                    .end_is_truncation(),
            )
        }
        Version::V3 => filter.decoder(payload),
        Version::V2 => Err(Error::unsupported(
            "v2 files are decoded per volume: use decode_v2_volume",
        )),
    }
}

/// v2: one chunk (after its HMAC verified) as a streaming tar volume (V3-4, V3-5): nothing is
/// inflated ahead of the tar reader, so a compressed volume costs no more memory than any
/// other stream. `openssl enc -z` puts its zlib layer *outside* the cipher (the zlib BIO sits
/// below the cipher BIO), so an encrypted and compressed chunk is
/// zlib(`Salted__` ‖ salt ‖ ciphertext): inflate, then decrypt. A compressed-only chunk is
/// one gzip stream.
pub fn v2_volume<'a>(
    header: &Header,
    credentials: &Credentials,
    chunk: Vec<u8>,
) -> Result<Box<dyn Read + Send + 'a>> {
    let stored = io::Cursor::new(chunk);
    Ok(match (header.encrypted, header.compressed) {
        (true, true) => Box::new(CbcDecryptReader::new(
            flate2::read::ZlibDecoder::new(stored),
            header_cipher(header)?,
            credentials.passphrase(),
        )),
        (true, false) => Box::new(CbcDecryptReader::new(
            stored,
            header_cipher(header)?,
            credentials.passphrase(),
        )),
        (false, true) => Box::new(flate2::read::MultiGzDecoder::new(stored)),
        (false, false) => Box::new(stored),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_reader_concatenates_and_surfaces_errors() {
        let mut chunks = vec![Ok(b"ab".to_vec()), Ok(Vec::new()), Ok(b"cde".to_vec())].into_iter();
        let mut s = String::new();
        ChunkReader::new(|| chunks.next())
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "abcde");
        let mut failing = vec![Ok(b"ab".to_vec()), Err(Error::mac("x"))].into_iter();
        let err = ChunkReader::new(|| failing.next())
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(
            Error::from_read(err, "x").class(),
            crate::ErrorClass::MacFailure
        );
    }
}
