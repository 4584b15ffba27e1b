//! `qbackup-verify emit`: verified VM data as a protocol v3 stream (SPEC.md §21) on a
//! writer (stdout), for the privileged `qbackup-pack restore`.
//!
//! Only bytes the driver hands over (MAC-verified, decrypted, decompressed, parsed:
//! VER-1) enter the stream. A file's `end` record is held back until the next entry of
//! the same archive file starts or the archive file ends verified, so a volume image is
//! ended only when its whole archive file verified (EXT-2); when an archive file fails,
//! its open entry gets no `end`, nothing more is sent, and [`Emitter::finish`] writes an
//! `error` record (PROTO-9, PROTO-12). Symlinks travel with their target (the consumer
//! applies EXT-4); hard links and special files are skipped with a note, as `extract`
//! does.

use std::collections::HashMap;
use std::io::Write;

use qbackup_format::archive::plan::regular_only;
use qbackup_format::archive::plan::{FileSpec, Placement, DOM0_HOME};
use qbackup_format::inner_tar::{DataSink, Discard, Entry, EntryKind};
use qbackup_format::limits::{MAX_PROTO_EXPECTED_FILES, MAX_PROTO_EXPECTED_NAME_LEN};
use qbackup_format::paths::escape;
use qbackup_format::protocol::write::Encoder;
use qbackup_format::protocol::{Begin, FileKind, Layout, Manifest, ManifestVm};
use qbackup_format::qubes_xml::{self, Flavor, QubesXml, Vm};
use qbackup_format::{Error, ErrorClass, Result};

use crate::output::Output;
use crate::report::Report;

/// Writes the protocol stream for the entries the driver hands over.
pub struct Emitter<W: Write + Send> {
    enc: Encoder<W>,
    select: Option<Vec<String>>,
    /// Output directory (VM name, or `dom0-home`) → manifest index.
    vms: HashMap<String, u32>,
    /// An entry's `end` is due (held back until the next entry or the file's end).
    pending_end: bool,
    /// An archive file failed or the stream broke: send nothing more but the error.
    stopped: bool,
    notes: Vec<String>,
}

impl<W: Write + Send> Emitter<W> {
    /// `select`: the VMs asked for (`None`: all), as the driver's `Settings::select`.
    pub fn new(out: W, select: Option<Vec<String>>) -> Emitter<W> {
        Emitter {
            enc: Encoder::new(out),
            select,
            vms: HashMap::new(),
            pending_end: false,
            stopped: false,
            notes: Vec::new(),
        }
    }

    fn selected(&self, name: &str) -> bool {
        self.select
            .as_ref()
            .is_none_or(|list| list.iter().any(|s| s == name))
    }

    /// PROTO-3: the manifest from the verified qubes.xml: every selected VM whose data is
    /// in the backup.
    fn manifest(&self, xml: &QubesXml) -> Manifest {
        let mut vms = Vec::new();
        let mut dom0 = false;
        for vm in &xml.vms {
            let Some(backup) = &vm.backup else { continue };
            if !self.selected(&vm.name) {
                continue;
            }
            let is_dom0 = vm.class == "AdminVM" || vm.qid == Some(0);
            dom0 |= is_dom0;
            let layout = if is_dom0 {
                Layout::Dom0Home
            } else if xml.flavor == Flavor::Core2 && vm.class == "TemplateVM" {
                Layout::TemplateDir
            } else {
                Layout::Volumes
            };
            vms.push(ManifestVm {
                name: vm.name.clone(),
                class: vm.class.clone(),
                label: vm
                    .label
                    .clone()
                    .filter(|l| qbackup_format::protocol::state::valid_label(l)),
                template: vm.template.clone(),
                netvm: vm.netvm.clone(),
                layout,
                backup_size: backup.size,
                expected_files: if layout == Layout::Volumes {
                    expected_files(vm, xml.flavor)
                } else {
                    Vec::new()
                },
            });
        }
        // R2 wrote no dom0 entry, yet its archives may hold dom0-home/<user> (ORD-7).
        if !dom0 && xml.flavor == Flavor::Core2 && self.selected("dom0") {
            let d = Vm::dom0();
            vms.push(ManifestVm {
                name: d.name,
                class: d.class,
                label: d
                    .label
                    .filter(|l| qbackup_format::protocol::state::valid_label(l)),
                template: None,
                netvm: d.netvm,
                layout: Layout::Dom0Home,
                backup_size: 0,
                expected_files: Vec::new(),
            });
        }
        Manifest { vms }
    }

    fn start(&mut self, verified_xml: &[u8]) -> Result<()> {
        let xml = qubes_xml::parse(verified_xml).map_err(|e| e.context("qubes.xml"))?;
        let manifest = self.manifest(&xml);
        for (i, vm) in manifest.vms.iter().enumerate() {
            let dir = if vm.layout == Layout::Dom0Home {
                DOM0_HOME.to_string()
            } else {
                vm.name.clone()
            };
            let i = u32::try_from(i).map_err(|_| Error::limit("too many VMs"))?;
            self.vms.insert(dir, i);
        }
        self.enc.hello()?;
        self.enc.manifest(&manifest)?;
        // The consumer learns early that the archive opened (its silence time-out).
        self.flush()
    }

