//! The R4 (core3) qubes.xml writer for the packer (SPEC.md XML-2, XML-3).
//!
//! Output has the shape upstream's core3 reader walks: `<labels>`, `<pools/>`, global
//! `<properties>`, then one `<domain id="domain-QID" class=…>` per VM with `<properties>`
//! (`qid`, `name` except for dom0, `label` as a label id, `template`, `netvm`,
//! `virt_mode`, `provides_network`), `<features>` with `backup-content`/`backup-path`/
//! `backup-size` for VMs in the backup, `<tags/>`, and `<volume-config>`.

use std::collections::{HashMap, HashSet};

use super::{validate_class, validate_vm_name, validate_volume_name, NetVm, Vm};
use crate::bail;
use crate::error::Result;
use crate::limits::{MAX_VMS, MAX_XML_VALUE_LEN};

/// The labels every Qubes R4 system has, with upstream's ids and colours.
const STANDARD_LABELS: [(&str, &str); 8] = [
    ("red", "0xcc0000"),
    ("orange", "0xf57900"),
    ("yellow", "0xedd400"),
    ("green", "0x73d216"),
    ("gray", "0x555753"),
    ("blue", "0x3465a4"),
    ("purple", "0x75507b"),
    ("black", "0x000000"),
];

/// XML-escapes `s` for element text and attribute values.
pub(crate) fn escape(out: &mut Vec<u8>, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.extend_from_slice(b"&amp;"),
            '<' => out.extend_from_slice(b"&lt;"),
            '>' => out.extend_from_slice(b"&gt;"),
            '"' => out.extend_from_slice(b"&quot;"),
            '\'' => out.extend_from_slice(b"&apos;"),
            // Attribute-value normalisation would turn these into spaces.
            '\t' => out.extend_from_slice(b"&#9;"),
            '\n' => out.extend_from_slice(b"&#10;"),
            '\r' => out.extend_from_slice(b"&#13;"),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
}

/// A text value the parser will read back unchanged: non-empty, no XML-illegal
/// characters, within LIM-16.
fn check_text(what: &str, s: &str) -> Result<()> {
    if s.is_empty()
        || s.len() > MAX_XML_VALUE_LEN
        || s.chars().any(|c| {
            (c < '\u{20}' && !matches!(c, '\t' | '\n' | '\r'))
                || matches!(c, '\u{FFFE}' | '\u{FFFF}')
        })
    {
        bail!(Malformed, "qubes.xml writer: unusable {what} {s:?}");
    }
    Ok(())
}

fn property(out: &mut Vec<u8>, name: &str, value: Option<&str>) {
    out.extend_from_slice(b"        <property name=\"");
    escape(out, name);
    match value {
        Some(v) => {
            out.extend_from_slice(b"\">");
            escape(out, v);
            out.extend_from_slice(b"</property>\n");
        }
        None => out.extend_from_slice(b"\"/>\n"),
    }
}

fn feature(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(b"        <feature name=\"");
    escape(out, name);
    out.extend_from_slice(b"\">");
    escape(out, value);
    out.extend_from_slice(b"</feature>\n");
}

/// What both writers require of every VM: a valid name and class, a qid (0 exactly for
/// dom0, the AdminVM), a label, and text-safe label and backup path. Its (qid, label).
fn check_vm(vm: &Vm) -> Result<(u32, &str)> {
    validate_vm_name(&vm.name)?;
    validate_class(&vm.class)?;
    let Some(qid) = vm.qid else {
        bail!(Malformed, "qubes.xml writer: VM {:?} has no qid", vm.name);
    };
    if (vm.class == "AdminVM") != (vm.name == "dom0") || (qid == 0) != (vm.name == "dom0") {
        bail!(
            Malformed,
            "qubes.xml writer: dom0 must be the AdminVM with qid 0 ({:?})",
            vm.name
        );
    }
    let Some(label) = vm.label.as_deref() else {
        bail!(Malformed, "qubes.xml writer: VM {:?} has no label", vm.name);
    };
    check_text("label", label)?;
    if let Some(b) = &vm.backup {
        check_text("backup path", &b.path)?;
    }
    Ok((qid, label))
}

