//! The `backup-header` member (SPEC.md HDR-1 … HDR-6).
//!
//! The header is parsed only from an [`AuthenticatedHeader`], which exists only once its
//! MAC verified (HDR-6, MAC-1): see [`crate::archive::authenticate_header`].

use crate::compression::Filter;
use crate::crypto::hmac_file::Digest;
use crate::crypto::openssl_enc::Cipher;
use crate::error::{Error, ErrorClass, Result};
use crate::limits::{MAX_BACKUP_ID_LEN, MAX_HEADER_LEN};

/// Header bytes whose MAC verified. Only this crate can make one.
#[derive(Debug, Clone, Copy)]
pub struct AuthenticatedHeader<'a> {
    bytes: &'a [u8],
}

impl<'a> AuthenticatedHeader<'a> {
    /// Callers must have verified the MAC over exactly `bytes` (MAC-1).
    pub(crate) fn new(bytes: &'a [u8]) -> Self {
        AuthenticatedHeader { bytes }
    }
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

/// Backup format versions this crate reads (v1 is a plain directory, out of scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    V2,
    V3,
    V4,
}

impl Version {
    pub fn number(self) -> u8 {
        match self {
            Version::V2 => 2,
            Version::V3 => 3,
            Version::V4 => 4,
        }
    }
}

/// A parsed, validated header (HDR-4, HDR-5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// `false` for a header-less v2 archive (ORD-8), whose settings are assumed.
    pub present: bool,
    pub encrypted: bool,
    pub compressed: bool,
    /// Set when `compressed`; v2 compresses per chunk without naming a filter.
    pub compression_filter: Option<String>,
    /// v2/v3 cipher when `encrypted`.
    pub crypto_algorithm: Option<String>,
    pub hmac_algorithm: String,
    /// v4 only.
    pub backup_id: Option<String>,
}

const KNOWN_KEYS: [&str; 7] = [
    "version",
    "encrypted",
    "compressed",
    "compression-filter",
    "crypto-algorithm",
    "hmac-algorithm",
    "backup-id",
];

fn header_error(message: impl Into<String>) -> Error {
    Error::new(ErrorClass::HeaderFailure, message)
}

/// HDR-2: keys and values are `[A-Za-z0-9-]*`.
fn is_token(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// HDR-5: booleans are `1`, `true`, `yes` or `0`, `false`, `no` (any case).
fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        _ => Err(header_error(format!(
            "backup-header {key}={value:?} is not a boolean"
        ))),
    }
}

impl Header {
    /// The fixed settings of a header-less v2 archive (ORD-8): `aes-256-cbc` when
    /// encrypted. The digest, encryption and compression are inferred from the
    /// authenticated qubes.xml by [`crate::archive::authenticate::authenticate_headerless_v2`].
    pub fn headerless_v2() -> Header {
        Header {
            version: Version::V2,
            present: false,
            encrypted: true,
            compressed: false,
            compression_filter: None,
            crypto_algorithm: Some("aes-256-cbc".into()),
            hmac_algorithm: "SHA1".into(),
            backup_id: None,
        }
    }

