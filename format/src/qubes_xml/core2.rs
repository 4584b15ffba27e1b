//! R2/R3 `QubesVmCollection` (core2), SPEC.md XML-1.

use super::dom::Node;
use super::{
    parse_u32, parse_u64, qid_owners, truncate, validate_vm_name, BackupInfo, Flavor, NetVm,
    QubesXml, Vm,
};
use crate::bail;
use crate::error::Result;
use crate::limits::MAX_VMS;

/// The element names that describe VMs (upstream's `vm_classes`).
const VM_ELEMENTS: [&str; 7] = [
    "QubesAdminVm",
    "QubesTemplateVm",
    "QubesTemplateHVm",
    "QubesAppVm",
    "QubesHVm",
    "QubesNetVm",
    "QubesProxyVm",
];

fn required<'a>(node: &'a Node, attr: &str) -> Result<&'a str> {
    match node.attr(attr) {
        Some(v) => Ok(v),
        None => bail!(
            Malformed,
            "qubes.xml: <{}> without the {attr} attribute",
            node.name
        ),
    }
}

fn is_none(s: &str) -> bool {
    s.eq_ignore_ascii_case("none")
}

pub(super) fn parse(root: &Node) -> Result<QubesXml> {
    // `QubesDisposableVm` and unknown elements are ignored, as upstream does.
    let elements: Vec<&Node> = root
        .children
        .iter()
        .filter(|c| VM_ELEMENTS.contains(&c.name.as_str()))
        .collect();
    if elements.len() > MAX_VMS {
        bail!(LimitExceeded, "qubes.xml: more than {MAX_VMS} VMs (LIM-14)");
    }

    // First pass: qid → names, as upstream resolves references by qid. A qid may be
    // shared by several VMs (a note, XML-3); a reference to a shared qid is Malformed
    // (XML-1): upstream's map keeps one of the names, so the reference is ambiguous.
    let mut owners = Vec::with_capacity(elements.len());
    for el in &elements {
        let qid = parse_u32("qid", required(el, "qid")?)?;
        let name = required(el, "name")?;
        validate_vm_name(name)?;
        owners.push((qid, name));
    }
    let qid_map = qid_owners(owners);
    // `holder` is the VM (or the root element) whose attribute `what` holds `qid`.
    let ambiguous = |holder: &str, what: &str, qid: u32| -> Result<()> {
        match qid_map.get(&qid).map(Vec::as_slice) {
            Some([a, b, rest @ ..]) => bail!(
                Malformed,
                "qubes.xml: {holder}: {what} {qid} is an ambiguous reference: VMs {a:?} and \
                 {b:?}{} share qid {qid} (XML-1)",
                if rest.is_empty() {
                    String::new()
                } else {
                    format!(" and {} more", rest.len())
                }
            ),
            _ => Ok(()),
        }
    };
    let resolve = |holder: &str, what: &str, s: &str| -> Result<String> {
        let qid = parse_u32(what, s)?;
        ambiguous(holder, what, qid)?;
        match qid_map.get(&qid).and_then(|names| names.first()) {
            Some(name) => Ok((*name).to_owned()),
            None => bail!(Malformed, "qubes.xml: {what} {qid} names no VM"),
        }
    };
    // References upstream resolves but this model does not keep: refused when ambiguous,
    // otherwise not checked (as before qids could be shared).
    let unused_reference = |holder: &str, what: &str, s: Option<&str>| -> Result<()> {
        match s.filter(|s| !is_none(s)).map(|s| parse_u32(what, s)) {
            Some(Ok(qid)) => ambiguous(holder, what, qid),
            _ => Ok(()),
        }
    };
    for what in ["default_template", "default_netvm", "updatevm", "clockvm"] {
        unused_reference("<QubesVmCollection>", what, root.attr(what))?;
    }

    let mut vms = Vec::with_capacity(elements.len().saturating_add(1));
    // R2 had no dom0 element; upstream synthesises one. qid 0 is never shared: only
    // the QubesAdminVm dom0 may have it (below), and names are unique.
    if !qid_map.contains_key(&0) {
        vms.push(Vm::dom0());
    }

    for el in elements {
        let kind = el.name.as_str();
        let qid = parse_u32("qid", required(el, "qid")?)?;
        let name = required(el, "name")?.to_owned();
        let holder = format!("VM {name:?}");

        let (class, template) = if kind == "QubesAdminVm" || qid == 0 {
            if kind != "QubesAdminVm" || qid != 0 || name != "dom0" {
                bail!(
                    Malformed,
                    "qubes.xml: <{kind}> qid {qid} name {:?}: dom0 is QubesAdminVm qid 0",
                    truncate(&name)
                );
            }
            ("AdminVM", None)
        } else if kind == "QubesTemplateVm" || kind == "QubesTemplateHVm" {
            ("TemplateVM", None)
        } else {
            let t = required(el, "template_qid")?;
            if is_none(t) {
                ("StandaloneVM", None)
            } else {
                ("AppVM", Some(resolve(&holder, "template_qid", t)?))
            }
        };

        // netvm: default unless uses_default_netvm is present and not "True"; a NetVM
        // that follows the default has none (it is the default).
        let uses_default = el.attr("uses_default_netvm").is_none_or(|v| v == "True");
        let netvm = if uses_default {
            if kind == "QubesNetVm" {
                NetVm::None
            } else {
                NetVm::Default
            }
        } else {
            match el.attr("netvm_qid") {
                None => NetVm::None,
                Some(q) if is_none(q) => NetVm::None,
                Some(q) => NetVm::Named(resolve(&holder, "netvm_qid", q)?),
            }
        };
        // Upstream picks a DispVM template from dispvm_netvm_qid when the VM does not
        // follow the default.
        if el
            .attr("uses_default_dispvm_netvm")
            .is_some_and(|v| v != "True")
        {
            unused_reference(&holder, "dispvm_netvm_qid", el.attr("dispvm_netvm_qid"))?;
        }

        let size = match el.attr("backup_size") {
            Some(s) => parse_u64("backup_size", s)?,
            None => 0,
        };
        // XML-3: `True` includes the VM, `False` or absent does not, anything else is
        // malformed.
        let included = match el.attr("backup_content") {
            Some("True") => true,
            None | Some("False") => false,
            Some(other) => bail!(
                Malformed,
                "qubes.xml: backup_content {:?} is neither True nor False (XML-3)",
                truncate(other)
            ),
        };
        let backup = if included {
            match el.attr("backup_path") {
                Some(p) if !p.is_empty() => Some(BackupInfo {
                    path: p.to_owned(),
                    size,
                }),
                _ => bail!(
                    Malformed,
                    "qubes.xml: VM {name:?} is in the backup but has no backup_path"
                ),
            }
        } else {
            None
        };

        vms.push(Vm {
            qid: Some(qid),
            name,
            class: class.to_owned(),
            label: Some(el.attr("label").unwrap_or("red").to_owned()),
            template,
            netvm,
            backup,
            volumes_saved: None,
            volume_sizes: Vec::new(),
            virt_mode: if class == "AdminVM" {
                None
            } else if kind.ends_with("HVm") {
                Some("hvm".to_owned())
            } else {
                Some("pv".to_owned())
            },
            provides_network: kind == "QubesNetVm" || kind == "QubesProxyVm",
        });
    }
    Ok(QubesXml {
        flavor: Flavor::Core2,
        vms,
        labels: Vec::new(),
        notes: Vec::new(),
    })
}
