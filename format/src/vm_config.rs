//! What a restore re-creates of a VM besides its files (SPEC.md CFG-1 … CFG-3): properties,
//! features, tags and device assignments from qubes.xml, and the firewall, notes and menu
//! items from the VM's directory.
//!
//! One grammar per field, used three times: by the verifier to drop what cannot be sent
//! (a note, not a failure), by the protocol checker on both sides (PROTO-14, PROTO-15),
//! and so by the restore before any Admin API call. A value that passes never carries a
//! byte that the qubesd framing (`+`, space, NUL), a qrexec argument or an Admin API
//! payload would read as structure.

use crate::error::{Error, Result};
use crate::limits::{
    MAX_CONFIG_ENTRIES, MAX_CONFIG_VALUE_LEN, MAX_FIREWALL_RULES, MAX_MENU_ITEMS, MAX_NOTES_LEN,
    MAX_PROTO_MESSAGE_LEN, MAX_VM_NAME_LEN,
};
use crate::qubes_xml::{truncate, validate_vm_name};

/// CFG-1 field lengths, shared by the checks here and the protocol's grammar (PROTO-14,
/// PROTO-15), so that both refuse a longer field as `limit-exceeded`.
pub const MAX_PROPERTY_NAME_LEN: usize = 64;
pub const MAX_FEATURE_NAME_LEN: usize = 128;
pub const MAX_TAG_LEN: usize = 128;
pub const MAX_BUS_LEN: usize = 32;
pub const MAX_PORT_LEN: usize = 128;
pub const MAX_OPTION_NAME_LEN: usize = 64;
/// Options of one device assignment.
pub const MAX_DEVICE_OPTIONS: usize = 64;
/// CFG-2: a menu item (a desktop file name).
pub const MAX_MENU_ITEM_LEN: usize = 255;

/// CFG-1: one device assignment (`<devices class=BUS><device backend-domain= id=>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// `pci`, `usb`, `block`, … (`[a-z0-9]`, 1 … 32 bytes).
    pub bus: String,
    /// The VM providing the device (a VM name).
    pub backend: String,
    /// The device's port id (`00_1f.3`, `2-1`, `sda`): `[A-Za-z0-9_.-]`, 1 … 128 bytes (no
    /// `:` or `+`, which separate the fields of an Admin API device argument).
    pub port: String,
    /// Upstream's `required="yes"`: the VM does not start without the device.
    pub required: bool,
    /// Option names `[A-Za-z0-9_-]` (1 … 64 bytes) with printable values without quotes,
    /// backslashes or spaces (≤ LIM-53), e.g. `no-strict-reset=True`.
    pub options: Vec<(String, String)>,
}

/// CFG-1: a VM's settings from qubes.xml, as the verifier sends them (PROTO-14).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmConfig {
    /// Property name → value; `None` is an empty element (R4: "no value", e.g.
    /// `default_dispvm` set to none). Never the identity and reference properties the
    /// manifest carries or the host assigns ([`RESERVED_PROPERTIES`]).
    pub properties: Vec<(String, Option<String>)>,
    /// Feature name → value (`""` for false, as qubesd stores it).
    pub features: Vec<(String, String)>,
    pub tags: Vec<String>,
    pub devices: Vec<Device>,
}

/// CFG-2: the firewall of a VM's `firewall.xml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Firewall {
    /// The VM had no `firewall.xml`: the host's default applies.
    Absent,
    /// Canonical Admin API rule lines (FW-2), at most LIM-54.
    Rules(Vec<String>),
    /// The file was there but could not be converted (FW-3, FW-4): the restore must not
    /// leave the VM with the default (open) firewall; the message says why.
    Unreadable(String),
}

/// CFG-2: what the restore sets once a VM's files are in (PROTO-15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmEnd {
    pub firewall: Firewall,
    /// `notes.txt` (R4.2+): UTF-8 text, tabs and newlines allowed, ≤ LIM-57.
    pub notes: Option<String>,
    /// `whitelisted-appmenus.list`: the `menu-items` feature's entries, ≤ LIM-58.
    pub menu_items: Option<Vec<String>>,
}

