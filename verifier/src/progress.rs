//! Progress of `verify`, `list`, `extract` and `emit` (README "JSON output"): archive bytes
//! read against the archive's size, and the VM and file whose entries are being decoded.
//! The counters and the reporter are `qbackup_console::progress`, shared with
//! `qbackup-pack`.

use std::sync::Arc;

use qbackup_console::progress::Progress;
use qbackup_format::archive::plan::{FileSpec, Placement};
use qbackup_format::inner_tar::{DataSink, Entry};
use qbackup_format::Result;

use crate::output::Output;

/// An [`Output`] that tells `progress` which VM and file each entry belongs to, and passes
/// everything on to `inner`.
pub struct Tracked<'a> {
    pub inner: &'a mut dyn Output,
    pub progress: Arc<Progress>,
}

/// `work/private.img` → (`work`, `private.img`); `dom0-home/user/.bashrc` → (`dom0`,
/// `user/.bashrc`).
pub fn vm_and_file(output: &str) -> (&str, &str) {
    match output.split_once('/') {
        Some(("dom0-home", rest)) => ("dom0", rest),
        Some((vm, rest)) => (vm, rest),
        None => ("", output),
    }
}

impl Output for Tracked<'_> {
    fn qubes_xml(&mut self, verified: &[u8]) -> Result<()> {
        self.progress.set_file("qubes.xml");
        self.inner.qubes_xml(verified)
    }
    fn begin_file(&mut self, spec: &FileSpec) -> Result<()> {
        self.inner.begin_file(spec)
    }
    fn entry(
        &mut self,
        placement: &Placement,
        entry: &Entry,
        read_data: &mut dyn FnMut(&mut dyn DataSink) -> Result<()>,
    ) -> Result<()> {
        let (vm, file) = vm_and_file(&placement.output);
        self.progress.set_vm(vm);
        self.progress.set_file(file);
        self.inner.entry(placement, entry, read_data)
    }
    fn end_file(&mut self, spec: &FileSpec, ok: bool) -> Result<()> {
        self.inner.end_file(spec, ok)
    }
    fn take_notes(&mut self) -> Vec<String> {
        self.inner.take_notes()
    }
}

#[cfg(test)]
mod tests {
    use super::vm_and_file;

    #[test]
    fn outputs_name_their_vm() {
        assert_eq!(vm_and_file("work/private.img"), ("work", "private.img"));
        assert_eq!(
            vm_and_file("dom0-home/user/.bashrc"),
            ("dom0", "user/.bashrc")
        );
        assert_eq!(vm_and_file("qubes.xml"), ("", "qubes.xml"));
    }
}
