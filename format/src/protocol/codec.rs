//! Payload grammar of each record type (PROTO-2 … PROTO-9): a bounded cursor for reading
//! and plain appends for writing. Strings are `len:u16be ‖ UTF-8`; integers big-endian.

use super::{record_type as t, Begin, FileKind, Layout, Manifest, ManifestVm, OtherVm};
use crate::error::{Error, ErrorClass, Result};
use crate::limits::{
    MAX_CONFIG_ENTRIES, MAX_CONFIG_VALUE_LEN, MAX_FIREWALL_RULES, MAX_FIREWALL_RULE_LEN,
    MAX_MENU_ITEMS, MAX_NOTES_LEN, MAX_PATH_LEN, MAX_PROTO_CONFIG_LEN, MAX_PROTO_DATA_LEN,
    MAX_PROTO_EXPECTED_FILES, MAX_PROTO_EXPECTED_NAME_LEN, MAX_PROTO_MANIFEST_LEN,
    MAX_PROTO_MESSAGE_LEN, MAX_PROTO_VMEND_LEN,
};
use crate::qubes_xml::NetVm;
use crate::vm_config::{
    Device, Firewall, VmConfig, VmEnd, MAX_BUS_LEN, MAX_DEVICE_OPTIONS, MAX_FEATURE_NAME_LEN,
    MAX_MENU_ITEM_LEN, MAX_OPTION_NAME_LEN, MAX_PORT_LEN, MAX_PROPERTY_NAME_LEN, MAX_TAG_LEN,
};

/// Length of the record header: type byte and big-endian length.
pub(crate) const HEADER_LEN: usize = 5;
pub(crate) const HELLO_LEN: usize = 10;
pub(crate) const END_LEN: usize = super::FILE_DIGEST_LEN;
pub(crate) const SUMMARY_LEN: usize = 4 + 8 + 8 + 8 + 32;
/// Offset field of a data record.
pub(crate) const DATA_PREFIX: usize = 8;
const BEGIN_MIN: usize = 4 + 2 + 1 + 4 + 8 + 8;
const BEGIN_MAX: usize = BEGIN_MIN + MAX_PATH_LEN + 2 + MAX_PATH_LEN;
const ERROR_MAX: usize = 1 + 2 + MAX_PROTO_MESSAGE_LEN;

/// PROTO-2: smallest and largest payload length of a record type; `None` for an unknown
/// type.
pub(crate) fn length_bounds(record_type: u8) -> Option<(usize, usize)> {
    Some(match record_type {
        t::HELLO => (HELLO_LEN, HELLO_LEN),
        t::MANIFEST => (4, MAX_PROTO_MANIFEST_LEN),
        t::BEGIN => (BEGIN_MIN, BEGIN_MAX),
        t::DATA => (DATA_PREFIX + 1, DATA_PREFIX + MAX_PROTO_DATA_LEN),
        t::END => (END_LEN, END_LEN),
        t::SUMMARY => (SUMMARY_LEN, SUMMARY_LEN),
        t::ERROR => (1 + 2, ERROR_MAX),
        // vm ‖ four counts.
        t::CONFIG => (4 + 4 * 2, MAX_PROTO_CONFIG_LEN),
        // vm ‖ three tags.
        t::VM_END => (4 + 3, MAX_PROTO_VMEND_LEN),
        _ => return None,
    })
}

