//! Reading what is backed up: data runs of volume images (SEEK_DATA/SEEK_HOLE, else
//! 512-byte zero-block scanning, as upstream's `tarwriter` does for block devices) and the
//! inner tar stream of each file (SPEC.md TAR-2, TAR-11), written into any `Write`.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use qbackup_format::limits::MAX_SPARSE_ENTRIES;
use qbackup_format::writer::tar::{self, Meta};
use qbackup_format::writer::{padding, END_OF_ARCHIVE};

use crate::progress::Progress;

/// Read size for data runs and zero scanning.
const IO_BUF: usize = 1 << 20;

/// A file's logical size and data runs `(offset, len)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub size: u64,
    pub runs: Vec<(u64, u64)>,
}

impl Layout {
    /// Stored data bytes.
    pub fn data_bytes(&self) -> u64 {
        self.runs.iter().map(|r| r.1).sum()
    }
    fn dense(&self) -> bool {
        self.runs.is_empty() && self.size == 0 || self.runs == [(0, self.size)]
    }
}

fn too_many() -> io::Error {
    io::Error::other(format!("more than {MAX_SPARSE_ENTRIES} data runs (LIM-11)"))
}

/// Data runs from SEEK_DATA/SEEK_HOLE; `None` when the file system cannot tell.
fn seek_data_runs(f: &File, size: u64) -> io::Result<Option<Vec<(u64, u64)>>> {
    let fd = f.as_raw_fd();
    let mut runs = Vec::new();
    let mut pos: u64 = 0;
    while pos < size {
        let Ok(at) = libc::off_t::try_from(pos) else {
            return Ok(None);
        };
        // SAFETY: lseek on a descriptor we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, at, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => break,
                Some(libc::EINVAL) | Some(libc::EOPNOTSUPP) => Ok(None),
                _ => Err(e),
            };
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        let (data, hole) = (data as u64, (hole as u64).min(size));
        if data >= size {
            break;
        }
        if hole > data {
            runs.push((data, hole - data));
            if runs.len() > MAX_SPARSE_ENTRIES {
                return Err(too_many());
            }
        }
        pos = hole.max(data + 1);
    }
    Ok(Some(runs))
}

fn is_zero(b: &[u8]) -> bool {
    b.iter().fold(0u8, |a, &x| a | x) == 0
}

/// Runs of non-zero 512-byte blocks (a trailing partial block counts as a block).
fn scan_runs(f: &File, size: u64, progress: &Progress) -> io::Result<Vec<(u64, u64)>> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut buf = vec![0u8; IO_BUF];
    let mut pos = 0u64;
    while pos < size {
        let want = (size - pos).min(IO_BUF as u64) as usize;
        let got = read_full_at(f, &mut buf[..want], pos)?;
        for (i, block) in buf[..got].chunks(512).enumerate() {
            if is_zero(block) {
                continue;
            }
            let off = pos + (i as u64) * 512;
            let len = block.len() as u64;
            match runs.last_mut() {
                Some(last) if last.0 + last.1 == off => last.1 += len,
                _ => {
                    runs.push((off, len));
                    if runs.len() > MAX_SPARSE_ENTRIES {
                        return Err(too_many());
                    }
                }
            }
        }
        progress.scanned(got as u64);
        pos += got as u64;
    }
    Ok(runs)
}

fn read_full_at(f: &File, buf: &mut [u8], at: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], at + done as u64) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the file shrank while it was read",
                ))
            }
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Open a volume or small file and find its layout.
pub fn open(path: &Path, progress: &Progress) -> io::Result<(File, Layout)> {
    let mut f = File::open(path)?;
    let md = f.metadata()?;
    let block_dev = md.file_type().is_block_device();
    let size = if block_dev {
        f.seek(SeekFrom::End(0))?
    } else {
        md.len()
    };
    let runs = if size == 0 {
        Vec::new()
    } else if block_dev {
        scan_runs(&f, size, progress)?
    } else {
        match seek_data_runs(&f, size)? {
            Some(r) => r,
            None => scan_runs(&f, size, progress)?,
        }
    };
    Ok((f, Layout { size, runs }))
}