/// Names and qids seen so far by a writer: both must be unique in what it writes (a
/// reader may accept a shared qid, XML-3, but the writers' callers name archive members
/// `vm<qid>/`, and R3 references are by qid).
#[derive(Default)]
struct Seen<'a> {
    names: HashSet<&'a str>,
    qids: HashMap<u32, &'a str>,
}

impl<'a> Seen<'a> {
    fn add(&mut self, vm: &'a Vm, qid: u32) -> Result<()> {
        if !self.names.insert(&vm.name) {
            bail!(
                Malformed,
                "qubes.xml writer: duplicate VM name {:?}",
                vm.name
            );
        }
        if let Some(other) = self.qids.insert(qid, &vm.name) {
            bail!(
                Malformed,
                "qubes.xml writer: duplicate qid {qid}: VMs {other:?} and {:?} (each VM needs \
                 its own qid)",
                vm.name
            );
        }
        Ok(())
    }
}

/// Append an R4 qubes.xml describing `vms` to `out`.
///
/// Every VM needs a `qid` and a `label` (a colour name; the eight standard labels get
/// upstream's ids `label-1`…`label-8`, others follow). dom0 is the `AdminVM` with qid 0;
/// its backup path, when its home is backed up, is `dom0-home/<user>`. `volumes_saved`
/// becomes `<volume-config>` entries with `save_on_stop="True"`. `globals` are written as
/// the global `<properties>` (e.g. `default_netvm`). The input is checked so that
/// [`super::parse`] reads back exactly `vms`; violations are Malformed.
pub fn write_r4(vms: &[Vm], globals: &[(String, String)], out: &mut Vec<u8>) -> Result<()> {
    if vms.len() > MAX_VMS {
        bail!(LimitExceeded, "qubes.xml writer: more than {MAX_VMS} VMs");
    }
    // Validate everything first, so `out` is untouched on error.
    let mut seen = Seen::default();
    let mut labels: Vec<(String, &str)> = STANDARD_LABELS
        .iter()
        .map(|(n, c)| ((*n).to_owned(), *c))
        .collect();
    for vm in vms {
        let (qid, label) = check_vm(vm)?;
        seen.add(vm, qid)?;
        if label.starts_with("label-") {
            bail!(
                Malformed,
                "qubes.xml writer: label name {label:?} looks like an id"
            );
        }
        if !labels.iter().any(|(n, _)| n == label) {
            labels.push((label.to_owned(), "0x000000"));
        }
        if let Some(t) = &vm.template {
            validate_vm_name(t)?;
        }
        if let NetVm::Named(n) = &vm.netvm {
            validate_vm_name(n)?;
        }
        if let Some(v) = &vm.virt_mode {
            check_text("virt_mode", v)?;
        }
        check_config_text(&vm.config)?;
        if let Some(vols) = &vm.volumes_saved {
            let mut seen = HashSet::new();
            for v in vols {
                validate_volume_name(v)?;
                if !seen.insert(v.as_str()) {
                    bail!(Malformed, "qubes.xml writer: duplicate volume {v:?}");
                }
            }
        }
    }
    for (k, v) in globals {
        check_text("global property name", k)?;
        check_text("global property value", v)?;
    }
    let label_ids: HashMap<&str, usize> = labels
        .iter()
        .enumerate()
        .map(|(i, (n, _))| (n.as_str(), i.saturating_add(1)))
        .collect();

    out.extend_from_slice(b"<?xml version='1.0' encoding='UTF-8'?>\n<qubes>\n  <labels>\n");
    for (i, (name, color)) in labels.iter().enumerate() {
        out.extend_from_slice(
            format!(
                "    <label id=\"label-{}\" color=\"{color}\">",
                i.saturating_add(1)
            )
            .as_bytes(),
        );
        escape(out, name);
        out.extend_from_slice(b"</label>\n");
    }
    out.extend_from_slice(b"  </labels>\n  <pools/>\n  <properties>\n");
    for (k, v) in globals {
        out.extend_from_slice(b"  ");
        property(out, k, Some(v));
    }
    out.extend_from_slice(b"  </properties>\n  <domains>\n");
    for vm in vms {
        let qid = vm.qid.unwrap_or_default();
        out.extend_from_slice(format!("    <domain id=\"domain-{qid}\" class=\"").as_bytes());
        escape(out, &vm.class);
        out.extend_from_slice(b"\">\n      <properties>\n");
        property(out, "qid", Some(&qid.to_string()));
        if vm.class != "AdminVM" {
            property(out, "name", Some(&vm.name));
        }
        let label = vm.label.as_deref().unwrap_or_default();
        let id = label_ids.get(label).copied().unwrap_or_default();
        property(out, "label", Some(&format!("label-{id}")));
        if let Some(t) = &vm.template {
            property(out, "template", Some(t));
        }
        match &vm.netvm {
            NetVm::Default => {}
            NetVm::None => property(out, "netvm", None),
            NetVm::Named(n) => property(out, "netvm", Some(n)),
        }
        if let Some(v) = &vm.virt_mode {
            property(out, "virt_mode", Some(v));
        }
        if vm.provides_network {
            property(out, "provides_network", Some("True"));
        }
        for (k, v) in &vm.config.properties {
            property(out, k, v.as_deref());
        }
        out.extend_from_slice(b"      </properties>\n      <features>\n");
        for (k, v) in &vm.config.features {
            feature(out, k, v);
        }
        if let Some(b) = &vm.backup {
            feature(out, "backup-content", "True");
            feature(out, "backup-path", &b.path);
            feature(out, "backup-size", &b.size.to_string());
        } else {
            out.extend_from_slice(b"        <feature name=\"backup-content\"/>\n");
        }
        out.extend_from_slice(b"      </features>\n      <tags>\n");
        for t in &vm.config.tags {
            out.extend_from_slice(b"        <tag name=\"");
            escape(out, t);
            out.extend_from_slice(b"\"/>\n");
        }
        out.extend_from_slice(b"      </tags>\n");
        devices(out, &vm.config.devices);
        if let Some(vols) = &vm.volumes_saved {
            out.extend_from_slice(b"      <volume-config>\n");
            for v in vols {
                out.extend_from_slice(b"        <volume name=\"");
                escape(out, v);
                out.extend_from_slice(b"\" pool=\"default\" rw=\"True\" save_on_stop=\"True\"");
                if let Some((_, size)) = vm.volume_sizes.iter().find(|(n, _)| n == v) {
                    out.extend_from_slice(format!(" size=\"{size}\"").as_bytes());
                }
                out.extend_from_slice(b" snap_on_start=\"False\"/>\n");
            }
            out.extend_from_slice(b"      </volume-config>\n");
        }
        out.extend_from_slice(b"    </domain>\n");
    }
    out.extend_from_slice(b"  </domains>\n</qubes>\n");
    Ok(())
}

