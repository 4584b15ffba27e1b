//! Extraction into a confined directory (SPEC.md EXT-1 … EXT-5).
//!
//! All paths are opened through a `cap_std::fs::Dir` for DIR, which cannot reach outside
//! it (no `..`, no absolute paths, no symlink escapes). Regular files are written under
//! a temporary name beside their final name and renamed only when their whole archive
//! file verified (EXT-2); on failure the temporaries are removed. All-zero blocks are
//! not written, so volume images keep their holes (EXT-3). Symlinks are recreated only
//! when relative and staying inside their VM's directory; other links and special files
//! are skipped with a note (EXT-4).

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use cap_std::fs::{Dir, OpenOptions};
use qbackup_format::archive::plan::{FileSpec, Placement};
use qbackup_format::inner_tar::{DataSink, Entry, EntryKind};
use qbackup_format::paths::escape;
use qbackup_format::{Error, ErrorClass, Result};

use crate::output::Output;

/// Block size for hole detection when writing.
const HOLE_BLOCK: usize = 4096;

/// A failed filesystem step. A path that collides with an earlier output (it already
/// exists, or one of its parents is a file) is `unsafe-path` (EXT-1, EXT-2); anything
/// else is the environment's failure (`io`).
fn io_err(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    use std::io::ErrorKind;
    let class = match e.kind() {
        ErrorKind::AlreadyExists | ErrorKind::NotADirectory => ErrorClass::UnsafePath,
        _ => ErrorClass::Io,
    };
    Error::new(class, format!("{what}: {e}"))
}

struct Staged {
    temp: PathBuf,
    final_path: PathBuf,
}

pub struct Extractor {
    root: Dir,
    staged: Vec<Staged>,
    links: Vec<(PathBuf, PathBuf)>,
    notes: Vec<String>,
    counter: u64,
}

impl Extractor {
    /// Open (creating if needed) the destination directory.
    pub fn open(dir: &Path) -> Result<Extractor> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io_err(format!("creating {}", dir.display()), e))?;
        let root = Dir::open_ambient_dir(dir, cap_std::ambient_authority())
            .map_err(|e| io_err(format!("opening {}", dir.display()), e))?;
        Ok(Extractor {
            root,
            staged: Vec::new(),
            links: Vec::new(),
            notes: Vec::new(),
            counter: 0,
        })
    }

    fn temp_name(&mut self, final_path: &Path) -> PathBuf {
        self.counter += 1;
        let base = final_path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let name = format!(
            ".{base}.qbackup-partial-{}-{}",
            std::process::id(),
            self.counter
        );
        final_path.with_file_name(name)
    }

    fn refuse_existing(&self, final_path: &Path) -> Result<()> {
        if self.root.symlink_metadata(final_path).is_ok() {
            return Err(Error::unsafe_path(format!(
                "{} already exists in the destination; extraction never replaces files (EXT-2)",
                final_path.display()
            )));
        }
        Ok(())
    }

    /// Give a verified temporary its final name; never replace anything (EXT-2).
    fn commit(&self, temp: &Path, final_path: &Path) -> Result<()> {
        self.refuse_existing(final_path)?;
        self.root
            .rename(temp, &self.root, final_path)
            .map_err(|e| io_err(format!("renaming into place {}", final_path.display()), e))
    }

    fn ensure_parent(&self, path: &Path) -> Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.root
                .create_dir_all(parent)
                .map_err(|e| io_err(format!("creating directory {}", parent.display()), e))?;
        }
        Ok(())
    }

    fn write_regular(
        &mut self,
        path: &Path,
        entry: &Entry,
        read_data: &mut dyn FnMut(&mut dyn DataSink) -> Result<()>,
    ) -> Result<()> {
        self.ensure_parent(path)?;
        let temp = self.temp_name(path);
        let file = self
            .root
            .open_with(&temp, OpenOptions::new().write(true).create_new(true))
            .map_err(|e| io_err(format!("creating {}", temp.display()), e))?
            .into_std();
        self.staged.push(Staged {
            temp: temp.clone(),
            final_path: path.to_path_buf(),
        });
        let mut sink =
            |offset: u64, bytes: &[u8]| -> Result<()> { write_keeping_holes(&file, offset, bytes) };
        read_data(&mut sink)?;
        file.set_len(entry.size)
            .map_err(|e| io_err(format!("sizing {}", temp.display()), e))?;
        let mode = entry.mode & 0o777;
        file.set_permissions(std::fs::Permissions::from_mode(mode | 0o600))
            .map_err(|e| io_err(format!("setting mode of {}", temp.display()), e))?;
        file.sync_data()
            .map_err(|e| io_err(format!("writing {}", temp.display()), e))?;
        Ok(())
    }
}

/// Write `bytes` at `offset`, skipping all-zero aligned blocks (EXT-3).
fn write_keeping_holes(file: &std::fs::File, offset: u64, bytes: &[u8]) -> Result<()> {
    let mut pos = 0usize;
    while pos < bytes.len() {
        let here = offset + pos as u64;
        let to_boundary = HOLE_BLOCK - (here % HOLE_BLOCK as u64) as usize;
        let end = (pos + to_boundary).min(bytes.len());
        let block = &bytes[pos..end];
        if block.iter().any(|&b| b != 0) {
            file.write_all_at(block, here)
                .map_err(|e| io_err("writing extracted data", e))?;
        }
        pos = end;
    }
    Ok(())
}

