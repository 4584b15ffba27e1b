//! The protocol state machine (PROTO-3 … PROTO-10), shared by the encoder and the decoder.
//!
//! ```text
//! ExpectHello ─hello─▶ ExpectManifest ─manifest─▶ ExpectConfig ─config × VMs─▶ Between
//! Between ─begin─▶ InFile ─data* end─▶ Between ─vmend─▶ Between ─summary─▶ Done
//!                          (error from any state after hello ─▶ Done)
//! ```
//! A VM's files are contiguous and closed by its `vmend` (its expected files checked
//! there); a closed VM may not come back, and every VM is closed exactly once.

use std::collections::HashSet;

use super::{Begin, FileKind, Layout, Manifest, Summary, VERSION};
use crate::archive::plan::regular_only;
use crate::error::{Error, ErrorClass, Result};
use crate::limits::{
    MAX_FILE_SIZE, MAX_PATH_LEN, MAX_PROTO_DATA_LEN, MAX_PROTO_FILES, MAX_PROTO_LABEL_LEN,
    MAX_PROTO_MESSAGE_LEN, MAX_PROTO_NAME_BYTES, MAX_VMS,
};
use crate::paths::{validate_relative, DotComponents};
use crate::qubes_xml::{truncate, validate_class, validate_vm_name, NetVm};
use crate::vm_config::{check_config, check_vm_end, Firewall, VmConfig, VmEnd};

#[derive(Debug)]
enum State {
    ExpectHello,
    ExpectManifest,
    /// The config record of manifest VM `n` is next (PROTO-14).
    ExpectConfig(usize),
    Between,
    InFile(Open),
    Done,
}

/// The file between its begin and end records.
#[derive(Debug)]
struct Open {
    size: u64,
    regular: bool,
    /// End of the last data record (offsets strictly increase, no overlap).
    pos: u64,
    data: u64,
    expected_data: u64,
}

/// Where a stream is in the protocol; every record passes through it before it is
/// written or returned.
#[derive(Debug)]
pub struct Checker {
    state: State,
    manifest: Manifest,
    /// Per manifest VM: its `vmend` was sent.
    closed: Vec<bool>,
    /// The VM whose files are being sent (a begin came, its vmend not yet), and the names
    /// sent for it so far.
    current: Option<usize>,
    names: HashSet<String>,
    name_bytes: usize,
    files: u64,
    logical: u64,
    data: u64,
}

impl Default for Checker {
    fn default() -> Self {
        Checker::new()
    }
}

impl Checker {
    pub fn new() -> Checker {
        Checker {
            state: State::ExpectHello,
            manifest: Manifest::default(),
            closed: Vec::new(),
            current: None,
            names: HashSet::new(),
            name_bytes: 0,
            files: 0,
            logical: 0,
            data: 0,
        }
    }

    /// The manifest, once accepted (empty before).
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// True after a summary or error record.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// True between a begin and its end record.
    pub fn in_file(&self) -> bool {
        matches!(self.state, State::InFile(_))
    }

    fn unexpected(&self, what: &str) -> Error {
        let expected = match self.state {
            State::ExpectHello => "hello",
            State::ExpectManifest => "manifest",
            State::ExpectConfig(_) => "config",
            State::Between => "begin, vmend or summary",
            State::InFile(_) => "data or end",
            State::Done => "end of stream",
        };
        Error::malformed(format!("protocol: expected {expected}, got {what}"))
    }

    /// PROTO-1.
    pub fn hello(&mut self, version: u16) -> Result<()> {
        if !matches!(self.state, State::ExpectHello) {
            return Err(self.unexpected("hello"));
        }
        if version != VERSION {
            return Err(Error::unsupported(format!(
                "protocol: version {version} (this build speaks {VERSION})"
            )));
        }
        self.state = State::ExpectManifest;
        Ok(())
    }

