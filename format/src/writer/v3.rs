//! Version 3 writer pieces (SPEC.md HDR-4, MAC-4, MAC-5, V3-1 … V3-3): the header text,
//! `.hmac` members as `openssl dgst -hmac` prints them, and a streaming `openssl enc -e`
//! whose one CBC chain spans a whole file (the caller splits its output into chunks).

use cbc::cipher::{Array, BlockModeEncrypt, KeyIvInit};
use zeroize::Zeroizing;

use crate::crypto::hmac_file::{format_hmac_file, hmac, Digest};
use crate::crypto::openssl_enc::{evp_bytes_to_key_md5, Cipher, SALTED_MAGIC};

/// The v3 header in R3.2's key order (format-notes §3.4): `version=3`,
/// `hmac-algorithm`, `crypto-algorithm`, `encrypted=True`, `compressed`, and
/// `compression-filter` only when compressed. Always encrypted.
pub fn header_text(filter: Option<&str>, digest: Digest, cipher: Cipher) -> Vec<u8> {
    let mut t = format!(
        "version=3\nhmac-algorithm={}\ncrypto-algorithm={}\nencrypted=True\ncompressed={}\n",
        digest.name().to_ascii_uppercase(),
        cipher.name(),
        if filter.is_some() { "True" } else { "False" }
    );
    if let Some(f) = filter {
        t.push_str(&format!("compression-filter={f}\n"));
    }
    t.into_bytes()
}

/// The `.hmac` member of `data` (MAC-4, MAC-5: keyed with the passphrase bytes).
pub fn hmac_member(digest: Digest, passphrase: &[u8], data: &[u8]) -> Vec<u8> {
    format_hmac_file(digest, &hmac(digest, passphrase, data)).into_bytes()
}

enum Enc {
    A128(cbc::Encryptor<aes::Aes128>),
    A192(cbc::Encryptor<aes::Aes192>),
    A256(cbc::Encryptor<aes::Aes256>),
}

impl Enc {
    fn encrypt(&mut self, buf: &mut [u8]) {
        let (blocks, _) = Array::slice_as_chunks_mut(buf);
        match self {
            Enc::A128(e) => e.encrypt_blocks(blocks),
            Enc::A192(e) => e.encrypt_blocks(blocks),
            Enc::A256(e) => e.encrypt_blocks(blocks),
        }
    }
}

const BLOCK: usize = 16;

/// Streaming `openssl enc -e -<cipher> -md MD5 -S <salt>` (V3-1, V3-2): the first output
/// is `Salted__` and the salt; [`CbcEncryptor::finish`] adds the PKCS#7 padding.
pub struct CbcEncryptor {
    enc: Enc,
    pending: Vec<u8>,
    started: bool,
    salt: [u8; 8],
}

impl std::fmt::Debug for CbcEncryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CbcEncryptor(..)")
    }
}

impl CbcEncryptor {
    /// `salt` must be fresh random bytes per stream.
    pub fn new(cipher: Cipher, passphrase: &[u8], salt: [u8; 8]) -> CbcEncryptor {
        let (key, iv) = evp_bytes_to_key_md5(passphrase, &salt, cipher.key_len(), BLOCK);
        let (key, iv) = (Zeroizing::new(key), Zeroizing::new(iv));
        fn bad<T>() -> T {
            unreachable!("key/iv lengths match the cipher")
        }
        let enc = match cipher {
            Cipher::Aes128Cbc => {
                Enc::A128(KeyIvInit::new_from_slices(&key, &iv).unwrap_or_else(|_| bad()))
            }
            Cipher::Aes192Cbc => {
                Enc::A192(KeyIvInit::new_from_slices(&key, &iv).unwrap_or_else(|_| bad()))
            }
            Cipher::Aes256Cbc => {
                Enc::A256(KeyIvInit::new_from_slices(&key, &iv).unwrap_or_else(|_| bad()))
            }
        };
        CbcEncryptor {
            enc,
            pending: Vec::with_capacity(BLOCK),
            started: false,
            salt,
        }
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if !self.started {
            out.extend_from_slice(SALTED_MAGIC);
            out.extend_from_slice(&self.salt);
            self.started = true;
        }
    }

    /// Encrypt `input`, appending ciphertext to `out` (whole blocks only).
    pub fn update(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        self.start(out);
        if !self.pending.is_empty() {
            let take = (BLOCK - self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
            if self.pending.len() < BLOCK {
                return;
            }
            let start = out.len();
            out.extend_from_slice(&self.pending);
            self.pending.clear();
            if let Some(b) = out.get_mut(start..) {
                self.enc.encrypt(b);
            }
        }
        let whole = input.len() - input.len() % BLOCK;
        let start = out.len();
        out.extend_from_slice(&input[..whole]);
        if let Some(b) = out.get_mut(start..) {
            self.enc.encrypt(b);
        }
        self.pending.extend_from_slice(&input[whole..]);
    }

    /// Pad (PKCS#7) and encrypt the last block.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        self.start(out);
        let pad = BLOCK - self.pending.len();
        self.pending.resize(BLOCK, pad as u8);
        let start = out.len();
        out.extend_from_slice(&self.pending);
        if let Some(b) = out.get_mut(start..) {
            self.enc.encrypt(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::openssl_enc::encrypt;

    #[test]
    fn streaming_equals_one_shot() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        for split in [0usize, 1, 15, 16, 17, 500, 1000] {
            let mut e = CbcEncryptor::new(Cipher::Aes256Cbc, b"qubes", [3; 8]);
            let mut out = Vec::new();
            e.update(&data[..split], &mut out);
            for b in data[split..].chunks(7) {
                e.update(b, &mut out);
            }
            e.finish(&mut out);
            assert_eq!(out, encrypt(Cipher::Aes256Cbc, b"qubes", [3; 8], &data));
        }
        let mut out = Vec::new();
        CbcEncryptor::new(Cipher::Aes128Cbc, b"q", [0; 8]).finish(&mut out);
        assert_eq!(out, encrypt(Cipher::Aes128Cbc, b"q", [0; 8], b""));
    }

    #[test]
    fn header_and_hmac_text() {
        let h = header_text(Some("gzip"), Digest::Sha512, Cipher::Aes256Cbc);
        assert_eq!(
            h,
            b"version=3\nhmac-algorithm=SHA512\ncrypto-algorithm=aes-256-cbc\nencrypted=True\ncompressed=True\ncompression-filter=gzip\n"
        );
        let m = hmac_member(Digest::Sha512, b"qubes", b"x");
        assert!(m.starts_with(b"SHA2-512(stdin)= "));
        assert_eq!(m.len(), 17 + 128 + 1);
    }
}