impl Default for VmEnd {
    fn default() -> Self {
        VmEnd {
            firewall: Firewall::Absent,
            notes: None,
            menu_items: None,
        }
    }
}

/// CFG-1: properties a config never carries: the VM's identity (`name`, `qid`, `uuid`,
/// `klass`, host-assigned) and what the manifest carries (`label`, `template`, `netvm`).
pub const RESERVED_PROPERTIES: [&str; 7] =
    ["name", "qid", "uuid", "klass", "label", "template", "netvm"];

/// CFG-1: features a config never carries: the backup keys (XML-3), consumed by the
/// verifier.
pub const RESERVED_FEATURES: [&str; 3] = ["backup-content", "backup-path", "backup-size"];

/// CFG-1: tag prefixes a config never carries: qubesd's own audit tags (`created-by-*`,
/// which qrexec policies may trust) and the restore's own markers (`backup-restore-*`).
pub const RESERVED_TAG_PREFIXES: [&str; 2] = ["created-by-", "backup-restore-"];

fn malformed(what: &str, value: &str) -> Error {
    Error::malformed(format!("{what} {:?} (CFG-1)", truncate(value)))
}

/// A field longer than its bound → `limit-exceeded`, as the protocol's grammar says.
fn bounded(what: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(Error::limit(format!(
            "{what} {:?}… of {} bytes exceeds {max} (CFG-1)",
            truncate(value),
            value.len()
        )));
    }
    Ok(())
}

fn bytes_in(s: &str, min: usize, max: usize, ok: impl Fn(u8) -> bool) -> bool {
    (min..=max).contains(&s.len()) && s.bytes().all(ok)
}

/// Printable ASCII, as qubesd decodes property and feature payloads.
fn printable(b: u8) -> bool {
    (0x20..0x7f).contains(&b)
}

/// CFG-1: a property name is `[a-z][a-z0-9_]*` (≤ 64 bytes) and not reserved; a value
/// is printable ASCII of at most LIM-53 bytes.
pub fn check_property(name: &str, value: Option<&str>) -> Result<()> {
    bounded("property name", name, MAX_PROPERTY_NAME_LEN)?;
    if let Some(v) = value {
        bounded("property value", v, MAX_CONFIG_VALUE_LEN)?;
    }
    let name_ok = name.as_bytes().first().is_some_and(u8::is_ascii_lowercase)
        && bytes_in(name, 1, 64, |b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
        });
    if !name_ok || RESERVED_PROPERTIES.contains(&name) {
        return Err(malformed("property name", name));
    }
    if let Some(v) = value {
        if !bytes_in(v, 0, MAX_CONFIG_VALUE_LEN, printable) {
            return Err(malformed(&format!("value of property {name}"), v));
        }
    }
    Ok(())
}

/// CFG-1: a feature name is `[A-Za-z0-9_.-]` (1 … 128 bytes, not starting with `.` or
/// `-`) and not reserved; a value is printable ASCII of at most LIM-53 bytes.
pub fn check_feature(name: &str, value: &str) -> Result<()> {
    bounded("feature name", name, MAX_FEATURE_NAME_LEN)?;
    bounded("feature value", value, MAX_CONFIG_VALUE_LEN)?;
    let name_ok = name
        .as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphanumeric)
        && bytes_in(name, 1, 128, |b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
        });
    if !name_ok || RESERVED_FEATURES.contains(&name) {
        return Err(malformed("feature name", name));
    }
    if !bytes_in(value, 0, MAX_CONFIG_VALUE_LEN, printable) {
        return Err(malformed(&format!("value of feature {name}"), value));
    }
    Ok(())
}

/// CFG-1: a tag is `[A-Za-z0-9_-]` (1 … 128 bytes, qubesd's alphabet) without a reserved
/// prefix.
pub fn check_tag(tag: &str) -> Result<()> {
    bounded("tag", tag, MAX_TAG_LEN)?;
    let ok = bytes_in(tag, 1, 128, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')
    }) && !RESERVED_TAG_PREFIXES.iter().any(|p| tag.starts_with(p));
    if !ok {
        return Err(malformed("tag", tag));
    }
    Ok(())
}

