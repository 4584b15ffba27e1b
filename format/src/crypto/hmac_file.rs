//! v2/v3 `.hmac` members: the `openssl dgst -hmac` text line (SPEC.md MAC-4), the HMAC
//! keyed with the passphrase (MAC-5) and its constant-time comparison (MAC-6).

use hmac::{Hmac, KeyInit, Mac};
use subtle::ConstantTimeEq;

use crate::bail;
use crate::error::Result;
use crate::limits;

/// The HMAC digests a v2/v3 header may name (`hmac-algorithm`, SPEC.md MAC-2/MAC-3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Digest {
    Md5,
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
    Sha512_224,
    Sha512_256,
}

impl Digest {
    /// Every supported digest, in the guessing order of SPEC.md MAC-2 (most used first:
    /// Qubes writers used `SHA512`; header-less v2 assumed `SHA1`).
    pub const ALL: [Digest; 8] = [
        Digest::Sha512,
        Digest::Sha256,
        Digest::Sha1,
        Digest::Sha384,
        Digest::Sha224,
        Digest::Sha512_256,
        Digest::Sha512_224,
        Digest::Md5,
    ];

    /// Map an OpenSSL digest name, case-insensitively, in any of its spellings
    /// (`sha512`, `SHA512`, `sha-512`, `sha2-512`, `sha512-256`, `SHA2-512/256`, `md5`, …).
    pub fn from_name(untrusted_name: &str) -> Option<Digest> {
        if untrusted_name.len() > 16 {
            return None;
        }
        let lower = untrusted_name.to_ascii_lowercase();
        let d = match lower.as_str() {
            "md5" => Digest::Md5,
            "sha1" | "sha-1" => Digest::Sha1,
            "sha224" | "sha-224" | "sha2-224" => Digest::Sha224,
            "sha256" | "sha-256" | "sha2-256" => Digest::Sha256,
            "sha384" | "sha-384" | "sha2-384" => Digest::Sha384,
            "sha512" | "sha-512" | "sha2-512" => Digest::Sha512,
            "sha512-224" | "sha512/224" | "sha-512/224" | "sha2-512/224" => Digest::Sha512_224,
            "sha512-256" | "sha512/256" | "sha-512/256" | "sha2-512/256" => Digest::Sha512_256,
            _ => return None,
        };
        Some(d)
    }

    /// The canonical lowercase name (as `openssl dgst -<name>` takes it).
    pub fn name(self) -> &'static str {
        match self {
            Digest::Md5 => "md5",
            Digest::Sha1 => "sha1",
            Digest::Sha224 => "sha224",
            Digest::Sha256 => "sha256",
            Digest::Sha384 => "sha384",
            Digest::Sha512 => "sha512",
            Digest::Sha512_224 => "sha512-224",
            Digest::Sha512_256 => "sha512-256",
        }
    }

    /// Length of the HMAC output in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Digest::Md5 => 16,
            Digest::Sha1 => 20,
            Digest::Sha224 | Digest::Sha512_224 => 28,
            Digest::Sha256 | Digest::Sha512_256 => 32,
            Digest::Sha384 => 48,
            Digest::Sha512 => 64,
        }
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Longest MAC any supported digest produces.
const MAX_MAC_BYTES: usize = 64;

/// Parse a `.hmac` member (SPEC.md MAC-4): one line `<label>(<name>)= <hex>` with an
/// optional trailing `\n`, as printed by every OpenSSL version (`(stdin)= …`,
/// `SHA2-512(stdin)= …`, `HMAC-SHA512(file)= …`). The label is ignored; hex may be upper
/// or lower case. Returns the decoded MAC bytes.
pub fn parse_hmac_file(untrusted: &[u8]) -> Result<Vec<u8>> {
    if untrusted.len() as u64 > limits::MAX_HMAC_LEN {
        bail!(
            LimitExceeded,
            ".hmac file is {} bytes, more than the limit of {} (LIM-2)",
            untrusted.len(),
            limits::MAX_HMAC_LEN
        );
    }
    let line = untrusted.strip_suffix(b"\n").unwrap_or(untrusted);
    if line
        .iter()
        .any(|&b| !(0x20..0x7f).contains(&b) && b != b'\t')
    {
        bail!(
            Malformed,
            ".hmac file is not one line of printable ASCII text"
        );
    }
    // Split at the separator `)=` 1*SP (MAC-4); the hex digits never contain `)=`, so take
    // the last one.
    let Some(sep) = line.windows(3).rposition(|w| w == b")= ") else {
        bail!(Malformed, ".hmac file has no `(…)= ` before the MAC");
    };
    let (head, rest) = line.split_at(sep);
    let hex = rest.get(2..).unwrap_or_default();
    let spaces = hex.iter().take_while(|&&b| b == b' ').count();
    let hex = hex.get(spaces..).unwrap_or_default();
    let Some(open) = head.iter().position(|&b| b == b'(') else {
        bail!(Malformed, ".hmac file has no `(` before `)= `");
    };
    let (label, name) = head.split_at(open);
    if !label
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'/' || b == b'_')
    {
        bail!(Malformed, ".hmac file label has unexpected characters");
    }
    // Upstream splits on `=` and takes the second field, so a name with `=` never matched.
    if name.contains(&b'=') {
        bail!(Malformed, ".hmac file name field contains `=`");
    }
    decode_hex(hex)
}

