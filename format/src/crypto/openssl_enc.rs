//! v2/v3 encryption: the `openssl enc` container (SPEC.md V3-1): `Salted__`, an 8-byte
//! salt, then CBC ciphertext with PKCS#7 padding, keyed by EVP_BytesToKey with MD5 and
//! one iteration (V3-2). In v3 one stream spans all chunks of a file (V3-3); in v2 each
//! chunk is its own stream (V3-4). Supported ciphers: AES-128/192/256-CBC (V3-6).

use std::io::Read;

use cbc::cipher::{Array, BlockModeDecrypt, BlockModeEncrypt, KeyIvInit};
use md5::Digest as _;
use zeroize::{Zeroize, Zeroizing};

use crate::bail;
use crate::error::{Error, Result};

/// The 8 magic bytes that start every salted `openssl enc` stream (SPEC.md V3-1).
pub const SALTED_MAGIC: &[u8; 8] = b"Salted__";
/// Length of the `Salted__` magic plus salt.
pub const SALTED_HEADER_LEN: usize = 16;
const BLOCK: usize = 16;

/// EVP_BytesToKey with MD5 and count 1 (SPEC.md V3-2): D1 = MD5(pass‖salt),
/// Di = MD5(Di-1‖pass‖salt); key and IV are the first `key_len` and next `iv_len` bytes.
pub fn evp_bytes_to_key_md5(
    pass: &[u8],
    salt: &[u8; 8],
    key_len: usize,
    iv_len: usize,
) -> (Vec<u8>, Vec<u8>) {
    let want = key_len.saturating_add(iv_len);
    let mut material: Vec<u8> = Vec::with_capacity(want.saturating_add(16));
    let mut prev: Option<[u8; 16]> = None;
    while material.len() < want {
        let mut h = md5::Md5::new();
        if let Some(p) = &prev {
            h.update(p);
        }
        h.update(pass);
        h.update(salt);
        let d: [u8; 16] = h.finalize().into();
        material.extend_from_slice(&d);
        prev = Some(d);
    }
    if let Some(p) = prev.as_mut() {
        p.zeroize();
    }
    material.truncate(want);
    let iv = material.split_off(key_len.min(material.len()));
    (material, iv)
}

/// The ciphers a v2/v3 header may name in `crypto-algorithm` (SPEC.md V3-6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cipher {
    Aes128Cbc,
    Aes192Cbc,
    Aes256Cbc,
}

impl Cipher {
    /// Case-insensitive OpenSSL cipher name (`aes-256-cbc`, `AES-256-CBC`, …).
    pub fn from_name(untrusted_name: &str) -> Option<Cipher> {
        match untrusted_name.to_ascii_lowercase().as_str() {
            "aes-128-cbc" | "aes128" => Some(Cipher::Aes128Cbc),
            "aes-192-cbc" | "aes192" => Some(Cipher::Aes192Cbc),
            "aes-256-cbc" | "aes256" => Some(Cipher::Aes256Cbc),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes128Cbc => "aes-128-cbc",
            Cipher::Aes192Cbc => "aes-192-cbc",
            Cipher::Aes256Cbc => "aes-256-cbc",
        }
    }

    pub fn key_len(self) -> usize {
        match self {
            Cipher::Aes128Cbc => 16,
            Cipher::Aes192Cbc => 24,
            Cipher::Aes256Cbc => 32,
        }
    }
}

enum Dec {
    A128(cbc::Decryptor<aes::Aes128>),
    A192(cbc::Decryptor<aes::Aes192>),
    A256(cbc::Decryptor<aes::Aes256>),
}

impl Dec {
    fn new(cipher: Cipher, key: &[u8], iv: &[u8]) -> Option<Dec> {
        Some(match cipher {
            Cipher::Aes128Cbc => Dec::A128(KeyIvInit::new_from_slices(key, iv).ok()?),
            Cipher::Aes192Cbc => Dec::A192(KeyIvInit::new_from_slices(key, iv).ok()?),
            Cipher::Aes256Cbc => Dec::A256(KeyIvInit::new_from_slices(key, iv).ok()?),
        })
    }