/// As [`check_text`], but empty is allowed (a false feature, an empty property).
fn check_value(what: &str, s: &str) -> Result<()> {
    if s.is_empty() {
        Ok(())
    } else {
        check_text(what, s)
    }
}

/// Every name and value of a VM's settings is text the writer can escape; what a
/// restore may *send* of it is checked by the verifier (CFG-1), not here: a qubes.xml
/// legitimately holds `created-by-dom0`.
fn check_config_text(c: &crate::vm_config::VmConfig) -> Result<()> {
    for (k, v) in &c.properties {
        check_text("property name", k)?;
        if let Some(v) = v {
            check_value("property value", v)?;
        }
    }
    for (k, v) in &c.features {
        check_text("feature name", k)?;
        check_value("feature value", v)?;
    }
    for t in &c.tags {
        check_text("tag", t)?;
    }
    for d in &c.devices {
        for s in [&d.bus, &d.backend, &d.port] {
            check_text("device", s)?;
        }
        for (k, v) in &d.options {
            check_text("device option", k)?;
            check_value("device option", v)?;
        }
    }
    Ok(())
}

/// CFG-1: `<devices class=BUS>` groups in first-seen bus order, each `<device
/// backend-domain= id= required=>` with its `<option name=>` children.
fn devices(out: &mut Vec<u8>, devices: &[crate::vm_config::Device]) {
    let mut buses: Vec<&str> = Vec::new();
    for d in devices {
        if !buses.contains(&d.bus.as_str()) {
            buses.push(&d.bus);
        }
    }
    for bus in buses {
        out.extend_from_slice(b"      <devices class=\"");
        escape(out, bus);
        out.extend_from_slice(b"\">\n");
        for d in devices.iter().filter(|d| d.bus == bus) {
            out.extend_from_slice(b"        <device backend-domain=\"");
            escape(out, &d.backend);
            out.extend_from_slice(b"\" id=\"");
            escape(out, &d.port);
            out.extend_from_slice(if d.required {
                b"\" required=\"yes\">\n".as_slice()
            } else {
                b"\" required=\"no\">\n".as_slice()
            });
            for (k, v) in &d.options {
                out.extend_from_slice(b"          <option name=\"");
                escape(out, k);
                out.extend_from_slice(b"\">");
                escape(out, v);
                out.extend_from_slice(b"</option>\n");
            }
            out.extend_from_slice(b"        </device>\n");
        }
        out.extend_from_slice(b"      </devices>\n");
    }
}

