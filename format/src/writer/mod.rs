//! Encoders for the packer (SPEC.md WRT-1 … WRT-4). Pure and sans-IO (GEN-1): salts,
//! backup-ids and times come from the caller; nothing here reads files or the clock.
//!
//! - [`outer`]: one outer ustar member header (OUT-1, OUT-5, WRT-2);
//! - [`tar`]: inner GNU tar headers: regular, old-GNU sparse `S` with extension blocks,
//!   long names `L`/`K`, directories, symlinks, base-256 numbers (TAR-1 … TAR-9);
//! - [`v4`]: the v4 header text and scrypt containers sealed with keys derived ahead of
//!   the data (WRT-4, V4-1, V4-2);
//! - [`v3`]: the v3 header text, `.hmac` members and a streaming `openssl enc`
//!   encryptor (V3-1 … V3-3, MAC-4).

pub mod outer;
pub mod tar;
pub mod v3;
pub mod v4;

/// A tar block (outer and inner layers).
pub const BLOCK: usize = 512;

/// Zero bytes that pad `size` data bytes to a whole number of 512-byte blocks.
pub fn padding(size: u64) -> usize {
    // The remainder is < 512, so the cast cannot truncate.
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

/// Two zero blocks: the end-of-archive marker (OUT-4, TAR-8).
pub const END_OF_ARCHIVE: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

/// Write `value` into `field` as NUL-terminated zero-padded octal when it fits in
/// `field.len() - 1` digits, else as GNU base-256 (first byte 0x80, TAR-6) when `base256`
/// allows it. Returns false when neither fits.
pub(crate) fn put_number(field: &mut [u8], value: u64, base256: bool) -> bool {
    let digits = field.len().saturating_sub(1);
    let fits_octal = u32::try_from(digits.saturating_mul(3))
        .ok()
        .and_then(|bits| 1u64.checked_shl(bits))
        .is_none_or(|limit| value < limit);
    if fits_octal {
        let text = format!("{value:0digits$o}");
        let Some(dst) = field.get_mut(..digits) else {
            return false;
        };
        dst.copy_from_slice(text.as_bytes());
        if let Some(last) = field.last_mut() {
            *last = 0;
        }
        return true;
    }
    if !base256 || field.len() < 9 {
        let bytes = field.len().saturating_sub(1);
        // Base-256 with fewer than 8 value bytes holds values below 2^(8·bytes).
        let fits = base256
            && u32::try_from(bytes.saturating_mul(8))
                .ok()
                .and_then(|bits| 1u64.checked_shl(bits))
                .is_some_and(|limit| value < limit);
        if !fits {
            return false;
        }
    }
    field.fill(0);
    if let Some(first) = field.first_mut() {
        *first = 0x80;
    }
    let be = value.to_be_bytes();
    let n = field.len();
    for (i, b) in be.iter().rev().enumerate() {
        if let Some(slot) = n.checked_sub(1 + i).filter(|&j| j >= 1) {
            if let Some(s) = field.get_mut(slot) {
                *s = *b;
            }
        }
    }
    true
}

/// Fill the checksum field (offset 148, 8 bytes) of a 512-byte header: the unsigned sum
/// of all bytes with the field counted as spaces, as six octal digits, NUL, space.
pub(crate) fn set_checksum(h: &mut [u8; BLOCK]) {
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let text = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_octal_then_base256() {
        let mut f = [0u8; 12];
        assert!(put_number(&mut f, 0o777, true));
        assert_eq!(&f, b"00000000777\0");
        assert!(put_number(&mut f, (1 << 33) - 1, true));
        assert_eq!(&f, b"77777777777\0");
        assert!(put_number(&mut f, 1 << 33, true));
        assert_eq!(f[0], 0x80);
        assert_eq!(&f[4..], &(1u64 << 33).to_be_bytes());
        assert!(!put_number(&mut f, 1 << 33, false));
        let mut m = [0u8; 8];
        assert!(put_number(&mut m, 0o644, false));
        assert_eq!(&m, b"0000644\0");
        assert!(put_number(&mut m, 1 << 40, true));
        assert!(!put_number(&mut m, 1 << 56, true));
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(512), 0);
    }
}

/// WRT-5: the `backup-size` a writer declares for a VM whose files hold `logical` bytes in
/// `entries` tar entries. It must cover what upstream's VM-side restore counts against it
/// (the stored chunk bytes, `UPDATES_MAX_BYTES`) as well as VER-4's data bytes, even for
/// incompressible data: compressors expand such data by well under 1/64 (bzip2, the worst,
/// by about 0.5 %), and each entry adds a header, padding and at worst a 10 KiB tar record
/// and a 128-byte container.
pub fn backup_size_bound(logical: u64, entries: u64) -> u64 {
    logical
        .saturating_add(logical / 64)
        .saturating_add(entries.saturating_mul(16 << 10))
}

#[cfg(test)]
mod size_tests {
    /// WRT-5: the declared size covers the data and an incompressible file's expansion.
    #[test]
    fn bound_exceeds_data_and_overheads() {
        assert_eq!(super::backup_size_bound(0, 0), 0);
        let b = super::backup_size_bound(3_145_851, 1);
        assert!(b > 3_160_343, "bzip2 of random data must fit: {b}");
    }
}