/// Logical size of a volume or file (for `backup-size`, an upper bound of its data).
pub fn logical_size(path: &Path) -> io::Result<u64> {
    let mut f = File::open(path)?;
    let md = f.metadata()?;
    if md.file_type().is_block_device() {
        f.seek(SeekFrom::End(0))
    } else {
        Ok(md.len())
    }
}

fn meta_of(md: &fs::Metadata) -> Meta {
    Meta {
        mode: md.mode() & 0o7777,
        uid: u64::from(md.uid()),
        gid: u64::from(md.gid()),
        mtime: u64::try_from(md.mtime()).unwrap_or(0),
    }
}

fn to_io(e: qbackup_format::Error) -> io::Error {
    io::Error::other(e.to_string())
}

/// Stream the data runs of `f` after an entry header.
fn write_runs(
    f: &File,
    layout: &Layout,
    out: &mut dyn Write,
    progress: &Progress,
) -> io::Result<()> {
    let mut buf = vec![0u8; IO_BUF];
    let mut logical = 0u64;
    for &(off, len) in &layout.runs {
        progress.advance(off.saturating_sub(logical));
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(IO_BUF as u64) as usize;
            read_full_at(f, &mut buf[..n], off + done)?;
            out.write_all(&buf[..n])?;
            progress.advance(n as u64);
            done += n as u64;
        }
        logical = off + len;
    }
    progress.advance(layout.size.saturating_sub(logical));
    out.write_all(&[0u8; 512][..padding(layout.data_bytes())])
}

/// The inner tar of one volume or small file, named `name` (`vm3/private.img`): a
/// regular entry when dense, else an old-GNU sparse entry (TAR-2, TAR-11).
pub fn write_file_tar(
    name: &str,
    file: Option<(&File, &Layout)>,
    out: &mut dyn Write,
    progress: &Progress,
) -> io::Result<()> {
    write_file_entry(name, file, out, progress)?;
    out.write_all(&END_OF_ARCHIVE)
}

/// The inner tar of a small file made in memory (`--from-qubes`), named `name`.
pub fn write_bytes_tar(
    name: &str,
    bytes: &[u8],
    mtime: u64,
    out: &mut dyn Write,
    progress: &Progress,
) -> io::Result<()> {
    let meta = Meta {
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime,
    };
    let len = bytes.len() as u64;
    out.write_all(&tar::regular(name, len, &meta).map_err(to_io)?)?;
    out.write_all(bytes)?;
    progress.advance(len);
    out.write_all(&[0u8; 512][..padding(len)])?;
    out.write_all(&END_OF_ARCHIVE)
}

/// The inner tar of an R3 template directory (`vm9/.`, TAR-11, WRT-6): the directory
/// entry `vm9/./`, then each file as `vm9/./NAME` (as R3.2's `tar -C DIR .` with its
/// name transform wrote them).
pub fn write_dir_tar(
    root: &str,
    files: &[(&str, Option<(&File, &Layout)>)],
    mtime: u64,
    out: &mut dyn Write,
    progress: &Progress,
) -> io::Result<()> {
    let meta = Meta {
        mode: 0o775,
        uid: 0,
        gid: 0,
        mtime,
    };
    out.write_all(&tar::directory(root, &meta).map_err(to_io)?)?;
    for (name, file) in files {
        write_file_entry(&format!("{root}/{name}"), *file, out, progress)?;
    }
    out.write_all(&END_OF_ARCHIVE)
}

/// One regular or sparse entry with its data, without the end-of-archive blocks.
fn write_file_entry(
    name: &str,
    file: Option<(&File, &Layout)>,
    out: &mut dyn Write,
    progress: &Progress,
) -> io::Result<()> {
    let mtime = file
        .and_then(|(f, _)| f.metadata().ok())
        .map_or(0, |m| u64::try_from(m.mtime()).unwrap_or(0));
    let meta = Meta {
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime,
    };
    match file {
        None => out.write_all(&tar::regular(name, 0, &meta).map_err(to_io)?)?,
        Some((f, layout)) => {
            let header = if layout.dense() {
                tar::regular(name, layout.size, &meta)
            } else {
                tar::sparse(name, layout.size, &layout.runs, &meta)
            }
            .map_err(to_io)?;
            out.write_all(&header)?;
            write_runs(f, layout, out, progress)?;
        }
    }
    Ok(())
}

