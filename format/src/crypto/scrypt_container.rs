//! v4 encryption: the Tarsnap `scrypt enc` file format (SPEC.md V4-1).
//!
//! | offset | len | field                                              |
//! |--------|-----|----------------------------------------------------|
//! | 0      | 6   | `scrypt`                                           |
//! | 6      | 1   | version, 0                                         |
//! | 7      | 1   | log2(N)                                            |
//! | 8      | 4   | r, big-endian                                      |
//! | 12     | 4   | p, big-endian                                      |
//! | 16     | 32  | salt                                               |
//! | 48     | 16  | SHA-256(bytes 0..48)[0..16]                        |
//! | 64     | 32  | HMAC-SHA256(key_hmac, bytes 0..64): passphrase check |
//! | 96     | X   | plaintext XOR AES-256-CTR(key_enc, counter 0)      |
//! | 96+X   | 32  | HMAC-SHA256(key_hmac, bytes 0..96+X)               |
//!
//! dk = scrypt(passphrase, salt, N, r, p, 64); key_enc = dk[0..32], key_hmac = dk[32..64].
//! The KDF cost is checked against a limit before it runs (V4-4); parameters are validated
//! (V4-5); the final MAC is checked before any plaintext is released.

use aes::cipher::{KeyIvInit, StreamCipher};
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::bail;
use crate::error::{Error, Result};
use crate::limits;

/// The 6 magic bytes of a scrypt container.
pub const MAGIC: &[u8; 6] = b"scrypt";
/// Bytes of header before the ciphertext (magic … header MAC).
pub const HEADER_LEN: usize = 96;
/// Bytes a container adds to its plaintext (header plus final MAC).
pub const OVERHEAD: usize = 128;
const MAC_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;
type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// scrypt cost parameters as stored in a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Params {
    pub log_n: u8,
    pub r: u32,
    pub p: u32,
}

impl Params {
    /// Memory the KDF needs, 128·r·N bytes (saturating at `u64::MAX`).
    pub fn memory_bytes(&self) -> u64 {
        1u64.checked_shl(u32::from(self.log_n))
            .and_then(|n| n.checked_mul(u64::from(self.r)))
            .and_then(|x| x.checked_mul(128))
            .unwrap_or(u64::MAX)
    }

    /// Work of the KDF, N·r·p (each unit mixes 128 bytes twice; saturating).
    pub fn work(&self) -> u64 {
        1u64.checked_shl(u32::from(self.log_n))
            .and_then(|n| n.checked_mul(u64::from(self.r)))
            .and_then(|x| x.checked_mul(u64::from(self.p)))
            .unwrap_or(u64::MAX)
    }

    /// SPEC.md V4-5: logN in 1..=LIM-18, r and p positive, r·p ≤ LIM-17.
    pub fn validate(&self) -> Result<()> {
        if self.log_n == 0 || self.log_n > 63 {
            bail!(
                Malformed,
                "scrypt logN {} outside 1..=63 (V4-5)",
                self.log_n
            );
        }
        if self.log_n > limits::MAX_SCRYPT_LOG_N {
            bail!(
                LimitExceeded,
                "scrypt logN {} above the limit of {} (LIM-18)",
                self.log_n,
                limits::MAX_SCRYPT_LOG_N
            );
        }
        if self.r == 0 || self.p == 0 {
            bail!(
                Malformed,
                "scrypt r = {} and p = {} must be positive (V4-5)",
                self.r,
                self.p
            );
        }
        if u64::from(self.r) * u64::from(self.p) > limits::MAX_SCRYPT_R_TIMES_P {
            bail!(
                Malformed,
                "scrypt r·p = {}·{} is not below 2^30 (V4-5, LIM-17)",
                self.r,
                self.p
            );
        }
        Ok(())
    }
}

/// Caps on one KDF's cost (SPEC.md V4-4, LIM-19, LIM-20).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfLimit {
    /// Largest 128·r·N, in bytes.
    pub max_memory: u64,
    /// Largest N·r·p.
    pub max_work: u64,
}

impl Default for KdfLimit {
    fn default() -> KdfLimit {
        KdfLimit {
            max_memory: limits::DEFAULT_SCRYPT_MAX_MEMORY,
            max_work: limits::DEFAULT_SCRYPT_MAX_WORK,
        }
    }
}

/// The first 64 bytes of a container, validated (SPEC.md V4-1, V4-5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerHeader {
    pub params: Params,
    pub salt: [u8; 32],
    raw: [u8; 64],
}

impl ContainerHeader {
    /// The 64 header bytes as received (covered by the header MAC).
    pub fn raw(&self) -> &[u8; 64] {
        &self.raw
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        x.copy_from_slice(s);
    }
    u32::from_be_bytes(x)
}