    /// PROTO-3.
    pub fn accept_manifest(&mut self, m: Manifest) -> Result<()> {
        if !matches!(self.state, State::ExpectManifest) {
            return Err(self.unexpected("manifest"));
        }
        validate_manifest(&m)?;
        // Bounded by LIM-14 (validated above).
        self.closed = vec![false; m.vms.len()];
        self.state = if m.vms.is_empty() {
            State::Between
        } else {
            State::ExpectConfig(0)
        };
        self.manifest = m;
        Ok(())
    }

    /// PROTO-14: the config of the next manifest VM, in manifest order.
    pub fn config(&mut self, vm: u32, c: &VmConfig) -> Result<()> {
        let State::ExpectConfig(next) = self.state else {
            return Err(self.unexpected("config"));
        };
        if usize::try_from(vm).ok() != Some(next) {
            return Err(Error::malformed(format!(
                "protocol: config for VM index {vm}, expected {next}"
            )));
        }
        let Some(mvm) = self.manifest.vms.get(next) else {
            return Err(Error::malformed("protocol: VM index out of range"));
        };
        let ctx = |e: Error| e.context(format!("protocol: config of VM {}", mvm.name));
        check_config(c).map_err(ctx)?;
        if mvm.layout == Layout::Dom0Home && *c != VmConfig::default() {
            return Err(ctx(Error::malformed("dom0 carries no settings")));
        }
        let next = next.saturating_add(1);
        self.state = if next >= self.manifest.vms.len() {
            State::Between
        } else {
            State::ExpectConfig(next)
        };
        Ok(())
    }

    /// PROTO-15: closes VM `vm` (the one whose files were sent, or one that sent none):
    /// its expected files were all sent, and what it carries passes CFG-2.
    pub fn vm_end(&mut self, vm: u32, e: &VmEnd) -> Result<()> {
        if !matches!(self.state, State::Between) {
            return Err(self.unexpected("vmend"));
        }
        let vi = usize::try_from(vm).unwrap_or(usize::MAX);
        let Some(mvm) = self.manifest.vms.get(vi) else {
            return Err(Error::malformed(format!(
                "protocol: vmend names VM index {vm} of a manifest of {} VMs",
                self.manifest.vms.len()
            )));
        };
        let ctx = |e: Error| e.context(format!("protocol: end of VM {}", mvm.name));
        match self.current {
            Some(c) if c != vi => {
                return Err(ctx(Error::order(format!(
                    "while the files of VM index {c} are open"
                ))))
            }
            None if self.closed.get(vi).copied().unwrap_or(true) => {
                return Err(ctx(Error::order("the VM ended already")))
            }
            _ => {}
        }
        check_vm_end(e).map_err(ctx)?;
        let plain = e.firewall == Firewall::Absent && e.notes.is_none() && e.menu_items.is_none();
        if mvm.layout == Layout::Dom0Home && !plain {
            return Err(ctx(Error::malformed(
                "dom0 carries no firewall, notes or menus",
            )));
        }
        let empty = HashSet::new();
        let sent = if self.current == Some(vi) {
            &self.names
        } else {
            &empty
        };
        check_expected(mvm, sent)?;
        if let Some(c) = self.closed.get_mut(vi) {
            *c = true;
        }
        self.current = None;
        self.names.clear();
        self.name_bytes = 0;
        Ok(())
    }

