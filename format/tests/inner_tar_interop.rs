//! Interop: archives written by the real GNU tar, read back with `inner_tar` and compared
//! byte for byte with the source files (SPEC.md TAR-1 … TAR-10).
#![allow(clippy::disallowed_methods)] // tests drive the real `tar`, `truncate`, `dd` on temp files

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use qbackup_format::inner_tar::{Entry, EntryKind, MultiVolumeReader, TarReader};
use qbackup_format::ErrorClass;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn tempdir(tag: &str) -> TempDir {
    static N: AtomicU32 = AtomicU32::new(0);
    let p = std::env::temp_dir().join(format!(
        "qbackup-inner-tar-{}-{tag}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = fs::remove_dir_all(&p);
    fs::create_dir_all(p.join("src")).unwrap();
    TempDir(p)
}

fn run(dir: &Path, prog: &str, args: &[&str]) -> Vec<u8> {
    let out = Command::new(prog)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{prog}: {e}"));
    assert!(
        out.status.success(),
        "{prog} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `truncate -s size` then `dd` random blocks of 4 KiB at the given block indexes.
fn make_sparse(dir: &Path, name: &str, size: &str, blocks: &[(u64, u64)]) {
    run(dir, "truncate", &["-s", size, name]);
    for &(seek, count) in blocks {
        run(
            dir,
            "dd",
            &[
                "if=/dev/urandom",
                &format!("of={name}"),
                "bs=4096",
                &format!("seek={seek}"),
                &format!("count={count}"),
                "conv=notrunc",
                "status=none",
            ],
        );
    }
}

fn write_random(path: &Path, len: usize) {
    let mut f = fs::File::open("/dev/urandom").unwrap();
    let mut v = vec![0u8; len];
    f.read_exact(&mut v).unwrap();
    fs::write(path, v).unwrap();
}

/// Read every entry and check each regular file's data against `src/<path>`: every run
/// equals the file at its offset, and (for files up to 64 MiB) every byte not covered by a
/// run is zero. Returns the entries.
fn check_against_source<F>(src: &Path, mut next: F) -> Vec<Entry>
where
    F: FnMut(&mut dyn FnMut(&Entry, u64, &[u8])) -> Option<Entry>,
{
    let mut entries = Vec::new();
    loop {
        let mut covered: Vec<(u64, u64)> = Vec::new();
        let mut file: Option<fs::File> = None;
        let mut cb = |e: &Entry, off: u64, b: &[u8]| {
            assert!(off + b.len() as u64 <= e.size, "run beyond size");
            if let Some(&(o, l)) = covered.last() {
                assert!(off >= o + l, "runs out of order");
            }
            covered.push((off, b.len() as u64));
            let f = file.get_or_insert_with(|| {
                fs::File::open(src.join(String::from_utf8_lossy(&e.path).as_ref())).unwrap()
            });
            f.seek(SeekFrom::Start(off)).unwrap();
            let mut want = vec![0u8; b.len()];
            f.read_exact(&mut want).unwrap();
            assert!(want == b, "data differs at {off}");
        };
        let Some(e) = next(&mut cb) else { break };
        if e.kind == EntryKind::Regular && e.size <= 64 << 20 {
            let whole = fs::read(src.join(String::from_utf8_lossy(&e.path).as_ref())).unwrap();
            assert_eq!(whole.len() as u64, e.size, "size of {:?}", e.path);
            let mut pos = 0u64;
            for &(o, l) in &covered {
                assert!(whole[pos as usize..o as usize].iter().all(|&b| b == 0));
                pos = o + l;
            }
            assert!(whole[pos as usize..].iter().all(|&b| b == 0));
        }
        entries.push(e);
    }
    entries
}

fn read_tar(src: &Path, bytes: &[u8]) -> Vec<Entry> {
    let mut r = TarReader::new(bytes);
    check_against_source(src, |cb| {
        let e = r.next_entry().unwrap()?;
        let e2 = e.clone();
        r.read_data(&mut |off: u64, b: &[u8]| {
            cb(&e2, off, b);
            Ok(())
        })
        .unwrap();
        Some(e)
    })
}

fn read_volumes(src: &Path, vols: &[Vec<u8>]) -> Vec<Entry> {
    let mut r = MultiVolumeReader::new(vols.iter().map(|v| v.as_slice())).unwrap();
    let entries = check_against_source(src, |cb| {
        let e = r.next_entry().unwrap()?;
        let e2 = e.clone();
        r.read_data(&mut |off: u64, b: &[u8]| {
            cb(&e2, off, b);
            Ok(())
        })
        .unwrap();
        Some(e)
    });
    r.finish().unwrap();
    entries
}

fn err_class(bytes: &[u8]) -> ErrorClass {
    let mut r = TarReader::new(bytes);
    loop {
        match r.next_entry() {
            Ok(Some(_)) => {}
            Ok(None) => panic!("expected an error"),
            Err(e) => return e.class(),
        }
    }
}

fn paths(entries: &[Entry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.path).into_owned())
        .collect()
}

#[test]
fn dense_files_dirs_links_and_long_names() {
    let t = tempdir("dense");
    let src = t.0.join("src");
    let long_dir = "d".repeat(120);
    let long_file = "f".repeat(200);
    fs::create_dir_all(src.join("tree").join(&long_dir)).unwrap();
    write_random(&src.join("tree/data"), 100_000);
    fs::write(src.join("tree/empty"), b"").unwrap();
    write_random(&src.join("tree").join(&long_dir).join(&long_file), 777);
    std::os::unix::fs::symlink("data", src.join("tree/link")).unwrap();
    std::os::unix::fs::symlink("x".repeat(150), src.join("tree/longlink")).unwrap();
    fs::hard_link(src.join("tree/data"), src.join("tree/hard")).unwrap();
    let long_path = format!("tree/{long_dir}/{long_file}");
    assert!(long_path.len() > 255);
    for format in ["gnu", "posix"] {
        let bytes = run(&src, "tar", &["-c", "--format", format, "-f", "-", "tree"]);
        let entries = read_tar(&src, &bytes);
        let p = paths(&entries);
        for want in ["tree/", "tree/data", "tree/empty", "tree/link", &long_path] {
            assert!(
                p.iter().any(|x| x == want),
                "{format}: {want} missing in {p:?}"
            );
        }
        let get = |name: &str| entries.iter().find(|e| e.path == name.as_bytes()).unwrap();
        assert_eq!(get("tree/").kind, EntryKind::Directory);
        assert_eq!(get("tree/data").size, 100_000);
        assert_eq!(get(&long_path).size, 777);
        assert_eq!(
            get("tree/link").kind,
            EntryKind::Symlink {
                target: b"data".to_vec()
            }
        );
        assert_eq!(
            get("tree/longlink").kind,
            EntryKind::Symlink {
                target: "x".repeat(150).into_bytes()
            }
        );
        // One of data/hard is the hard link to the other.
        let links = entries
            .iter()
            .filter(|e| matches!(&e.kind, EntryKind::HardLink { target } if target.starts_with(b"tree/")))
            .count();
        assert_eq!(links, 1, "{format}");
        assert!(get("tree/data").mtime.is_some());
    }
}

#[test]
fn old_gnu_sparse_holes_at_start_middle_end() {
    let t = tempdir("sparse");
    let src = t.0.join("src");
    make_sparse(&src, "img", "1M", &[(64, 8), (150, 4)]);
    let bytes = run(&src, "tar", &["-c", "--sparse", "-f", "-", "img"]);
    assert_eq!(bytes[156], b'S', "GNU tar wrote an old-GNU sparse entry");
    let entries = read_tar(&src, &bytes);
    assert_eq!(entries.len(), 1);
    let e = &entries[0];
    assert_eq!(e.size, 1 << 20);
    assert_eq!(e.stored, 12 * 4096);
    let map = &e.sparse.as_ref().unwrap().entries;
    assert_eq!(map.first(), Some(&(64 * 4096, 8 * 4096)));
    assert_eq!(map.last(), Some(&(1 << 20, 0)), "GNU's final (realsize, 0)");
}

#[test]
fn old_gnu_sparse_extension_blocks() {
    for runs in [6u64, 30] {
        let t = tempdir("ext");
        let src = t.0.join("src");
        let blocks: Vec<(u64, u64)> = (0..runs).map(|i| (i * 3 + 1, 1)).collect();
        make_sparse(&src, "img", &format!("{}", (runs * 3 + 2) * 4096), &blocks);
        let bytes = run(&src, "tar", &["-c", "--sparse", "-f", "-", "img"]);
        assert_eq!(bytes[156], b'S');
        assert_eq!(bytes[482], 1, "isextended");
        let entries = read_tar(&src, &bytes);
        let map = &entries[0].sparse.as_ref().unwrap().entries;
        assert!(map.len() as u64 >= runs, "{} entries", map.len());
    }
}

#[test]
fn pax_sparse_versions() {
    let t = tempdir("pax");
    let src = t.0.join("src");
    make_sparse(&src, "img", "2M", &[(0, 2), (100, 5), (511, 1)]);
    for v in ["0.0", "0.1", "1.0"] {
        let bytes = run(
            &src,
            "tar",
            &[
                "-c",
                "--format=posix",
                "--sparse",
                "--sparse-version",
                v,
                "-f",
                "-",
                "img",
            ],
        );
        // TAR-3: only PAX 1.0 sparse is supported; 0.0 and 0.1 are unsupported.
        if v != "1.0" {
            assert_eq!(err_class(&bytes), ErrorClass::Unsupported, "version {v}");
            continue;
        }
        let entries = read_tar(&src, &bytes);
        assert_eq!(paths(&entries), ["img"], "version {v}");
        assert_eq!(entries[0].size, 2 << 20);
        assert_eq!(entries[0].stored, 8 * 4096);
        assert!(entries[0].sparse.is_some());
    }
}

#[test]
fn sparse_file_over_8_gib_uses_base256() {
    let t = tempdir("huge");
    let src = t.0.join("src");
    // 9 GiB: data at the start, past 8 GiB, and in the last block.
    let last = 9 * (1u64 << 30) / 4096 - 1;
    make_sparse(&src, "root.img", "9G", &[(0, 1), (2_200_000, 3), (last, 1)]);
    let bytes = run(&src, "tar", &["-c", "--sparse", "-f", "-", "root.img"]);
    assert_eq!(bytes[156], b'S');
    assert_eq!(bytes[483], 0x80, "realsize in base-256");
    let entries = read_tar(&src, &bytes);
    let e = &entries[0];
    assert_eq!(e.size, 9 << 30);
    assert_eq!(e.stored, 5 * 4096);
    let map = &e.sparse.as_ref().unwrap().entries;
    assert!(map.contains(&(last * 4096, 4096)), "{map:?}");

    let bytes = run(
        &src,
        "tar",
        &[
            "-c",
            "--format=posix",
            "--sparse",
            "--sparse-version=1.0",
            "-f",
            "-",
            "root.img",
        ],
    );
    let entries = read_tar(&src, &bytes);
    assert_eq!(entries[0].size, 9 << 30);
    assert_eq!(entries[0].stored, 5 * 4096);
}

#[test]
fn truncation_of_a_gnu_archive_at_every_block() {
    let t = tempdir("trunc");
    let src = t.0.join("src");
    let blocks: Vec<(u64, u64)> = (0..8).map(|i| (i * 2 + 1, 1)).collect();
    make_sparse(&src, "img", "80K", &blocks);
    write_random(&src.join("x"), 3000);
    // -b 1: no record padding, so the archive ends right after the end marker.
    let bytes = run(
        &src,
        "tar",
        &["-c", "-b", "1", "--sparse", "-f", "-", "img", "x"],
    );
    assert_eq!(read_tar(&src, &bytes).len(), 2);
    // TAR-8: the stream may end once the first end-of-archive block is complete.
    assert_eq!(read_tar(&src, &bytes[..bytes.len() - 512]).len(), 2);
    for cut in (0..bytes.len() - 512).step_by(512) {
        assert_eq!(
            err_class(&bytes[..cut]),
            ErrorClass::Truncated,
            "cut at {cut}"
        );
    }
}

/// `tar -c -M -L <kib>` into v1, v2, …; returns the volumes that were written.
fn multi_volume(dir: &Path, kib: u32, args: &[&str]) -> Vec<Vec<u8>> {
    let names: Vec<String> = (1..=20).map(|i| format!("vol{i}")).collect();
    for n in &names {
        let _ = fs::remove_file(dir.join(n));
    }
    let mut a: Vec<String> = vec!["-c".into(), "-M".into(), "-L".into(), kib.to_string()];
    for n in &names {
        a.push("-f".into());
        a.push(n.clone());
    }
    a.extend(args.iter().map(|s| s.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    run(dir, "tar", &a);
    names
        .iter()
        .map_while(|n| fs::read(dir.join(n)).ok())
        .collect()
}

#[test]
fn multi_volume_dense_sparse_and_long_names() {
    let t = tempdir("mv");
    let src = t.0.join("src");
    write_random(&src.join("big"), 300_000);
    write_random(&src.join("exact"), 102_400 - 512);
    write_random(&src.join("after"), 5000);
    let long = "l".repeat(150);
    write_random(&src.join(&long), 250_000);
    make_sparse(&src, "sp", "1M", &[(10, 30), (200, 3)]);

    // A file split over three volumes.
    let vols = multi_volume(&src, 100, &["big", "after"]);
    assert!(vols.len() >= 3);
    assert_eq!(vols[1][156], b'M');
    assert_eq!(paths(&read_volumes(&src, &vols)), ["big", "after"]);

    // TAR-1: volume labels (`tar -V`; upstream never writes them) are unsupported.
    let vols = multi_volume(&src, 100, &["-V", "qubes", "big", "after"]);
    assert_eq!(vols[0][156], b'V');
    let mut r = MultiVolumeReader::new(vols.iter().map(|v| v.as_slice())).unwrap();
    assert_eq!(
        r.next_entry().unwrap_err().class(),
        qbackup_format::ErrorClass::Unsupported
    );

    // A volume filled exactly: GNU starts the next one with an offset-0 `M` header.
    let vols = multi_volume(&src, 100, &["exact", "after"]);
    assert_eq!(vols.len(), 2);
    assert_eq!(vols[1][156], b'M');
    assert_eq!(paths(&read_volumes(&src, &vols)), ["exact", "after"]);

    // A long name: GNU truncates it to 100 bytes in the `M` header.
    let vols = multi_volume(&src, 100, &[&long]);
    assert!(vols.len() >= 3);
    assert_eq!(paths(&read_volumes(&src, &vols)), [long]);

    // An old-GNU sparse file continued across volumes.
    let vols = multi_volume(&src, 100, &["--sparse", "sp", "after"]);
    assert!(vols.len() >= 2);
    assert_eq!(vols[0][156], b'S');
    let e = read_volumes(&src, &vols);
    assert_eq!(paths(&e), ["sp", "after"]);
    assert_eq!(e[0].size, 1 << 20);
}

#[test]
fn multi_volume_damage() {
    let t = tempdir("mvbad");
    let src = t.0.join("src");
    write_random(&src.join("big"), 300_000);
    let vols = multi_volume(&src, 100, &["big"]);
    assert_eq!(vols.len(), 3);
    let class = |vols: Vec<&[u8]>| -> ErrorClass {
        let mut r = MultiVolumeReader::new(vols.into_iter()).unwrap();
        loop {
            match r.next_entry() {
                Ok(Some(_)) => {}
                Ok(None) => return r.finish().expect_err("expected an error").class(),
                Err(e) => return e.class(),
            }
        }
    };
    // Missing last volume.
    assert_eq!(class(vec![&vols[0], &vols[1]]), ErrorClass::Truncated);
    // Volumes out of order.
    assert_eq!(
        class(vec![&vols[0], &vols[2], &vols[1]]),
        ErrorClass::Malformed
    );
    // A repeated volume.
    assert_eq!(
        class(vec![&vols[0], &vols[1], &vols[1], &vols[2]]),
        ErrorClass::Malformed
    );
    // A volume after the end.
    assert_eq!(
        class(vec![&vols[0], &vols[1], &vols[2], &vols[2]]),
        ErrorClass::Malformed
    );
    // A continuation volume read on its own / the first volume alone.
    assert_eq!(err_class(&vols[1]), ErrorClass::Unsupported);
    assert_eq!(err_class(&vols[0]), ErrorClass::Truncated);
}

#[test]
fn header_set_split_across_volumes_is_unsupported() {
    let t = tempdir("split");
    let src = t.0.join("src");
    let blocks: Vec<(u64, u64)> = (0..30).map(|i| (i * 3 + 1, 1)).collect();
    make_sparse(&src, "img", &format!("{}", 92 * 4096), &blocks);
    let bytes = run(&src, "tar", &["-c", "--sparse", "-f", "-", "img"]);
    assert_eq!(bytes[482], 1, "isextended");
    // The volume boundary falls between the `S` header and its extension block.
    let vols = [&bytes[..512], &bytes[512..]];
    let mut r = MultiVolumeReader::new(vols.into_iter()).unwrap();
    assert_eq!(r.next_entry().unwrap_err().class(), ErrorClass::Unsupported);
    // Without a further volume the same cut is a truncation.
    let mut r = MultiVolumeReader::new([&bytes[..512]].into_iter()).unwrap();
    assert_eq!(r.next_entry().unwrap_err().class(), ErrorClass::Truncated);
}

/// A stream in the layout of `qubes/tarwriter.py` (format-notes §7.1), produced with
/// Python's own `tarfile` header writer like tarwriter does: map from 512-byte zero-block
/// scanning, pax 1.0 keys, `GNUSparseFile.<pid>` name, last run unpadded, two zero blocks.
const TARWRITER_PY: &str = r#"
import os, sys, tarfile
src, name, out = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(src, "rb").read()
runs, start = [], None
for off in range(0, len(data), 512):
    if data[off:off + 512].count(0) == len(data[off:off + 512]):
        if start is not None:
            runs.append((start, off - start)); start = None
    elif start is None:
        start = off
if start is not None:
    runs.append((start, len(data) - start))
else:
    runs.append((len(data), 0))
text = "%d\n" % len(runs) + "".join("%d\n%d\n" % r for r in runs)
mapbuf = text.encode() + b"\0" * (-len(text) % 512)
ti = tarfile.TarInfo("%s/GNUSparseFile.%d/%s" % (os.path.dirname(name), os.getpid(), os.path.basename(name)))
ti.size = len(mapbuf) + sum(r[1] for r in runs)
ti.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                  "GNU.sparse.name": name, "GNU.sparse.realsize": str(runs[-1][0] + runs[-1][1])}
with open(out, "wb") as f:
    f.write(ti.tobuf(tarfile.PAX_FORMAT) + mapbuf)
    for o, l in runs:
        f.write(data[o:o + l])
    f.write(b"\0" * 1024)
"#;

#[test]
fn tarwriter_layout_via_python_tarfile() {
    let t = tempdir("tarwriter");
    let src = t.0.join("src");
    let long_sub = format!("vm{}/", "9".repeat(120));
    fs::create_dir_all(src.join(&long_sub)).unwrap();
    fs::create_dir_all(src.join("vm3")).unwrap();
    // Sizes that are and are not multiples of 512, ending in data and in a hole.
    for (i, (size, blocks)) in [
        ("1M", vec![(3u64, 2u64), (100, 1)]),
        ("1000000", vec![(0, 1), (200, 1)]),
        ("1000000", vec![(10, 1)]),
        ("0", vec![]),
    ]
    .into_iter()
    .enumerate()
    {
        for sub in ["vm3/", long_sub.as_str()] {
            let name = format!("{sub}private{i}.img");
            make_sparse(&src, &name, size, &blocks);
            if i == 1 {
                // Data in the last, partial block: tarwriter leaves the last run unpadded.
                use std::io::Write;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .open(src.join(&name))
                    .unwrap();
                f.seek(SeekFrom::Start(999_950)).unwrap();
                f.write_all(&[0xaa; 50]).unwrap();
            }
            run(
                &t.0,
                "python3",
                &["-c", TARWRITER_PY, &format!("src/{name}"), &name, "out.tar"],
            );
            let bytes = fs::read(t.0.join("out.tar")).unwrap();
            assert_eq!(bytes.len() % 512 != 0, i == 1, "unpadded last run");
            let entries = read_tar(&src, &bytes);
            assert_eq!(paths(&entries), std::slice::from_ref(&name));
            assert!(entries[0].sparse.is_some());
            assert_eq!(entries[0].mtime, Some(0));
            // TAR-8: cut inside the padding or the first zero block, it is truncated.
            let nz = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
            assert_eq!(err_class(&bytes[..nz + 100]), ErrorClass::Truncated);
        }
    }
}

#[test]
fn all_hole_and_empty_files() {
    let t = tempdir("holes");
    let src = t.0.join("src");
    make_sparse(&src, "hole", "1M", &[]);
    fs::write(src.join("empty"), b"").unwrap();
    let bytes = run(&src, "tar", &["-c", "--sparse", "-f", "-", "hole", "empty"]);
    assert_eq!(bytes[156], b'S');
    let entries = read_tar(&src, &bytes);
    assert_eq!(paths(&entries), ["hole", "empty"]);
    assert_eq!((entries[0].size, entries[0].stored), (1 << 20, 0));
    assert_eq!(entries[0].sparse.as_ref().unwrap().entries, [(1 << 20, 0)]);
    assert_eq!((entries[1].size, entries[1].sparse.is_none()), (0, true));
}
