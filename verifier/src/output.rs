//! Where verified entries go: nowhere (`verify`) or a confined directory (`extract`).

use qbackup_format::archive::plan::{FileSpec, Placement};
use qbackup_format::inner_tar::{DataSink, Discard, Entry};
use qbackup_format::Result;

/// Receives the entries of every selected file, in archive order, on the inner thread.
pub trait Output: Send {
    /// The verified qubes.xml, before any file.
    fn qubes_xml(&mut self, _verified: &[u8]) -> Result<()> {
        Ok(())
    }
    fn begin_file(&mut self, spec: &FileSpec) -> Result<()>;
    /// One inner entry; `read_data` streams its data runs (it must be called for the
    /// stream to be checked to its end).
    fn entry(
        &mut self,
        placement: &Placement,
        entry: &Entry,
        read_data: &mut dyn FnMut(&mut dyn DataSink) -> Result<()>,
    ) -> Result<()>;
    /// The file ended; `ok` says whether all of it verified. Commit or discard.
    fn end_file(&mut self, spec: &FileSpec, ok: bool) -> Result<()>;
    /// Notes for the report (skipped links and the like).
    fn take_notes(&mut self) -> Vec<String> {
        Vec::new()
    }
}

/// `verify`: decode everything, keep nothing.
pub struct VerifyOnly;

impl Output for VerifyOnly {
    fn begin_file(&mut self, _: &FileSpec) -> Result<()> {
        Ok(())
    }
    fn entry(
        &mut self,
        _: &Placement,
        _: &Entry,
        read_data: &mut dyn FnMut(&mut dyn DataSink) -> Result<()>,
    ) -> Result<()> {
        read_data(&mut Discard)
    }
    fn end_file(&mut self, _: &FileSpec, _: bool) -> Result<()> {
        Ok(())
    }
}