    /// Parse an authenticated header (HDR-1 … HDR-5).
    pub fn parse(auth: AuthenticatedHeader<'_>) -> Result<Header> {
        let bytes = auth.bytes();
        if bytes.len() as u64 > MAX_HEADER_LEN {
            return Err(Error::limit("backup-header exceeds LIM-1"));
        }
        let text = std::str::from_utf8(bytes)
            .ok()
            .filter(|t| t.is_ascii())
            .ok_or_else(|| header_error("backup-header contains non-ASCII bytes"))?;
        let mut values: [Option<&str>; KNOWN_KEYS.len()] = Default::default();
        for line in split_lines(text) {
            let mut parts = line.split('=');
            let (Some(key), Some(value), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(header_error(format!(
                    "backup-header line {line:?} is not one key=value pair"
                )));
            };
            if key.is_empty() || !is_token(key) || !is_token(value) {
                return Err(header_error(format!(
                    "backup-header line {line:?} is invalid"
                )));
            }
            if let Some(slot) = KNOWN_KEYS.iter().position(|k| *k == key) {
                if values[slot].replace(value).is_some() {
                    return Err(header_error(format!("backup-header repeats key {key:?}")));
                }
            }
        }
        let get = |k: &str| {
            KNOWN_KEYS
                .iter()
                .position(|x| *x == k)
                .and_then(|i| values[i])
        };
        let required = |k: &str| {
            get(k).ok_or_else(|| header_error(format!("backup-header lacks required key {k:?}")))
        };
        let version = match get("version") {
            None => Version::V2,
            Some("2") => Version::V2,
            Some("3") => Version::V3,
            Some("4") => Version::V4,
            Some("1") => {
                return Err(Error::unsupported(
                    "backup-header says version 1, which is a plain directory",
                ))
            }
            Some(v)
                if !v.is_empty()
                    && !v.starts_with('0')
                    && v.bytes().all(|b| b.is_ascii_digit()) =>
            {
                return Err(Error::unsupported(format!(
                    "backup format version {v} is not supported"
                )))
            }
            Some(v) => {
                return Err(header_error(format!(
                    "backup-header version {v:?} is not a number"
                )))
            }
        };
        let encrypted = parse_bool("encrypted", required("encrypted")?)?;
        let compressed = parse_bool("compressed", required("compressed")?)?;
        let hmac_algorithm = required("hmac-algorithm")?.to_string();
        if version == Version::V4 && !hmac_algorithm.eq_ignore_ascii_case("scrypt") {
            // HDR-5, MAC-3: a v4 header is authenticated by a scrypt container.
            return Err(header_error(format!(
                "a version 4 header must name hmac-algorithm scrypt, not {hmac_algorithm:?} (HDR-5, MAC-3)"
            )));
        }
        if version < Version::V4 && Digest::from_name(&hmac_algorithm).is_none() {
            return Err(Error::unsupported(format!(
                "hmac-algorithm {hmac_algorithm:?} is not supported for version {}",
                version.number()
            )));
        }
        let crypto_algorithm = if encrypted && version < Version::V4 {
            let name = required("crypto-algorithm")?;
            if Cipher::from_name(name).is_none() {
                return Err(Error::unsupported(format!(
                    "crypto-algorithm {name:?} is not supported (V3-6)"
                )));
            }
            Some(name.to_string())
        } else {
            get("crypto-algorithm").map(str::to_string)
        };
        if version == Version::V4
            && crypto_algorithm
                .as_deref()
                .is_some_and(|c| !c.eq_ignore_ascii_case("scrypt"))
        {
            return Err(header_error(
                "a version 4 header may only name crypto-algorithm scrypt",
            ));
        }
        let compression_filter = if compressed && version >= Version::V3 {
            let name = required("compression-filter")?;
            Filter::from_header(true, Some(name))?;
            Some(name.to_string())
        } else {
            None
        };
        let backup_id = if version == Version::V4 {
            let id = required("backup-id")?;
            if id.len() > MAX_BACKUP_ID_LEN {
                return Err(Error::limit(format!(
                    "backup-id is longer than LIM-22 ({MAX_BACKUP_ID_LEN})"
                )));
            }
            if id.is_empty() || id.starts_with('-') {
                return Err(header_error(format!("backup-id {id:?} is invalid")));
            }
            Some(id.to_string())
        } else {
            None
        };
        if version == Version::V4 && !encrypted {
            return Err(Error::unsupported(
                "a version 4 backup must be encrypted with scrypt",
            ));
        }
        Ok(Header {
            version,
            present: true,
            encrypted,
            compressed,
            compression_filter,
            crypto_algorithm,
            hmac_algorithm,
            backup_id,
        })
    }
}