/// CFG-1: a device assignment's bus, backend, port and options.
pub fn check_device(d: &Device) -> Result<()> {
    bounded("device bus", &d.bus, MAX_BUS_LEN)?;
    bounded("device backend", &d.backend, MAX_VM_NAME_LEN)?;
    bounded("device port", &d.port, MAX_PORT_LEN)?;
    if !bytes_in(&d.bus, 1, 32, |b| {
        b.is_ascii_lowercase() || b.is_ascii_digit()
    }) {
        return Err(malformed("device bus", &d.bus));
    }
    validate_vm_name(&d.backend).map_err(|_| malformed("device backend", &d.backend))?;
    if !bytes_in(&d.port, 1, 128, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
    }) {
        return Err(malformed("device port", &d.port));
    }
    if d.options.len() > MAX_DEVICE_OPTIONS {
        return Err(Error::limit(format!(
            "device {}:{} has more than {MAX_DEVICE_OPTIONS} options",
            d.bus,
            truncate(&d.port)
        )));
    }
    let mut seen = std::collections::HashSet::new();
    for (k, v) in &d.options {
        bounded("device option name", k, MAX_OPTION_NAME_LEN)?;
        bounded("device option value", v, MAX_CONFIG_VALUE_LEN)?;
        let name_ok = bytes_in(k, 1, 64, |b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')
        }) && k != "required";
        if !name_ok || !seen.insert(k.as_str()) {
            return Err(malformed("device option name", k));
        }
        let value_ok = bytes_in(v, 0, MAX_CONFIG_VALUE_LEN, |b| {
            printable(b) && !matches!(b, b' ' | b'\'' | b'"' | b'\\')
        });
        if !value_ok {
            return Err(malformed(&format!("value of device option {k}"), v));
        }
    }
    Ok(())
}

/// CFG-1: the whole config: every entry valid, no name twice, each list at most LIM-52.
pub fn check_config(c: &VmConfig) -> Result<()> {
    for (what, n) in [
        ("properties", c.properties.len()),
        ("features", c.features.len()),
        ("tags", c.tags.len()),
        ("devices", c.devices.len()),
    ] {
        if n > MAX_CONFIG_ENTRIES {
            return Err(Error::limit(format!(
                "more than LIM-52 ({MAX_CONFIG_ENTRIES}) {what}"
            )));
        }
    }
    let mut seen = std::collections::HashSet::new();
    for (k, v) in &c.properties {
        check_property(k, v.as_deref())?;
        if !seen.insert(("p", k.as_str())) {
            return Err(malformed("repeated property", k));
        }
    }
    for (k, v) in &c.features {
        check_feature(k, v)?;
        if !seen.insert(("f", k.as_str())) {
            return Err(malformed("repeated feature", k));
        }
    }
    for t in &c.tags {
        check_tag(t)?;
        if !seen.insert(("t", t.as_str())) {
            return Err(malformed("repeated tag", t));
        }
    }
    let mut ports = std::collections::HashSet::new();
    for d in &c.devices {
        check_device(d)?;
        if !ports.insert((d.bus.as_str(), d.backend.as_str(), d.port.as_str())) {
            return Err(malformed("repeated device", &d.port));
        }
    }
    Ok(())
}

/// CFG-2: notes are UTF-8 text of 1 … LIM-57 bytes whose only control characters are tab
/// and newline (qubesd refuses empty notes).
pub fn check_notes(notes: &str) -> Result<()> {
    if notes.is_empty() {
        return Err(Error::malformed("empty notes (CFG-2)"));
    }
    if notes.len() > MAX_NOTES_LEN {
        return Err(Error::limit(format!(
            "notes of {} bytes exceed LIM-57 ({MAX_NOTES_LEN})",
            notes.len()
        )));
    }
    if notes
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(Error::malformed("notes with control characters (CFG-2)"));
    }
    Ok(())
}

/// CFG-2: a menu item is a desktop file name: `[A-Za-z0-9_.+@-]`, 1 … 255 bytes.
pub fn check_menu_item(item: &str) -> Result<()> {
    bounded("menu item", item, MAX_MENU_ITEM_LEN)?;
    if !bytes_in(item, 1, MAX_MENU_ITEM_LEN, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'@' | b'-')
    }) {
        return Err(malformed("menu item", item));
    }
    Ok(())
}

