//! Pax extended header records (SPEC.md TAR-3, TAR-5).

use crate::bail;
use crate::error::{Error, Result};
use crate::limits::MAX_PATH_LEN;

/// Call `f(key, value)` for every `LEN key=value\n` record of `data`, in order. The length
/// must be exact and the records must fill `data` completely.
pub(crate) fn for_each_record(
    data: &[u8],
    mut f: impl FnMut(&[u8], &[u8]) -> Result<()>,
) -> Result<()> {
    let mut rest = data;
    while !rest.is_empty() {
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 20 || rest.get(digits) != Some(&b' ') {
            bail!(Malformed, "pax record has no decimal length");
        }
        let len = parse_dec(rest.get(..digits).unwrap_or(&[]), "pax record length")?;
        let len = usize::try_from(len).map_err(|_| Error::malformed("pax record too long"))?;
        let Some(record) = rest.get(..len) else {
            bail!(Malformed, "pax record length {len} runs past the header");
        };
        // Shortest body: "k=\n" after "LEN ".
        let Some(body) = record.get(digits + 1..) else {
            bail!(Malformed, "pax record length {len} too small");
        };
        let Some((&b'\n', body)) = body.split_last() else {
            bail!(Malformed, "pax record does not end with a newline");
        };
        let Some(eq) = body.iter().position(|&b| b == b'=') else {
            bail!(Malformed, "pax record has no '='");
        };
        if eq == 0 {
            bail!(Malformed, "pax record has an empty key");
        }
        let (key, value) = (
            body.get(..eq).unwrap_or(&[]),
            body.get(eq + 1..).unwrap_or(&[]),
        );
        f(key, value)?;
        rest = rest.get(len..).unwrap_or(&[]);
    }
    Ok(())
}

/// A decimal unsigned number: 1 to 20 ASCII digits, checked.
pub(crate) fn parse_dec(s: &[u8], what: &str) -> Result<u64> {
    if s.is_empty() || s.len() > 20 {
        bail!(Malformed, "{what}: not a decimal number");
    }
    let mut v: u64 = 0;
    for &c in s {
        if !c.is_ascii_digit() {
            bail!(Malformed, "{what}: not a decimal number");
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(c - b'0')))
            .ok_or_else(|| Error::malformed(format!("{what}: number too large")))?;
    }
    Ok(v)
}

/// A pax time `[-]digits[.digits]`, truncated to whole seconds.
fn parse_time(s: &[u8]) -> Result<i64> {
    let (neg, s) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    let int = match s.iter().position(|&b| b == b'.') {
        Some(dot) => {
            let frac = s.get(dot + 1..).unwrap_or(&[]);
            if !frac.iter().all(u8::is_ascii_digit) {
                bail!(Malformed, "pax mtime: invalid fraction");
            }
            s.get(..dot).unwrap_or(&[])
        }
        None => s,
    };
    let v = i64::try_from(parse_dec(int, "pax mtime")?)
        .map_err(|_| Error::malformed("pax mtime out of range"))?;
    Ok(if neg { -v } else { v })
}

/// The values of one `x` header that this reader uses; others are ignored.
#[derive(Debug, Default)]
pub(crate) struct PaxValues {
    pub path: Option<Vec<u8>>,
    pub linkpath: Option<Vec<u8>>,
    pub size: Option<u64>,
    pub mtime: Option<i64>,
    pub uid: Option<u64>,
    pub gid: Option<u64>,
    pub sparse_major: Option<u64>,
    pub sparse_minor: Option<u64>,
    pub sparse_name: Option<Vec<u8>>,
    pub sparse_realsize: Option<u64>,
    /// Recognised keys seen so far (TAR-5: each at most once).
    seen: Vec<&'static str>,
}