/// EXT-4: a relative symlink target that, resolved lexically from the link's directory,
/// stays inside `top` (the VM's output directory).
fn link_stays_inside(link: &Path, target: &Path, top: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut resolved: Vec<Component<'_>> = link
        .parent()
        .map(|p| p.components().collect())
        .unwrap_or_default();
    for c in target.components() {
        match c {
            Component::Normal(_) => resolved.push(c),
            Component::CurDir => {}
            Component::ParentDir => {
                if resolved.pop().is_none() {
                    return false;
                }
            }
            _ => return false,
        }
    }
    let resolved: PathBuf = resolved.iter().collect();
    resolved.starts_with(top) && resolved != top
}

impl Output for Extractor {
    fn begin_file(&mut self, _: &FileSpec) -> Result<()> {
        self.staged.clear();
        self.links.clear();
        Ok(())
    }

    fn entry(
        &mut self,
        placement: &Placement,
        entry: &Entry,
        read_data: &mut dyn FnMut(&mut dyn DataSink) -> Result<()>,
    ) -> Result<()> {
        let path = PathBuf::from(&placement.output);
        match &entry.kind {
            EntryKind::Regular => self.write_regular(&path, entry, read_data),
            EntryKind::Directory => self
                .root
                .create_dir_all(&path)
                .map_err(|e| io_err(format!("creating directory {}", path.display()), e)),
            EntryKind::Symlink { target } => {
                let top = PathBuf::from(placement.output.split('/').next().unwrap_or_default());
                let text = std::str::from_utf8(target)
                    .ok()
                    .filter(|t| !t.is_empty() && !t.contains('\0'));
                match text.map(PathBuf::from) {
                    Some(t) if link_stays_inside(&path, &t, &top) => self.links.push((path, t)),
                    _ => self.notes.push(format!(
                        "skipped symlink {} -> {} (absolute or leaving its directory; EXT-4)",
                        placement.output,
                        escape(target)
                    )),
                }
                Ok(())
            }
            EntryKind::HardLink { target } => {
                self.notes.push(format!(
                    "skipped hard link {} -> {} (EXT-4)",
                    placement.output,
                    escape(target)
                ));
                Ok(())
            }
            EntryKind::Other(t) => {
                self.notes.push(format!(
                    "skipped special file {} (type {:?}; EXT-4)",
                    placement.output, *t as char
                ));
                Ok(())
            }
        }
    }

    fn end_file(&mut self, spec: &FileSpec, ok: bool) -> Result<()> {
        let staged = std::mem::take(&mut self.staged);
        let links = std::mem::take(&mut self.links);
        if !ok {
            for s in &staged {
                let _ = self.root.remove_file(&s.temp);
            }
            return Ok(());
        }
        // EXT-2: check every final name first, so a refusal leaves nothing half-committed.
        let mut result = staged
            .iter()
            .try_for_each(|s| self.refuse_existing(&s.final_path));
        for s in &staged {
            if result.is_ok() {
                result = self.commit(&s.temp, &s.final_path);
            }
            if result.is_err() {
                let _ = self.root.remove_file(&s.temp);
            }
        }
        result?;
        for (link, target) in links {
            self.ensure_parent(&link)?;
            let _ = self.root.remove_file(&link);
            self.root.symlink(&target, &link).map_err(|e| {
                io_err(
                    format!("creating symlink {} of {}", link.display(), spec.path),
                    e,
                )
            })?;
        }
        Ok(())
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    fn qubes_xml(&mut self, verified: &[u8]) -> Result<()> {
        let path = Path::new(qbackup_format::member_name::QUBES_XML);
        let temp = self.temp_name(path);
        self.root
            .write(&temp, verified)
            .map_err(|e| io_err(format!("writing {}", temp.display()), e))?;
        let result = self.commit(&temp, path);
        if result.is_err() {
            let _ = self.root.remove_file(&temp);
        }
        result
    }
}

impl Drop for Extractor {
    /// A run that stops early (error, panic) leaves no temporary behind.
    fn drop(&mut self) {
        for s in &self.staged {
            let _ = self.root.remove_file(&s.temp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlink_policy_is_lexical_and_confined() {
        let top = Path::new("dom0-home");
        let link = Path::new("dom0-home/user/.config/link");
        assert!(link_stays_inside(link, Path::new("../.bashrc"), top));
        assert!(link_stays_inside(link, Path::new("x/y"), top));
        assert!(!link_stays_inside(link, Path::new("/etc/passwd"), top));
        assert!(!link_stays_inside(link, Path::new("../../../etc"), top));
        assert!(!link_stays_inside(link, Path::new("../../.."), top));
    }

    /// EXT-1: two outputs with the same path (a VM named dom0-home with a file `user`,
    /// then dom0 home's directory `dom0-home/user`) are unsafe-path, not io.
    #[test]
    fn output_collisions_are_unsafe_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let ex = Extractor::open(tmp.path()).unwrap();
        std::fs::create_dir(tmp.path().join("dom0-home")).unwrap();
        std::fs::write(tmp.path().join("dom0-home/user"), b"x").unwrap();
        let dir = ex.root.create_dir_all("dom0-home/user").unwrap_err();
        assert_eq!(io_err("d", dir).class(), ErrorClass::UnsafePath);
        let below = ex
            .ensure_parent(Path::new("dom0-home/user/.bashrc"))
            .unwrap_err();
        assert_eq!(below.class(), ErrorClass::UnsafePath);
        let other = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert_eq!(io_err("w", other).class(), ErrorClass::Io);
    }
}
