//! R2/R3 `QubesVmCollection` (core2), SPEC.md XML-1.

use super::dom::Node;
use super::{
    parse_u32, parse_u64, qid_owners, truncate, validate_vm_name, BackupInfo, Flavor, NetVm,
    QubesXml, Vm,
};
use crate::bail;
use crate::error::Result;
use crate::limits::MAX_VMS;
use crate::vm_config::{Device, VmConfig};

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

    // Upstream reads a missing or `None` default netvm as no netvm.
    let default_netvm = match root.attr("default_netvm").filter(|s| !is_none(s)) {
        Some(q) => Some(resolve("<QubesVmCollection>", "default_netvm", q)?),
        None => None,
    };
    let mut dispvm_templates: Vec<(String, Option<String>)> = Vec::new();
    let mut notes = Vec::new();
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

        let mut config = if class == "AdminVM" {
            VmConfig::default()
        } else {
            config(el, kind, template.is_none(), &name, &mut notes)
        };
        // XML-5: a DispVM netvm other than the default netvm names a DispVM template
        // `disp-NETVM` / `disp-no-netvm`, synthesised below when no VM has that name.
        if class != "AdminVM" {
            let dispvm_netvm = if el
                .attr("uses_default_dispvm_netvm")
                .is_some_and(|v| v != "True")
            {
                match el.attr("dispvm_netvm_qid") {
                    None => None,
                    Some(q) if is_none(q) => None,
                    Some(q) => Some(resolve(&holder, "dispvm_netvm_qid", q)?),
                }
            } else {
                match &netvm {
                    NetVm::Default => default_netvm.clone(),
                    NetVm::None => None,
                    NetVm::Named(n) => Some(n.clone()),
                }
            };
            if dispvm_netvm != default_netvm {
                let tpl = match &dispvm_netvm {
                    Some(n) => format!("disp-{n}"),
                    None => "disp-no-netvm".to_owned(),
                };
                if validate_vm_name(&tpl).is_ok() {
                    config
                        .properties
                        .push(("default_dispvm".to_owned(), Some(tpl.clone())));
                    if !dispvm_templates.iter().any(|(t, _)| *t == tpl) {
                        dispvm_templates.push((tpl, dispvm_netvm));
                    }
                }
            }
        }
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
            config,
        });
    }
    let dispvm_templates = dispvm_templates
        .into_iter()
        .filter(|(t, _)| !vms.iter().any(|v| v.name == *t))
        .map(|(name, netvm)| Vm {
            qid: None,
            name,
            class: "AppVM".to_owned(),
            label: Some("red".to_owned()),
            template: None,
            netvm: netvm.map_or(NetVm::None, NetVm::Named),
            backup: None,
            volumes_saved: None,
            volume_sizes: Vec::new(),
            virt_mode: None,
            provides_network: false,
            config: VmConfig {
                properties: vec![("template_for_dispvms".to_owned(), Some("True".to_owned()))],
                ..VmConfig::default()
            },
        })
        .collect();
    Ok(QubesXml {
        flavor: Flavor::Core2,
        vms,
        dispvm_templates,
        labels: Vec::new(),
        notes,
    })
}

/// XML-5: R3 services that became R4 features of another name (upstream's
/// `service_to_feature`); other services keep their name.
const SERVICE_FEATURES: [(&str, &str); 3] = [
    ("ntpd", "service.ntpd"),
    ("qubes-update-check", "check-updates"),
    ("meminfo-writer", "service.meminfo-writer"),
];