/// Sum of regular file sizes under `dir` and its count of entries (for its `backup-size`),
/// not following symlinks.
pub fn tree_size(dir: &Path) -> io::Result<(u64, u64)> {
    let (mut total, mut entries) = (0u64, 1u64);
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let md = fs::symlink_metadata(entry.path())?;
        if md.is_dir() {
            let (t, e) = tree_size(&entry.path())?;
            total = total.saturating_add(t);
            entries = entries.saturating_add(e);
        } else {
            if md.is_file() {
                total = total.saturating_add(md.len());
            }
            entries = entries.saturating_add(1);
        }
    }
    Ok((total, entries))
}

/// The inner tar of dom0's home: the directory `dom0-home/USER` first, then every entry
/// below it (directories, regular files, symlinks; sorted), GNU long names as needed
/// (TAR-4, TAR-11). Sockets, FIFOs and devices are skipped and returned as notes.
pub fn write_home_tar(
    home: &Path,
    user: &str,
    out: &mut dyn Write,
    progress: &Progress,
) -> io::Result<Vec<String>> {
    let mut notes = Vec::new();
    let root = format!("dom0-home/{user}");
    let md = fs::metadata(home)?;
    out.write_all(&tar::directory(&root, &meta_of(&md)).map_err(to_io)?)?;
    walk(home, &root, out, progress, &mut notes)?;
    out.write_all(&END_OF_ARCHIVE)?;
    Ok(notes)
}

fn walk(
    dir: &Path,
    name: &str,
    out: &mut dyn Write,
    progress: &Progress,
    notes: &mut Vec<String>,
) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<io::Result<_>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let path = e.path();
        let Some(base) = e.file_name().to_str().map(str::to_owned) else {
            notes.push(format!("skipped {} (name is not UTF-8)", path.display()));
            continue;
        };
        if base.chars().any(char::is_control) {
            notes.push(format!(
                "skipped {} (control character in name)",
                path.display()
            ));
            continue;
        }
        let child = format!("{name}/{base}");
        let md = fs::symlink_metadata(&path)?;
        let ft = md.file_type();
        if ft.is_dir() {
            out.write_all(&tar::directory(&child, &meta_of(&md)).map_err(to_io)?)?;
            walk(&path, &child, out, progress, notes)?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&path)?;
            let Some(t) = target.to_str() else {
                notes.push(format!(
                    "skipped symlink {} (target not UTF-8)",
                    path.display()
                ));
                continue;
            };
            out.write_all(&tar::symlink(&child, t, &meta_of(&md)).map_err(to_io)?)?;
        } else if ft.is_file() {
            let mut f = File::open(&path)?;
            let size = md.len();
            out.write_all(&tar::regular(&child, size, &meta_of(&md)).map_err(to_io)?)?;
            let copied = io::copy(&mut (&mut f).take(size), out)?;
            if copied != size {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("{} shrank while it was read", path.display()),
                ));
            }
            progress.advance(size);
            out.write_all(&[0u8; 512][..padding(size)])?;
        } else {
            notes.push(format!(
                "skipped {} (not a file, directory or symlink)",
                path.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_block_scan_finds_runs() {
        let dir = std::env::temp_dir().join(format!("qbp-scan-{}", std::process::id()));
        let mut data = vec![0u8; 5000];
        data[600] = 1; // block 1
        data[1100] = 2; // block 2: joins block 1
        data[4999] = 3; // trailing partial block (4608..5000)
        fs::write(&dir, &data).unwrap();
        let f = File::open(&dir).unwrap();
        let runs = scan_runs(&f, 5000, &Progress::default()).unwrap();
        fs::remove_file(&dir).unwrap();
        assert_eq!(runs, vec![(512, 1024), (4608, 392)]);
        let l = Layout { size: 5000, runs };
        assert_eq!(l.data_bytes(), 1416);
        assert!(!l.dense());
    }
}
