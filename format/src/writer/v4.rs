//! Version 4 writer pieces (SPEC.md WRT-3, WRT-4, V4-1, V4-2).
//!
//! A chunk's scrypt keys depend only on its name, the backup-id, the passphrase and a
//! salt, not on its data; [`SealingKey::derive`] therefore runs the expensive KDF ahead of
//! the data, and [`SealingKey::seal_in_place`] turns a buffer into the container once the
//! data is known. The output is byte-for-byte what
//! [`crate::crypto::scrypt_container::seal`] writes with the same salt.

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use crate::archive::authenticate::chunk_passphrase;
use crate::bail;
use crate::crypto::scrypt_container::{self, Params, HEADER_LEN, MAGIC};
use crate::error::{Error, Result};
use crate::limits::{MAX_BACKUP_ID_LEN, MAX_HEADER_LEN, MAX_PASSPHRASE_LEN};

type HmacSha256 = Hmac<Sha256>;
type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// Filter names a v4 header may carry (CMP-1); `None` writes `compressed=False` with
/// `compression-filter=gzip`, as upstream does.
pub fn header_text(filter: Option<&str>, backup_id: &str) -> Result<Vec<u8>> {
    check_backup_id(backup_id)?;
    if let Some(f) = filter {
        if !matches!(f, "gzip" | "bzip2" | "xz" | "zstd") {
            bail!(Unsupported, "compression filter {f:?} (CMP-1)");
        }
    }
    let text = format!(
        "version=4\nencrypted=True\ncompressed={}\ncompression-filter={}\n\
         hmac-algorithm=scrypt\nbackup-id={backup_id}\n",
        if filter.is_some() { "True" } else { "False" },
        filter.unwrap_or("gzip"),
    );
    if text.len() as u64 > MAX_HEADER_LEN - scrypt_container::OVERHEAD as u64 {
        bail!(LimitExceeded, "backup header too long (LIM-1)");
    }
    Ok(text.into_bytes())
}

/// HDR-5: a backup-id is non-empty, does not start with `-`, ≤ LIM-22 bytes of
/// `[A-Za-z0-9-]` (HDR-2 value alphabet).
pub fn check_backup_id(id: &str) -> Result<()> {
    if id.is_empty()
        || id.starts_with('-')
        || id.len() > MAX_BACKUP_ID_LEN
        || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        bail!(Malformed, "unusable backup-id {id:?} (HDR-5)");
    }
    Ok(())
}

/// What a container's keys are bound to (V4-2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binding<'a> {
    /// `backup-header.hmac`: `backup-header!` ‖ passphrase.
    Header,
    /// A chunk named `name` (member name without `.enc`): `id!name!passphrase`.
    Chunk { backup_id: &'a str, name: &'a str },
}

/// The 96-byte container prefix and the derived keys of one future container.
pub struct SealingKey {
    prefix: [u8; HEADER_LEN],
    enc: Zeroizing<[u8; 32]>,
    mac: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SealingKey(..)")
    }
}

fn hmac_key(key: &[u8; 32]) -> HmacSha256 {
    <HmacSha256 as KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
}

impl SealingKey {
    /// Run scrypt for one container (expensive: 128·r·N bytes, N·r·p work). `salt` must
    /// be fresh random bytes for every container (WRT-4).
    pub fn derive(
        passphrase: &[u8],
        binding: &Binding<'_>,
        params: Params,
        salt: [u8; 32],
    ) -> Result<SealingKey> {
        params.validate()?;
        let composite = match binding {
            Binding::Header => {
                let mut p = Zeroizing::new(b"backup-header!".to_vec());
                p.extend_from_slice(passphrase);
                p
            }
            Binding::Chunk { backup_id, name } => {
                check_backup_id(backup_id)?;
                chunk_passphrase(backup_id, name, passphrase)
            }
        };
        if composite.len() > MAX_PASSPHRASE_LEN {
            bail!(
                LimitExceeded,
                "composite scrypt passphrase longer than LIM-21 (V4-2)"
            );
        }
        let sp = scrypt::Params::new(params.log_n, params.r, params.p).map_err(|_| {
            Error::limit(format!(
                "scrypt parameters (logN {}, r {}, p {}) exceed this machine",
                params.log_n, params.r, params.p
            ))
        })?;
        let mut dk = Zeroizing::new([0u8; 64]);
        scrypt::scrypt(&composite, &salt, &sp, &mut dk[..])
            .map_err(|_| Error::malformed("scrypt output length rejected"))?;
        let mut enc = Zeroizing::new([0u8; 32]);
        let mut mac = Zeroizing::new([0u8; 32]);
        enc.copy_from_slice(&dk[..32]);
        mac.copy_from_slice(&dk[32..]);
        let mut prefix = [0u8; HEADER_LEN];
        prefix[..6].copy_from_slice(MAGIC);
        prefix[6] = 0;
        prefix[7] = params.log_n;
        prefix[8..12].copy_from_slice(&params.r.to_be_bytes());
        prefix[12..16].copy_from_slice(&params.p.to_be_bytes());
        prefix[16..48].copy_from_slice(&salt);
        let sum = Sha256::digest(&prefix[..48]);
        prefix[48..64].copy_from_slice(&sum[..16]);
        let mut m = hmac_key(&mac);
        m.update(&prefix[..64]);
        prefix[64..96].copy_from_slice(&m.finalize().into_bytes());
        Ok(SealingKey { prefix, enc, mac })
    }