/// Attribute ` name="value"` of a core2 element.
fn attr(out: &mut Vec<u8>, name: &str, value: &str) {
    out.push(b' ');
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"=\"");
    escape(out, value);
    out.push(b'"');
}

/// The core2 element of a VM (XML-1 mapping, read backwards).
fn r3_element(vm: &Vm) -> Result<&'static str> {
    let hvm = vm.virt_mode.as_deref() == Some("hvm");
    Ok(match vm.class.as_str() {
        "AdminVM" => "QubesAdminVm",
        "TemplateVM" if hvm => "QubesTemplateHVm",
        "TemplateVM" => "QubesTemplateVm",
        "AppVM" | "StandaloneVM" if vm.provides_network => "QubesProxyVm",
        "AppVM" | "StandaloneVM" if hvm => "QubesHVm",
        "AppVM" | "StandaloneVM" => "QubesAppVm",
        other => bail!(
            Unsupported,
            "qubes.xml writer: class {other} of VM {:?} has no R3 form",
            vm.name
        ),
    })
}

/// Append an R3 (core2, `QubesVmCollection`) qubes.xml describing `vms` to `out`, the
/// shape upstream's core2 reader and R3.2's writer use (SPEC.md XML-1, WRT-6).
///
/// Classes map back through XML-1: AdminVM → `QubesAdminVm` (qid 0), TemplateVM →
/// `QubesTemplateVm` (`…HVm` when `virt_mode` is `hvm`), AppVM/StandaloneVM →
/// `QubesAppVm`/`QubesHVm`/`QubesProxyVm` (`provides_network`) with `template_qid`
/// (`none` for StandaloneVM); other classes are Unsupported. References are by qid, so a
/// template or netvm named but not in `vms` gets a placeholder element without
/// `backup_content` (a `QubesTemplateVm`, a `QubesProxyVm`) with the next free qids.
/// The root's `default_netvm` and `default_template` are `None`, and every VM's
/// dispvm netvm is explicitly `none`, so the reader synthesises no `disp-*` VMs.
/// `backup_path` is written as given (R3: `vm<qid>` without a slash). Labels are colour
/// names. `volumes_saved` has no R3 form and is not written.
pub fn write_r3(vms: &[Vm], out: &mut Vec<u8>) -> Result<()> {
    if vms.len() > MAX_VMS {
        bail!(LimitExceeded, "qubes.xml writer: more than {MAX_VMS} VMs");
    }
    let mut qid_of: HashMap<&str, u32> = HashMap::new();
    let mut seen = Seen::default();
    for vm in vms {
        let (qid, _) = check_vm(vm)?;
        r3_element(vm)?;
        seen.add(vm, qid)?;
        qid_of.insert(&vm.name, qid);
    }
    // Placeholders for referenced VMs that are not in `vms`, in order of first mention.
    let mut next = qid_of.values().copied().max().unwrap_or(0);
    let mut placeholders: Vec<(&str, &'static str, u32)> = Vec::new();
    for vm in vms {
        let refs = [
            (vm.template.as_deref(), "QubesTemplateVm"),
            (
                match &vm.netvm {
                    NetVm::Named(n) => Some(n.as_str()),
                    _ => None,
                },
                "QubesProxyVm",
            ),
        ];
        for (name, element) in refs {
            let Some(name) = name else { continue };
            validate_vm_name(name)?;
            if qid_of.contains_key(name) {
                continue;
            }
            next = match next.checked_add(1) {
                Some(n) if qid_of.len() < MAX_VMS => n,
                _ => bail!(LimitExceeded, "qubes.xml writer: out of qids or VMs"),
            };
            qid_of.insert(name, next);
            placeholders.push((name, element, next));
        }
    }
    let qid = |name: &str| qid_of.get(name).copied().unwrap_or_default().to_string();

    out.extend_from_slice(
        b"<?xml version='1.0' encoding='UTF-8'?>\n\
          <QubesVmCollection default_netvm=\"None\" default_template=\"None\">\n",
    );
    for vm in vms {
        let element = r3_element(vm)?;
        out.extend_from_slice(b"  <");
        out.extend_from_slice(element.as_bytes());
        attr(out, "qid", &vm.qid.unwrap_or_default().to_string());
        attr(out, "name", &vm.name);
        attr(out, "label", vm.label.as_deref().unwrap_or_default());
        match vm.class.as_str() {
            "AppVM" => attr(
                out,
                "template_qid",
                &qid(vm.template.as_deref().unwrap_or("")),
            ),
            "StandaloneVM" => attr(out, "template_qid", "none"),
            _ => {}
        }
        match &vm.netvm {
            NetVm::Default => attr(out, "uses_default_netvm", "True"),
            NetVm::None => {
                attr(out, "uses_default_netvm", "False");
                attr(out, "netvm_qid", "none");
            }
            NetVm::Named(n) => {
                attr(out, "uses_default_netvm", "False");
                attr(out, "netvm_qid", &qid(n));
            }
        }
        if vm.class != "AdminVM" {
            attr(out, "uses_default_dispvm_netvm", "False");
            attr(out, "dispvm_netvm_qid", "none");
        }
        match &vm.backup {
            Some(b) => {
                attr(out, "backup_content", "True");
                attr(out, "backup_path", &b.path);
                attr(out, "backup_size", &b.size.to_string());
            }
            None => attr(out, "backup_content", "False"),
        }
        out.extend_from_slice(b"/>\n");
    }
    for (name, element, q) in placeholders {
        out.extend_from_slice(b"  <");
        out.extend_from_slice(element.as_bytes());
        attr(out, "qid", &q.to_string());
        attr(out, "name", name);
        attr(out, "label", "black");
        if element == "QubesProxyVm" {
            attr(out, "template_qid", "none");
        }
        attr(out, "uses_default_dispvm_netvm", "False");
        attr(out, "dispvm_netvm_qid", "none");
        attr(out, "backup_content", "False");
        out.extend_from_slice(b"/>\n");
    }
    out.extend_from_slice(b"</QubesVmCollection>\n");
    Ok(())
}