fn decode_hex(hex: &[u8]) -> Result<Vec<u8>> {
    if hex.is_empty() || hex.len() % 2 != 0 {
        bail!(
            Malformed,
            ".hmac value has {} hex digits, expected a non-zero even count",
            hex.len()
        );
    }
    if hex.len() / 2 > MAX_MAC_BYTES {
        bail!(
            Malformed,
            ".hmac value has {} bytes, longer than any supported digest",
            hex.len() / 2
        );
    }
    let mut out = Vec::with_capacity(hex.len() / 2);
    for pair in hex.chunks_exact(2) {
        match (
            pair.first().and_then(|&c| nibble(c)),
            pair.get(1).and_then(|&c| nibble(c)),
        ) {
            (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
            _ => bail!(Malformed, ".hmac value is not hexadecimal"),
        }
    }
    Ok(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Lowercase hex, as `openssl dgst` prints it (for the packer).
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// The `.hmac` file line an OpenSSL 3 `openssl dgst -<d> -hmac` prints for stdin (packer).
pub fn format_hmac_file(d: Digest, mac: &[u8]) -> String {
    let label = match d {
        Digest::Md5 => "MD5",
        Digest::Sha1 => "SHA1",
        Digest::Sha224 => "SHA2-224",
        Digest::Sha256 => "SHA2-256",
        Digest::Sha384 => "SHA2-384",
        Digest::Sha512 => "SHA2-512",
        Digest::Sha512_224 => "SHA2-512/224",
        Digest::Sha512_256 => "SHA2-512/256",
    };
    format!("{label}(stdin)= {}\n", to_hex(mac))
}

/// Incremental HMAC (SPEC.md MAC-5: the key is the passphrase bytes), so a driver can MAC
/// a chunk while reading it.
#[derive(Clone)]
pub struct HmacState(Inner);

#[derive(Clone)]
enum Inner {
    Md5(Hmac<md5::Md5>),
    Sha1(Hmac<sha1::Sha1>),
    Sha224(Hmac<sha2::Sha224>),
    Sha256(Hmac<sha2::Sha256>),
    Sha384(Hmac<sha2::Sha384>),
    Sha512(Hmac<sha2::Sha512>),
    Sha512_224(Hmac<sha2::Sha512_224>),
    Sha512_256(Hmac<sha2::Sha512_256>),
}

fn keyed<M: KeyInit>(key: &[u8]) -> M {
    // HMAC hashes or pads keys of any length, so this never fails.
    M::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
}

macro_rules! each {
    ($self:expr, $m:ident => $e:expr) => {
        match $self {
            Inner::Md5($m) => $e,
            Inner::Sha1($m) => $e,
            Inner::Sha224($m) => $e,
            Inner::Sha256($m) => $e,
            Inner::Sha384($m) => $e,
            Inner::Sha512($m) => $e,
            Inner::Sha512_224($m) => $e,
            Inner::Sha512_256($m) => $e,
        }
    };
}

impl HmacState {
    pub fn new(d: Digest, key: &[u8]) -> HmacState {
        HmacState(match d {
            Digest::Md5 => Inner::Md5(keyed(key)),
            Digest::Sha1 => Inner::Sha1(keyed(key)),
            Digest::Sha224 => Inner::Sha224(keyed(key)),
            Digest::Sha256 => Inner::Sha256(keyed(key)),
            Digest::Sha384 => Inner::Sha384(keyed(key)),
            Digest::Sha512 => Inner::Sha512(keyed(key)),
            Digest::Sha512_224 => Inner::Sha512_224(keyed(key)),
            Digest::Sha512_256 => Inner::Sha512_256(keyed(key)),
        })
    }

    pub fn update(&mut self, data: &[u8]) {
        each!(&mut self.0, m => m.update(data))
    }

    pub fn finalize(self) -> Vec<u8> {
        each!(self.0, m => m.finalize().into_bytes().to_vec())
    }
}

impl std::fmt::Debug for HmacState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacState")
    }
}

/// One-shot HMAC of `data` under `key` with digest `d` (SPEC.md MAC-5).
pub fn hmac(d: Digest, key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut s = HmacState::new(d, key);
    s.update(data);
    s.finalize()
}

/// Compare a parsed MAC with a computed one in constant time (SPEC.md MAC-6). Lengths are
/// public; a length mismatch is simply `false`.
pub fn verify_mac(expected: &[u8], computed: &[u8]) -> bool {
    expected.len() == computed.len() && bool::from(expected.ct_eq(computed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    #[test]
    fn names_are_case_insensitive_and_round_trip() {
        for d in Digest::ALL {
            assert_eq!(Digest::from_name(d.name()), Some(d));
            assert_eq!(Digest::from_name(&d.name().to_uppercase()), Some(d));
            assert_eq!(hmac(d, b"k", b"x").len(), d.output_len());
        }
        assert_eq!(Digest::from_name("SHA2-512"), Some(Digest::Sha512));
        assert_eq!(Digest::from_name("sha-512"), Some(Digest::Sha512));
        assert_eq!(Digest::from_name("SHA2-512/256"), Some(Digest::Sha512_256));
        assert_eq!(Digest::from_name("sha3-512"), None);
        assert_eq!(Digest::from_name(""), None);
        assert_eq!(Digest::from_name("legacy:"), None);
    }

    #[test]
    fn rfc4231_case_2() {
        let mac = hmac(Digest::Sha256, b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            to_hex(&mac),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn incremental_equals_one_shot() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let mut s = HmacState::new(Digest::Sha512, b"pass");
        for c in data.chunks(33) {
            s.update(c);
        }
        assert_eq!(s.finalize(), hmac(Digest::Sha512, b"pass", &data));
    }

    #[test]
    fn label_variants_parse() {
        for line in [
            "(stdin)= 00ff\n",
            "(stdin)= 00FF",
            "SHA2-512(stdin)= 00ff\n",
            "HMAC-SHA512(file.000)= 00ff\n",
            "HMAC-SHA2-512(vm1/private.img.000)= 00Ff",
            "HMAC-SHA2-512/256(stdin)= 00ff",
            // MAC-4: one or more spaces after `)=`.
            "(stdin)=  00ff\n",
            "SHA2-512(stdin)=    00ff",
        ] {
            assert_eq!(
                parse_hmac_file(line.as_bytes()).unwrap(),
                vec![0, 255],
                "{line}"
            );
        }
    }

    #[test]
    fn malformed_lines_are_rejected() {
        for line in [
            "",
            "\n",
            "00ff\n",
            "(stdin)=00ff\n",
            "(stdin)= \n",
            "(stdin)= 0ff\n",
            "(stdin)= 00fg\n",
            "(stdin)= 00ff\n\n",
            "(stdin)= 00ff \n",
            "(std=in)= 00ff\n",
            "SHA 512(stdin)= 00ff\n",
            "(stdin)= 00ff\r\n",
            "stdin)= 00ff\n",
        ] {
            let e = parse_hmac_file(line.as_bytes()).unwrap_err();
            assert_eq!(e.class(), ErrorClass::Malformed, "{line:?}");
        }
        let long = format!("(stdin)= {}", "00".repeat(65));
        assert_eq!(
            parse_hmac_file(long.as_bytes()).unwrap_err().class(),
            ErrorClass::Malformed
        );
        let huge = vec![b'a'; 5000];
        assert_eq!(
            parse_hmac_file(&huge).unwrap_err().class(),
            ErrorClass::LimitExceeded
        );
        assert!(parse_hmac_file("(stdin)= é".as_bytes()).is_err());
    }

    #[test]
    fn format_then_parse() {
        let mac = hmac(Digest::Sha1, b"k", b"d");
        let line = format_hmac_file(Digest::Sha1, &mac);
        assert_eq!(parse_hmac_file(line.as_bytes()).unwrap(), mac);
    }

    #[test]
    fn verify_mac_compares_exactly() {
        assert!(verify_mac(&[1, 2, 3], &[1, 2, 3]));
        assert!(!verify_mac(&[1, 2, 3], &[1, 2, 4]));
        assert!(!verify_mac(&[1, 2], &[1, 2, 3]));
        assert!(!verify_mac(&[], &[1]));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse_hmac_file(&bytes);
        }

        #[test]
        fn parse_never_panics_on_near_valid(label in "[A-Za-z0-9/()= -]{0,12}", hex in "[0-9a-fA-FxX ]{0,140}") {
            let _ = parse_hmac_file(format!("{label}(stdin)= {hex}\n").as_bytes());
        }
    }
}
