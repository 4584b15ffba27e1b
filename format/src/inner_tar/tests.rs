//! Unit tests on hand-built streams (tarwriter layout, edge cases) and property tests.
//! Interop with the real GNU tar lives in `format/tests/inner_tar_interop.rs`.

use super::*;
use crate::error::ErrorClass;
use proptest::prelude::*;

const B: usize = 512;

/// Octal, or GNU base-256 when the value does not fit.
fn octal(field: &mut [u8], v: u64) {
    let w = field.len() - 1;
    if v >= 1u64 << (3 * w) {
        field.fill(0);
        field[0] = 0x80;
        let n = field.len();
        field[n - 8..].copy_from_slice(&v.to_be_bytes());
        return;
    }
    let s = format!("{v:0w$o}");
    field[..w].copy_from_slice(s.as_bytes());
    field[w] = 0;
}

fn checksum(h: &mut [u8; B]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

/// A ustar (POSIX) header.
fn ustar(name: &[u8], typeflag: u8, size: u64) -> [u8; B] {
    let mut h = [0u8; B];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], 0);
    h[156] = typeflag;
    h[257..265].copy_from_slice(b"ustar\x0000");
    checksum(&mut h);
    h
}

fn pad(v: &mut Vec<u8>) {
    while v.len() % B != 0 {
        v.push(0);
    }
}

fn member(out: &mut Vec<u8>, name: &[u8], typeflag: u8, data: &[u8]) {
    out.extend_from_slice(&ustar(name, typeflag, data.len() as u64));
    out.extend_from_slice(data);
    pad(out);
}

