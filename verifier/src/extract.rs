//! `extract`: maps the driver's [`Output`] calls onto the shared destination writer
//! (`qbackup-destination`, SPEC.md EXT-1 … EXT-5), which owns confinement, temporaries,
//! commit by rename, holes and cancellation (RST-7). What stays here: which entries of an
//! archive file are committed together (EXT-2) and the EXT-4 choices for links and
//! special files.

use std::path::{Path, PathBuf};

use qbackup_destination::{link_stays_inside, Destination, SpaceLimits, TempFile};
use qbackup_format::archive::plan::{FileSpec, Placement};
use qbackup_format::inner_tar::{DataSink, Entry, EntryKind};
use qbackup_format::paths::escape;
use qbackup_format::Result;

use crate::output::Output;

pub struct Extractor {
    dest: Destination,
    /// Regular files of the current archive file, committed together at its end (EXT-2).
    staged: Vec<TempFile>,
    links: Vec<(PathBuf, PathBuf)>,
    notes: Vec<String>,
    /// DIR's file system when opened, for the caller to say so.
    space: qbackup_destination::Space,
}

impl Extractor {
    /// Open (creating if needed) the destination directory, and arm cancellation: a
    /// SIGINT/SIGTERM removes every temporary, names it on stderr and exits 130 (RST-7).
    /// [`Extractor::open_limited`] with the default reserve and no total limit (EXT-6).
    pub fn open(dir: &Path) -> Result<Extractor> {
        Extractor::open_limited(dir, SpaceLimits::default())
    }

    /// `space`: what the restore may use of DIR's file system (EXT-6).
    pub fn open_limited(dir: &Path, space: SpaceLimits) -> Result<Extractor> {
        qbackup_destination::cancel::install("qbackup-verify");
        let mut dest = Destination::open(dir)?;
        let space = dest.limit_space(space)?;
        Ok(Extractor {
            dest,
            staged: Vec::new(),
            links: Vec::new(),
            notes: Vec::new(),
            space,
        })
    }

    /// DIR's free space, reserve and `--max-size` when it was opened.
    pub fn space(&self) -> qbackup_destination::Space {
        self.space
    }

    fn write_regular(
        &mut self,
        path: &Path,
        entry: &Entry,
        read_data: &mut dyn FnMut(&mut dyn DataSink) -> Result<()>,
    ) -> Result<()> {
        let mut file = self.dest.create(path)?;
        let mut sink = |offset: u64, bytes: &[u8]| -> Result<()> { file.write_at(offset, bytes) };
        read_data(&mut sink)?;
        file.finish(entry.size, entry.mode)?;
        self.staged.push(file);
        Ok(())
    }
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
            EntryKind::Directory => self.dest.create_dir_all(&path),
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
            // Dropping the temporaries removes them.
            return Ok(());
        }
        self.dest.commit(staged)?;
        for (link, target) in links {
            // Like files, links never replace an existing name (EXT-2).
            self.dest
                .symlink(&link, &target)
                .map_err(|e| e.context(format!("in {}", spec.path)))?;
        }
        Ok(())
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    fn qubes_xml(&mut self, verified: &[u8]) -> Result<()> {
        self.dest
            .write_file(Path::new(qbackup_format::member_name::QUBES_XML), verified)
    }
}
