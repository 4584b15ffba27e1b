//! The protocol state machine (PROTO-3 … PROTO-9), shared by the encoder and the decoder.
//!
//! ```text
//! ExpectHello ─hello─▶ ExpectManifest ─manifest─▶ ExpectBegin ─begin─▶ InFile ─end─▶ ExpectBegin
//!                                                     │                  │ data*
//!                                                     └─summary─▶ Done ◀─┘ (error from any state)
//! ```
//! `ExpectBegin` accepts only the next file of the manifest, in manifest order; `summary`
//! only once every manifest file has ended.

use std::collections::HashSet;

use super::{Begin, FileKind, Layout, Manifest, Summary, ALLOWED_VM_FILES, VERSION};
use crate::error::{Error, ErrorClass, Result};
use crate::limits::{
    MAX_FILE_SIZE, MAX_PATH_LEN, MAX_PROTO_DATA_LEN, MAX_PROTO_FILES, MAX_PROTO_LABEL_LEN,
    MAX_PROTO_MESSAGE_LEN, MAX_VMS,
};
use crate::paths::{validate_relative, DotComponents};
use crate::qubes_xml::{validate_class, validate_vm_name, NetVm};

#[derive(Debug)]
enum State {
    ExpectHello,
    ExpectManifest,
    ExpectBegin,
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
    /// The next manifest file: (VM index, file index), always pointing at a file or
    /// past the last VM.
    next: (usize, usize),
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
            next: (0, 0),
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
            State::ExpectBegin => "begin or summary",
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
        self.manifest = m;
        self.next = (0, 0);
        self.skip_empty_vms();
        self.state = State::ExpectBegin;
        Ok(())
    }

    fn skip_empty_vms(&mut self) {
        while let Some(vm) = self.manifest.vms.get(self.next.0) {
            if self.next.1 < vm.files.len() {
                break;
            }
            self.next = (self.next.0.saturating_add(1), 0);
        }
    }

    /// PROTO-4.
    pub fn begin(&mut self, b: &Begin) -> Result<()> {
        if !matches!(self.state, State::ExpectBegin) {
            return Err(self.unexpected("begin"));
        }
        let (vi, fi) = self.next;
        let Some(vm) = self.manifest.vms.get(vi) else {
            return Err(Error::order(format!(
                "protocol: begin of {:?} after the last manifest file",
                crate::qubes_xml::truncate(&b.name)
            )));
        };
        let Some(file) = vm.files.get(fi) else {
            return Err(Error::order("protocol: manifest cursor out of range"));
        };
        if usize::try_from(b.vm).ok() != Some(vi) || b.name != file.name {
            return Err(Error::order(format!(
                "protocol: expected file {:?} of VM {}, got VM index {} file {:?}",
                file.name,
                vm.name,
                b.vm,
                crate::qubes_xml::truncate(&b.name)
            )));
        }
        if b.mode & !0o777 != 0 {
            return Err(Error::malformed(format!(
                "protocol: mode {:o} of {:?} has bits beyond 0o777",
                b.mode, file.name
            )));
        }
        if b.size != file.size {
            return Err(Error::malformed(format!(
                "protocol: {:?} begins with size {}, the manifest said {}",
                file.name, b.size, file.size
            )));
        }
        let regular = match &b.kind {
            FileKind::Regular => true,
            FileKind::Directory => false,
            FileKind::Symlink { target } => {
                validate_target(target)?;
                false
            }
        };
        if !regular {
            if vm.layout == Layout::Volumes {
                return Err(Error::unsafe_path(format!(
                    "protocol: {:?} of VM {} must be a regular file",
                    file.name, vm.name
                )));
            }
            if file.size != 0 || file.data_bytes != 0 {
                return Err(Error::malformed(format!(
                    "protocol: directory or symlink {:?} with a size",
                    file.name
                )));
            }
        }
        self.state = State::InFile(Open {
            size: file.size,
            regular,
            pos: 0,
            data: 0,
            expected_data: file.data_bytes,
        });
        Ok(())
    }

    /// PROTO-5.
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
                    "protocol: more data than the {} bytes the manifest declared",
                    open.expected_data
                ))
            })?;
        open.pos = end;
        open.data = data;
        Ok(())
    }

    /// PROTO-6.
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
        // Totals cannot overflow: the manifest's sums were checked (validate_manifest).
        self.files = self.files.saturating_add(1);
        self.logical = self.logical.saturating_add(open.size);
        self.data = self.data.saturating_add(open.data);
        self.next = (self.next.0, self.next.1.saturating_add(1));
        self.skip_empty_vms();
        self.state = State::ExpectBegin;
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

    /// PROTO-7: `s` with its transcript already compared by the caller.
    pub fn summary(&mut self, s: &Summary) -> Result<()> {
        if !matches!(self.state, State::ExpectBegin) {
            return Err(self.unexpected("summary"));
        }
        if let Some(vm) = self.manifest.vms.get(self.next.0) {
            let name = vm.files.get(self.next.1).map_or("", |f| f.name.as_str());
            return Err(Error::new(
                ErrorClass::MissingData,
                format!(
                    "protocol: summary before file {name:?} of VM {} was sent",
                    vm.name
                ),
            ));
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

    /// PROTO-8: allowed in every state after hello; ends the stream.
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

/// PROTO-3: names, references, counts and sizes of a manifest.
pub fn validate_manifest(m: &Manifest) -> Result<()> {
    if m.vms.len() > MAX_VMS {
        return Err(Error::limit(format!(
            "protocol: more than LIM-14 ({MAX_VMS}) VMs"
        )));
    }
    let mut names = HashSet::new();
    let mut files_total: u64 = 0;
    let mut logical_total: u64 = 0;
    let mut data_total: u64 = 0;
    for vm in &m.vms {
        let ctx = |e: Error| e.context(format!("protocol manifest, VM {:?}", vm.name));
        validate_vm_name(&vm.name).map_err(ctx)?;
        validate_class(&vm.class).map_err(ctx)?;
        if !names.insert(vm.name.as_str()) {
            return Err(ctx(Error::malformed("duplicate VM")));
        }
        if let Some(label) = &vm.label {
            let ok = (1..=MAX_PROTO_LABEL_LEN).contains(&label.len())
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
            if !ok {
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
        let mut file_names = HashSet::new();
        for f in &vm.files {
            files_total = files_total.saturating_add(1);
            if files_total > MAX_PROTO_FILES {
                return Err(Error::limit(format!(
                    "protocol: more than LIM-30 ({MAX_PROTO_FILES}) files"
                )));
            }
            validate_file_name(vm.layout, &f.name).map_err(ctx)?;
            if !file_names.insert(f.name.as_str()) {
                return Err(ctx(Error::malformed(format!(
                    "duplicate file {:?}",
                    f.name
                ))));
            }
            if f.size > MAX_FILE_SIZE || f.data_bytes > f.size {
                return Err(ctx(Error::limit(format!(
                    "file {:?}: size {} / data {} (data ≤ size ≤ LIM-12)",
                    f.name, f.size, f.data_bytes
                ))));
            }
            logical_total = logical_total
                .checked_add(f.size)
                .ok_or_else(|| Error::limit("protocol: total size overflows"))?;
            data_total = data_total
                .checked_add(f.data_bytes)
                .ok_or_else(|| Error::limit("protocol: total size overflows"))?;
        }
    }
    Ok(())
}

/// PROTO-4: file names by layout.
pub fn validate_file_name(layout: Layout, name: &str) -> Result<()> {
    match layout {
        Layout::Volumes => {
            if !ALLOWED_VM_FILES.contains(&name) {
                return Err(Error::unsafe_path(format!(
                    "protocol: file name {:?} is not an allowed VM file",
                    crate::qubes_xml::truncate(name)
                )));
            }
        }
        Layout::TemplateDir | Layout::Dom0Home => {
            let canonical = validate_relative(name.as_bytes(), DotComponents::Refuse)?;
            if canonical != name {
                return Err(Error::unsafe_path(format!(
                    "protocol: file name {:?} is not in canonical form",
                    crate::qubes_xml::truncate(name)
                )));
            }
        }
    }
    Ok(())
}

/// PROTO-4: symlink targets are text, bounded; EXT-4 is the consumer's.
fn validate_target(target: &str) -> Result<()> {
    if target.is_empty() || target.len() > MAX_PATH_LEN || target.chars().any(char::is_control) {
        return Err(Error::unsafe_path(format!(
            "protocol: symlink target {:?} is empty, too long or has control characters",
            crate::qubes_xml::truncate(target)
        )));
    }
    Ok(())
}
