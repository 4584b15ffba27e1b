//! qubes.xml: the VM metadata stored in every backup (SPEC.md XML-1 … XML-4).
//!
//! [`parse`] reads both flavours into one model: R2/R3 `QubesVmCollection` (core2,
//! XML-1) and R4 `<qubes>` (core3, XML-2), with the backup keys of XML-3 (which VMs carry
//! data, under which path, and how large upstream said they are). [`write_r4`] writes the
//! R4 flavour for the packer.
//!
//! The input is untrusted even after its MAC verified (a backup made by a compromised
//! dom0, or a hostile archive): parsing is bounded (XML-4, LIM-4/14/15/16/24), refuses
//! DTDs and entity declarations, and validates names and cross-references.
//!
//! Deviations from upstream (SPEC.md DEV-*), all stricter:
//! - R4 `backup-content` counts as false for the texts `""`, `"0"`, `"False"`, `"false"`
//!   (upstream tests Python truthiness of the text, so `"False"` would count as true);
//! - numbers (`qid`, `backup-size`, …) are plain ASCII decimal, no sign, spaces or `_`;
//! - a VM included in the backup with an empty backup path is Malformed (upstream would
//!   treat `""` as a prefix of every member name);
//! - duplicate VM names, duplicate `<property>`/`<feature>` names in one domain, and
//!   unresolvable R2/R3 `template_qid`/`netvm_qid` are Malformed (upstream keeps the last
//!   value or logs and carries on);
//! - a qid shared by several VMs is a note (XML-3), except that an R2/R3 qid reference
//!   naming a shared qid is Malformed (upstream's qid → name map keeps one of them, DEV-23).

mod core2;
mod core3;
pub(crate) mod dom;
mod write;

#[cfg(test)]
mod tests;

pub(crate) use write::escape;
pub use write::{write_r3, write_r4};

use crate::bail;
use crate::error::Result;
use crate::limits::{MAX_VM_CLASS_LEN, MAX_VM_NAME_LEN};
use crate::vm_config::VmConfig;

/// Which qubes.xml dialect a file is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// R2/R3 `QubesVmCollection` (core2), XML-1.
    Core2,
    /// R4 `<qubes>` (core3), XML-2.
    Core3,
}

/// A parsed qubes.xml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QubesXml {
    pub flavor: Flavor,
    /// VMs in document order (R2: a synthesised `dom0` first, as upstream does).
    pub vms: Vec<Vm>,
    /// R2/R3 only: the DispVM templates upstream's core2 reader synthesises for VMs whose
    /// DispVM netvm is not the default netvm (`disp-NETVM`, `disp-no-netvm`, with
    /// `template_for_dispvms` and that netvm; XML-5). They hold no data; a restore creates
    /// them so that those VMs' `default_dispvm` names a VM.
    pub dispvm_templates: Vec<Vm>,
    /// R4 label table, id → colour name (`("label-1", "red")`); empty for R2/R3.
    pub labels: Vec<(String, String)>,
    /// Facts worth telling the user that do not make the file unusable, in a stable
    /// order: one line per qid shared by several VMs (XML-3). At most one line per two
    /// VMs, each naming its VMs once, so never longer than the VM list itself (LIM-14).
    pub notes: Vec<String>,
}

impl QubesXml {
    /// The VM named `name`.
    pub fn vm(&self, name: &str) -> Option<&Vm> {
        self.vms.iter().find(|v| v.name == name)
    }

    /// VMs whose data is in the backup (XML-3).
    pub fn backed_up(&self) -> impl Iterator<Item = (&Vm, &BackupInfo)> {
        self.vms
            .iter()
            .filter_map(|v| v.backup.as_ref().map(|b| (v, b)))
    }
}

/// A VM's network VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetVm {
    /// Follows the global `default_netvm`.
    Default,
    /// Explicitly no network.
    None,
    /// The VM with this name.
    Named(String),
}