fn record(key: &str, value: &[u8]) -> Vec<u8> {
    // LEN counts itself: find the fixed point.
    let body = 1 + key.len() + 1 + value.len() + 1;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn end(out: &mut Vec<u8>) {
    out.extend_from_slice(&[0u8; 2 * B]);
}

/// The map `qubes/tarwriter.py` computes: 512-byte blocks, all-zero blocks are holes,
/// plus a final `(size, 0)` when the file ends in zeros.
fn tarwriter_map(data: &[u8]) -> Vec<(u64, u64)> {
    let mut map: Vec<(u64, u64)> = Vec::new();
    let mut in_run = false;
    for (i, blk) in data.chunks(B).enumerate() {
        let off = (i * B) as u64;
        if blk.iter().any(|&b| b != 0) {
            match (in_run, map.last_mut()) {
                (true, Some(last)) => last.1 += blk.len() as u64,
                _ => map.push((off, blk.len() as u64)),
            }
            in_run = true;
        } else {
            in_run = false;
        }
    }
    if !in_run {
        map.push((data.len() as u64, 0));
    }
    map
}

/// A stream in the layout `qubes/tarwriter.py` writes (format-notes §7.1): pax header
/// `././@PaxHeader` with major, minor, name, realsize; a `GNUSparseFile.<pid>` entry with
/// mtime 0; map block; runs, the last one NOT padded; two zero blocks. With `gnu_pad` the
/// last run is padded like GNU tar does.
fn tarwriter(name: &str, data: &[u8], gnu_pad: bool) -> Vec<u8> {
    let map = tarwriter_map(data);
    let mut text = format!("{}\n", map.len());
    for (o, l) in &map {
        text.push_str(&format!("{o}\n{l}\n"));
    }
    let mut mapblk = text.into_bytes();
    pad(&mut mapblk);
    let stored: u64 = map.iter().map(|e| e.1).sum();
    let mut pax = Vec::new();
    pax.extend(record("GNU.sparse.major", b"1"));
    pax.extend(record("GNU.sparse.minor", b"0"));
    pax.extend(record("GNU.sparse.name", name.as_bytes()));
    pax.extend(record(
        "GNU.sparse.realsize",
        data.len().to_string().as_bytes(),
    ));
    let mut out = Vec::new();
    member(&mut out, b"././@PaxHeader", b'x', &pax);
    let (dir, base) = name.rsplit_once('/').unwrap_or((".", name));
    let hname = format!("{dir}/GNUSparseFile.1234/{base}");
    out.extend_from_slice(&ustar(hname.as_bytes(), b'0', mapblk.len() as u64 + stored));
    out.extend_from_slice(&mapblk);
    for &(o, l) in &map {
        out.extend_from_slice(&data[o as usize..(o + l) as usize]);
    }
    if gnu_pad {
        pad(&mut out);
    }
    end(&mut out);
    out
}

/// Read every entry; reconstruct each regular file's logical content.
fn read_all(bytes: &[u8]) -> Result<Vec<(Entry, Vec<u8>)>> {
    let mut r = TarReader::new(bytes);
    let mut out = Vec::new();
    while let Some(e) = r.next_entry()? {
        let mut buf = vec![0u8; e.size as usize];
        let mut last_end = 0u64;
        r.read_data(&mut |off: u64, b: &[u8]| {
            assert!(off >= last_end, "runs out of order");
            last_end = off + b.len() as u64;
            buf[off as usize..off as usize + b.len()].copy_from_slice(b);
            Ok(())
        })?;
        out.push((e, buf));
    }
    Ok(out)
}

fn class(r: Result<Vec<(Entry, Vec<u8>)>>) -> ErrorClass {
    r.expect_err("expected an error").class()
}

fn sample(len: usize) -> Vec<u8> {
    let mut d = vec![0u8; len];
    for (i, b) in d.iter_mut().enumerate() {
        let blk = i / B;
        if blk % 3 == 1 || (i + 1000 >= len && i + 100 < len) {
            *b = (i % 251) as u8 + 1;
        }
    }
    d
}

#[test]
fn tarwriter_unpadded_last_run_is_accepted() {
    for len in [5000usize, 4096, 4097, 1, 0, 1536 + 17] {
        let data = sample(len);
        for gnu_pad in [false, true] {
            let bytes = tarwriter("vm3/private.img", &data, gnu_pad);
            let all = read_all(&bytes).unwrap_or_else(|e| panic!("len {len} pad {gnu_pad}: {e}"));
            assert_eq!(all.len(), 1);
            let (e, content) = &all[0];
            assert_eq!(e.path, b"vm3/private.img");
            assert_eq!(e.kind, EntryKind::Regular);
            assert_eq!(e.size, len as u64);
            assert_eq!(e.mtime, Some(0));
            assert_eq!(
                e.sparse.as_ref().map(|m| m.entries.clone()),
                Some(tarwriter_map(&data))
            );
            assert_eq!(content, &data);
        }
    }
}

#[test]
fn tarwriter_stream_damaged_at_the_end_is_rejected() {
    let data = sample(5000);
    let bytes = tarwriter("a/b", &data, false);
    // TAR-8: the stream may end anywhere after the first zero block...
    assert!(read_all(&bytes[..bytes.len() - 1]).is_ok());
    // ... but not before that block is complete.
    assert_eq!(
        class(read_all(&bytes[..bytes.len() - 600])),
        ErrorClass::Truncated
    );
    // A non-zero byte in the end marker.
    let mut bad = bytes.clone();
    *bad.last_mut().unwrap() = 1;
    assert_eq!(class(read_all(&bad)), ErrorClass::Malformed);
    // Trailing zeros after the end are fine, garbage is not.
    let mut more = tarwriter("a/b", &data, true);
    more.extend_from_slice(&[0u8; 10000]);
    assert!(read_all(&more).is_ok());
    more.push(7);
    assert_eq!(class(read_all(&more)), ErrorClass::Malformed);
}

/// TAR-8: an unpadded dense entry followed by zeros reads the same as a padded one
/// followed by one zero block and a zero tail; it is truncated only when the zeros
/// do not reach a full block after the padding.
#[test]
fn unpadded_dense_entry_needs_one_full_zero_block() {
    let mut out = Vec::new();
    out.extend_from_slice(&ustar(b"f", b'0', 10));
    out.extend_from_slice(b"0123456789");
    end(&mut out);
    assert!(read_all(&out).is_ok());
    out.truncate(B + 10 + (B - 10) + B - 1);
    assert_eq!(class(read_all(&out)), ErrorClass::Truncated);
}

/// TAR-9, TAR-1: a sparse realsize above LIM-12 is limit-exceeded, not malformed.
#[test]
fn sparse_realsize_above_lim_12_is_limit_exceeded() {
    let big = crate::limits::MAX_FILE_SIZE + 1;
    let h = old_sparse(b"s", &[(0, 10)], big, 10);
    assert_eq!(h[483], 0x80, "realsize in base-256");
    let mut out = h.to_vec();
    out.extend_from_slice(&[1u8; 10]);
    pad(&mut out);
    end(&mut out);
    assert_eq!(class(read_all(&out)), ErrorClass::LimitExceeded);
}

/// TAR-7: a hard link must name an earlier regular entry of the same stream.
#[test]
fn hard_links_must_name_earlier_regular_entries() {
    let link = |target: &[u8]| {
        let mut h = ustar(b"d/l", b'1', 0);
        h[157..157 + target.len()].copy_from_slice(target);
        checksum(&mut h);
        h
    };
    let mut ok = Vec::new();
    member(&mut ok, b"d/", b'5', b"");
    member(&mut ok, b"d/f", b'0', b"abc");
    ok.extend_from_slice(&link(b"d/./f"));
    end(&mut ok);
    assert!(read_all(&ok).is_ok());
    for target in [&b"d/g"[..], b"d", b"d/l"] {
        let mut bad = Vec::new();
        member(&mut bad, b"d/", b'5', b"");
        bad.extend_from_slice(&link(target));
        member(&mut bad, b"d/g", b'0', b"abc");
        end(&mut bad);
        assert_eq!(class(read_all(&bad)), ErrorClass::Malformed, "{target:?}");
    }
}

/// TAR-8: entry and extension padding must be zero bytes.
#[test]
fn non_zero_padding_is_malformed() {
    let mut out = Vec::new();
    member(&mut out, b"f", b'0', b"abc");
    out[B + 100] = 1;
    end(&mut out);
    assert_eq!(class(read_all(&out)), ErrorClass::Malformed);
    let mut out = Vec::new();
    member(&mut out, b"PaxHeaders/f", b'x', &record("path", b"f"));
    let last = out.len() - 1;
    out[last] = b'x';
    member(&mut out, b"f", b'0', b"abc");
    end(&mut out);
    assert_eq!(class(read_all(&out)), ErrorClass::Malformed);
}

/// TAR-5: a recognised key twice is malformed; hdrcharset other than UTF-8 unsupported.
/// TAR-3: PAX 0.0 / 0.1 sparse keys are unsupported.
#[test]
fn pax_key_rules() {
    let with_pax = |pax: Vec<u8>| {
        let mut out = Vec::new();
        member(&mut out, b"PaxHeaders/f", b'x', &pax);
        member(&mut out, b"f", b'0', b"abc");
        end(&mut out);
        read_all(&out)
    };
    let twice = [record("path", b"a"), record("path", b"b")].concat();
    assert_eq!(class(with_pax(twice)), ErrorClass::Malformed);
    let twice = [record("size", b"3"), record("size", b"3")].concat();
    assert_eq!(class(with_pax(twice)), ErrorClass::Malformed);
    // Unrecognised keys may repeat.
    let atime = [record("atime", b"1"), record("atime", b"2")].concat();
    assert!(with_pax(atime).is_ok());
    assert_eq!(
        class(with_pax(record("hdrcharset", b"BINARY"))),
        ErrorClass::Unsupported
    );
    assert!(with_pax(record("hdrcharset", b"ISO-IR 10646 2000 UTF-8")).is_ok());
    for key in [
        "GNU.sparse.map",
        "GNU.sparse.numblocks",
        "GNU.sparse.size",
        "GNU.sparse.offset",
    ] {
        assert_eq!(
            class(with_pax(record(key, b"0"))),
            ErrorClass::Unsupported,
            "{key}"
        );
    }
}

#[test]
fn pax_overrides_apply() {
    let long = vec![b'p'; 300];
    let mut pax = Vec::new();
    pax.extend(record("path", &long));
    pax.extend(record("size", b"3"));
    pax.extend(record("mtime", b"1700000000.25"));
    pax.extend(record("uid", b"1000"));
    pax.extend(record("gid", b"99"));
    pax.extend(record("atime", b"whatever"));
    let mut out = Vec::new();
    member(&mut out, b"PaxHeaders/x", b'x', &pax);
    out.extend_from_slice(&ustar(b"short", b'0', 0));
    out.extend_from_slice(b"abc");
    pad(&mut out);
    end(&mut out);
    let all = read_all(&out).unwrap();
    assert_eq!(all[0].0.path, long);
    assert_eq!(all[0].0.size, 3);
    assert_eq!(all[0].0.mtime, Some(1_700_000_000));
    assert_eq!((all[0].0.uid, all[0].0.gid), (1000, 99));
    assert_eq!(all[0].1, b"abc");
}

#[test]
fn malformed_pax_records_are_rejected() {
    for bad in [
        &b"11 path=abc\n"[..], // the record is 12 bytes
        b"13 path=abc\n",
        b"12 path=abc\r",
        b"12 pathxabc\n",
        b"x2 path=abc\n",
        b"12 path=abc\n\0",
        b"5 =a\n",
    ] {
        let mut out = Vec::new();
        member(&mut out, b"h", b'x', bad);
        member(&mut out, b"f", b'0', b"");
        end(&mut out);
        assert_eq!(class(read_all(&out)), ErrorClass::Malformed, "{bad:?}");
    }
}

#[test]
fn gnu_long_name_and_link() {
    let name = vec![b'n'; 200];
    let target = vec![b't'; 150];
    let mut out = Vec::new();
    let mut ln = name.clone();
    ln.push(0);
    member(&mut out, b"././@LongLink", b'L', &ln);
    let mut lk = target.clone();
    lk.push(0);
    member(&mut out, b"././@LongLink", b'K', &lk);
    member(&mut out, b"trunc", b'2', b"");
    end(&mut out);
    let all = read_all(&out).unwrap();
    assert_eq!(all[0].0.path, name);
    assert_eq!(all[0].0.kind, EntryKind::Symlink { target });

    // Longer than MAX_PATH_LEN.
    let mut out = Vec::new();
    member(&mut out, b"././@LongLink", b'L', &vec![b'a'; 5000]);
    member(&mut out, b"x", b'0', b"");
    end(&mut out);
    assert_eq!(class(read_all(&out)), ErrorClass::LimitExceeded);
}

#[test]
fn base256_sizes() {
    let mut h = ustar(b"f", b'0', 0);
    h[124..136].fill(0);
    h[124] = 0x80;
    h[135] = 5;
    checksum(&mut h);
    let mut out = h.to_vec();
    out.extend_from_slice(b"hello");
    pad(&mut out);
    end(&mut out);
    assert_eq!(read_all(&out).unwrap()[0].1, b"hello");

    let mut h = ustar(b"f", b'0', 0);
    h[124..136].fill(0xff);
    checksum(&mut h);
    let mut out = h.to_vec();
    end(&mut out);
    assert_eq!(class(read_all(&out)), ErrorClass::Malformed);
}

#[test]
fn checksums() {
    let mut out = Vec::new();
    member(&mut out, b"f", b'0', b"x");
    end(&mut out);
    let mut bad = out.clone();
    bad[0] = b'g';
    assert_eq!(class(read_all(&bad)), ErrorClass::Malformed);
    // A signed checksum (old tars with high-bit bytes in names) is accepted.
    let mut h = ustar(b"\xe9", b'0', 0);
    h[148..156].copy_from_slice(b"        ");
    let sum: i64 = h.iter().map(|&b| i64::from(b as i8)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    end(&mut out);
    assert_eq!(read_all(&out).unwrap()[0].0.path, b"\xe9");
}

#[test]
fn unsupported_and_misplaced_types() {
    // TAR-1: `V` labels and other unlisted types are unsupported.
    for (t, want) in [
        (b'D', ErrorClass::Unsupported),
        (b'V', ErrorClass::Unsupported),
        (b'N', ErrorClass::Unsupported),
        (b'M', ErrorClass::Unsupported),
    ] {
        let mut out = Vec::new();
        member(&mut out, b"f", t, b"");
        end(&mut out);
        assert_eq!(class(read_all(&out)), want, "{}", char::from(t));
    }
    // TAR-1: `7` is a regular file.
    let mut out = Vec::new();
    member(&mut out, b"f", b'7', b"seven");
    end(&mut out);
    let all = read_all(&out).unwrap();
    assert_eq!(
        (all[0].0.kind.clone(), all[0].1.as_slice()),
        (EntryKind::Regular, &b"seven"[..])
    );
    // Directories carry no data.
    let mut out = Vec::new();
    member(&mut out, b"d/", b'5', b"data");
    end(&mut out);
    assert_eq!(class(read_all(&out)), ErrorClass::Malformed);
    // Other kinds are reported.
    let mut out = Vec::new();
    member(&mut out, b"fifo", b'6', b"");
    member(&mut out, b"d/", b'5', b"");
    end(&mut out);
    let all = read_all(&out).unwrap();
    assert_eq!(all[0].0.kind, EntryKind::Other(b'6'));
    assert_eq!(all[1].0.kind, EntryKind::Directory);
}

#[test]
fn end_marker_rules() {
    let mut out = Vec::new();
    member(&mut out, b"f", b'0', b"x");
    let body = out.clone();
    // Lone zero block followed by a header.
    let mut lone = body.clone();
    lone.extend_from_slice(&[0u8; B]);
    member(&mut lone, b"g", b'0', b"");
    end(&mut lone);
    assert_eq!(class(read_all(&lone)), ErrorClass::Malformed);
    // No end marker / half an end marker.
    assert_eq!(class(read_all(&body)), ErrorClass::Truncated);
    // TAR-8: one zero block is enough; a partial one is not.
    let mut half = body.clone();
    half.extend_from_slice(&[0u8; B]);
    assert!(read_all(&half).is_ok());
    assert_eq!(
        class(read_all(&half[..half.len() - 1])),
        ErrorClass::Truncated
    );
    // LIM-23 counts every zero byte after the first zero block.
    let limit = crate::limits::MAX_TAR_TRAILING_ZERO_BYTES as usize;
    let mut long = body;
    long.extend(std::iter::repeat_n(0u8, B + limit));
    assert!(read_all(&long).is_ok());
    long.push(0);
    assert_eq!(class(read_all(&long)), ErrorClass::LimitExceeded);
}

/// A GNU `S` header with the given pairs (at most 4) and real size.
fn old_sparse(name: &[u8], pairs: &[(u64, u64)], realsize: u64, stored: u64) -> [u8; B] {
    let mut h = ustar(name, b'S', stored);
    h[257..265].copy_from_slice(b"ustar  \0");
    for (i, &(o, l)) in pairs.iter().enumerate() {
        let p = 386 + i * 24;
        octal(&mut h[p..p + 12], o);
        octal(&mut h[p + 12..p + 24], l);
    }
    octal(&mut h[483..495], realsize);
    checksum(&mut h);
    h
}

#[test]
fn sparse_map_validity() {
    type Case = (&'static [(u64, u64)], u64, u64, ErrorClass);
    let cases: &[Case] = &[
        (&[(0, 512), (256, 512)], 4096, 1024, ErrorClass::Malformed), // overlap
        (&[(1024, 512), (0, 512)], 4096, 1024, ErrorClass::Malformed), // unsorted
        (&[(0, 512), (4000, 512)], 4096, 1024, ErrorClass::Malformed), // past realsize
        (&[(0, 512)], 4096, 1024, ErrorClass::Malformed),             // sum != stored
        (&[(0o77777777777, 2)], 4096, 2, ErrorClass::Malformed),      // far out
        (&[(0, 512)], (16 << 40) + 1, 512, ErrorClass::LimitExceeded),
    ];
    for &(pairs, realsize, stored, want) in cases {
        let mut out = old_sparse(b"s", pairs, realsize, stored).to_vec();
        out.extend(std::iter::repeat_n(1u8, stored as usize));
        pad(&mut out);
        end(&mut out);
        assert_eq!(class(read_all(&out)), want, "{pairs:?}");
    }
    // A valid one with a final (realsize, 0).
    let mut out = old_sparse(b"s", &[(512, 3), (4096, 0)], 4096, 3).to_vec();
    out.extend_from_slice(b"abc");
    pad(&mut out);
    end(&mut out);
    let all = read_all(&out).unwrap();
    assert_eq!(&all[0].1[512..515], b"abc");
    assert_eq!(all[0].0.size, 4096);
}

#[test]
fn pax1_map_count_is_bounded_before_allocation() {
    let mut pax = Vec::new();
    pax.extend(record("GNU.sparse.major", b"1"));
    pax.extend(record("GNU.sparse.minor", b"0"));
    pax.extend(record("GNU.sparse.realsize", b"100"));
    let mut out = Vec::new();
    member(&mut out, b"x", b'x', &pax);
    let mut data = b"99999999999999\n".to_vec();
    pad(&mut data);
    member(&mut out, b"f", b'0', &data);
    end(&mut out);
    assert_eq!(class(read_all(&out)), ErrorClass::LimitExceeded);
}

/// A small valid archive mixing every kind, for mutation tests.
fn valid_archive() -> Vec<u8> {
    let mut out = Vec::new();
    member(&mut out, b"dir/", b'5', b"");
    member(&mut out, b"dir/a", b'0', &sample(700));
    let mut ln = vec![b'l'; 130];
    ln.push(0);
    member(&mut out, b"././@LongLink", b'L', &ln);
    member(&mut out, b"x", b'2', b"");
    let mut h = old_sparse(b"dir/s", &[(0, 10), (1024, 20), (3000, 0)], 3000, 30);
    h[124..136].copy_from_slice(b"00000000036\0");
    checksum(&mut h);
    out.extend_from_slice(&h);
    out.extend_from_slice(&[9u8; 30]);
    pad(&mut out);
    let mut tw = tarwriter("vm1/root.img", &sample(2000), true);
    tw.truncate(tw.len() - 2 * B);
    out.extend(tw);
    end(&mut out);
    out
}

#[test]
fn valid_archive_reads() {
    let all = read_all(&valid_archive()).unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[1].1, sample(700));
    assert_eq!(all[4].1, sample(2000));
}

#[test]
fn truncation_at_every_block_is_truncated() {
    let a = valid_archive();
    // TAR-8: the stream may end once the first end-of-archive block is complete.
    for cut in (0..a.len() - B).step_by(B) {
        assert_eq!(
            class(read_all(&a[..cut])),
            ErrorClass::Truncated,
            "cut at {cut}"
        );
    }
}

/// Reads everything; checks no data is reported beyond `entry.size`. Never panics.
fn check_bounds(bytes: &[u8]) {
    let mut r = TarReader::new(bytes);
    while let Ok(Some(e)) = r.next_entry() {
        let size = e.size;
        let mut sink = |off: u64, b: &[u8]| {
            assert!(off + b.len() as u64 <= size, "data beyond size");
            Ok(())
        };
        if r.read_data(&mut sink).is_err() {
            break;
        }
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        check_bounds(&bytes);
    }

    #[test]
    fn mutations_never_panic(muts in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut a = valid_archive();
        for (pos, val) in muts {
            let i = pos % a.len();
            a[i] = val;
        }
        check_bounds(&a);
    }

    #[test]
    fn header_field_mutations_never_panic(
        block in 0usize..20, off in 0usize..512, val in any::<u8>()
    ) {
        // Focus on header bytes, fixing the checksum so the parser goes deeper.
        let mut a = valid_archive();
        let start = (block * B) % a.len();
        a[start + off] = val;
        let mut h = [0u8; B];
        h.copy_from_slice(&a[start..start + B]);
        checksum(&mut h);
        a[start..start + B].copy_from_slice(&h);
        check_bounds(&a);
    }
}

/// Returns at most `step` bytes per read and an `Interrupted` error every other call.
struct Stingy<'a> {
    data: &'a [u8],
    step: usize,
    calls: usize,
}

impl std::io::Read for Stingy<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.calls += 1;
        if self.calls % 2 == 0 {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        let n = self.step.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

#[test]
fn short_reads_give_the_same_result() {
    let a = valid_archive();
    let want = read_all(&a).unwrap();
    for step in [1, 7, 511, 513, 4096] {
        let mut r = TarReader::new(Stingy {
            data: &a,
            step,
            calls: 0,
        });
        let mut got = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            let mut buf = vec![0u8; e.size as usize];
            r.read_data(&mut |off: u64, b: &[u8]| {
                buf[off as usize..off as usize + b.len()].copy_from_slice(b);
                Ok(())
            })
            .unwrap();
            got.push((e, buf));
        }
        assert_eq!(got, want, "step {step}");
    }
}

#[test]
fn errors_are_sticky_and_io_errors_are_io() {
    struct Broken;
    impl std::io::Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("disk on fire"))
        }
    }
    let mut r = TarReader::new(Broken);
    assert_eq!(r.next_entry().unwrap_err().class(), ErrorClass::Io);
    assert_eq!(r.next_entry().unwrap_err().class(), ErrorClass::Io);
    let mut bad = valid_archive();
    bad[0] ^= 1;
    let mut r = TarReader::new(&bad[..]);
    assert_eq!(r.next_entry().unwrap_err().class(), ErrorClass::Malformed);
    assert_eq!(
        r.read_data(&mut Discard).unwrap_err().class(),
        ErrorClass::Malformed
    );
}
