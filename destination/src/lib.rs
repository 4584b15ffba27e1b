//! The one writer of restored files, shared by `qbackup-verify extract` and
//! `qbackup-pack restore` (SPEC.md EXT-1 … EXT-5, RST-4).
//!
//! All paths are opened through a `cap_std::fs::Dir` for DIR, which cannot reach outside
//! it (no `..`, no absolute paths, no symlink escapes; EXT-5). A regular file is written
//! under a temporary name `.NAME.qbackup-partial-PID-N` beside its final name and renamed
//! only by [`Destination::commit`], which never replaces an existing path (EXT-2). A
//! [`TempFile`] that is dropped uncommitted removes itself, and every live temporary is
//! registered with [`cancel`] so a signal removes it too. All-zero blocks are not written,
//! so holes stay holes (EXT-3). [`link_stays_inside`] is the EXT-4 symlink policy.

pub mod cancel;
mod space;

use space::SpaceGuard;
pub use space::{human_bytes, parse_size, space_at, Space, SpaceLimits};

/// A line on stderr (a JSON `message` event in JSON mode): see `qbackup_console::say!`.
pub use qbackup_console::say;

use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use cap_std::fs::{Dir, OpenOptions};
use qbackup_format::{Error, ErrorClass, Result};

/// Block size for hole detection when writing (EXT-3).
pub const HOLE_BLOCK: usize = 4096;

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

/// A confined destination directory.
pub struct Destination {
    root: Arc<Dir>,
    /// DIR as given, for messages only.
    base: PathBuf,
    counter: u64,
    /// EXT-6, once [`Destination::limit_space`] was called.
    space: Option<Arc<Mutex<SpaceGuard>>>,
}

/// A regular file being written under its temporary name.
pub struct TempFile {
    root: Arc<Dir>,
    file: std::fs::File,
    temp: PathBuf,
    final_path: PathBuf,
    /// Registration with [`cancel`]; `None` once committed or removed.
    live: Option<u64>,
    space: Option<Arc<Mutex<SpaceGuard>>>,
}

impl Destination {
    /// Open (creating if needed) the destination directory.
    pub fn open(dir: &Path) -> Result<Destination> {
        std::fs::create_dir_all(dir)
            .map_err(|e| io_err(format!("creating {}", dir.display()), e))?;
        let root = Dir::open_ambient_dir(dir, cap_std::ambient_authority())
            .map_err(|e| io_err(format!("opening {}", dir.display()), e))?;
        Ok(Destination {
            root: Arc::new(root),
            base: dir.to_path_buf(),
            counter: 0,
            space: None,
        })
    }

    /// EXT-6: from now on, refuse data that would exceed `limits.max_total` in total or
    /// leave less than the reserve free on DIR's file system (`limit-exceeded`).
    /// Returns the space found, for the caller to say what DIR offers ([`Space::announce`]).
    pub fn limit_space(&mut self, limits: SpaceLimits) -> Result<Space> {
        let guard = SpaceGuard::new(&*self.root, limits)?;
        self.space = Some(Arc::new(Mutex::new(guard)));
        space::space_of(&*self.root, limits)
            .map_err(|e| Error::new(ErrorClass::Io, format!("reading free space: {e}")))
    }

    /// `path` (relative to DIR) as shown in messages.
    pub fn shown(&self, path: &Path) -> PathBuf {
        self.base.join(path)
    }

    fn temp_name(&mut self, final_path: &Path) -> PathBuf {
        self.counter = self.counter.wrapping_add(1);
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

    /// EXT-2: `unsafe-path` if anything (even a dangling link) has the name `path`.
    pub fn refuse_existing(&self, path: &Path) -> Result<()> {
        if self.root.symlink_metadata(path).is_ok() {
            return Err(Error::unsafe_path(format!(
                "{} already exists in the destination; restored files never replace anything (EXT-2)",
                self.shown(path).display()
            )));
        }
        Ok(())
    }

    /// EXT-5: no directory on the way to `path` is a symbolic link, so the lexical
    /// resolution of EXT-4 is the real one and nothing is written through a link (one
    /// the restore created, or one that was in DIR before).
    pub fn refuse_links_above(&self, path: &Path) -> Result<()> {
        let mut prefix = PathBuf::new();
        let mut parts = path.components().peekable();
        while let Some(c) = parts.next() {
            if parts.peek().is_none() {
                break;
            }
            prefix.push(c);
            if self
                .root
                .symlink_metadata(&prefix)
                .is_ok_and(|m| m.file_type().is_symlink())
            {
                return Err(Error::unsafe_path(format!(
                    "{} passes through the symbolic link {} (EXT-5)",
                    self.shown(path).display(),
                    self.shown(&prefix).display()
                )));
            }
        }
        Ok(())
    }

    /// Create the parent directories of `path` inside DIR.
    pub fn ensure_parent(&self, path: &Path) -> Result<()> {
        match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(parent) => self.create_dir_all(parent),
            None => Ok(()),
        }
    }