/// CFG-2: firewall lines are canonical (FW-2) and at most LIM-54; an unreadable
/// firewall's reason is text without control characters; notes and menu items as above.
pub fn check_vm_end(e: &VmEnd) -> Result<()> {
    match &e.firewall {
        Firewall::Absent => {}
        Firewall::Rules(lines) => {
            if lines.len() > MAX_FIREWALL_RULES {
                return Err(Error::limit(format!(
                    "more than LIM-54 ({MAX_FIREWALL_RULES}) firewall rules"
                )));
            }
            for l in lines {
                crate::firewall::Rule::parse_line(l)?;
            }
        }
        Firewall::Unreadable(why) => {
            if why.len() > MAX_PROTO_MESSAGE_LEN {
                return Err(Error::limit("firewall reason longer than LIM-31"));
            }
            if why.chars().any(char::is_control) {
                return Err(Error::malformed("firewall reason with control characters"));
            }
        }
    }
    if let Some(n) = &e.notes {
        check_notes(n)?;
    }
    if let Some(items) = &e.menu_items {
        if items.len() > MAX_MENU_ITEMS {
            return Err(Error::limit(format!(
                "more than LIM-58 ({MAX_MENU_ITEMS}) menu items"
            )));
        }
        for i in items {
            check_menu_item(i)?;
        }
    }
    Ok(())
}

/// CFG-2: `whitelisted-appmenus.list` → menu items: ASCII lines, empty ones dropped (as
/// upstream); a line outside the grammar makes the list unusable (Malformed).
pub fn parse_menu_list(untrusted: &[u8]) -> Result<Vec<String>> {
    let text = std::str::from_utf8(untrusted)
        .map_err(|_| Error::malformed("menu list is not UTF-8 (CFG-2)"))?;
    let mut items = Vec::new();
    for line in text.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        check_menu_item(line)?;
        if items.len() >= MAX_MENU_ITEMS {
            return Err(Error::limit(format!(
                "menu list of more than LIM-58 ({MAX_MENU_ITEMS}) items"
            )));
        }
        items.push(line.to_owned());
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_characters_never_pass() {
        for bad in ["a b", "a+b", "a\0b", "a\nb", "", "x'y"] {
            assert!(check_tag(bad).is_err(), "tag {bad:?}");
            assert!(check_feature(bad, "1").is_err(), "feature {bad:?}");
            assert!(check_property(bad, None).is_err(), "property {bad:?}");
        }
        assert!(check_feature("ok", "a\nb").is_err());
        assert!(check_property("memory", Some("4\u{0}00")).is_err());
        assert!(check_tag("created-by-dom0").is_err());
        assert!(check_tag("backup-restore-in-progress").is_err());
        assert!(check_property("netvm", Some("x")).is_err());
        assert!(check_feature("backup-size", "1").is_err());
        check_tag("audiovm-dom0").unwrap();
        check_feature("service.meminfo-writer", "1").unwrap();
        check_property("kernelopts", Some("nopat swiotlb=2048")).unwrap();
    }

    #[test]
    fn device_options_with_quotes_are_refused() {
        let mut d = Device {
            bus: "pci".into(),
            backend: "dom0".into(),
            port: "00_1f.3".into(),
            required: true,
            options: vec![("no-strict-reset".into(), "True".into())],
        };
        check_device(&d).unwrap();
        d.options[0].1 = "True' persistent='1".into();
        assert!(check_device(&d).is_err());
        d.options[0] = ("required".into(), "True".into());
        assert!(check_device(&d).is_err());
    }

    #[test]
    fn menu_lists_and_notes() {
        assert_eq!(
            parse_menu_list(b"firefox.desktop\n\nxterm.desktop\n").unwrap(),
            ["firefox.desktop", "xterm.desktop"]
        );
        assert!(parse_menu_list(b"a b.desktop\n").is_err());
        assert!(check_menu_item("x\0y").is_err());
        check_notes("line one\n\tline two").unwrap();
        assert!(check_notes("").is_err());
        assert!(check_notes("bell\u{7}").is_err());
        assert!(check_notes(&"x".repeat(MAX_NOTES_LEN + 1)).is_err());
    }
}