/// One VM as described by qubes.xml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vm {
    /// R2/R3 `qid`; R4 `qid` property, else the number in `id="domain-N"`.
    pub qid: Option<u32>,
    /// Validated by [`validate_vm_name`]; `dom0` exactly for the AdminVM.
    pub name: String,
    /// R4 class (`AppVM`, `TemplateVM`, `StandaloneVM`, `AdminVM`, `DispVM`, …); R2/R3
    /// element names mapped as in XML-1.
    pub class: String,
    /// Colour name (R4 label ids resolved through the label table).
    pub label: Option<String>,
    /// Template name (R2/R3: resolved from `template_qid`).
    pub template: Option<String>,
    pub netvm: NetVm,
    /// `Some` when the VM's data is in the backup (XML-3).
    pub backup: Option<BackupInfo>,
    /// R4: names of the `<volume-config>` volumes with `save_on_stop="True"`; `None` when
    /// the domain has no `<volume-config>` (always `None` for R2/R3).
    pub volumes_saved: Option<Vec<String>>,
    /// R4: the `size` (bytes) of each saved volume that states one (VER-4).
    pub volume_sizes: Vec<(String, u64)>,
    /// R2/R3: `hvm` for `*HVm` elements, `pv` otherwise; R4: the `virt_mode` property.
    pub virt_mode: Option<String>,
    /// R2/R3: NetVM/ProxyVM; R4: the `provides_network` property.
    pub provides_network: bool,
    /// Properties (but `virt_mode` and `provides_network`, the fields above), features,
    /// tags and devices as written (CFG-1), not yet checked against CFG-1's grammar (the
    /// verifier does that before sending them). R2/R3 attributes are translated as
    /// upstream's core2 reader does (XML-5).
    pub config: VmConfig,
}

/// Where a backed-up VM's files are in the archive and how large upstream said they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupInfo {
    /// As written: `vm3/` (R4), `vm5` or `appvms/NAME` (R3), `dom0-home/user`.
    /// Never empty; not otherwise checked here (member names are checked on their own).
    pub path: String,
    /// Upstream's disk-usage figure in bytes (0 when absent); not a bound on the data.
    pub size: u64,
}

/// Parse qubes.xml of either flavour, chosen by the root element (XML-1, XML-2).
impl Vm {
    /// dom0 as upstream describes it when nothing else is known: AdminVM, qid 0, label
    /// black, no netvm property (AdminVM has none), not backed up.
    pub fn dom0() -> Vm {
        Vm {
            qid: Some(0),
            name: "dom0".to_owned(),
            class: "AdminVM".to_owned(),
            label: Some("black".to_owned()),
            template: None,
            netvm: NetVm::Default,
            backup: None,
            volumes_saved: None,
            volume_sizes: Vec::new(),
            virt_mode: None,
            provides_network: false,
            config: VmConfig::default(),
        }
    }
}

pub fn parse(untrusted: &[u8]) -> Result<QubesXml> {
    let root = dom::parse(untrusted)?;
    let mut parsed = match root.name.as_str() {
        "QubesVmCollection" => core2::parse(&root)?,
        "qubes" => core3::parse(&root)?,
        other => bail!(
            Malformed,
            "qubes.xml: unknown root element <{}>",
            truncate(other)
        ),
    };
    check_unique(&parsed.vms)?;
    check_dom0_home(&parsed.vms)?;
    parsed.notes.extend(shared_qid_notes(&parsed.vms));
    Ok(parsed)
}

/// qid → names of the VMs that carry it, in document order.
pub(crate) fn qid_owners<'a>(
    vms: impl IntoIterator<Item = (u32, &'a str)>,
) -> std::collections::BTreeMap<u32, Vec<&'a str>> {
    let mut map: std::collections::BTreeMap<u32, Vec<&str>> = std::collections::BTreeMap::new();
    for (qid, name) in vms {
        map.entry(qid).or_default().push(name);
    }
    map
}

/// `a`, `a and b`, `a, b and c`.
pub(crate) fn and_list(names: &[&str]) -> String {
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
    }
}

/// XML-3: a qid shared by several VMs is reported, not refused. Nothing in core3 refers
/// to a VM by qid (files map through backup-paths, references are names), and core2
/// references to a shared qid were refused by the core2 parser (XML-1).
fn shared_qid_notes(vms: &[Vm]) -> Vec<String> {
    qid_owners(
        vms.iter()
            .filter_map(|v| v.qid.map(|q| (q, v.name.as_str()))),
    )
    .into_iter()
    .filter(|(_, names)| names.len() > 1)
    .map(|(qid, names)| {
        format!(
            "qubes.xml: qid {qid} is shared by VMs {} (XML-3)",
            and_list(&names)
        )
    })
    .collect()
}