    /// Seal `buf` in place: its first [`HEADER_LEN`] bytes are space reserved by the
    /// caller (any content), the rest is the plaintext. Afterwards `buf` is the whole
    /// container (plaintext length + 128 bytes).
    pub fn seal_in_place(&self, buf: &mut Vec<u8>) -> Result<()> {
        let Some(head) = buf.get_mut(..HEADER_LEN) else {
            bail!(
                Malformed,
                "sealing buffer lacks the reserved container header"
            );
        };
        head.copy_from_slice(&self.prefix);
        if let Some(body) = buf.get_mut(HEADER_LEN..) {
            let mut c = Aes256Ctr::new(&(*self.enc).into(), &[0u8; 16].into());
            c.try_apply_keystream(body)
                .map_err(|_| Error::limit("chunk too long for its CTR keystream"))?;
        }
        let mut m = hmac_key(&self.mac);
        m.update(buf);
        buf.extend_from_slice(&m.finalize().into_bytes());
        Ok(())
    }
}

/// A buffer with the [`HEADER_LEN`] bytes [`SealingKey::seal_in_place`] needs reserved,
/// and room for `capacity` plaintext bytes plus the final MAC.
pub fn sealing_buffer(capacity: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(capacity.saturating_add(scrypt_container::OVERHEAD));
    v.resize(HEADER_LEN, 0);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::authenticate::{authenticate_header, Credentials};
    use crate::crypto::scrypt_container::KdfLimit;

    const P: Params = Params {
        log_n: 4,
        r: 8,
        p: 1,
    };

    #[test]
    fn matches_the_reference_sealer() {
        let key = SealingKey::derive(
            b"pw",
            &Binding::Chunk {
                backup_id: "20261126T000000-1",
                name: "vm3/private.img.000",
            },
            P,
            [9; 32],
        )
        .unwrap();
        for len in [0usize, 1, 100, 5000] {
            let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut buf = sealing_buffer(len);
            buf.extend_from_slice(&pt);
            key.seal_in_place(&mut buf).unwrap();
            let reference = scrypt_container::seal(
                &chunk_passphrase("20261126T000000-1", "vm3/private.img.000", b"pw"),
                P,
                [9; 32],
                &pt,
            )
            .unwrap();
            assert_eq!(buf, reference);
        }
    }

    #[test]
    fn header_and_chunk_authenticate() {
        let header = header_text(Some("gzip"), "20261126T000000-1").unwrap();
        let key = SealingKey::derive(b"pw", &Binding::Header, P, [1; 32]).unwrap();
        let mut mac = sealing_buffer(header.len());
        mac.extend_from_slice(&header);
        key.seal_in_place(&mut mac).unwrap();
        let cred = Credentials::new(b"pw".to_vec(), KdfLimit::default());
        let auth = authenticate_header(&header, &mac, &cred).unwrap();
        assert_eq!(auth.header.backup_id.as_deref(), Some("20261126T000000-1"));
        assert!(header_text(Some("less"), "x").is_err());
        assert!(header_text(None, "-x").is_err());
        assert_eq!(
            header_text(None, "a").unwrap(),
            b"version=4\nencrypted=True\ncompressed=False\ncompression-filter=gzip\nhmac-algorithm=scrypt\nbackup-id=a\n"
        );
    }
}