    /// Create the directory `path` and its parents inside DIR (never through a link).
    pub fn create_dir_all(&self, path: &Path) -> Result<()> {
        self.refuse_links_above(&path.join("x"))?;
        self.root.create_dir_all(path).map_err(|e| {
            io_err(
                format!("creating directory {}", self.shown(path).display()),
                e,
            )
        })
    }

    /// Start the regular file that will be named `final_path`: its parents are created
    /// and its temporary is created exclusively beside it and registered for cancellation.
    pub fn create(&mut self, final_path: &Path) -> Result<TempFile> {
        // ensure_parent refuses links above the parent's entries, i.e. above final_path.
        self.ensure_parent(final_path)?;
        let temp = self.temp_name(final_path);
        let shown = self.shown(&temp);
        let root = self.root.clone();
        let space = self.space.clone();
        cancel::locked(|t| {
            let id = t.register(&root, temp.clone(), shown.clone());
            let file = match root.open_with(&temp, OpenOptions::new().write(true).create_new(true))
            {
                Ok(f) => f.into_std(),
                Err(e) => {
                    t.unregister(id);
                    return Err(io_err(format!("creating {}", shown.display()), e));
                }
            };
            let live = Some(id);
            Ok(TempFile {
                root: root.clone(),
                file,
                temp,
                final_path: final_path.to_path_buf(),
                live,
                space,
            })
        })
    }

    /// EXT-2: give verified temporaries their final names, all or none: every final name
    /// is checked first, so a refusal renames nothing. On any failure every temporary
    /// still in `files` is removed.
    pub fn commit(&mut self, files: Vec<TempFile>) -> Result<()> {
        files
            .iter()
            .try_for_each(|f| self.refuse_existing(&f.final_path))?;
        for mut f in files {
            let root = self.root.clone();
            let shown = self.shown(&f.final_path);
            cancel::locked(|t| {
                // Checked again right before the rename (cap-std's rename would replace).
                self.refuse_existing(&f.final_path)?;
                root.rename(&f.temp, &root, &f.final_path)
                    .map_err(|e| io_err(format!("renaming into place {}", shown.display()), e))?;
                if let Some(id) = f.live.take() {
                    t.unregister(id);
                }
                Ok::<(), Error>(())
            })?;
        }
        Ok(())
    }

    /// Create the symlink `link` → `target` (the caller applied EXT-4 first).
    pub fn symlink(&self, link: &Path, target: &Path) -> Result<()> {
        self.ensure_parent(link)?;
        self.refuse_links_above(link)?;
        self.refuse_existing(link)?;
        self.root.symlink(target, link).map_err(|e| {
            io_err(
                format!("creating symlink {}", self.shown(link).display()),
                e,
            )
        })
    }

    /// A whole small file (the verified qubes.xml), written and committed (EXT-2).
    pub fn write_file(&mut self, final_path: &Path, bytes: &[u8]) -> Result<()> {
        let mut f = self.create(final_path)?;
        f.write_at(0, bytes)?;
        f.finish(bytes.len() as u64, 0o644)?;
        self.commit(vec![f])
    }
}

impl TempFile {
    /// The name the file will have once committed.
    pub fn final_path(&self) -> &Path {
        &self.final_path
    }

    /// Write `bytes` at `offset`, skipping all-zero aligned blocks (EXT-3). Neighbouring
    /// non-zero blocks are written together, one `pwrite` per run.
    pub fn write_at(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        let mut pos = 0usize;
        // Start of the pending run of non-zero blocks, if any.
        let mut run: Option<usize> = None;
        while pos < bytes.len() {
            let here = offset
                .checked_add(pos as u64)
                .ok_or_else(|| Error::limit("write offset overflows"))?;
            let into_block = usize::try_from(here % HOLE_BLOCK as u64).unwrap_or(0);
            let end = pos.saturating_add(HOLE_BLOCK - into_block).min(bytes.len());
            let block = bytes.get(pos..end).unwrap_or(&[]);
            if block.iter().any(|&b| b != 0) {
                run.get_or_insert(pos);
            } else if let Some(start) = run.take() {
                self.write_run(offset, bytes, start, pos)?;
            }
            pos = end;
        }
        if let Some(start) = run {
            self.write_run(offset, bytes, start, bytes.len())?;
        }
        Ok(())
    }

    /// Write `bytes[start..end]` at `offset + start`.
    fn write_run(&mut self, offset: u64, bytes: &[u8], start: usize, end: usize) -> Result<()> {
        let at = offset
            .checked_add(start as u64)
            .ok_or_else(|| Error::limit("write offset overflows"))?;
        if let Some(space) = &self.space {
            space
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .charge(end.saturating_sub(start) as u64)?;
        }
        self.file
            .write_all_at(bytes.get(start..end).unwrap_or(&[]), at)
            .map_err(|e| io_err(format!("writing {}", self.temp.display()), e))
    }

    /// Size the file to its logical `size` (the tail hole included), apply the permission
    /// bits of `mode` plus owner read/write (EXT-4), and flush it to disk.
    pub fn finish(&mut self, size: u64, mode: u32) -> Result<()> {
        let what = |w: &str| format!("{w} {}", self.temp.display());
        self.file
            .set_len(size)
            .map_err(|e| io_err(what("sizing"), e))?;
        self.file
            .set_permissions(std::fs::Permissions::from_mode((mode & 0o777) | 0o600))
            .map_err(|e| io_err(what("setting mode of"), e))?;
        self.file
            .sync_data()
            .map_err(|e| io_err(what("writing"), e))
    }
}