/// XML-3: no included VM but dom0 may have a backup-path under `dom0-home/`.
fn check_dom0_home(vms: &[Vm]) -> Result<()> {
    for vm in vms {
        let Some(backup) = &vm.backup else { continue };
        if vm.class == "AdminVM" || vm.qid == Some(0) {
            continue;
        }
        let path = backup.path.strip_suffix('/').unwrap_or(&backup.path);
        if path == "dom0-home" || path.starts_with("dom0-home/") {
            bail!(
                Malformed,
                "qubes.xml: VM {:?} has a backup-path under dom0-home/, which only dom0 may use (XML-3)",
                truncate(&vm.name)
            );
        }
    }
    Ok(())
}

/// Qubes VM name rules (`dom0` allowed): 1 … LIM-45 bytes, an ASCII letter first, then
/// letters, digits, `_`, `.`, `-`; not `none` or `default`.
pub fn validate_vm_name(name: &str) -> Result<()> {
    let ok = (1..=MAX_VM_NAME_LEN).contains(&name.len())
        && name.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !matches!(name, "none" | "default");
    if !ok {
        bail!(Malformed, "qubes.xml: invalid VM name {:?}", truncate(name));
    }
    Ok(())
}

/// Volume names end up in member names (`<path><volume>.img`): keep them to a safe
/// alphabet, 1–64 bytes of `[A-Za-z0-9_-]`.
pub(crate) fn validate_volume_name(name: &str) -> Result<()> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if !ok {
        bail!(
            Malformed,
            "qubes.xml: invalid volume name {:?}",
            truncate(name)
        );
    }
    Ok(())
}

/// R4 class names: an ASCII identifier of at most LIM-46 bytes.
pub(crate) fn validate_class(class: &str) -> Result<()> {
    let ok = (1..=MAX_VM_CLASS_LEN).contains(&class.len())
        && class
            .as_bytes()
            .first()
            .is_some_and(u8::is_ascii_alphabetic)
        && class.bytes().all(|b| b.is_ascii_alphanumeric());
    if !ok {
        bail!(
            Malformed,
            "qubes.xml: invalid VM class {:?}",
            truncate(class)
        );
    }
    Ok(())
}

/// Plain ASCII decimal, at most 20 digits, no sign or spaces.
pub(crate) fn parse_u64(what: &str, s: &str) -> Result<u64> {
    if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
        bail!(
            Malformed,
            "qubes.xml: {what} is not a decimal number: {:?}",
            truncate(s)
        );
    }
    match s.parse::<u64>() {
        Ok(n) => Ok(n),
        Err(_) => bail!(Malformed, "qubes.xml: {what} out of range: {s:?}"),
    }
}

pub(crate) fn parse_u32(what: &str, s: &str) -> Result<u32> {
    match u32::try_from(parse_u64(what, s)?) {
        Ok(n) => Ok(n),
        Err(_) => bail!(Malformed, "qubes.xml: {what} out of range: {s:?}"),
    }
}

/// Shorten untrusted text quoted in an error message.
pub(crate) fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => s.get(..i).unwrap_or(s),
        None => s,
    }
}

/// The AdminVM is `dom0` and only it, and only it has qid 0 (so a shared qid 0 is
/// refused: dom0 is never ambiguous); names are unique (XML-3). Other qids may repeat.
fn check_unique(vms: &[Vm]) -> Result<()> {
    let mut names = std::collections::HashSet::new();
    for vm in vms {
        if (vm.class == "AdminVM") != (vm.name == "dom0") {
            bail!(
                Malformed,
                "qubes.xml: VM {:?} of class {} (only the AdminVM is dom0)",
                vm.name,
                vm.class
            );
        }
        if (vm.class == "AdminVM" && vm.qid.is_some_and(|q| q != 0))
            || (vm.qid == Some(0) && vm.class != "AdminVM")
        {
            bail!(
                Malformed,
                "qubes.xml: qid 0 belongs to the AdminVM dom0, not {:?}",
                vm.name
            );
        }
        if !names.insert(vm.name.as_str()) {
            bail!(Malformed, "qubes.xml: duplicate VM name {:?}", vm.name);
        }
    }
    Ok(())
}