    /// Decrypt whole blocks in place; a trailing partial block (never passed) is left alone.
    fn decrypt(&mut self, buf: &mut [u8]) {
        let (blocks, _) = Array::slice_as_chunks_mut(buf);
        match self {
            Dec::A128(d) => d.decrypt_blocks(blocks),
            Dec::A192(d) => d.decrypt_blocks(blocks),
            Dec::A256(d) => d.decrypt_blocks(blocks),
        }
    }
}

/// Streaming `openssl enc -d` (SPEC.md V3-1..V3-4): feed ciphertext in pieces of any
/// length; the last block is held back until [`CbcDecryptor::finish`] removes its padding.
pub struct CbcDecryptor {
    dec: Dec,
    /// 0..=16 ciphertext bytes not yet decrypted; after a non-empty input, 1..=16.
    pending: Vec<u8>,
}

impl std::fmt::Debug for CbcDecryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CbcDecryptor")
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl CbcDecryptor {
    /// Derive key and IV from the passphrase and the `Salted__` header (the first 16 bytes
    /// of the stream); a header without the magic is Malformed.
    pub fn new(
        cipher: Cipher,
        passphrase: &[u8],
        untrusted_salted_header: &[u8; 16],
    ) -> Result<CbcDecryptor> {
        let (magic, salt) = untrusted_salted_header.split_at(8);
        if magic != SALTED_MAGIC {
            bail!(
                Malformed,
                "encrypted stream does not start with `Salted__` (V3-1)"
            );
        }
        let salt: [u8; 8] = salt
            .try_into()
            .map_err(|_| Error::malformed("salt is not 8 bytes"))?;
        let (key, iv) = evp_bytes_to_key_md5(passphrase, &salt, cipher.key_len(), BLOCK);
        let (key, iv) = (Zeroizing::new(key), Zeroizing::new(iv));
        let Some(dec) = Dec::new(cipher, &key, &iv) else {
            bail!(Malformed, "cannot initialise {}", cipher.name());
        };
        Ok(CbcDecryptor {
            dec,
            pending: Vec::with_capacity(BLOCK),
        })
    }

    /// Decrypt `input`, appending plaintext to `out`. Always keeps 1..=16 bytes back.
    pub fn update(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        // Top up the pending block first.
        let take = (BLOCK - self.pending.len()).min(input.len());
        let (head, rest) = input.split_at(take);
        self.pending.extend_from_slice(head);
        input = rest;
        if input.is_empty() {
            return;
        }
        // More follows, so the (full) pending block is not the last one.
        let start = out.len();
        out.extend_from_slice(&self.pending);
        self.pending.clear();
        let keep = match input.len() % BLOCK {
            0 => BLOCK,
            k => k,
        };
        let (bulk, tail) = input.split_at(input.len() - keep);
        out.extend_from_slice(bulk);
        if let Some(new) = out.get_mut(start..) {
            self.dec.decrypt(new);
        }
        self.pending.extend_from_slice(tail);
    }

    /// Decrypt the held-back block and strip its PKCS#7 padding. A ciphertext whose length
    /// is not a positive multiple of 16 is Malformed (V3-1): every complete chunk is a
    /// multiple of 16, so a missing chunk cannot cause it. Bad padding is Malformed.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<()> {
        if self.pending.len() != BLOCK {
            bail!(
                Malformed,
                "encrypted stream ends inside a cipher block or has no block at all"
            );
        }
        let mut last = std::mem::take(&mut self.pending);
        self.dec.decrypt(&mut last);
        let n = last.last().copied().unwrap_or(0);
        let ok = (1..=BLOCK as u8).contains(&n)
            && last
                .get(BLOCK - usize::from(n)..)
                .is_some_and(|pad| pad.iter().all(|&b| b == n));
        if !ok {
            last.zeroize();
            bail!(
                Malformed,
                "bad padding at the end of the encrypted stream (wrong passphrase or cipher?)"
            );
        }
        out.extend_from_slice(&last[..BLOCK - usize::from(n)]);
        last.zeroize();
        Ok(())
    }
}

