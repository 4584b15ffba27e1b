//! Outer member names (SPEC.md NAME-1 … NAME-5).
//!
//! ```text
//! member  = "backup-header" | "backup-header.hmac" | chunk [ ".enc" | ".hmac" ]
//! chunk   = path "." index
//! index   = 3DIGIT (000–999) | nonzero-digit 3*DIGIT (1000 and up, no padding)
//! path    = relative path (NAME-3), whose last component may be "." (NAME-4)
//! ```

use crate::error::{Error, Result};
use crate::limits::MAX_CHUNK_INDEX;
use crate::paths::{escape, validate_relative, DotComponents};

/// The header member (NAME-1).
pub const HEADER: &str = "backup-header";
/// The header MAC member (NAME-1).
pub const HEADER_MAC: &str = "backup-header.hmac";
/// The qubes.xml file path (ORD-2).
pub const QUBES_XML: &str = "qubes.xml";

/// What a member's suffix says it holds (NAME-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkKind {
    /// `PATH.NNN`: a v2/v3 data chunk (ciphertext or compressed bytes).
    Data,
    /// `PATH.NNN.hmac`: the v2/v3 MAC of the data chunk of the same name.
    Hmac,
    /// `PATH.NNN.enc`: a v4 scrypt container.
    Enc,
}

/// A parsed member name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberName {
    Header,
    HeaderMac,
    Chunk {
        /// The backed-up file's path, e.g. `vm3/private.img`, `qubes.xml`, `vm9/.`.
        path: String,
        index: u32,
        kind: ChunkKind,
    },
}

impl MemberName {
    /// Parse an untrusted member name (NAME-1 … NAME-4).
    pub fn parse(untrusted: &[u8]) -> Result<MemberName> {
        match untrusted {
            b"backup-header" => return Ok(MemberName::Header),
            b"backup-header.hmac" => return Ok(MemberName::HeaderMac),
            _ => {}
        }
        let text = std::str::from_utf8(untrusted)
            .ok()
            .filter(|t| t.is_ascii())
            .ok_or_else(|| {
                Error::unsafe_path(format!("member name {} is not ASCII", escape(untrusted)))
            })?;
        let (rest, kind) = if let Some(r) = text.strip_suffix(".enc") {
            (r, ChunkKind::Enc)
        } else if let Some(r) = text.strip_suffix(".hmac") {
            (r, ChunkKind::Hmac)
        } else {
            (text, ChunkKind::Data)
        };
        let (path, digits) = rest
            .rsplit_once('.')
            .ok_or_else(|| Error::malformed(format!("member name {text:?} has no chunk index")))?;
        let index = parse_index(digits)
            .ok_or_else(|| Error::malformed(format!("member name {text:?}: bad chunk index")))?;
        if index > MAX_CHUNK_INDEX {
            return Err(Error::limit(format!(
                "member name {text:?}: chunk index above LIM-6 ({MAX_CHUNK_INDEX})"
            )));
        }
        let path = validate_chunk_path(path)?;
        if path == HEADER || path.ends_with(".hmac") || path.ends_with(".enc") {
            return Err(Error::malformed(format!(
                "member name {text:?}: PATH may not be backup-header or end in .hmac/.enc (NAME-5)"
            )));
        }
        Ok(MemberName::Chunk { path, index, kind })
    }
}

/// NAME-3/NAME-4: a chunk path is a safe relative path whose last component may be `.`
/// (a v3 whole-directory archive).
fn validate_chunk_path(path: &str) -> Result<String> {
    let (dir, whole_dir) = match path.strip_suffix("/.") {
        Some(d) => (d, true),
        None => (path, false),
    };
    let valid = validate_relative(dir.as_bytes(), DotComponents::Refuse)?;
    if valid != dir {
        // A trailing slash was stripped: `vm3/.000` style names are not canonical.
        return Err(Error::unsafe_path(format!(
            "member path {path:?} is not canonical"
        )));
    }
    Ok(if whole_dir {
        format!("{valid}/.")
    } else {
        valid
    })
}