    /// PROTO-4, PROTO-5.
    pub fn begin(&mut self, b: &Begin) -> Result<()> {
        if !matches!(self.state, State::Between) {
            return Err(self.unexpected("begin"));
        }
        let vi = usize::try_from(b.vm).unwrap_or(usize::MAX);
        if vi >= self.manifest.vms.len() {
            return Err(Error::malformed(format!(
                "protocol: begin names VM index {} of a manifest of {} VMs",
                b.vm,
                self.manifest.vms.len()
            )));
        }
        // Every check runs before anything changes: a refused record leaves the state
        // as it was (the encoder then has written nothing, PROTO-10).
        let switching = self.current != Some(vi);
        if switching {
            if let Some(c) = self.current {
                return Err(Error::order(format!(
                    "protocol: file {:?} of VM index {vi} before the vmend of VM index {c}",
                    truncate(&b.name)
                )));
            }
            if self.closed.get(vi).copied().unwrap_or(true) {
                return Err(Error::order(format!(
                    "protocol: file {:?} of VM index {vi} after that VM's files ended",
                    truncate(&b.name)
                )));
            }
        }
        let name_bytes = if switching { 0 } else { self.name_bytes };
        let Some(vm) = self.manifest.vms.get(vi) else {
            return Err(Error::malformed("protocol: VM index out of range"));
        };
        let ctx = |e: Error| e.context(format!("protocol: VM {}", vm.name));
        validate_file(vm.layout, &b.name, &b.kind).map_err(ctx)?;
        if self.files >= MAX_PROTO_FILES {
            return Err(Error::limit(format!(
                "protocol: more than LIM-30 ({MAX_PROTO_FILES}) files"
            )));
        }
        if !switching && self.names.contains(&b.name) {
            return Err(ctx(Error::order(format!(
                "file {:?} sent twice",
                truncate(&b.name)
            ))));
        }
        let name_bytes = name_bytes
            .checked_add(b.name.len())
            .filter(|n| *n <= MAX_PROTO_NAME_BYTES)
            .ok_or_else(|| {
                ctx(Error::limit(format!(
                    "file names exceed LIM-33 ({MAX_PROTO_NAME_BYTES} bytes)"
                )))
            })?;
        if b.mode & !0o777 != 0 {
            return Err(ctx(Error::malformed(format!(
                "mode {:o} of {:?} has bits beyond 0o777",
                b.mode,
                truncate(&b.name)
            ))));
        }
        if b.size > MAX_FILE_SIZE || b.data_bytes > b.size {
            return Err(ctx(Error::limit(format!(
                "file {:?}: size {} / data {} (data ≤ size ≤ LIM-12)",
                truncate(&b.name),
                b.size,
                b.data_bytes
            ))));
        }
        let regular = match &b.kind {
            FileKind::Regular => true,
            FileKind::Directory => false,
            FileKind::Symlink { target } => {
                validate_target(target).map_err(ctx)?;
                false
            }
        };
        if !regular && b.size != 0 {
            return Err(ctx(Error::malformed(format!(
                "directory or symlink {:?} with a size",
                truncate(&b.name)
            ))));
        }
        let logical = self.logical.checked_add(b.size);
        let data = self.data.checked_add(b.data_bytes);
        let (Some(logical), Some(data)) = (logical, data) else {
            return Err(Error::limit("protocol: stream totals overflow 64 bits"));
        };
        if switching {
            self.names.clear();
            self.name_bytes = 0;
            self.current = Some(vi);
        }
        self.names.insert(b.name.clone());
        self.name_bytes = name_bytes;
        self.files = self.files.saturating_add(1);
        self.logical = logical;
        self.data = data;
        self.state = State::InFile(Open {
            size: b.size,
            regular,
            pos: 0,
            data: 0,
            expected_data: b.data_bytes,
        });
        Ok(())
    }

    /// PROTO-6.
    pub fn data(&mut self, offset: u64, len: usize) -> Result<()> {
        let State::InFile(open) = &mut self.state else {
            return Err(self.unexpected("data"));
        };
        if !open.regular {
            return Err(Error::malformed(
                "protocol: data for a directory or symlink",
            ));
        }
        if len == 0 || len > MAX_PROTO_DATA_LEN {
            return Err(Error::limit(format!(
                "protocol: data record of {len} bytes (1 … LIM-28 {MAX_PROTO_DATA_LEN})"
            )));
        }
        let len = len as u64;
        if offset < open.pos {
            return Err(Error::malformed(format!(
                "protocol: data at offset {offset} overlaps or precedes the previous record (ending at {})",
                open.pos
            )));
        }
        let end = offset
            .checked_add(len)
            .filter(|e| *e <= open.size)
            .ok_or_else(|| {
                Error::malformed(format!(
                    "protocol: data at {offset}+{len} beyond the logical size {}",
                    open.size
                ))
            })?;
        let data = open
            .data
            .checked_add(len)
            .filter(|d| *d <= open.expected_data)
            .ok_or_else(|| {
                Error::limit(format!(
                    "protocol: more data than the {} bytes the begin record declared",
                    open.expected_data
                ))
            })?;
        open.pos = end;
        open.data = data;
        Ok(())
    }