    fn close_pending(&mut self) -> Result<()> {
        if std::mem::take(&mut self.pending_end) {
            self.enc.end()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.enc
            .get_mut()
            .flush()
            .map_err(|e| Error::new(ErrorClass::Io, format!("writing the stream: {e}")))
    }

    /// Sends one entry: begin, data, and (later) end.
    fn send(
        &mut self,
        placement: &Placement,
        entry: &Entry,
        read_data: &mut dyn FnMut(&mut dyn DataSink) -> Result<()>,
    ) -> Result<()> {
        let (dir, name) = placement
            .output
            .split_once('/')
            .unwrap_or((placement.output.as_str(), ""));
        let Some(&vm) = self.vms.get(dir) else {
            return Err(Error::order(format!(
                "{} belongs to no VM of the stream's manifest",
                placement.output
            )));
        };
        let kind = match &entry.kind {
            EntryKind::Regular => FileKind::Regular,
            EntryKind::Directory => FileKind::Directory,
            EntryKind::Symlink { target } => {
                match std::str::from_utf8(target)
                    .ok()
                    .filter(|t| !t.is_empty() && !t.chars().any(char::is_control))
                {
                    Some(t) => FileKind::Symlink {
                        target: t.to_string(),
                    },
                    None => {
                        return self.skip(placement, "symlink with a non-text target", read_data)
                    }
                }
            }
            EntryKind::HardLink { target } => {
                let why = format!("hard link to {}", escape(target));
                return self.skip(placement, &why, read_data);
            }
            EntryKind::Other(t) => {
                let why = format!("special file (type {:?})", *t as char);
                return self.skip(placement, &why, read_data);
            }
        };
        if name.is_empty() {
            // The VM's own directory (a template directory's root): nothing to send.
            return read_data(&mut Discard);
        }
        let regular = kind == FileKind::Regular;
        self.close_pending()?;
        self.enc.begin(&Begin {
            vm,
            name: name.to_string(),
            kind,
            mode: entry.mode & 0o777,
            size: if regular { entry.size } else { 0 },
            data_bytes: if regular { entry.stored } else { 0 },
        })?;
        self.pending_end = true;
        if regular {
            let enc = &mut self.enc;
            let mut sink = |offset: u64, bytes: &[u8]| enc.data(offset, bytes);
            read_data(&mut sink)
        } else {
            read_data(&mut Discard)
        }
    }

    fn skip(
        &mut self,
        placement: &Placement,
        why: &str,
        read_data: &mut dyn FnMut(&mut dyn DataSink) -> Result<()>,
    ) -> Result<()> {
        self.notes
            .push(format!("not sent: {} ({why}; EXT-4)", placement.output));
        read_data(&mut Discard)
    }

    /// Ends the stream after the driver returned: `summary` when everything verified,
    /// else an `error` record with the report's first finding (PROTO-8, PROTO-9). Returns
    /// the writer; an error here means the stream could not be completed.
    pub fn finish(mut self, report: &Report) -> Result<W> {
        let outcome = match report.findings.first() {
            Some(f) => Err(Error::new(
                f.error.class(),
                match &f.file {
                    Some(file) => format!("{file}: {}", f.error.message()),
                    None => f.error.message().to_string(),
                },
            )),
            None if self.stopped => Err(Error::new(
                ErrorClass::Io,
                "emit stopped after an earlier error",
            )),
            None => self
                .close_pending()
                .and_then(|()| self.enc.summary().map(drop)),
        };
        if let Err(e) = &outcome {
            if !self.enc.is_done() {
                // PROTO-9: allowed in every state after hello; before hello there is no
                // stream to speak of, so start one.
                let _ = self.enc.hello();
                let _ = self.enc.error(e.class(), e.message());
            }
        }
        let flushed = self.flush();
        outcome.and(flushed)?;
        Ok(self.enc.into_inner())
    }
}

impl<W: Write + Send> Output for Emitter<W> {
    fn qubes_xml(&mut self, verified: &[u8]) -> Result<()> {
        let r = self.start(verified);
        if r.is_err() {
            self.stopped = true;
        }
        r
    }

    fn begin_file(&mut self, _: &FileSpec) -> Result<()> {
        Ok(())
    }

    fn entry(
        &mut self,
        placement: &Placement,
        entry: &Entry,
        read_data: &mut dyn FnMut(&mut dyn DataSink) -> Result<()>,
    ) -> Result<()> {
        if self.stopped {
            return read_data(&mut Discard);
        }
        let r = self.send(placement, entry, read_data);
        if r.is_err() {
            self.stopped = true;
        }
        r
    }

    fn end_file(&mut self, _: &FileSpec, ok: bool) -> Result<()> {
        if !ok {
            // The open entry gets no end: the consumer discards it (PROTO-11).
            self.stopped = true;
            self.pending_end = false;
        }
        if self.stopped {
            return Ok(());
        }
        let r = self.close_pending().and_then(|()| self.flush());
        if r.is_err() {
            self.stopped = true;
        }
        r
    }

    fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }
}

/// VER-2 as far as qubes.xml alone tells it, as names relative to the VM's directory,
/// within PROTO-3's bounds (the driver checks VER-2 in full on its side).
fn expected_files(vm: &Vm, flavor: Flavor) -> Vec<String> {
    let names: Vec<String> = match (flavor, &vm.volumes_saved) {
        (Flavor::Core3, Some(volumes)) => volumes.iter().map(|v| format!("{v}.img")).collect(),
        _ => match vm.class.as_str() {
            "TemplateVM" | "StandaloneVM" => vec!["private.img".into(), "root.img".into()],
            "AppVM" | "DispVM" => vec!["private.img".into()],
            _ => Vec::new(),
        },
    };
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if regular_only(&n)
            && n.len() <= MAX_PROTO_EXPECTED_NAME_LEN
            && out.len() < MAX_PROTO_EXPECTED_FILES as usize
            && !out.contains(&n)
        {
            out.push(n);
        }
    }
    out
}