/// HDR-1, DEV-10: lines end at LF only (upstream's `splitlines()` also splits at CR, VT,
/// FF and 0x1C–0x1E; those bytes stay in the line and fail HDR-2). A final LF ends the last
/// line; it does not start an empty one.
fn split_lines(text: &str) -> Vec<&str> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty() {
        return Vec::new();
    }
    body.split('\n').collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Header> {
        Header::parse(AuthenticatedHeader::new(text.as_bytes()))
    }

    const V4: &str = "version=4\nencrypted=True\ncompressed=True\ncompression-filter=gzip\nhmac-algorithm=scrypt\nbackup-id=20161020T123455-1234\n";
    const V3: &str = "version=3\nhmac-algorithm=SHA512\ncrypto-algorithm=aes-256-cbc\nencrypted=True\ncompressed=True\ncompression-filter=gzip\n";

    #[test]
    fn parses_real_v4_and_v3_headers() {
        let h = parse(V4).unwrap();
        assert_eq!(h.version, Version::V4);
        assert_eq!(h.backup_id.as_deref(), Some("20161020T123455-1234"));
        assert_eq!(h.compression_filter.as_deref(), Some("gzip"));
        let h = parse(V3).unwrap();
        assert_eq!((h.version, h.encrypted), (Version::V3, true));
        assert_eq!(h.crypto_algorithm.as_deref(), Some("aes-256-cbc"));
    }

    #[test]
    fn v2_header_has_no_version_key() {
        let h = parse(
            "hmac-algorithm=SHA1\ncrypto-algorithm=aes-256-cbc\nencrypted=True\ncompressed=False\n",
        )
        .unwrap();
        assert_eq!((h.version, h.compressed), (Version::V2, false));
    }

    #[test]
    fn unknown_keys_are_ignored_but_known_duplicates_are_not() {
        assert!(parse(&format!("{V4}x-extra=1\nx-extra=2\n")).is_ok());
        assert_eq!(
            parse(&format!("{V4}version=4\n")).unwrap_err().class(),
            ErrorClass::HeaderFailure
        );
    }

    #[test]
    fn grammar_violations_are_header_failures() {
        for bad in [
            format!("{V4}\n"),
            V4.replace("version=4", "version = 4"),
            V4.replace("version=4", "version=4=4"),
            V4.replace("backup-id=20161020T123455-1234", "backup-id=-x"),
            V4.replace("gzip", "gz.ip"),
            V4.replace("\nbackup-id=20161020T123455-1234", ""),
            format!("{V4}é=1\n"),
            V3.replace("crypto-algorithm=aes-256-cbc\n", ""),
        ] {
            assert_eq!(
                parse(&bad).unwrap_err().class(),
                ErrorClass::HeaderFailure,
                "{bad:?}"
            );
        }
        assert_eq!(
            parse(&V4.replace("version=4", "version=5"))
                .unwrap_err()
                .class(),
            ErrorClass::Unsupported
        );
    }

    /// HDR-1, HDR-2, DEV-10: LF is the only line break; CR, VT and spaces are refused.
    #[test]
    fn lines_split_at_lf_only() {
        assert_eq!(split_lines("a\r\nb\rc\x0bd\n"), ["a\r", "b\rc\x0bd"]);
        assert_eq!(split_lines("a\n\n"), ["a", ""]);
        assert_eq!(split_lines("a"), ["a"]);
        assert!(split_lines("").is_empty());
        for bad in [
            V4.replace('\n', "\r\n"),
            V4.replace("version=4\n", "version=4\r"),
            V4.replace("version=4\n", "version=4\x0b"),
            V4.replace("version=4", " version=4"),
            V4.replace("version=4", "version=4\t"),
        ] {
            assert_eq!(
                parse(&bad).unwrap_err().class(),
                ErrorClass::HeaderFailure,
                "{bad:?}"
            );
        }
    }

    /// HDR-5, MAC-3: a v4 header naming a digest is a header failure, not unsupported.
    #[test]
    fn v4_hmac_algorithm_must_be_scrypt() {
        for name in ["sha512", "whirlpool", ""] {
            let bad = V4.replace("hmac-algorithm=scrypt", &format!("hmac-algorithm={name}"));
            assert_eq!(
                parse(&bad).unwrap_err().class(),
                ErrorClass::HeaderFailure,
                "{bad:?}"
            );
        }
        assert!(parse(&V4.replace("=scrypt", "=SCRYPT")).is_ok());
        assert_eq!(
            parse(&V4.replace("encrypted=True", "encrypted=False"))
                .unwrap_err()
                .class(),
            ErrorClass::Unsupported
        );
    }

    #[test]
    fn booleans_are_strict() {
        for t in ["True", "yes", "1", "TRUE"] {
            assert!(parse_bool("k", t).unwrap());
        }
        for f in ["False", "no", "0"] {
            assert!(!parse_bool("k", f).unwrap());
        }
        for bad in ["on", "", "2"] {
            assert_eq!(
                parse_bool("k", bad).unwrap_err().class(),
                ErrorClass::HeaderFailure
            );
        }
    }

    #[test]
    fn value_domains_are_checked() {
        let unsupported = [
            V4.replace("gzip", "less"),
            V3.replace("SHA512", "whirlpool"),
            V3.replace("aes-256-cbc", "des-ede3-cbc"),
            V4.replace("version=4", "version=1"),
        ];
        for bad in unsupported {
            assert_eq!(
                parse(&bad).unwrap_err().class(),
                ErrorClass::Unsupported,
                "{bad:?}"
            );
        }
        assert_eq!(
            parse(&V4.replace("version=4", "version=04"))
                .unwrap_err()
                .class(),
            ErrorClass::HeaderFailure
        );
        assert_eq!(
            parse(&V4.replace("20161020T123455-1234", &"a".repeat(200)))
                .unwrap_err()
                .class(),
            ErrorClass::LimitExceeded
        );
        assert!(parse(&V3.replace("SHA512", "sha2-512")).is_ok());
    }
}