    /// PROTO-7 (the digest itself is compared by the decoder).
    pub fn end(&mut self) -> Result<()> {
        let State::InFile(open) = &self.state else {
            return Err(self.unexpected("end"));
        };
        if open.data != open.expected_data {
            return Err(Error::new(
                ErrorClass::MissingData,
                format!(
                    "protocol: file ended after {} of {} declared data bytes",
                    open.data, open.expected_data
                ),
            ));
        }
        self.state = State::Between;
        Ok(())
    }

    /// The totals a summary must carry now (transcript left zero).
    pub fn totals(&self) -> Summary {
        Summary {
            vms: u32::try_from(self.manifest.vms.len()).unwrap_or(u32::MAX),
            files: self.files,
            logical_bytes: self.logical,
            data_bytes: self.data,
            transcript: [0; 32],
        }
    }

    /// PROTO-8: `s` with its transcript already compared by the caller.
    pub fn summary(&mut self, s: &Summary) -> Result<()> {
        if !matches!(self.state, State::Between) {
            return Err(self.unexpected("summary"));
        }
        if let Some((vm, _)) = self
            .manifest
            .vms
            .iter()
            .zip(&self.closed)
            .find(|(_, closed)| !**closed)
        {
            return Err(Error::malformed(format!(
                "protocol: summary before the vmend of VM {}",
                vm.name
            )));
        }
        let want = self.totals();
        if (s.vms, s.files, s.logical_bytes, s.data_bytes)
            != (want.vms, want.files, want.logical_bytes, want.data_bytes)
        {
            return Err(Error::malformed(format!(
                "protocol: summary {}/{}/{}/{} (VMs/files/logical/data) disagrees with the stream {}/{}/{}/{}",
                s.vms, s.files, s.logical_bytes, s.data_bytes,
                want.vms, want.files, want.logical_bytes, want.data_bytes
            )));
        }
        self.state = State::Done;
        Ok(())
    }

    /// PROTO-9: allowed in every state after hello; ends the stream.
    pub fn error(&mut self, message: &str) -> Result<()> {
        if matches!(self.state, State::ExpectHello | State::Done) {
            return Err(self.unexpected("error"));
        }
        if message.len() > MAX_PROTO_MESSAGE_LEN || message.chars().any(char::is_control) {
            return Err(Error::malformed(
                "protocol: error message too long or with control characters",
            ));
        }
        self.state = State::Done;
        Ok(())
    }
}

/// PROTO-4: every expected file of a VM was sent (`sent` is empty for a VM never visited).
fn check_expected(vm: &super::ManifestVm, sent: &HashSet<String>) -> Result<()> {
    if let Some(missing) = vm.expected_files.iter().find(|f| !sent.contains(*f)) {
        return Err(Error::new(
            ErrorClass::MissingData,
            format!(
                "protocol: VM {} ended without its file {missing:?}",
                vm.name
            ),
        ));
    }
    Ok(())
}