/// Parse and validate a container's header (SPEC.md V4-1, V4-5). Shorter than 128 bytes
/// is Malformed (the member is complete; its container is not); wrong magic or checksum Malformed; a version other than 0 Unsupported.
/// The cost is *not* checked here: call [`check_cost`] before [`derive_keys`].
pub fn parse_header(untrusted: &[u8]) -> Result<ContainerHeader> {
    if untrusted.len() < OVERHEAD {
        bail!(
            Malformed,
            "scrypt container is {} bytes, shorter than the {OVERHEAD} every container has",
            untrusted.len()
        );
    }
    let mut raw = [0u8; 64];
    raw.copy_from_slice(&untrusted[..64]);
    if &raw[..6] != MAGIC {
        bail!(Malformed, "scrypt container does not start with `scrypt`");
    }
    if raw[6] != 0 {
        bail!(Unsupported, "scrypt container version {} (only 0)", raw[6]);
    }
    let sum = Sha256::digest(&raw[..48]);
    if !bool::from(sum[..16].ct_eq(&raw[48..64])) {
        bail!(Malformed, "scrypt container header checksum mismatch");
    }
    let params = Params {
        log_n: raw[7],
        r: be32(&raw, 8),
        p: be32(&raw, 12),
    };
    params.validate()?;
    let mut salt = [0u8; 32];
    salt.copy_from_slice(&raw[16..48]);
    Ok(ContainerHeader { params, salt, raw })
}

/// SPEC.md V4-4: refuse a KDF whose memory (128·r·N) or work (N·r·p) exceeds the limit,
/// before running it.
pub fn check_cost(params: &Params, limit: &KdfLimit) -> Result<()> {
    let (mem, work) = (params.memory_bytes(), params.work());
    if mem > limit.max_memory {
        bail!(
            LimitExceeded,
            "scrypt parameters (logN {}, r {}, p {}) demand {} of memory, more than the limit \
             of {} (LIM-19); raise it with --max-kdf-memory if you trust this archive",
            params.log_n,
            params.r,
            params.p,
            human(mem),
            human(limit.max_memory)
        );
    }
    if work > limit.max_work {
        bail!(
            LimitExceeded,
            "scrypt parameters (logN {}, r {}, p {}) demand work N·r·p = {work}, more than the \
             limit of {} (LIM-20); see --max-kdf-memory to raise the KDF limits if you trust \
             this archive",
            params.log_n,
            params.r,
            params.p,
            limit.max_work
        );
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!(
            "{bytes} bytes ({:.1} GiB)",
            bytes as f64 / (1u64 << 30) as f64
        )
    } else {
        format!(
            "{bytes} bytes ({:.1} MiB)",
            bytes as f64 / (1u64 << 20) as f64
        )
    }
}

/// The two keys derived from the passphrase; zeroized on drop.
pub struct Keys {
    enc: [u8; 32],
    mac: [u8; 32],
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.enc.zeroize();
        self.mac.zeroize();
    }
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

/// Run the KDF (expensive: 128·r·N bytes of memory; the caller decides on which thread).
/// Call [`check_cost`] first (V4-4). Fails only if the parameters cannot be represented
/// on this machine (LimitExceeded) or are invalid (Malformed).
pub fn derive_keys(passphrase: &[u8], header: &ContainerHeader) -> Result<Keys> {
    kdf(passphrase, &header.params, &header.salt)
}

fn kdf(passphrase: &[u8], params: &Params, salt: &[u8; 32]) -> Result<Keys> {
    params.validate()?;
    let p = scrypt::Params::new(params.log_n, params.r, params.p).map_err(|_| {
        Error::limit(format!(
            "scrypt parameters (logN {}, r {}, p {}) exceed this machine's address space",
            params.log_n, params.r, params.p
        ))
    })?;
    let mut dk = [0u8; 64];
    scrypt::scrypt(passphrase, salt, &p, &mut dk)
        .map_err(|_| Error::malformed("scrypt output length rejected"))?;
    let mut keys = Keys {
        enc: [0; 32],
        mac: [0; 32],
    };
    keys.enc.copy_from_slice(&dk[..32]);
    keys.mac.copy_from_slice(&dk[32..]);
    dk.zeroize();
    Ok(keys)
}

