//! Relative path safety (SPEC.md NAME-3, EXT-5).
//!
//! Every name taken from an archive (outer member names, inner tar entry names, link
//! targets that are recreated) passes through [`validate_relative`] before it is used to
//! match, select, or name anything on disk.

use crate::error::{Error, Result};
use crate::limits::{MAX_PATH_DEPTH, MAX_PATH_LEN};

/// How a single `.` component is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotComponents {
    /// `.` components are refused (outer member names, except NAME-4).
    Refuse,
    /// `.` components are dropped (inner names of v3 whole-directory archives, NAME-4:
    /// `vm9/./private.img` is `vm9/private.img`).
    Drop,
}

/// Validate an untrusted relative path and return it as a `String` of `/`-separated
/// components (NAME-3): valid UTF-8, not empty, not absolute, no empty or `..`
/// components, no NUL or control characters (including DEL and C1), at most
/// [`MAX_PATH_LEN`] bytes and [`MAX_PATH_DEPTH`] components. A single trailing `/` (as on
/// tar directory entries) is removed. With [`DotComponents::Drop`], `.` components are
/// removed; a path made only of `.` becomes `"."`.
pub fn validate_relative(untrusted: &[u8], dots: DotComponents) -> Result<String> {
    if untrusted.is_empty() {
        return Err(Error::unsafe_path("empty path"));
    }
    if untrusted.len() > MAX_PATH_LEN {
        return Err(Error::limit(format!(
            "path of {} bytes exceeds LIM-8 ({MAX_PATH_LEN})",
            untrusted.len()
        )));
    }
    let untrusted = std::str::from_utf8(untrusted)
        .map_err(|_| Error::unsafe_path(format!("path {} is not UTF-8", escape(untrusted))))?;
    if let Some(c) = untrusted.chars().find(|c| c.is_control()) {
        return Err(Error::unsafe_path(format!(
            "path {untrusted:?} contains control character {c:?}"
        )));
    }
    if untrusted.starts_with('/') {
        return Err(Error::unsafe_path(format!("absolute path {untrusted:?}")));
    }
    let trimmed = untrusted.strip_suffix('/').unwrap_or(untrusted);
    let mut parts = Vec::new();
    for component in trimmed.split('/') {
        match component {
            "" => {
                return Err(Error::unsafe_path(format!(
                    "empty component in {untrusted:?}"
                )))
            }
            ".." => {
                return Err(Error::unsafe_path(format!(
                    "`..` component in {untrusted:?}"
                )))
            }
            "." if dots == DotComponents::Refuse => {
                return Err(Error::unsafe_path(format!(
                    "`.` component in {untrusted:?}"
                )))
            }
            "." => {}
            c => parts.push(c),
        }
    }
    if parts.len() > MAX_PATH_DEPTH {
        return Err(Error::limit(format!(
            "path {untrusted:?} has more than LIM-9 ({MAX_PATH_DEPTH}) components"
        )));
    }
    if parts.is_empty() {
        return Ok(".".to_string());
    }
    Ok(parts.join("/"))
}

/// Render untrusted bytes for an error message: printable ASCII as is, the rest escaped.
pub fn escape(untrusted: &[u8]) -> String {
    untrusted.escape_ascii().to_string()
}

/// `true` when `path` is `prefix` itself or lies below it (component-wise, so `vm1` is
/// not a prefix of `vm10/x`).
pub fn is_within(path: &str, prefix: &str) -> bool {
    path == prefix
        || (path.len() > prefix.len()
            && path.starts_with(prefix)
            && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    fn class(p: &[u8]) -> ErrorClass {
        validate_relative(p, DotComponents::Refuse)
            .unwrap_err()
            .class()
    }

    #[test]
    fn accepts_ordinary_relative_paths() {
        let ok = |p: &str| validate_relative(p.as_bytes(), DotComponents::Refuse).unwrap();
        assert_eq!(ok("vm3/private.img"), "vm3/private.img");
        assert_eq!(ok("dom0-home/user/"), "dom0-home/user");
        assert_eq!(ok("dom0-home/user/.bashrc"), "dom0-home/user/.bashrc");
    }

    #[test]
    fn refuses_escapes_and_oddities() {
        for p in [
            &b"/etc/passwd"[..],
            b"a/../b",
            b"..",
            b"a//b",
            b"a/\n",
            b"a\0b",
            b"",
            b"a/./b",
        ] {
            let c = class(p);
            assert_eq!(c, ErrorClass::UnsafePath, "{p:?}");
        }
        assert_eq!(class(b"\xff"), ErrorClass::UnsafePath);
        assert_eq!(class(&[b'a'; MAX_PATH_LEN + 1]), ErrorClass::LimitExceeded);
        let deep = "a/".repeat(MAX_PATH_DEPTH + 1);
        assert_eq!(class(deep.as_bytes()), ErrorClass::LimitExceeded);
    }

    #[test]
    fn dot_components_are_dropped_when_asked() {
        let drop = |p: &str| validate_relative(p.as_bytes(), DotComponents::Drop).unwrap();
        assert_eq!(drop("vm9/./private.img"), "vm9/private.img");
        assert_eq!(drop("vm9/."), "vm9");
        assert_eq!(drop("./"), ".");
    }

    #[test]
    fn prefix_is_component_wise() {
        assert!(is_within("vm1/private.img", "vm1"));
        assert!(is_within("vm1", "vm1"));
        assert!(!is_within("vm10/private.img", "vm1"));
    }
}