/// PROTO-3: a label the manifest may carry: 1 … LIM-32 bytes of `[A-Za-z0-9_-]`.
pub fn valid_label(label: &str) -> bool {
    (1..=MAX_PROTO_LABEL_LEN).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// PROTO-3: names, references and expected files of a manifest.
pub fn validate_manifest(m: &Manifest) -> Result<()> {
    validate_others(m)?;
    let mut names = HashSet::new();
    for vm in &m.vms {
        let ctx = |e: Error| e.context(format!("protocol manifest, VM {:?}", truncate(&vm.name)));
        validate_vm_name(&vm.name).map_err(ctx)?;
        validate_class(&vm.class).map_err(ctx)?;
        if !names.insert(vm.name.as_str()) {
            return Err(ctx(Error::malformed("duplicate VM")));
        }
        if let Some(label) = &vm.label {
            if !valid_label(label) {
                return Err(ctx(Error::malformed("invalid label")));
            }
        }
        if let Some(t) = &vm.template {
            validate_vm_name(t).map_err(ctx)?;
        }
        if let NetVm::Named(n) = &vm.netvm {
            validate_vm_name(n).map_err(ctx)?;
        }
        let is_dom0 = vm.name == "dom0";
        let layout_ok = match vm.layout {
            Layout::Dom0Home => is_dom0 && vm.class == "AdminVM",
            Layout::TemplateDir => vm.class == "TemplateVM",
            Layout::Volumes => !is_dom0,
        };
        if !layout_ok {
            return Err(ctx(Error::malformed(format!(
                "layout {:?} does not fit class {}",
                vm.layout, vm.class
            ))));
        }
        if vm.layout != Layout::Volumes && !vm.expected_files.is_empty() {
            return Err(ctx(Error::malformed(
                "expected files listed for a directory layout",
            )));
        }
        if vm.expected_files.len() > crate::limits::MAX_PROTO_EXPECTED_FILES as usize {
            return Err(ctx(Error::limit("more than LIM-51 expected files")));
        }
        let mut files = HashSet::new();
        for f in vm.expected_files.iter() {
            if f.len() > crate::limits::MAX_PROTO_EXPECTED_NAME_LEN {
                return Err(ctx(Error::limit(format!(
                    "expected file name of {} bytes",
                    f.len()
                ))));
            }
            if !regular_only(f) {
                return Err(ctx(Error::unsafe_path(format!(
                    "expected file {:?} is not a file of the VM's directory",
                    truncate(f)
                ))));
            }
            validate_file(Layout::Volumes, f, &FileKind::Regular).map_err(ctx)?;
            if !files.insert(f.as_str()) {
                return Err(ctx(Error::malformed(format!(
                    "expected file {f:?} listed twice"
                ))));
            }
        }
    }
    Ok(())
}

/// PROTO-3: the other VMs: valid names, unique across the whole manifest, valid classes,
/// and with the carried VMs at most LIM-14.
fn validate_others(m: &Manifest) -> Result<()> {
    if m.vms.len().saturating_add(m.others.len()) > MAX_VMS {
        return Err(Error::limit(format!(
            "protocol: more than LIM-14 ({MAX_VMS}) VMs"
        )));
    }
    let mut names: HashSet<&str> = m.vms.iter().map(|v| v.name.as_str()).collect();
    for o in &m.others {
        let ctx = |e: Error| {
            e.context(format!(
                "protocol manifest, other VM {:?}",
                truncate(&o.name)
            ))
        };
        validate_vm_name(&o.name).map_err(ctx)?;
        validate_class(&o.class).map_err(ctx)?;
        if !names.insert(o.name.as_str()) {
            return Err(ctx(Error::malformed("duplicate VM")));
        }
    }
    Ok(())
}

/// PROTO-5: a file's name is a canonical relative path (NAME-3) under its VM's output
/// directory, in every layout; in layout `volumes` a file the format defines (a volume
/// image, `firewall.xml`, …: [`regular_only`]) must be a regular file.
pub fn validate_file(layout: Layout, name: &str, kind: &FileKind) -> Result<()> {
    let canonical = validate_relative(name.as_bytes(), DotComponents::Refuse)?;
    if canonical != name {
        return Err(Error::unsafe_path(format!(
            "protocol: file name {:?} is not in canonical form",
            truncate(name)
        )));
    }
    if layout == Layout::Volumes && *kind != FileKind::Regular && regular_only(name) {
        return Err(Error::unsafe_path(format!(
            "protocol: {:?} must be a regular file",
            truncate(name)
        )));
    }
    Ok(())
}

/// PROTO-5: symlink targets are text, bounded; EXT-4 is the consumer's.
fn validate_target(target: &str) -> Result<()> {
    if target.is_empty() || target.len() > MAX_PATH_LEN || target.chars().any(char::is_control) {
        return Err(Error::unsafe_path(format!(
            "protocol: symlink target {:?} is empty, too long or has control characters",
            crate::qubes_xml::truncate(target)
        )));
    }
    Ok(())
}
