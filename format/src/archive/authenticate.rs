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
use crate::limits::MAX_PASSPHRASE_LEN;

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
fn header_passphrase(passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    let mut p = Zeroizing::new(b"backup-header!".to_vec());
    p.extend_from_slice(passphrase);
    check_composite(p)
}

/// V4-2: upstream's `scrypt` reads at most LIM-21 bytes of passphrase, so a longer
/// composite passphrase could never have been used by it.
fn check_composite(p: Zeroizing<Vec<u8>>) -> Result<Zeroizing<Vec<u8>>> {
    if p.len() > MAX_PASSPHRASE_LEN {
        return Err(Error::limit(format!(
            "the scrypt passphrase (id!name!passphrase) exceeds LIM-21 ({MAX_PASSPHRASE_LEN} bytes)"
        )));
    }
    Ok(p)
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
        return Err(match parse_hmac_file(untrusted_mac) {
            Ok(mac) => Error::unsupported(format!(
                "backup-header.hmac holds a {}-byte MAC, which no supported digest produces (MAC-2)",
                mac.len()
            )),
            Err(_) => Error::new(
                ErrorClass::HeaderFailure,
                "backup-header.hmac is neither a scrypt container nor an HMAC line (MAC-2)",
            ),
        });
    }
    let mut verified = None;
    for algorithm in candidates {
        match algorithm {
            MacAlgorithm::Scrypt => {
                let mut container = untrusted_mac.to_vec();
                open_container(
                    &header_passphrase(credentials.passphrase())?,
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
    let passphrase = check_composite(chunk_passphrase(backup_id, name, credentials.passphrase()))
        .map_err(|e| e.context(format!("{name}.enc")))?;
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

/// ORD-8: infer a header-less v2 archive's settings from its authenticated
/// `qubes.xml.000`: the digest is the one of MAC-2 that verifies the chunk; a chunk that
/// begins with `Salted__` is encrypted only; one that begins with a zlib header is
/// encrypted and compressed (`openssl enc -z` output, V3-5); one that begins with the gzip
/// magic is compressed only; anything else is a plain tar volume.
pub fn authenticate_headerless_v2(
    untrusted_xml_chunk: &[u8],
    untrusted_mac: &[u8],
    credentials: &Credentials,
) -> Result<Header> {
    let expected = parse_hmac_file(untrusted_mac).map_err(|e| e.context("qubes.xml.000.hmac"))?;
    let digest = header_mac_candidates(untrusted_mac)
        .into_iter()
        .find_map(|alg| match alg {
            MacAlgorithm::Hmac(d)
                if verify_mac(
                    &expected,
                    &hmac(d, credentials.passphrase(), untrusted_xml_chunk),
                ) =>
            {
                Some(d)
            }
            _ => None,
        })
        .ok_or_else(|| {
            Error::new(
                ErrorClass::WrongPassphrase,
                "qubes.xml.000 MAC does not verify: wrong passphrase (or a corrupted archive)",
            )
        })?;
    // From here on the chunk is authenticated.
    let chunk = untrusted_xml_chunk;
    // RFC 1950: CMF 0x78 (deflate, 32 KiB window) and (CMF·256 + FLG) % 31 == 0.
    let zlib = matches!(chunk, [0x78, flg, ..] if (0x7800u16 + u16::from(*flg)) % 31 == 0);
    let (encrypted, compressed) = if chunk.starts_with(crate::crypto::openssl_enc::SALTED_MAGIC) {
        (true, false)
    } else if zlib {
        (true, true)
    } else {
        (false, chunk.starts_with(&[0x1f, 0x8b]))
    };
    Ok(Header {
        compressed,
        encrypted,
        hmac_algorithm: digest.name().to_string(),
        ..Header::headerless_v2()
    })
}

/// MAC-7 (KDF prefetch): the `backup-id` a header *claims*, read before it is
/// authenticated, so the qubes.xml KDF can run in parallel with the header's. The value
/// is only ever compared with the authenticated header's `backup-id`: keys derived from it
/// are discarded unless the two are equal. Nothing else is taken from unauthenticated
/// bytes.
pub fn backup_id_hint(untrusted_header: &[u8]) -> Option<String> {
    untrusted_header
        .split(|&b| b == b'\n')
        .find_map(|line| line.strip_prefix(b"backup-id="))
        .filter(|id| {
            !id.is_empty()
                && id.len() <= crate::limits::MAX_BACKUP_ID_LEN
                && id.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        })
        .and_then(|id| String::from_utf8(id.to_vec()).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// MAC-7: the prefetch takes only a well-formed `backup-id` claim.
    #[test]
    fn backup_id_hint_takes_only_a_well_formed_claim() {
        let h = b"version=4\nbackup-id=20161020T123455-1234\n";
        assert_eq!(backup_id_hint(h).as_deref(), Some("20161020T123455-1234"));
        assert_eq!(backup_id_hint(b"backup-id=a b\n"), None);
        assert_eq!(backup_id_hint(b"backup-id=\n"), None);
        assert_eq!(backup_id_hint(b"backup-id=x\r\n"), None);
        assert_eq!(backup_id_hint(b"version=4\n"), None);
    }

    #[test]
    fn composite_passphrases_are_bounded() {
        let long = vec![b'p'; MAX_PASSPHRASE_LEN];
        let creds = Credentials::new(long, KdfLimit::default());
        let mut container = vec![0u8; 200];
        let e = open_v4_chunk("id", "vm3/private.img.000", &creds, &mut container).unwrap_err();
        assert_eq!(e.class(), ErrorClass::LimitExceeded);
    }
}