impl Drop for TempFile {
    /// An uncommitted temporary never outlives its writer (error, panic, early return).
    fn drop(&mut self) {
        if let Some(id) = self.live.take() {
            cancel::locked(|t| {
                let _ = self.root.remove_file(&self.temp);
                t.unregister(id);
            });
        }
    }
}

/// EXT-4: a relative symlink target that, resolved lexically from the link's directory,
/// stays inside `top` (the VM's output directory) and is not `top` itself.
pub fn link_stays_inside(link: &Path, target: &Path, top: &Path) -> bool {
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
        let d = Destination::open(tmp.path()).unwrap();
        std::fs::create_dir(tmp.path().join("dom0-home")).unwrap();
        std::fs::write(tmp.path().join("dom0-home/user"), b"x").unwrap();
        let dir = d.create_dir_all(Path::new("dom0-home/user")).unwrap_err();
        assert_eq!(dir.class(), ErrorClass::UnsafePath, "{dir}");
        let below = d
            .ensure_parent(Path::new("dom0-home/user/.bashrc"))
            .unwrap_err();
        assert_eq!(below.class(), ErrorClass::UnsafePath, "{below}");
        let other = std::io::Error::from(std::io::ErrorKind::StorageFull);
        assert_eq!(io_err("w", other).class(), ErrorClass::Io);
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// EXT-2, EXT-3: the temporary sits beside the final name, holes stay holes, the
    /// commit renames it, and an existing name is never replaced.
    #[test]
    fn commit_renames_and_never_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = Destination::open(tmp.path()).unwrap();
        let mut f = d.create(Path::new("vm/private.img")).unwrap();
        let listed = names(&tmp.path().join("vm"));
        assert_eq!(listed.len(), 1);
        assert!(listed[0].starts_with(".private.img.qbackup-partial-"));
        f.write_at(0, &[0u8; 8192]).unwrap();
        f.write_at(1 << 20, b"tail").unwrap();
        f.finish(2 << 20, 0o4755).unwrap();
        d.commit(vec![f]).unwrap();
        let p = tmp.path().join("vm/private.img");
        let meta = std::fs::metadata(&p).unwrap();
        assert_eq!(meta.len(), 2 << 20);
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
        assert!(std::os::unix::fs::MetadataExt::blocks(&meta) * 512 < 1 << 20);
        assert_eq!(names(&tmp.path().join("vm")), ["private.img"]);

        let mut g = d.create(Path::new("vm/private.img")).unwrap();
        g.write_at(0, b"other").unwrap();
        let e = d.commit(vec![g]).unwrap_err();
        assert_eq!(e.class(), ErrorClass::UnsafePath);
        assert_eq!(names(&tmp.path().join("vm")), ["private.img"]);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 2 << 20);
    }

    /// EXT-2: a dropped temporary removes itself.
    #[test]
    fn dropped_temporary_is_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = Destination::open(tmp.path()).unwrap();
        let mut f = d.create(Path::new("a")).unwrap();
        f.write_at(0, b"x").unwrap();
        assert_eq!(names(tmp.path()).len(), 1);
        drop(f);
        assert!(names(tmp.path()).is_empty());
    }

    /// EXT-5: nothing resolves outside DIR.
    #[test]
    fn paths_cannot_escape() {
        let tmp = tempfile::tempdir().unwrap();
        let inner = tmp.path().join("d");
        let mut d = Destination::open(&inner).unwrap();
        assert!(d.create(Path::new("../escape")).is_err());
        std::os::unix::fs::symlink(tmp.path(), inner.join("up")).unwrap();
        assert!(d.create(Path::new("up/escape")).is_err());
        assert!(!tmp.path().join("escape").exists());
    }

    /// EXT-4, EXT-5: nothing is written through a link, even one staying inside DIR.
    #[test]
    fn nothing_is_written_through_a_link() {
        let tmp = tempfile::tempdir().unwrap();
        let mut d = Destination::open(tmp.path()).unwrap();
        d.create_dir_all(Path::new("vm/sub")).unwrap();
        d.symlink(Path::new("vm/alias"), Path::new("sub")).unwrap();
        for p in ["vm/alias/f", "vm/alias/deeper/f"] {
            let e = d.create(Path::new(p)).err().expect("refused");
            assert_eq!(e.class(), ErrorClass::UnsafePath, "{p}");
        }
        let e = d.create_dir_all(Path::new("vm/alias/dir")).unwrap_err();
        assert_eq!(e.class(), ErrorClass::UnsafePath);
        let e = d
            .symlink(Path::new("vm/alias/l"), Path::new("x"))
            .unwrap_err();
        assert_eq!(e.class(), ErrorClass::UnsafePath);
        assert_eq!(names(&tmp.path().join("vm/sub")), Vec::<String>::new());
    }
}