/// TAR-5: the keys whose repetition in one header is malformed.
const RECOGNISED: [&str; 7] = [
    "path",
    "linkpath",
    "size",
    "GNU.sparse.major",
    "GNU.sparse.minor",
    "GNU.sparse.name",
    "GNU.sparse.realsize",
];

/// TAR-3: keys of the PAX 0.0 / 0.1 sparse formats, which are unsupported.
const OLD_SPARSE: [&str; 5] = [
    "GNU.sparse.size",
    "GNU.sparse.numblocks",
    "GNU.sparse.map",
    "GNU.sparse.offset",
    "GNU.sparse.numbytes",
];

/// TAR-5: the only `hdrcharset` value accepted.
const UTF8_CHARSET: &[u8] = b"ISO-IR 10646 2000 UTF-8";

fn bounded_path(v: &[u8], what: &str) -> Result<Vec<u8>> {
    if v.len() > MAX_PATH_LEN {
        bail!(LimitExceeded, "pax {what} longer than {MAX_PATH_LEN} bytes");
    }
    Ok(v.to_vec())
}

impl PaxValues {
    pub(crate) fn parse(data: &[u8]) -> Result<PaxValues> {
        let mut p = PaxValues::default();
        for_each_record(data, |k, v| p.apply(k, v))?;
        Ok(p)
    }

    fn apply(&mut self, key: &[u8], v: &[u8]) -> Result<()> {
        if let Some(old) = OLD_SPARSE.iter().find(|k| k.as_bytes() == key) {
            bail!(
                Unsupported,
                "pax sparse format 0.x ({old}) is not supported (TAR-3)"
            );
        }
        if key == b"hdrcharset" && v != UTF8_CHARSET {
            bail!(
                Unsupported,
                "pax hdrcharset {:?} is not UTF-8 (TAR-5)",
                String::from_utf8_lossy(v)
            );
        }
        if let Some(k) = RECOGNISED.iter().find(|k| k.as_bytes() == key) {
            if self.seen.contains(k) {
                bail!(Malformed, "pax header repeats the key {k} (TAR-5)");
            }
            self.seen.push(k);
        }
        let num = |what: &str| -> Result<Option<u64>> {
            if v.is_empty() {
                Ok(None)
            } else {
                parse_dec(v, what).map(Some)
            }
        };
        match key {
            b"path" => {
                self.path = (!v.is_empty())
                    .then(|| bounded_path(v, "path"))
                    .transpose()?
            }
            b"linkpath" => {
                self.linkpath = (!v.is_empty())
                    .then(|| bounded_path(v, "linkpath"))
                    .transpose()?
            }
            b"size" => self.size = num("pax size")?,
            b"uid" => self.uid = num("pax uid")?,
            b"gid" => self.gid = num("pax gid")?,
            b"mtime" => self.mtime = (!v.is_empty()).then(|| parse_time(v)).transpose()?,
            b"GNU.sparse.major" => self.sparse_major = num("GNU.sparse.major")?,
            b"GNU.sparse.minor" => self.sparse_minor = num("GNU.sparse.minor")?,
            b"GNU.sparse.name" => {
                self.sparse_name = (!v.is_empty())
                    .then(|| bounded_path(v, "GNU.sparse.name"))
                    .transpose()?
            }
            b"GNU.sparse.realsize" => self.sparse_realsize = num("GNU.sparse.realsize")?,
            _ => {}
        }
        Ok(())
    }

    /// OUT-3: whether `path`, `size` or a `GNU.sparse.*` key was given (even empty).
    pub(crate) fn sets_path_size_or_sparse(&self) -> bool {
        self.seen
            .iter()
            .any(|k| *k == "path" || *k == "size" || k.starts_with("GNU.sparse."))
    }

    /// Whether any `GNU.sparse.*` key was given.
    pub(crate) fn is_sparse(&self) -> bool {
        self.sparse_major.is_some()
            || self.sparse_minor.is_some()
            || self.sparse_realsize.is_some()
            || self.sparse_name.is_some()
    }
}