/// Encrypt like `openssl enc -e -<cipher> -md MD5 -S <salt>`: `Salted__`, salt, CBC with
/// PKCS#7 padding (for tests and the packer).
pub fn encrypt(cipher: Cipher, passphrase: &[u8], salt: [u8; 8], plaintext: &[u8]) -> Vec<u8> {
    let (key, iv) = evp_bytes_to_key_md5(passphrase, &salt, cipher.key_len(), BLOCK);
    let (key, iv) = (Zeroizing::new(key), Zeroizing::new(iv));
    let pad = BLOCK - plaintext.len() % BLOCK;
    let mut out = Vec::with_capacity(SALTED_HEADER_LEN + plaintext.len() + pad);
    out.extend_from_slice(SALTED_MAGIC);
    out.extend_from_slice(&salt);
    out.extend_from_slice(plaintext);
    out.resize(out.len() + pad, pad as u8);
    let (_, body) = out.split_at_mut(SALTED_HEADER_LEN);
    let (blocks, _) = Array::slice_as_chunks_mut(body);
    // Key and IV lengths come from `cipher` itself, so construction cannot fail.
    fn bad<T>() -> T {
        unreachable!("key/iv lengths match the cipher")
    }
    match cipher {
        Cipher::Aes128Cbc => cbc::Encryptor::<aes::Aes128>::new_from_slices(&key, &iv)
            .unwrap_or_else(|_| bad())
            .encrypt_blocks(blocks),
        Cipher::Aes192Cbc => cbc::Encryptor::<aes::Aes192>::new_from_slices(&key, &iv)
            .unwrap_or_else(|_| bad())
            .encrypt_blocks(blocks),
        Cipher::Aes256Cbc => cbc::Encryptor::<aes::Aes256>::new_from_slices(&key, &iv)
            .unwrap_or_else(|_| bad())
            .encrypt_blocks(blocks),
    }
    out
}

/// A [`Read`] adapter: reads the `Salted__` header from `inner`, then yields plaintext.
/// Errors are classified [`Error`]s wrapped by [`Error::into_io`]; EOF inside the header
/// is Truncated.
pub struct CbcDecryptReader<R: Read> {
    inner: R,
    cipher: Cipher,
    passphrase: Zeroizing<Vec<u8>>,
    dec: Option<CbcDecryptor>,
    started: bool,
    finished: bool,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    /// Why a stream might end badly: set by [`CbcDecryptReader::end_is_truncation`].
    end_is_truncation: bool,
}

impl<R: Read> std::fmt::Debug for CbcDecryptReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CbcDecryptReader")
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

const READ_BUF: usize = 64 << 10;

impl<R: Read> CbcDecryptReader<R> {
    pub fn new(inner: R, cipher: Cipher, passphrase: &[u8]) -> CbcDecryptReader<R> {
        CbcDecryptReader {
            inner,
            cipher,
            passphrase: Zeroizing::new(passphrase.to_vec()),
            dec: None,
            started: false,
            finished: false,
            inbuf: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            end_is_truncation: false,
        }
    }

    /// V3-3: in a v3 stream whose chunks all verified, bad final padding means the file's
    /// last chunk(s) are missing: report it as Truncated instead of Malformed.
    pub fn end_is_truncation(mut self) -> Self {
        self.end_is_truncation = true;
        self
    }

    pub fn into_inner(self) -> R {
        self.inner
    }

    fn start(&mut self) -> Result<()> {
        let mut hdr = [0u8; SALTED_HEADER_LEN];
        self.inner
            .read_exact(&mut hdr)
            .map_err(|e| Error::from_read(e, "reading the `Salted__` header"))?;
        self.dec = Some(CbcDecryptor::new(self.cipher, &self.passphrase, &hdr)?);
        self.started = true;
        self.inbuf.resize(READ_BUF, 0);
        Ok(())
    }