/// NAME-2: canonical `%03d` index digits.
fn parse_index(digits: &str) -> Option<u32> {
    if digits.len() < 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if digits.len() > 3 && digits.starts_with('0') {
        return None;
    }
    if digits.len() > 10 {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    u32::try_from(value).ok()
}

/// NAME-2: the canonical text of a chunk index (`000`, `042`, `1000`).
pub fn format_index(index: u32) -> String {
    format!("{index:03}")
}

/// The member name of chunk `index` of `path`, without suffix (`vm3/private.img.000`).
/// This is also the name bound into a v4 chunk's passphrase (V4-2).
pub fn chunk_name(path: &str, index: u32) -> String {
    format!("{path}.{}", format_index(index))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    fn chunk(path: &str, index: u32, kind: ChunkKind) -> MemberName {
        MemberName::Chunk {
            path: path.into(),
            index,
            kind,
        }
    }

    #[test]
    fn parses_every_member_form() {
        let p = |s: &str| MemberName::parse(s.as_bytes()).unwrap();
        assert_eq!(p("backup-header"), MemberName::Header);
        assert_eq!(p("backup-header.hmac"), MemberName::HeaderMac);
        assert_eq!(
            p("qubes.xml.000.enc"),
            chunk("qubes.xml", 0, ChunkKind::Enc)
        );
        assert_eq!(p("qubes.xml.000"), chunk("qubes.xml", 0, ChunkKind::Data));
        assert_eq!(
            p("vm3/private.img.041.hmac"),
            chunk("vm3/private.img", 41, ChunkKind::Hmac)
        );
        assert_eq!(
            p("vm3/private.img.1000.enc"),
            chunk("vm3/private.img", 1000, ChunkKind::Enc)
        );
        assert_eq!(p("vm9/..000"), chunk("vm9/.", 0, ChunkKind::Data));
        assert_eq!(
            p("dom0-home/user.002.enc"),
            chunk("dom0-home/user", 2, ChunkKind::Enc)
        );
    }

    #[test]
    fn refuses_non_canonical_indices() {
        for bad in [
            "a.00",
            "a.0999",
            "a.01000",
            "a.x00",
            "a",
            "a.",
            "a.-01",
            "a.99999999999",
        ] {
            let e = MemberName::parse(bad.as_bytes()).unwrap_err();
            assert_eq!(e.class(), ErrorClass::Malformed, "{bad}");
        }
        let e = MemberName::parse(b"a.1000000").unwrap_err();
        assert_eq!(e.class(), ErrorClass::LimitExceeded);
    }

    #[test]
    fn refuses_unsafe_paths() {
        for bad in [
            "/etc/x.000",
            "../x.000",
            "a/../b.000",
            "a//b.000",
            "a/./b.000",
            "./.000",
        ] {
            let e = MemberName::parse(bad.as_bytes()).unwrap_err();
            assert_eq!(e.class(), ErrorClass::UnsafePath, "{bad}");
        }
        let e = MemberName::parse("vm3/privé.img.000".as_bytes()).unwrap_err();
        assert_eq!(e.class(), ErrorClass::UnsafePath);
    }

    /// NAME-5: PATH is never `backup-header` and never ends in `.hmac` or `.enc`.
    #[test]
    fn refuses_reserved_paths() {
        for bad in [
            "backup-header.000.enc",
            "backup-header.000",
            "vm3/x.hmac.000.enc",
            "vm3/x.hmac.000.hmac",
            "vm3/x.enc.000",
            "vm3/.enc.000.enc",
        ] {
            let e = MemberName::parse(bad.as_bytes()).unwrap_err();
            assert_eq!(e.class(), ErrorClass::Malformed, "{bad}");
        }
        assert!(MemberName::parse(b"vm3/backup-header.000.enc").is_ok());
    }

    #[test]
    fn format_round_trips() {
        for i in [0, 7, 42, 999, 1000, 123_456] {
            let name = format!("{}.enc", chunk_name("vm3/private.img", i));
            assert_eq!(
                MemberName::parse(name.as_bytes()).unwrap(),
                chunk("vm3/private.img", i, ChunkKind::Enc)
            );
        }
    }
}