/// XML-5: a core2 VM's settings as upstream's core2 reader translates them: simple
/// attributes that differ from R3's defaults become properties; `kernel`/`kernelopts`
/// when not following the default (`none` → no value); HVMs get `virt_mode=hvm`, an empty
/// `kernel` and `linux-stubdom` off; NetVMs and ProxyVMs `provides_network`; R3 PV
/// templates and standalone VMs the `qrexec` and `gui` features; `internal`; `services` (a
/// Python dict of booleans) become features; `pcidevs` (a Python list) required PCI
/// devices of dom0 (`00:1f.3` → port `00_1f.3`, `no-strict-reset` unless
/// `pci_strictreset`). Booleans are written as upstream's client sends them: properties
/// `True`/`False`, features `1`/`""`.
///
/// A `services` or `pcidevs` literal this reader cannot read only loses those settings,
/// with a note: they matter to a restore, not to what the archive holds.
fn config(el: &Node, kind: &str, no_template: bool, vm: &str, notes: &mut Vec<String>) -> VmConfig {
    let mut c = VmConfig::default();
    for (attr, default) in [
        ("include_in_backups", Some("True")),
        ("qrexec_timeout", Some("60")),
        ("vcpus", Some("2")),
        ("memory", Some("400")),
        ("maxmem", Some("4000")),
        ("default_user", Some("user")),
        ("debug", Some("False")),
        ("mac", None),
        ("autostart", Some("False")),
    ] {
        if let Some(v) = el
            .attr(attr)
            .filter(|v| !v.is_empty() && Some(*v) != default)
        {
            c.properties.push((attr.to_owned(), Some(v.to_owned())));
        }
    }
    let hvm = kind.ends_with("HVm");
    for attr in ["kernel", "kernelopts"] {
        if hvm && attr == "kernel" {
            continue;
        }
        let follows_default = el
            .attr(&format!("uses_default_{attr}"))
            .is_none_or(|v| v.eq_ignore_ascii_case("true"));
        if !follows_default {
            let v = el.attr(attr).filter(|v| !is_none(v)).map(str::to_owned);
            c.properties.push((attr.to_owned(), v));
        }
    }
    // `virt_mode=hvm` and `provides_network` are the model's own fields.
    if hvm {
        // Upstream sets an empty kernel; sent as an empty value, as None is (CFG-1).
        c.properties.push(("kernel".into(), None));
        c.features.push(("linux-stubdom".into(), String::new()));
    }
    if kind == "QubesTemplateVm" || (kind == "QubesAppVm" && no_template) {
        c.features.push(("qrexec".into(), "1".into()));
        c.features.push(("gui".into(), "1".into()));
    }
    if el.attr("internal") == Some("True") {
        c.features.push(("internal".into(), "1".into()));
    }
    if let Some(services) = el.attr("services").filter(|s| !s.is_empty()) {
        let parsed = python_bool_dict(services).unwrap_or_else(|e| {
            notes.push(format!(
                "VM {vm}: services not restored: {} (XML-5)",
                e.message()
            ));
            Vec::new()
        });
        for (service, on) in parsed {
            let feature = SERVICE_FEATURES
                .iter()
                .find(|(s, _)| *s == service)
                .map_or(service, |(_, f)| f);
            c.features.retain(|(k, _)| k != feature);
            c.features
                .push((feature.to_owned(), if on { "1" } else { "" }.to_owned()));
        }
    }
    if let Some(pcidevs) = el.attr("pcidevs").filter(|s| !s.is_empty()) {
        let strict = el.attr("pci_strictreset").is_none_or(|v| v != "False");
        let parsed = python_str_list(pcidevs).unwrap_or_else(|e| {
            notes.push(format!(
                "VM {vm}: pcidevs not restored: {} (XML-5)",
                e.message()
            ));
            Vec::new()
        });
        for dev in parsed {
            c.devices.push(Device {
                bus: "pci".into(),
                backend: "dom0".into(),
                port: dev.replace(':', "_"),
                required: true,
                options: if strict {
                    Vec::new()
                } else {
                    vec![("no-strict-reset".into(), "True".into())]
                },
            });
        }
    }
    c
}

/// Items of a Python literal `{…}` or `[…]`, split at top-level commas; quotes may be
/// `'` or `"`; no nesting or escapes (R3 wrote none).
fn python_items<'a>(what: &str, s: &'a str, open: char, close: char) -> Result<Vec<&'a str>> {
    let inner = s
        .trim()
        .strip_prefix(open)
        .and_then(|r| r.strip_suffix(close));
    let Some(inner) = inner else {
        bail!(
            Malformed,
            "qubes.xml: {what} is not a Python literal: {:?}",
            truncate(s)
        );
    };
    if inner.contains(['\\', '{', '[', '(']) {
        bail!(
            Malformed,
            "qubes.xml: {what} is too complex: {:?}",
            truncate(s)
        );
    }
    Ok(inner
        .split(',')
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .collect())
}

fn python_str<'a>(what: &str, s: &'a str) -> Result<&'a str> {
    let t = s.trim();
    let unq = t
        .strip_prefix('\'')
        .and_then(|r| r.strip_suffix('\''))
        .or_else(|| t.strip_prefix('"').and_then(|r| r.strip_suffix('"')));
    match unq {
        Some(u) if !u.contains(['\'', '"']) => Ok(u),
        _ => bail!(
            Malformed,
            "qubes.xml: {what}: not a string: {:?}",
            truncate(s)
        ),
    }
}

/// R3 `services`: `{'name': True, …}`.
fn python_bool_dict(s: &str) -> Result<Vec<(&str, bool)>> {
    let mut out = Vec::new();
    for item in python_items("services", s, '{', '}')? {
        let Some((k, v)) = item.split_once(':') else {
            bail!(
                Malformed,
                "qubes.xml: services: no `:` in {:?}",
                truncate(item)
            );
        };
        let on = match v.trim() {
            "True" => true,
            "False" => false,
            _ => bail!(
                Malformed,
                "qubes.xml: services: {:?} is not a boolean",
                truncate(v)
            ),
        };
        out.push((python_str("services", k)?, on));
    }
    Ok(out)
}

/// R3 `pcidevs`: `['00:1f.3', …]`.
fn python_str_list(s: &str) -> Result<Vec<&str>> {
    python_items("pcidevs", s, '[', ']')?
        .into_iter()
        .map(|i| python_str("pcidevs", i))
        .collect()
}