    /// Refill `out` with more plaintext; leaves it empty only at the end.
    fn fill(&mut self) -> Result<()> {
        if !self.started {
            self.start()?;
        }
        self.out.clear();
        self.out_pos = 0;
        while self.out.is_empty() && !self.finished {
            let n = loop {
                match self.inner.read(&mut self.inbuf) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::from_read(e, "reading encrypted stream")),
                }
            };
            let Some(dec) = self.dec.as_mut() else {
                return Ok(());
            };
            if n == 0 {
                self.finished = true;
                if let Some(dec) = self.dec.take() {
                    // V3-1: a length that is not a multiple of 16 stays malformed; only bad
                    // padding on a whole number of blocks means missing chunks (V3-3).
                    let whole_blocks = dec.pending.len() == BLOCK;
                    dec.finish(&mut self.out).map_err(|e| {
                        if self.end_is_truncation
                            && whole_blocks
                            && e.class() == crate::error::ErrorClass::Malformed
                        {
                            Error::truncated(
                                "the encrypted stream does not end with valid padding: its final chunk(s) are missing (V3-3)",
                            )
                        } else {
                            e
                        }
                    })?;
                }
            } else {
                dec.update(self.inbuf.get(..n).unwrap_or_default(), &mut self.out);
            }
        }
        Ok(())
    }
}