/// Reads one payload; every read is bounded by the payload and [`Cursor::finish`]
/// refuses leftovers.
pub(crate) struct Cursor<'a> {
    rest: &'a [u8],
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(payload: &'a [u8]) -> Cursor<'a> {
        Cursor { rest: payload }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(Error::malformed(format!(
                "protocol: record payload ends {} bytes early",
                n - self.rest.len()
            )));
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    pub(crate) fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    pub(crate) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array()?))
    }
    pub(crate) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    /// A SHA-256 (the summary's transcript, PROTO-8).
    pub(crate) fn sha256(&mut self) -> Result<[u8; 32]> {
        self.array()
    }
    /// A file digest (PROTO-7).
    pub(crate) fn file_digest(&mut self) -> Result<super::FileDigest> {
        self.array()
    }

    /// A string of at most `max` bytes (PROTO-2): valid UTF-8, no control characters.
    pub(crate) fn string(&mut self, what: &str, max: usize) -> Result<String> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(Error::limit(format!(
                "protocol: {what} of {len} bytes exceeds {max}"
            )));
        }
        let raw = self.bytes(len)?;
        let s = std::str::from_utf8(raw)
            .map_err(|_| Error::malformed(format!("protocol: {what} is not UTF-8")))?;
        if s.chars().any(char::is_control) {
            return Err(Error::malformed(format!(
                "protocol: {what} {:?} contains a control character",
                crate::qubes_xml::truncate(s)
            )));
        }
        Ok(s.to_string())
    }

    /// PROTO-2 `count`: a u16 element count, at most `max` → `limit-exceeded`, checked
    /// before any element is read.
    fn count(&mut self, what: &str, max: usize) -> Result<usize> {
        let n = usize::from(self.u16()?);
        if n > max {
            return Err(Error::limit(format!(
                "protocol: {n} {what} (at most {max})"
            )));
        }
        Ok(n)
    }

    /// PROTO-2 `text`: `len:u32 ‖ UTF-8`, at most `max` bytes; tab and newline are the
    /// only control characters allowed.
    fn text(&mut self, what: &str, max: usize) -> Result<String> {
        let len = usize::try_from(self.u32()?).unwrap_or(usize::MAX);
        if len > max {
            return Err(Error::limit(format!(
                "protocol: {what} of {len} bytes exceeds {max}"
            )));
        }
        let raw = self.bytes(len)?;
        let s = std::str::from_utf8(raw)
            .map_err(|_| Error::malformed(format!("protocol: {what} is not UTF-8")))?;
        if s.chars().any(|c| c.is_control() && c != '\n' && c != '\t') {
            return Err(Error::malformed(format!(
                "protocol: {what} contains a control character"
            )));
        }
        Ok(s.to_string())
    }

    fn opt_string(&mut self, what: &str, max: usize) -> Result<Option<String>> {
        match self.u8()? {
            0 => Ok(None),
            1 => Ok(Some(self.string(what, max)?)),
            tag => Err(Error::malformed(format!(
                "protocol: {what}: option tag {tag}"
            ))),
        }
    }

    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.rest)
    }

    /// PROTO-2: a payload is consumed exactly.
    pub(crate) fn finish(self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            Err(Error::malformed(format!(
                "protocol: {} trailing bytes in a record",
                self.rest.len()
            )))
        }
    }
}

