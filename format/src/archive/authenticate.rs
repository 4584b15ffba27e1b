//! Authentication before parsing (SPEC.md MAC-1 … MAC-6, V4-2 … V4-6).
//!
//! Every function here takes untrusted member bytes and returns them (or their
//! plaintext) only once their MAC verified. The header parser can only be reached
//! through [`authenticate_header`], because [`AuthenticatedHeader`] can only be built here.

use zeroize::Zeroizing;

use crate::crypto::guess::{header_algorithm_agrees, header_mac_candidates, MacAlgorithm};
#[cfg(not(fuzzing))]
use crate::crypto::hmac_file::verify_mac;
use crate::crypto::hmac_file::{hmac, parse_hmac_file, Digest};
#[cfg(not(fuzzing))]
use crate::crypto::scrypt_container;
use crate::crypto::scrypt_container::KdfLimit;
use crate::error::{Error, ErrorClass, Result};
// Fuzzing builds only: the fixed-key mode of `crate::fuzzing`.
#[cfg(fuzzing)]
use crate::fuzzing::{open_container, verify_mac};
use crate::header::{AuthenticatedHeader, Header};

/// The secrets and cost limits a reader works with.
pub struct Credentials {
    passphrase: Zeroizing<Vec<u8>>,
    pub kdf_limit: KdfLimit,
}

impl Credentials {
    pub fn new(passphrase: Vec<u8>, kdf_limit: KdfLimit) -> Credentials {
        Credentials {
            passphrase: Zeroizing::new(passphrase),
            kdf_limit,
        }
    }
    pub fn passphrase(&self) -> &[u8] {
        &self.passphrase
    }
}

/// The outcome of [`authenticate_header`].
#[derive(Debug, Clone)]
pub struct AuthenticatedArchive {
    pub header: Header,
    /// The algorithm that verified the header (MAC-2); the header agrees with it (MAC-3).
    pub header_mac: MacAlgorithm,
}

/// V4-2: the scrypt passphrase of the header container.
fn header_passphrase(passphrase: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut p = Zeroizing::new(b"backup-header!".to_vec());
    p.extend_from_slice(passphrase);
    p
}

/// V4-2: the scrypt passphrase of chunk `name` (member name without `.enc`).
pub fn chunk_passphrase(backup_id: &str, name: &str, passphrase: &[u8]) -> Zeroizing<Vec<u8>> {
    let mut p = Zeroizing::new(Vec::with_capacity(
        backup_id.len() + name.len() + passphrase.len() + 2,
    ));
    p.extend_from_slice(backup_id.as_bytes());
    p.push(b'!');
    p.extend_from_slice(name.as_bytes());
    p.push(b'!');
    p.extend_from_slice(passphrase);
    p
}

/// Open a scrypt container in place after checking its KDF cost (V4-4) and both MACs.
#[cfg(not(fuzzing))]
fn open_container(passphrase: &[u8], container: &mut Vec<u8>, limit: &KdfLimit) -> Result<()> {
    let header = scrypt_container::parse_header(container)?;
    scrypt_container::check_cost(&header.params, limit)?;
    let keys = scrypt_container::derive_keys(passphrase, &header)?;
    scrypt_container::open_in_place(&keys, container)
}

/// Authenticate `backup-header` with `backup-header.hmac`, then parse it (MAC-1 … MAC-3,
/// V4-3, HDR-6).
pub fn authenticate_header(
    untrusted_header: &[u8],
    untrusted_mac: &[u8],
    credentials: &Credentials,
) -> Result<AuthenticatedArchive> {
    let candidates = header_mac_candidates(untrusted_mac);
    if candidates.is_empty() {
        return Err(Error::new(
            ErrorClass::HeaderFailure,
            "backup-header.hmac is neither a scrypt container nor an HMAC line (MAC-2)",
        ));
    }
    let mut verified = None;
    for algorithm in candidates {
        match algorithm {
            MacAlgorithm::Scrypt => {
                let mut container = untrusted_mac.to_vec();
                open_container(
                    &header_passphrase(credentials.passphrase()),
                    &mut container,
                    &credentials.kdf_limit,
                )
                .map_err(|e| match e.class() {
                    ErrorClass::MacFailure => e.reclass(ErrorClass::HeaderFailure),
                    _ => e,
                })
                .map_err(|e| e.context("backup-header.hmac"))?;
                // V4-3: the container must hold exactly the header bytes.
                if container != untrusted_header {
                    return Err(Error::new(
                        ErrorClass::HeaderFailure,
                        "backup-header differs from its authenticated copy in backup-header.hmac",
                    ));
                }
                verified = Some(algorithm);
            }
            MacAlgorithm::Hmac(digest) => {
                let expected = parse_hmac_file(untrusted_mac)?;
                let computed = hmac(digest, credentials.passphrase(), untrusted_header);
                if verify_mac(&expected, &computed) {
                    verified = Some(algorithm);
                    break;
                }
            }
        }
    }
    let Some(header_mac) = verified else {
        return Err(Error::new(
            ErrorClass::WrongPassphrase,
            "backup-header MAC does not verify: wrong passphrase (or a corrupted header)",
        ));
    };
    let header = Header::parse(AuthenticatedHeader::new(untrusted_header))?;
    if !header_algorithm_agrees(&header.hmac_algorithm, header_mac) {
        return Err(Error::new(
            ErrorClass::HeaderFailure,
            format!(
                "backup-header names hmac-algorithm {:?} but verified with {header_mac:?} (MAC-3)",
                header.hmac_algorithm
            ),
        ));
    }
    Ok(AuthenticatedArchive { header, header_mac })
}

/// Open a v4 chunk in place: `container` becomes its plaintext (V4-2, V4-4, V4-6).
/// `name` is the member name without `.enc`.
pub fn open_v4_chunk(
    backup_id: &str,
    name: &str,
    credentials: &Credentials,
    container: &mut Vec<u8>,
) -> Result<()> {
    let passphrase = chunk_passphrase(backup_id, name, credentials.passphrase());
    open_container(&passphrase, container, &credentials.kdf_limit)
        .map_err(|e| match e.class() {
            // The header proved the passphrase right: a chunk that does not open with it
            // is bound to another name or backup (V4-6).
            ErrorClass::WrongPassphrase => Error::mac(
                "does not open with this backup's passphrase, id and name (moved, renamed or foreign chunk)",
            ),
            _ => e,
        })
        .map_err(|e| e.context(format!("{name}.enc")))
}

/// Check a v2/v3 data chunk against its `.hmac` member (MAC-4 … MAC-6).
pub fn verify_chunk_hmac(
    digest: Digest,
    credentials: &Credentials,
    name: &str,
    data: &[u8],
    untrusted_mac: &[u8],
) -> Result<()> {
    let expected = parse_hmac_file(untrusted_mac).map_err(|e| e.context(format!("{name}.hmac")))?;
    if !verify_mac(&expected, &hmac(digest, credentials.passphrase(), data)) {
        return Err(Error::mac(format!("{name}: HMAC does not verify")));
    }
    Ok(())
}

/// The digest a v2/v3 header names for chunk MACs.
pub fn chunk_digest(header: &Header) -> Result<Digest> {
    Digest::from_name(&header.hmac_algorithm).ok_or_else(|| {
        Error::unsupported(format!(
            "hmac-algorithm {:?} is not supported",
            header.hmac_algorithm
        ))
    })
}