impl<R: Read> Read for CbcDecryptReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.out_pos >= self.out.len() {
            if self.finished {
                return Ok(0);
            }
            self.fill().map_err(Error::into_io)?;
        }
        let avail = self.out.get(self.out_pos..).unwrap_or_default();
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.out_pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;
    use proptest::prelude::*;

    fn decrypt_all(cipher: Cipher, pass: &[u8], ct: &[u8], split: &[usize]) -> Result<Vec<u8>> {
        let hdr: [u8; 16] = ct
            .get(..16)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| Error::truncated("short"))?;
        let mut d = CbcDecryptor::new(cipher, pass, &hdr)?;
        let mut out = Vec::new();
        let mut rest = &ct[16..];
        for &s in split {
            let s = s.min(rest.len());
            let (a, b) = rest.split_at(s);
            d.update(a, &mut out);
            rest = b;
        }
        d.update(rest, &mut out);
        d.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn evp_bytes_to_key_known_answer() {
        // openssl enc -aes-256-cbc -md md5 -pass pass:password -S 0102030405060708 -P
        let (k, iv) = evp_bytes_to_key_md5(b"password", &[1, 2, 3, 4, 5, 6, 7, 8], 32, 16);
        assert_eq!(k.len(), 32);
        assert_eq!(iv.len(), 16);
        // D1 = MD5(pass ‖ salt)
        let d1: [u8; 16] = md5::Md5::new()
            .chain_update(b"password")
            .chain_update([1, 2, 3, 4, 5, 6, 7, 8])
            .finalize()
            .into();
        assert_eq!(&k[..16], &d1);
        let (k16, iv16) = evp_bytes_to_key_md5(b"password", &[1, 2, 3, 4, 5, 6, 7, 8], 16, 16);
        assert_eq!(&k16[..], &k[..16]);
        assert_eq!(&iv16[..], &k[16..]);
    }

    #[test]
    fn round_trip_all_ciphers_and_sizes() {
        for cipher in [Cipher::Aes128Cbc, Cipher::Aes192Cbc, Cipher::Aes256Cbc] {
            for len in [0usize, 1, 15, 16, 17, 31, 32, 33, 1000] {
                let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let ct = encrypt(cipher, b"pw", [9; 8], &pt);
                assert_eq!(ct.len(), 16 + (len / 16 + 1) * 16);
                assert_eq!(decrypt_all(cipher, b"pw", &ct, &[]).unwrap(), pt);
                assert_eq!(decrypt_all(cipher, b"pw", &ct, &[1, 16, 3]).unwrap(), pt);
            }
        }
    }

    #[test]
    fn errors_are_classified() {
        let ct = encrypt(Cipher::Aes256Cbc, b"pw", [1; 8], b"hello world");
        let mut bad = ct.clone();
        bad[0] = b'X';
        assert_eq!(
            decrypt_all(Cipher::Aes256Cbc, b"pw", &bad, &[])
                .unwrap_err()
                .class(),
            ErrorClass::Malformed
        );
        // V3-1: a ciphertext length that is not a positive multiple of 16 is malformed.
        assert_eq!(
            decrypt_all(Cipher::Aes256Cbc, b"pw", &ct[..ct.len() - 1], &[])
                .unwrap_err()
                .class(),
            ErrorClass::Malformed
        );
        assert_eq!(
            decrypt_all(Cipher::Aes256Cbc, b"pw", &ct[..16], &[])
                .unwrap_err()
                .class(),
            ErrorClass::Malformed
        );
        // A wrong passphrase almost always breaks the padding (1/256 chance it does not;
        // this fixed case does).
        assert_eq!(
            decrypt_all(Cipher::Aes256Cbc, b"wrong", &ct, &[])
                .unwrap_err()
                .class(),
            ErrorClass::Malformed
        );
    }

    #[test]
    fn names() {
        assert_eq!(Cipher::from_name("AES-256-CBC"), Some(Cipher::Aes256Cbc));
        assert_eq!(Cipher::from_name("aes-128-cbc"), Some(Cipher::Aes128Cbc));
        assert_eq!(Cipher::from_name("aes-256-ctr"), None);
        for c in [Cipher::Aes128Cbc, Cipher::Aes192Cbc, Cipher::Aes256Cbc] {
            assert_eq!(Cipher::from_name(c.name()), Some(c));
        }
    }

    #[test]
    fn reader_adapter() {
        let pt: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let ct = encrypt(Cipher::Aes256Cbc, b"pw", [3; 8], &pt);
        let mut r = CbcDecryptReader::new(&ct[..], Cipher::Aes256Cbc, b"pw");
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, pt);

        let mut r = CbcDecryptReader::new(&ct[..10], Cipher::Aes256Cbc, b"pw");
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(Error::from_read(e, "x").class(), ErrorClass::Truncated);

        // V3-3: in a v3 stream, bad padding on whole blocks (a missing final chunk) is
        // truncated, but a length that is not a multiple of 16 stays malformed (V3-1).
        let pt_aa = vec![0xaau8; 100];
        let ct_aa = encrypt(Cipher::Aes256Cbc, b"pw", [4; 8], &pt_aa);
        let class_v3 = |bytes: &[u8]| {
            let mut r = CbcDecryptReader::new(bytes, Cipher::Aes256Cbc, b"pw").end_is_truncation();
            let e = r.read_to_end(&mut Vec::new()).unwrap_err();
            Error::from_read(e, "x").class()
        };
        assert_eq!(class_v3(&ct_aa[..ct_aa.len() - 16]), ErrorClass::Truncated);
        assert_eq!(class_v3(&ct_aa[..ct_aa.len() - 5]), ErrorClass::Malformed);
        // V3-1: ciphertext not a multiple of 16.
        let mut r = CbcDecryptReader::new(&ct[..ct.len() - 3], Cipher::Aes256Cbc, b"pw");
        let e = r.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(Error::from_read(e, "x").class(), ErrorClass::Malformed);
    }

    proptest! {
        #[test]
        fn random_splits_round_trip(
            pt in proptest::collection::vec(any::<u8>(), 0..600),
            splits in proptest::collection::vec(0usize..70, 0..20),
            salt in any::<[u8; 8]>(),
        ) {
            let ct = encrypt(Cipher::Aes256Cbc, b"pass", salt, &pt);
            prop_assert_eq!(decrypt_all(Cipher::Aes256Cbc, b"pass", &ct, &splits).unwrap(), pt);
        }

        #[test]
        fn random_ciphertext_never_panics(
            body in proptest::collection::vec(any::<u8>(), 0..100),
            splits in proptest::collection::vec(0usize..40, 0..5),
        ) {
            let mut ct = SALTED_MAGIC.to_vec();
            ct.extend_from_slice(&[0; 8]);
            ct.extend_from_slice(&body);
            let _ = decrypt_all(Cipher::Aes128Cbc, b"p", &ct, &splits);
            let _ = decrypt_all(Cipher::Aes128Cbc, b"p", &body, &splits);
        }
    }
}