// ---- payload writers -------------------------------------------------------------------

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<()> {
    let len = u16::try_from(s.len())
        .map_err(|_| Error::limit(format!("protocol: string of {} bytes", s.len())))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_opt_str(out: &mut Vec<u8>, s: Option<&str>) -> Result<()> {
    match s {
        None => out.push(0),
        Some(s) => {
            out.push(1);
            put_str(out, s)?;
        }
    }
    Ok(())
}

fn put_count(out: &mut Vec<u8>, n: usize, what: &str) -> Result<()> {
    let n = u16::try_from(n).map_err(|_| Error::limit(format!("protocol: too many {what}")))?;
    out.extend_from_slice(&n.to_be_bytes());
    Ok(())
}

fn put_text(out: &mut Vec<u8>, s: &str) -> Result<()> {
    out.extend_from_slice(&len_u32(s.len(), "text bytes")?.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn len_u32(n: usize, what: &str) -> Result<u32> {
    u32::try_from(n).map_err(|_| Error::limit(format!("protocol: too many {what}")))
}

pub(crate) fn put_hello(out: &mut Vec<u8>, version: u16) {
    out.extend_from_slice(&super::MAGIC);
    out.extend_from_slice(&version.to_be_bytes());
}

pub(crate) fn put_manifest(out: &mut Vec<u8>, m: &Manifest) -> Result<()> {
    out.extend_from_slice(&len_u32(m.vms.len(), "VMs")?.to_be_bytes());
    for vm in &m.vms {
        put_str(out, &vm.name)?;
        put_str(out, &vm.class)?;
        put_opt_str(out, vm.label.as_deref())?;
        put_opt_str(out, vm.template.as_deref())?;
        match &vm.netvm {
            NetVm::Default => out.push(0),
            NetVm::None => out.push(1),
            NetVm::Named(n) => {
                out.push(2);
                put_str(out, n)?;
            }
        }
        out.push(match vm.layout {
            Layout::Volumes => 0,
            Layout::TemplateDir => 1,
            Layout::Dom0Home => 2,
        });
        out.extend_from_slice(&vm.backup_size.to_be_bytes());
        out.extend_from_slice(&len_u32(vm.expected_files.len(), "files")?.to_be_bytes());
        for f in &vm.expected_files {
            put_str(out, f)?;
        }
    }
    out.extend_from_slice(&len_u32(m.others.len(), "VMs")?.to_be_bytes());
    for o in &m.others {
        put_str(out, &o.name)?;
        put_str(out, &o.class)?;
        out.push(u8::from(o.in_backup));
    }
    Ok(())
}

/// PROTO-14: `vm ‖ properties ‖ features ‖ tags ‖ devices`, each a u16 count of entries.
pub(crate) fn put_config(out: &mut Vec<u8>, vm: u32, c: &VmConfig) -> Result<()> {
    out.extend_from_slice(&vm.to_be_bytes());
    put_count(out, c.properties.len(), "properties")?;
    for (k, v) in &c.properties {
        put_str(out, k)?;
        put_opt_str(out, v.as_deref())?;
    }
    put_count(out, c.features.len(), "features")?;
    for (k, v) in &c.features {
        put_str(out, k)?;
        put_str(out, v)?;
    }
    put_count(out, c.tags.len(), "tags")?;
    for t in &c.tags {
        put_str(out, t)?;
    }
    put_count(out, c.devices.len(), "devices")?;
    for d in &c.devices {
        put_str(out, &d.bus)?;
        put_str(out, &d.backend)?;
        put_str(out, &d.port)?;
        out.push(u8::from(d.required));
        put_count(out, d.options.len(), "device options")?;
        for (k, v) in &d.options {
            put_str(out, k)?;
            put_str(out, v)?;
        }
    }
    Ok(())
}

/// PROTO-15: `vm ‖ firewall ‖ notes ‖ menu items`.
pub(crate) fn put_vm_end(out: &mut Vec<u8>, vm: u32, e: &VmEnd) -> Result<()> {
    out.extend_from_slice(&vm.to_be_bytes());
    match &e.firewall {
        Firewall::Absent => out.push(0),
        Firewall::Rules(lines) => {
            out.push(1);
            put_count(out, lines.len(), "firewall rules")?;
            for l in lines {
                put_str(out, l)?;
            }
        }
        Firewall::Unreadable(why) => {
            out.push(2);
            put_str(out, why)?;
        }
    }
    match &e.notes {
        None => out.push(0),
        Some(n) => {
            out.push(1);
            put_text(out, n)?;
        }
    }
    match &e.menu_items {
        None => out.push(0),
        Some(items) => {
            out.push(1);
            put_count(out, items.len(), "menu items")?;
            for i in items {
                put_str(out, i)?;
            }
        }
    }
    Ok(())
}

pub(crate) fn put_begin(out: &mut Vec<u8>, b: &Begin) -> Result<()> {
    out.extend_from_slice(&b.vm.to_be_bytes());
    put_str(out, &b.name)?;
    match &b.kind {
        FileKind::Regular => out.push(0),
        FileKind::Directory => out.push(1),
        FileKind::Symlink { target } => {
            out.push(2);
            put_str(out, target)?;
        }
    }
    out.extend_from_slice(&b.mode.to_be_bytes());
    out.extend_from_slice(&b.size.to_be_bytes());
    out.extend_from_slice(&b.data_bytes.to_be_bytes());
    Ok(())
}

pub(crate) fn put_summary(out: &mut Vec<u8>, s: &super::Summary) {
    out.extend_from_slice(&s.vms.to_be_bytes());
    out.extend_from_slice(&s.files.to_be_bytes());
    out.extend_from_slice(&s.logical_bytes.to_be_bytes());
    out.extend_from_slice(&s.data_bytes.to_be_bytes());
    out.extend_from_slice(&s.transcript);
}

pub(crate) fn put_error(out: &mut Vec<u8>, class: ErrorClass, message: &str) -> Result<()> {
    out.push(class_code(class));
    put_str(out, message)
}

/// PROTO-9: an error class travels as its exit code (ERR-3).
pub(crate) fn class_code(class: ErrorClass) -> u8 {
    u8::try_from(class.exit_code()).unwrap_or(0)
}

fn class_from_code(code: u8) -> Result<ErrorClass> {
    ErrorClass::ALL
        .into_iter()
        .find(|c| class_code(*c) == code)
        .ok_or_else(|| Error::malformed(format!("protocol: unknown error class {code}")))
}

// ---- payload readers -------------------------------------------------------------------

pub(crate) fn get_hello(c: &mut Cursor<'_>) -> Result<u16> {
    if c.bytes(super::MAGIC.len())? != super::MAGIC {
        return Err(Error::malformed("protocol: bad magic in hello"));
    }
    c.u16()
}

pub(crate) fn get_manifest(c: &mut Cursor<'_>) -> Result<Manifest> {
    use crate::limits::{MAX_PROTO_LABEL_LEN, MAX_VMS, MAX_VM_CLASS_LEN, MAX_VM_NAME_LEN};
    let count = c.u32()?;
    if u64::from(count) > MAX_VMS as u64 {
        return Err(Error::limit(format!(
            "protocol: manifest of {count} VMs exceeds LIM-14 ({MAX_VMS})"
        )));
    }
    let mut vms = Vec::new();
    for _ in 0..count {
        let name = c.string("VM name", MAX_VM_NAME_LEN)?;
        let class = c.string("VM class", MAX_VM_CLASS_LEN)?;
        let label = c.opt_string("VM label", MAX_PROTO_LABEL_LEN)?;
        let template = c.opt_string("VM template", MAX_VM_NAME_LEN)?;
        let netvm = match c.u8()? {
            0 => NetVm::Default,
            1 => NetVm::None,
            2 => NetVm::Named(c.string("VM netvm", MAX_VM_NAME_LEN)?),
            tag => return Err(Error::malformed(format!("protocol: netvm tag {tag}"))),
        };
        let layout = match c.u8()? {
            0 => Layout::Volumes,
            1 => Layout::TemplateDir,
            2 => Layout::Dom0Home,
            tag => return Err(Error::malformed(format!("protocol: layout tag {tag}"))),
        };
        let backup_size = c.u64()?;
        let nfiles = c.u32()?;
        // PROTO-3: checked before any name is read (LIM-51).
        if nfiles > MAX_PROTO_EXPECTED_FILES {
            return Err(Error::limit(format!(
                "protocol: VM {name:?} expects {nfiles} files (at most LIM-51 {MAX_PROTO_EXPECTED_FILES})"
            )));
        }
        let mut expected_files = Vec::new();
        for _ in 0..nfiles {
            expected_files.push(c.string("expected file name", MAX_PROTO_EXPECTED_NAME_LEN)?);
        }
        vms.push(ManifestVm {
            name,
            class,
            label,
            template,
            netvm,
            layout,
            backup_size,
            expected_files,
        });
    }
    let others_count = c.u32()?;
    let total = u64::from(count).saturating_add(u64::from(others_count));
    if total > MAX_VMS as u64 {
        return Err(Error::limit(format!(
            "protocol: manifest of {total} VMs exceeds LIM-14 ({MAX_VMS})"
        )));
    }
    let mut others = Vec::new();
    for _ in 0..others_count {
        let name = c.string("VM name", MAX_VM_NAME_LEN)?;
        let class = c.string("VM class", MAX_VM_CLASS_LEN)?;
        let in_backup = match c.u8()? {
            0 => false,
            1 => true,
            tag => return Err(Error::malformed(format!("protocol: in-backup flag {tag}"))),
        };
        others.push(OtherVm {
            name,
            class,
            in_backup,
        });
    }
    Ok(Manifest { vms, others })
}

fn flag(c: &mut Cursor<'_>, what: &str) -> Result<bool> {
    match c.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        tag => Err(Error::malformed(format!("protocol: {what} tag {tag}"))),
    }
}

/// PROTO-14 (grammar only; CFG-1 is the checker's).
pub(crate) fn get_config(c: &mut Cursor<'_>) -> Result<(u32, VmConfig)> {
    let vm = c.u32()?;
    let mut cfg = VmConfig::default();
    for _ in 0..c.count("properties", MAX_CONFIG_ENTRIES)? {
        let k = c.string("property name", MAX_PROPERTY_NAME_LEN)?;
        let v = c.opt_string("property value", MAX_CONFIG_VALUE_LEN)?;
        cfg.properties.push((k, v));
    }
    for _ in 0..c.count("features", MAX_CONFIG_ENTRIES)? {
        let k = c.string("feature name", MAX_FEATURE_NAME_LEN)?;
        let v = c.string("feature value", MAX_CONFIG_VALUE_LEN)?;
        cfg.features.push((k, v));
    }
    for _ in 0..c.count("tags", MAX_CONFIG_ENTRIES)? {
        cfg.tags.push(c.string("tag", MAX_TAG_LEN)?);
    }
    for _ in 0..c.count("devices", MAX_CONFIG_ENTRIES)? {
        let bus = c.string("device bus", MAX_BUS_LEN)?;
        let backend = c.string("device backend", crate::limits::MAX_VM_NAME_LEN)?;
        let port = c.string("device port", MAX_PORT_LEN)?;
        let required = flag(c, "device required")?;
        let mut options = Vec::new();
        for _ in 0..c.count("device options", MAX_DEVICE_OPTIONS)? {
            let k = c.string("device option name", MAX_OPTION_NAME_LEN)?;
            let v = c.string("device option value", MAX_CONFIG_VALUE_LEN)?;
            options.push((k, v));
        }
        cfg.devices.push(Device {
            bus,
            backend,
            port,
            required,
            options,
        });
    }
    Ok((vm, cfg))
}

/// PROTO-15 (grammar only; CFG-2 is the checker's).
pub(crate) fn get_vm_end(c: &mut Cursor<'_>) -> Result<(u32, VmEnd)> {
    let vm = c.u32()?;
    let firewall = match c.u8()? {
        0 => Firewall::Absent,
        1 => {
            let mut lines = Vec::new();
            for _ in 0..c.count("firewall rules", MAX_FIREWALL_RULES)? {
                lines.push(c.string("firewall rule", MAX_FIREWALL_RULE_LEN)?);
            }
            Firewall::Rules(lines)
        }
        2 => Firewall::Unreadable(c.string("firewall reason", MAX_PROTO_MESSAGE_LEN)?),
        tag => return Err(Error::malformed(format!("protocol: firewall tag {tag}"))),
    };
    let notes = if flag(c, "notes")? {
        Some(c.text("notes", MAX_NOTES_LEN)?)
    } else {
        None
    };
    let menu_items = if flag(c, "menu items")? {
        let mut items = Vec::new();
        for _ in 0..c.count("menu items", MAX_MENU_ITEMS)? {
            items.push(c.string("menu item", MAX_MENU_ITEM_LEN)?);
        }
        Some(items)
    } else {
        None
    };
    Ok((
        vm,
        VmEnd {
            firewall,
            notes,
            menu_items,
        },
    ))
}

pub(crate) fn get_begin(c: &mut Cursor<'_>) -> Result<Begin> {
    let vm = c.u32()?;
    let name = c.string("file name", MAX_PATH_LEN)?;
    let kind = match c.u8()? {
        0 => FileKind::Regular,
        1 => FileKind::Directory,
        2 => FileKind::Symlink {
            target: c.string("symlink target", MAX_PATH_LEN)?,
        },
        tag => return Err(Error::malformed(format!("protocol: file kind {tag}"))),
    };
    Ok(Begin {
        vm,
        name,
        kind,
        mode: c.u32()?,
        size: c.u64()?,
        data_bytes: c.u64()?,
    })
}

pub(crate) fn get_summary(c: &mut Cursor<'_>) -> Result<super::Summary> {
    Ok(super::Summary {
        vms: c.u32()?,
        files: c.u64()?,
        logical_bytes: c.u64()?,
        data_bytes: c.u64()?,
        transcript: c.sha256()?,
    })
}

pub(crate) fn get_error(c: &mut Cursor<'_>) -> Result<(ErrorClass, String)> {
    let class = class_from_code(c.u8()?)?;
    let message = c.string("error message", MAX_PROTO_MESSAGE_LEN)?;
    Ok((class, message))
}
