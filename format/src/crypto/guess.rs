//! Which algorithm authenticates `backup-header` (SPEC.md MAC-2), decided from the
//! untrusted `backup-header.hmac` member alone, before the header is parsed (MAC-1); and
//! the check that the authenticated header names that same algorithm (MAC-3).
//!
//! Upstream tries `scrypt`, then every digest OpenSSL lists, until one verifies. We make
//! the same choice from a table: a v4 `backup-header.hmac` is a scrypt container; a v2/v3
//! one is an `openssl dgst` line whose MAC length selects the digests worth trying.

use super::hmac_file::{parse_hmac_file, Digest};
use super::scrypt_container::MAGIC;

/// An algorithm that can authenticate `backup-header`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MacAlgorithm {
    /// v4: `backup-header.hmac` is a scrypt container of the header (SPEC.md V4-3).
    Scrypt,
    /// v2/v3: `backup-header.hmac` is an `openssl dgst -hmac` line (SPEC.md MAC-4).
    Hmac(Digest),
}

/// The guessing table of SPEC.md MAC-2, in trial order. A `.hmac` line's MAC length
/// selects the rows with that output length; within a length the order is fixed.
///
/// | MAC bytes | candidates, in order       |
/// |-----------|----------------------------|
/// | 64        | sha512                     |
/// | 32        | sha256, sha512-256         |
/// | 20        | sha1                       |
/// | 48        | sha384                     |
/// | 28        | sha224, sha512-224         |
/// | 16        | md5                        |
pub const HMAC_GUESS_ORDER: [Digest; 8] = Digest::ALL;

/// The algorithms worth trying for this `backup-header.hmac` member, in order (SPEC.md
/// MAC-2): `[Scrypt]` if it starts with the scrypt container magic; otherwise the digests
/// of [`HMAC_GUESS_ORDER`] whose output length equals the MAC in the parsed line; empty
/// if the member is neither.
pub fn header_mac_candidates(untrusted_hmac_member: &[u8]) -> Vec<MacAlgorithm> {
    if untrusted_hmac_member.starts_with(MAGIC) {
        return vec![MacAlgorithm::Scrypt];
    }
    let Ok(mac) = parse_hmac_file(untrusted_hmac_member) else {
        return Vec::new();
    };
    HMAC_GUESS_ORDER
        .into_iter()
        .filter(|d| d.output_len() == mac.len())
        .map(MacAlgorithm::Hmac)
        .collect()
}

/// SPEC.md MAC-3: the authenticated header's `hmac-algorithm` must name the algorithm that
/// verified it (`scrypt`, or a digest name in any case/spelling [`Digest::from_name`] takes).
pub fn header_algorithm_agrees(header_value: &str, verified: MacAlgorithm) -> bool {
    match verified {
        MacAlgorithm::Scrypt => header_value.eq_ignore_ascii_case("scrypt"),
        MacAlgorithm::Hmac(d) => Digest::from_name(header_value) == Some(d),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::hmac_file::{format_hmac_file, hmac};
    use crate::crypto::scrypt_container::{seal, Params};

    fn candidates_for(d: Digest) -> Vec<MacAlgorithm> {
        let line = format_hmac_file(d, &hmac(d, b"pass", b"version=3\n"));
        header_mac_candidates(line.as_bytes())
    }

    #[test]
    fn scrypt_container_is_scrypt_only() {
        let c = seal(
            b"backup-header!pass",
            Params {
                log_n: 1,
                r: 1,
                p: 1,
            },
            [7; 32],
            b"version=4\n",
        )
        .unwrap();
        assert_eq!(header_mac_candidates(&c), vec![MacAlgorithm::Scrypt]);
    }

    #[test]
    fn one_candidate_per_length() {
        use MacAlgorithm::Hmac;
        assert_eq!(candidates_for(Digest::Sha512), vec![Hmac(Digest::Sha512)]);
        assert_eq!(candidates_for(Digest::Sha1), vec![Hmac(Digest::Sha1)]);
        assert_eq!(candidates_for(Digest::Sha384), vec![Hmac(Digest::Sha384)]);
        assert_eq!(candidates_for(Digest::Md5), vec![Hmac(Digest::Md5)]);
        let l32 = vec![Hmac(Digest::Sha256), Hmac(Digest::Sha512_256)];
        assert_eq!(candidates_for(Digest::Sha256), l32);
        assert_eq!(candidates_for(Digest::Sha512_256), l32);
        let l28 = vec![Hmac(Digest::Sha224), Hmac(Digest::Sha512_224)];
        assert_eq!(candidates_for(Digest::Sha224), l28);
        assert_eq!(candidates_for(Digest::Sha512_224), l28);
    }

    #[test]
    fn every_digest_is_a_candidate_for_its_own_mac() {
        for d in Digest::ALL {
            assert!(candidates_for(d).contains(&MacAlgorithm::Hmac(d)), "{d}");
        }
    }

    #[test]
    fn junk_gives_no_candidates() {
        assert!(header_mac_candidates(b"").is_empty());
        assert!(header_mac_candidates(b"(stdin)= 0011\n").is_empty());
        assert!(header_mac_candidates(b"garbage").is_empty());
    }

    #[test]
    fn header_agreement() {
        use MacAlgorithm::*;
        assert!(header_algorithm_agrees("scrypt", Scrypt));
        assert!(header_algorithm_agrees("SHA512", Hmac(Digest::Sha512)));
        assert!(header_algorithm_agrees("sha512", Hmac(Digest::Sha512)));
        assert!(!header_algorithm_agrees("sha256", Hmac(Digest::Sha512)));
        assert!(!header_algorithm_agrees("scrypt", Hmac(Digest::Sha512)));
        assert!(!header_algorithm_agrees("sha512", Scrypt));
        assert!(!header_algorithm_agrees("", Scrypt));
    }
}
