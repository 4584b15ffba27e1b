//! One 512-byte tar header block: checksum, magic, numeric fields (SPEC.md TAR-1, TAR-6).

use crate::bail;
use crate::error::Result;

/// The tar block size.
pub(crate) const BLOCK: usize = 512;

/// Which magic a header carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Magic {
    /// POSIX `ustar\0` + `00`: the prefix field at 345 extends the name.
    Ustar,
    /// Old GNU `ustar  \0`: bytes 345.. hold atime/ctime/offset/sparse fields.
    Gnu,
    /// No magic at all: GNU tar writes its `M` continuation and `V` label headers so.
    None,
}

/// The fields of one header block, before extended headers are applied.
#[derive(Debug, Clone)]
pub(crate) struct RawHeader {
    pub typeflag: u8,
    /// Name field, joined with the ustar prefix (`prefix/name`) when there is one.
    pub name: Vec<u8>,
    /// The 100-byte name field had no NUL (GNU truncates `M` header names to it).
    pub name_field_full: bool,
    pub linkname: Vec<u8>,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    pub mtime: Option<i64>,
}

pub(crate) fn is_zero(b: &[u8]) -> bool {
    b.iter().all(|&x| x == 0)
}

/// Bytes of `field` up to the first NUL.
pub(crate) fn cstr(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(n) => field.get(..n).unwrap_or(field),
        None => field,
    }
}

fn field(block: &[u8; BLOCK], start: usize, len: usize) -> &[u8] {
    // Every caller passes constant in-range offsets; the fallback keeps this panic-free.
    block.get(start..start + len).unwrap_or(&[])
}

/// A numeric field (TAR-6): octal digits after optional leading spaces, ended by space or
/// NUL (an empty field is `None`), or base-256 (first byte `0x80` positive, `0xff` negative).
fn parse_numeric(f: &[u8], what: &str) -> Result<Option<i128>> {
    let Some(&first) = f.first() else {
        return Ok(None);
    };
    if first & 0x80 != 0 {
        let negative = match first {
            0x80 => false,
            0xff => true,
            _ => bail!(
                Malformed,
                "tar {what}: invalid base-256 marker {first:#04x}"
            ),
        };
        // At most 12 bytes: 88 value bits after the marker fit an i128.
        if f.len() > 12 {
            bail!(Malformed, "tar {what}: base-256 field too long");
        }
        // At most 11 value bytes (88 bits): no overflow in i128.
        let rest = f.get(1..).unwrap_or(&[]);
        let mut mag: i128 = 0;
        for &b in rest {
            mag = mag * 256 + i128::from(b);
        }
        // A negative field is two's complement over all its bytes: rest − 256^len(rest).
        let v = if negative {
            let k = u32::try_from(rest.len()).unwrap_or(11);
            mag - 256i128.pow(k)
        } else {
            mag
        };
        return Ok(Some(v));
    }
    let mut i = 0;
    while f.get(i) == Some(&b' ') {
        i += 1;
    }
    let mut v: i128 = 0;
    let mut digits = 0;
    while let Some(&c) = f.get(i) {
        if !(b'0'..=b'7').contains(&c) {
            break;
        }
        v = v * 8 + i128::from(c - b'0');
        digits += 1;
        i += 1;
    }
    if !f
        .get(i..)
        .unwrap_or(&[])
        .iter()
        .all(|&c| c == 0 || c == b' ')
    {
        bail!(Malformed, "tar {what}: invalid octal field");
    }
    Ok(if digits == 0 { None } else { Some(v) })
}

/// An unsigned numeric field; empty reads as 0, negative values are malformed.
pub(crate) fn parse_u64(f: &[u8], what: &str) -> Result<u64> {
    match parse_numeric(f, what)? {
        None => Ok(0),
        Some(v) => u64::try_from(v)
            .map_err(|_| crate::error::Error::malformed(format!("tar {what}: out of range"))),
    }
}

fn parse_i64(f: &[u8], what: &str) -> Result<Option<i64>> {
    match parse_numeric(f, what)? {
        None => Ok(None),
        Some(v) => i64::try_from(v)
            .map(Some)
            .map_err(|_| crate::error::Error::malformed(format!("tar {what}: out of range"))),
    }
}

/// Unsigned numeric field at `start..start+len` of `block`.
pub(crate) fn num_at(block: &[u8; BLOCK], start: usize, len: usize, what: &str) -> Result<u64> {
    parse_u64(field(block, start, len), what)
}

fn verify_checksum(block: &[u8; BLOCK]) -> Result<()> {
    let stored = parse_u64(field(block, 148, 8), "checksum")?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    if stored == unsigned || i64::try_from(stored).ok() == Some(signed) {
        Ok(())
    } else {
        bail!(Malformed, "tar header checksum mismatch")
    }
}

/// Parse a non-zero header block (TAR-1): checksum, magic and the common fields.
pub(crate) fn parse_header(block: &[u8; BLOCK]) -> Result<RawHeader> {
    verify_checksum(block)?;
    let typeflag = block[156];
    let magic = match field(block, 257, 8) {
        b"ustar\x0000" => Magic::Ustar,
        b"ustar  \0" => Magic::Gnu,
        m if is_zero(m) && matches!(typeflag, b'M' | b'V') => Magic::None,
        _ => bail!(Malformed, "tar header has no ustar or GNU magic"),
    };
    let name_field = field(block, 0, 100);
    let base = cstr(name_field);
    let name_field_full = base.len() == 100;
    let mut name = Vec::new();
    if magic == Magic::Ustar {
        let prefix = cstr(field(block, 345, 155));
        if !prefix.is_empty() {
            name.extend_from_slice(prefix);
            name.push(b'/');
        }
    }
    name.extend_from_slice(base);
    let mode = u32::try_from(num_at(block, 100, 8, "mode")?)
        .map_err(|_| crate::error::Error::malformed("tar mode out of range"))?;
    Ok(RawHeader {
        typeflag,
        name,
        name_field_full,
        linkname: cstr(field(block, 157, 100)).to_vec(),
        mode,
        uid: num_at(block, 108, 8, "uid")?,
        gid: num_at(block, 116, 8, "gid")?,
        size: num_at(block, 124, 12, "size")?,
        mtime: parse_i64(field(block, 136, 12), "mtime")?,
    })
}
