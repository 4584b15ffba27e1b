//! `qbackup-verify emit`: verified VM data as a protocol stream (SPEC.md §21) on a
//! writer (stdout), for the privileged `qbackup-pack restore`.
//!
//! Besides the files, it sends what a restore into Qubes needs and the privileged side
//! must never parse itself: each VM's settings from qubes.xml (CFG-1, one `config` record
//! per VM after the manifest), and its firewall, notes and menu items converted from
//! the VM's `firewall.xml`, `notes.txt` and `whitelisted-appmenus.list` (CFG-2, FW-3,
//! FW-4) in the `vmend` record that closes the VM. What does not pass CFG-1/CFG-2 is left
//! out with a note, never sent.
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

use qbackup_format::firewall;
use qbackup_format::limits::{MAX_CONFIG_ENTRIES, MAX_NOTES_LEN, MAX_VM_TEXT_FILE_LEN};
use qbackup_format::protocol::{Firewall, OtherVm, VmConfig, VmEnd};
use qbackup_format::vm_config::{self, check_device, check_feature, check_property, check_tag};

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
    /// Per manifest VM: what its `vmend` will carry, and whether it was sent.
    ends: Vec<(VmEnd, bool)>,
    /// The VM whose files are being sent (its vmend not sent yet).
    current: Option<u32>,
    /// The open entry is one of the VM's text files (CFG-2): its bytes, to convert at its
    /// end.
    capture: Option<(TextFile, Vec<u8>)>,
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
            enc: Encoder::gathering(out),
            select,
            vms: HashMap::new(),
            ends: Vec::new(),
            current: None,
            capture: None,
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

    /// PROTO-3, PROTO-14: the manifest from the verified qubes.xml (every selected VM
    /// whose data is in the backup, and the DispVM templates R3 restores synthesise,
    /// XML-5), with each VM's settings as far as they pass CFG-1.
    fn manifest(&mut self, xml: &QubesXml) -> (Manifest, Vec<VmConfig>) {
        let mut vms = Vec::new();
        let mut configs = Vec::new();
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
            let expected_files = if layout == Layout::Volumes {
                expected_files(vm, xml.flavor)
            } else {
                Vec::new()
            };
            vms.push(manifest_vm(vm, layout, backup.size, expected_files));
            configs.push(if is_dom0 {
                VmConfig::default()
            } else {
                self.sanitize(vm, xml.flavor)
            });
        }
        // R2 wrote no dom0 entry, yet its archives may hold dom0-home/<user> (ORD-7).
        if !dom0 && xml.flavor == Flavor::Core2 && self.selected("dom0") {
            vms.push(manifest_vm(&Vm::dom0(), Layout::Dom0Home, 0, Vec::new()));
            configs.push(VmConfig::default());
        }
        // XML-5: synthesised DispVM templates, when wanted or named by a carried VM.
        for t in &xml.dispvm_templates {
            let named = configs.iter().any(|c| {
                c.properties
                    .iter()
                    .any(|(k, v)| k == "default_dispvm" && v.as_deref() == Some(t.name.as_str()))
            });
            if self.select.is_none() || self.selected(&t.name) || named {
                vms.push(manifest_vm(t, Layout::Volumes, 0, Vec::new()));
                configs.push(self.sanitize(t, xml.flavor));
            }
        }
        let others = xml
            .vms
            .iter()
            .filter(|v| !vms.iter().any(|m| m.name == v.name))
            .map(|v| OtherVm {
                name: v.name.clone(),
                class: v.class.clone(),
                in_backup: v.backup.is_some(),
            })
            .collect();
        (Manifest { vms, others }, configs)
    }

    /// CFG-1: the settings of `vm` that can be sent; the rest is named in a note. Also
    /// left out, as upstream's restore does: `dispid` (never settable) and
    /// `installed_by_rpm` (meaningless after a restore).
    fn sanitize(&mut self, vm: &Vm, flavor: Flavor) -> VmConfig {
        let mut out = VmConfig::default();
        let mut dropped: Vec<String> = Vec::new();
        let c = &vm.config;
        // XML-5: the model keeps these two apart; R3 sets `virt_mode` only for HVMs.
        let mut own = Vec::new();
        if let Some(v) = &vm.virt_mode {
            if flavor == Flavor::Core3 || v == "hvm" {
                own.push(("virt_mode".to_owned(), Some(v.clone())));
            }
        }
        if vm.provides_network {
            own.push(("provides_network".to_owned(), Some("True".to_owned())));
        }
        for (k, v) in own.iter().chain(&c.properties) {
            if matches!(k.as_str(), "dispid" | "installed_by_rpm") {
                continue;
            }
            match check_property(k, v.as_deref()) {
                Ok(())
                    if out.properties.len() < MAX_CONFIG_ENTRIES
                        && !out.properties.iter().any(|(p, _)| p == k) =>
                {
                    out.properties.push((k.clone(), v.clone()))
                }
                _ => dropped.push(format!("property {}", escape(k.as_bytes()))),
            }
        }
        for (k, v) in &c.features {
            match check_feature(k, v) {
                Ok(())
                    if out.features.len() < MAX_CONFIG_ENTRIES
                        && !out.features.iter().any(|(f, _)| f == k) =>
                {
                    out.features.push((k.clone(), v.clone()))
                }
                _ => dropped.push(format!("feature {}", escape(k.as_bytes()))),
            }
        }
        for t in &c.tags {
            match check_tag(t) {
                Ok(()) if out.tags.len() < MAX_CONFIG_ENTRIES && !out.tags.contains(t) => {
                    out.tags.push(t.clone())
                }
                // qubesd adds created-by-dom0 itself when the restore creates the VM.
                _ if t == "created-by-dom0" => {}
                _ => dropped.push(format!("tag {}", escape(t.as_bytes()))),
            }
        }
        for d in &c.devices {
            let dup = out
                .devices
                .iter()
                .any(|o| (&o.bus, &o.backend, &o.port) == (&d.bus, &d.backend, &d.port));
            match check_device(d) {
                Ok(()) if out.devices.len() < MAX_CONFIG_ENTRIES && !dup => {
                    out.devices.push(d.clone())
                }
                _ => dropped.push(format!(
                    "device {}:{}",
                    escape(d.bus.as_bytes()),
                    escape(d.port.as_bytes())
                )),
            }
        }
        if !dropped.is_empty() {
            self.notes.push(format!(
                "VM {}: not sent for restore (CFG-1): {}",
                vm.name,
                dropped.join(", ")
            ));
        }
        out
    }

    fn start(&mut self, verified_xml: &[u8]) -> Result<()> {
        let xml = qubes_xml::parse(verified_xml).map_err(|e| e.context("qubes.xml"))?;
        let (manifest, configs) = self.manifest(&xml);
        for (i, vm) in manifest.vms.iter().enumerate() {
            let dir = if vm.layout == Layout::Dom0Home {
                DOM0_HOME.to_string()
            } else {
                vm.name.clone()
            };
            let i = u32::try_from(i).map_err(|_| Error::limit("too many VMs"))?;
            self.vms.insert(dir, i);
        }
        self.ends = vec![(VmEnd::default(), false); manifest.vms.len()];
        self.enc.hello()?;
        self.enc.manifest(&manifest)?;
        for (i, c) in configs.iter().enumerate() {
            let i = u32::try_from(i).map_err(|_| Error::limit("too many VMs"))?;
            self.enc.config(i, c)?;
        }
        // The consumer learns early that the archive opened (its silence time-out).
        self.flush()
    }

    fn close_pending(&mut self) -> Result<()> {
        if std::mem::take(&mut self.pending_end) {
            self.enc.end()?;
            // The file verified and ended: convert what the restore sets from it.
            if let (Some((file, bytes)), Some(vm)) = (self.capture.take(), self.current) {
                self.convert(vm, file, &bytes);
            }
        }
        self.capture = None;
        Ok(())
    }

    /// CFG-2: a VM's text file into what its `vmend` carries; what cannot be converted is
    /// a note (a firewall that cannot be converted is sent as such: the restore must not
    /// open the VM's network).
    fn convert(&mut self, vm: u32, file: TextFile, bytes: &[u8]) {
        let name = self
            .vms
            .iter()
            .find(|(_, i)| **i == vm)
            .map(|(d, _)| d.clone())
            .unwrap_or_default();
        let Some((end, _)) = self.ends.get_mut(vm as usize) else {
            return;
        };
        match file {
            TextFile::Firewall => {
                end.firewall = match firewall::parse_xml(bytes) {
                    Ok(rules) => Firewall::Rules(rules.iter().map(firewall::Rule::line).collect()),
                    Err(e) => {
                        let why = e.message().chars().take(512).collect::<String>();
                        self.notes.push(format!(
                            "VM {name}: firewall.xml cannot be converted ({why}); a restore \
                             into Qubes blocks the VM's network instead (CFG-2)"
                        ));
                        Firewall::Unreadable(why.replace(|c: char| c.is_control(), "?"))
                    }
                };
            }
            TextFile::Notes => {
                let text = String::from_utf8_lossy(bytes);
                let mut clean: String = text
                    .chars()
                    .map(|c| {
                        if c.is_control() && c != '\n' && c != '\t' {
                            '_'
                        } else {
                            c
                        }
                    })
                    .collect();
                if clean.len() > MAX_NOTES_LEN {
                    let mut cut = MAX_NOTES_LEN;
                    while !clean.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    clean.truncate(cut);
                    self.notes
                        .push(format!("VM {name}: notes.txt cut to LIM-57 bytes (CFG-2)"));
                }
                // qubesd refuses empty notes; nothing to set.
                end.notes = (!clean.is_empty()).then_some(clean);
            }
            TextFile::Menu => match vm_config::parse_menu_list(bytes) {
                Ok(items) => end.menu_items = Some(items),
                Err(e) => self.notes.push(format!(
                    "VM {name}: whitelisted-appmenus.list not sent ({}) (CFG-2)",
                    e.message()
                )),
            },
        }
    }

    /// PROTO-15: closes VM `vm` with its vmend (once).
    fn end_vm(&mut self, vm: u32) -> Result<()> {
        let Some((end, sent)) = self.ends.get_mut(vm as usize) else {
            return Ok(());
        };
        if *sent {
            return Ok(());
        }
        *sent = true;
        let end = end.clone();
        if self.current == Some(vm) {
            self.current = None;
        }
        self.enc.vm_end(vm, &end)
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
        if self.current != Some(vm) {
            if let Some(prev) = self.current {
                self.end_vm(prev)?;
            }
            self.current = Some(vm);
        }
        let text_file = match (regular, name) {
            (true, "firewall.xml") => Some(TextFile::Firewall),
            (true, "notes.txt") => Some(TextFile::Notes),
            (true, "whitelisted-appmenus.list") => Some(TextFile::Menu),
            _ => None,
        }
        .filter(|_| dir != DOM0_HOME && entry.size <= MAX_VM_TEXT_FILE_LEN);
        self.capture = text_file.map(|f| (f, Vec::new()));
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
            let capture = &mut self.capture;
            let mut sink = |offset: u64, bytes: &[u8]| {
                if let Some((_, buf)) = capture.as_mut() {
                    // Bounded by the entry's size (≤ LIM-47, checked above); holes as zeros.
                    let at = usize::try_from(offset).unwrap_or(usize::MAX);
                    if at <= MAX_VM_TEXT_FILE_LEN as usize {
                        buf.resize(at.max(buf.len()), 0);
                        buf.extend_from_slice(bytes);
                    }
                }
                enc.data(offset, bytes)
            };
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
            None => self.close_pending().and_then(|()| {
                if let Some(vm) = self.current {
                    self.end_vm(vm)?;
                }
                for vm in 0..u32::try_from(self.ends.len()).unwrap_or(0) {
                    self.end_vm(vm)?;
                }
                self.enc.summary().map(drop)
            }),
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

/// The text files of a VM's directory a restore into Qubes converts (CFG-2).
#[derive(Debug, Clone, Copy)]
enum TextFile {
    Firewall,
    Notes,
    Menu,
}

/// PROTO-3: a manifest entry for `vm`.
fn manifest_vm(
    vm: &Vm,
    layout: Layout,
    backup_size: u64,
    expected_files: Vec<String>,
) -> ManifestVm {
    ManifestVm {
        name: vm.name.clone(),
        class: vm.class.clone(),
        label: vm
            .label
            .clone()
            .filter(|l| qbackup_format::protocol::state::valid_label(l)),
        template: vm.template.clone(),
        netvm: vm.netvm.clone(),
        layout,
        backup_size,
        expected_files,
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