fn mac_of(keys: &Keys, parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(&keys.mac)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn ctr(keys: &Keys, buf: &mut [u8]) -> Result<()> {
    let mut c = Aes256Ctr::new(&keys.enc.into(), &[0u8; 16].into());
    c.try_apply_keystream(buf)
        .map_err(|_| Error::limit("scrypt container too long for its CTR keystream"))
}

/// Check both MACs of `container` (length ≥ 128 assumed by the caller) and return the
/// ciphertext range.
fn authenticate(keys: &Keys, container: &[u8]) -> Result<std::ops::Range<usize>> {
    if container.len() < OVERHEAD {
        bail!(
            Malformed,
            "scrypt container is {} bytes, shorter than {OVERHEAD}",
            container.len()
        );
    }
    let (head, rest) = container.split_at(64);
    let (hmac_hdr, _) = rest.split_at(MAC_LEN);
    if !bool::from(mac_of(keys, &[head])[..].ct_eq(hmac_hdr)) {
        bail!(
            WrongPassphrase,
            "scrypt container: the passphrase does not match"
        );
    }
    let end = container.len() - MAC_LEN;
    let (body, final_mac) = container.split_at(end);
    if !bool::from(mac_of(keys, &[body])[..].ct_eq(final_mac)) {
        bail!(MacFailure, "scrypt container MAC mismatch");
    }
    Ok(HEADER_LEN..end)
}

/// Authenticate and decrypt a whole container: header MAC (mismatch: WrongPassphrase),
/// then the final MAC (MacFailure), then AES-256-CTR. No plaintext before both pass.
pub fn open(keys: &Keys, container: &[u8]) -> Result<Vec<u8>> {
    let range = authenticate(keys, container)?;
    let mut out = container.get(range).unwrap_or_default().to_vec();
    ctr(keys, &mut out)?;
    Ok(out)
}

/// Like [`open`], but decrypts in place: on success `container` holds only the
/// plaintext; on failure it is left unchanged.
pub fn open_in_place(keys: &Keys, container: &mut Vec<u8>) -> Result<()> {
    let range = authenticate(keys, container)?;
    let len = range.len();
    if let Some(body) = container.get_mut(range.clone()) {
        ctr(keys, body)?;
    }
    container.copy_within(range, 0);
    container.truncate(len);
    Ok(())
}

/// Encode a container like `scrypt enc` with the given parameters and salt (packer,
/// tests). Invalid parameters are refused as by [`parse_header`].
pub fn seal(
    passphrase: &[u8],
    params: Params,
    salt: [u8; 32],
    plaintext: &[u8],
) -> Result<Vec<u8>> {
    let keys = kdf(passphrase, &params, &salt)?;
    let mut out = Vec::with_capacity(plaintext.len().saturating_add(OVERHEAD));
    out.extend_from_slice(MAGIC);
    out.push(0);
    out.push(params.log_n);
    out.extend_from_slice(&params.r.to_be_bytes());
    out.extend_from_slice(&params.p.to_be_bytes());
    out.extend_from_slice(&salt);
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum[..16]);
    let hdr_mac = mac_of(&keys, &[&out]);
    out.extend_from_slice(&hdr_mac);
    out.extend_from_slice(plaintext);
    if let Some(body) = out.get_mut(HEADER_LEN..) {
        ctr(&keys, body)?;
    }
    let fin = mac_of(&keys, &[&out]);
    out.extend_from_slice(&fin);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    const P: Params = Params {
        log_n: 4,
        r: 1,
        p: 1,
    };

    fn open_with(pass: &[u8], c: &[u8]) -> Result<Vec<u8>> {
        let h = parse_header(c)?;
        check_cost(&h.params, &KdfLimit::default())?;
        let k = derive_keys(pass, &h)?;
        let a = open(&k, c)?;
        let mut v = c.to_vec();
        open_in_place(&k, &mut v)?;
        assert_eq!(a, v);
        Ok(a)
    }

    #[test]
    fn rfc7914_vector() {
        // RFC 7914 §12, second vector (N = 1024, r = 8, p = 16), first 64 bytes.
        let p = scrypt::Params::new(10, 8, 16).unwrap();
        let mut dk = [0u8; 64];
        scrypt::scrypt(b"password", b"NaCl", &p, &mut dk).unwrap();
        assert_eq!(&dk[..8], &[0xfd, 0xba, 0xbe, 0x1c, 0x9d, 0x34, 0x72, 0x00]);
    }

    #[test]
    fn seal_open_round_trip() {
        for len in [0usize, 1, 15, 16, 17, 1000] {
            let pt: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let c = seal(b"pw", P, [5; 32], &pt).unwrap();
            assert_eq!(c.len(), len + OVERHEAD);
            assert_eq!(open_with(b"pw", &c).unwrap(), pt);
        }
    }

    #[test]
    fn tampering_is_classified_by_region() {
        let c = seal(b"pw", P, [5; 32], b"some plaintext here").unwrap();
        let class = |i: usize| {
            let mut t = c.clone();
            t[i] ^= 1;
            open_with(b"pw", &t).unwrap_err().class()
        };
        use ErrorClass::*;
        assert_eq!(class(0), Malformed); // magic
        assert_eq!(class(6), Unsupported); // version
        for i in [7, 8, 12, 16, 47, 48, 63] {
            assert_eq!(class(i), Malformed, "byte {i}"); // params, salt, checksum
        }
        for i in [64, 95] {
            assert_eq!(class(i), WrongPassphrase, "byte {i}");
        }
        for i in [96, c.len() - 33, c.len() - 32, c.len() - 1] {
            assert_eq!(class(i), MacFailure, "byte {i}");
        }
        assert_eq!(open_with(b"px", &c).unwrap_err().class(), WrongPassphrase);
        // V4-1: a member shorter than 128 bytes is malformed.
        assert_eq!(open_with(b"pw", &c[..127]).unwrap_err().class(), Malformed);
        assert_eq!(
            open_with(b"pw", &c[..c.len() - 1]).unwrap_err().class(),
            MacFailure
        );
    }

    #[test]
    fn in_place_failure_leaves_input() {
        let c = seal(b"pw", P, [5; 32], b"abc").unwrap();
        let k = derive_keys(b"pw", &parse_header(&c).unwrap()).unwrap();
        let mut t = c.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        let before = t.clone();
        assert_eq!(
            open_in_place(&k, &mut t).unwrap_err().class(),
            ErrorClass::MacFailure
        );
        assert_eq!(t, before);
    }

    #[test]
    fn param_validation() {
        let bad = |log_n, r, p| Params { log_n, r, p }.validate().unwrap_err().class();
        assert_eq!(bad(0, 8, 1), ErrorClass::Malformed);
        assert_eq!(bad(64, 8, 1), ErrorClass::Malformed);
        assert_eq!(bad(41, 8, 1), ErrorClass::LimitExceeded);
        assert_eq!(bad(10, 0, 1), ErrorClass::Malformed);
        assert_eq!(bad(10, 1, 0), ErrorClass::Malformed);
        assert_eq!(bad(10, 1 << 15, 1 << 15), ErrorClass::Malformed);
        assert_eq!(bad(10, u32::MAX, u32::MAX), ErrorClass::Malformed);
        assert!(Params {
            log_n: 10,
            r: (1 << 30) - 1,
            p: 1
        }
        .validate()
        .is_ok());
        assert!(seal(
            b"x",
            Params {
                log_n: 0,
                r: 1,
                p: 1
            },
            [0; 32],
            b""
        )
        .is_err());
    }

    #[test]
    fn cost_limits() {
        let lim = KdfLimit::default();
        let p21 = Params {
            log_n: 21,
            r: 8,
            p: 1,
        };
        assert_eq!(p21.memory_bytes(), 2 << 30);
        assert!(check_cost(&p21, &lim).is_ok());
        let p23 = Params {
            log_n: 23,
            r: 8,
            p: 1,
        };
        let e = check_cost(&p23, &lim).unwrap_err();
        assert_eq!(e.class(), ErrorClass::LimitExceeded);
        assert!(e.message().contains("--max-kdf-memory"), "{}", e.message());
        assert!(e.message().contains("8589934592"), "{}", e.message());
        let work = Params {
            log_n: 10,
            r: 8,
            p: (1 << 20) - 1,
        };
        assert_eq!(
            check_cost(&work, &lim).unwrap_err().class(),
            ErrorClass::LimitExceeded
        );
        let huge = Params {
            log_n: 40,
            r: (1 << 30) - 1,
            p: 1,
        };
        assert_eq!(huge.memory_bytes(), u64::MAX);
        assert_eq!(
            check_cost(&huge, &lim).unwrap_err().class(),
            ErrorClass::LimitExceeded
        );
        // The container path refuses before any KDF runs.
        let mut c = seal(b"pw", P, [1; 32], b"").unwrap();
        c[7] = 30;
        let sum = Sha256::digest(&c[..48]);
        c[48..64].copy_from_slice(&sum[..16]);
        let h = parse_header(&c).unwrap();
        assert_eq!(
            check_cost(&h.params, &lim).unwrap_err().class(),
            ErrorClass::LimitExceeded
        );
    }

    proptest::proptest! {
        #[test]
        fn parse_header_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_header(&bytes);
        }

        #[test]
        fn parse_header_with_magic_never_panics(tail in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let mut b = MAGIC.to_vec();
            b.push(0);
            b.extend_from_slice(&tail);
            if let Ok(h) = parse_header(&b) {
                let _ = check_cost(&h.params, &KdfLimit::default());
            }
        }
    }
}
