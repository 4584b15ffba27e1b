//! R4 `<qubes>` (core3), SPEC.md XML-2 and XML-3.

use std::collections::HashMap;

use super::dom::Node;
use super::{
    parse_u32, parse_u64, truncate, validate_class, validate_vm_name, validate_volume_name,
    BackupInfo, Flavor, NetVm, QubesXml, Vm,
};
use crate::bail;
use crate::error::Result;
use crate::limits::MAX_VMS;
use crate::vm_config::{Device, VmConfig, RESERVED_FEATURES, RESERVED_PROPERTIES};

/// `name` attribute → text of the `<tag name=…>` children of `parent` (text `None` for
/// an empty element). Duplicate names are Malformed.
fn named_values<'a>(
    parent: Option<&'a Node>,
    tag: &'a str,
) -> Result<HashMap<&'a str, Option<&'a str>>> {
    let mut map = HashMap::new();
    let Some(parent) = parent else {
        return Ok(map);
    };
    for node in parent.children_named(tag) {
        let Some(name) = node.attr("name") else {
            bail!(Malformed, "qubes.xml: <{tag}> without a name attribute");
        };
        if map.insert(name, node.text.as_deref()).is_some() {
            bail!(
                Malformed,
                "qubes.xml: duplicate <{tag} name={:?}>",
                truncate(name)
            );
        }
    }
    Ok(map)
}

/// XML-3, DEV-9: truthiness of core3 features and `save_on_stop`: `1`, `true`, `yes` are
/// true; absent, empty, `0`, `false`, `no` false (any case); anything else is Malformed.
fn truthy(what: &str, text: Option<&str>) -> Result<bool> {
    let Some(text) = text else {
        return Ok(false);
    };
    match text.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" => Ok(true),
        "" | "0" | "false" | "no" => Ok(false),
        _ => bail!(
            Malformed,
            "qubes.xml: {what} {:?} is neither true nor false (XML-3)",
            truncate(text)
        ),
    }
}

/// XML-2: the core3 domain classes.
const CORE3_CLASSES: [&str; 5] = ["AppVM", "TemplateVM", "StandaloneVM", "DispVM", "AdminVM"];

pub(super) fn parse(root: &Node) -> Result<QubesXml> {
    let Some(labels_node) = root.single_child("labels")? else {
        bail!(Malformed, "qubes.xml: no <labels>");
    };
    if root.single_child("properties")?.is_none() {
        bail!(Malformed, "qubes.xml: no global <properties>");
    }
    let mut labels: Vec<(String, String)> = Vec::new();
    let mut by_id: HashMap<&str, &str> = HashMap::new();
    let mut by_name: HashMap<&str, &str> = HashMap::new();
    for node in labels_node.children_named("label") {
        let Some(id) = node.attr("id") else {
            bail!(Malformed, "qubes.xml: <label> without an id");
        };
        let Some(name) = node.text.as_deref() else {
            bail!(
                Malformed,
                "qubes.xml: <label id={:?}> has no name",
                truncate(id)
            );
        };
        if by_id.insert(id, name).is_some() {
            bail!(
                Malformed,
                "qubes.xml: duplicate label id {:?}",
                truncate(id)
            );
        }
        by_name.insert(name, name);
        labels.push((id.to_owned(), name.to_owned()));
    }
    // A label property is an id, or (as upstream also accepts) a label name.
    let resolve_label = |s: &str| -> Result<String> {
        match by_id.get(s).or_else(|| by_name.get(s)) {
            Some(name) => Ok((*name).to_owned()),
            None => bail!(Malformed, "qubes.xml: unknown label {:?}", truncate(s)),
        }
    };

    let mut vms = Vec::new();
    for domains in root.children_named("domains") {
        for dom in domains.children_named("domain") {
            if vms.len() >= MAX_VMS {
                bail!(LimitExceeded, "qubes.xml: more than {MAX_VMS} VMs (LIM-14)");
            }
            vms.push(domain(dom, &resolve_label)?);
        }
    }
    Ok(QubesXml {
        flavor: Flavor::Core3,
        vms,
        dispvm_templates: Vec::new(),
        labels,
        notes: Vec::new(),
    })
}

fn domain(dom: &Node, resolve_label: &dyn Fn(&str) -> Result<String>) -> Result<Vm> {
    let Some(class) = dom.attr("class") else {
        bail!(Malformed, "qubes.xml: <domain> without a class");
    };
    validate_class(class)?;
    if !CORE3_CLASSES.contains(&class) {
        bail!(
            Malformed,
            "qubes.xml: unknown domain class {:?} (XML-2)",
            truncate(class)
        );
    }
    let props = named_values(dom.single_child("properties")?, "property")?;
    let features = named_values(dom.single_child("features")?, "feature")?;

    let name = if class == "AdminVM" {
        "dom0".to_owned()
    } else {
        match props.get("name").copied().flatten() {
            Some(n) => n.to_owned(),
            None => bail!(Malformed, "qubes.xml: {class} domain without a name"),
        }
    };
    validate_vm_name(&name)?;

    let qid = match props.get("qid").copied().flatten() {
        Some(q) => Some(parse_u32("qid", q)?),
        None => match dom.attr("id").and_then(|id| id.strip_prefix("domain-")) {
            Some(q) => Some(parse_u32("domain id", q)?),
            None => None,
        },
    };

    let label = match props.get("label") {
        Some(Some(l)) => resolve_label(l)?,
        _ => bail!(Malformed, "qubes.xml: VM {name:?} has no label"),
    };

    let template = match props.get("template").copied().flatten() {
        Some(t) => {
            validate_vm_name(t)?;
            Some(t.to_owned())
        }
        None => None,
    };
    let netvm = match props.get("netvm") {
        None => NetVm::Default,
        Some(None) => NetVm::None,
        Some(Some(n)) => {
            validate_vm_name(n)?;
            NetVm::Named((*n).to_owned())
        }
    };

    let size = match features.get("backup-size").copied().flatten() {
        Some(s) => parse_u64("backup-size", s)?,
        None => 0,
    };
    // Upstream includes a VM when backup-content is truthy and backup-path exists.
    let backup = if truthy(
        "backup-content",
        features.get("backup-content").copied().flatten(),
    )? {
        match features.get("backup-path") {
            None => None,
            Some(Some(p)) => Some(BackupInfo {
                path: (*p).to_owned(),
                size,
            }),
            Some(None) => bail!(
                Malformed,
                "qubes.xml: VM {name:?} is in the backup but its backup-path is empty"
            ),
        }
    } else {
        None
    };

    let mut volume_sizes = Vec::new();
    let volumes_saved = match dom.single_child("volume-config")? {
        None => None,
        Some(vc) => {
            let mut seen = std::collections::HashSet::new();
            let mut saved = Vec::new();
            for v in vc.children_named("volume") {
                let Some(vname) = v.attr("name") else {
                    bail!(Malformed, "qubes.xml: <volume> without a name in {name:?}");
                };
                validate_volume_name(vname)?;
                if !seen.insert(vname) {
                    bail!(
                        Malformed,
                        "qubes.xml: duplicate volume {vname:?} in {name:?}"
                    );
                }
                if truthy("save_on_stop", v.attr("save_on_stop"))? {
                    saved.push(vname.to_owned());
                    // VER-4: a stated decimal size bounds the volume's image; absent,
                    // empty or not a number: no bound but LIM-12 (odd, not dangerous).
                    if let Some(size) = v.attr("size").and_then(|t| parse_u64("size", t).ok()) {
                        volume_sizes.push((vname.to_owned(), size));
                    }
                }
            }
            Some(saved)
        }
    };

    let config = config(dom)?;
    Ok(Vm {
        qid,
        name,
        class: class.to_owned(),
        label: Some(label),
        template,
        netvm,
        backup,
        volumes_saved,
        volume_sizes,
        virt_mode: props.get("virt_mode").copied().flatten().map(str::to_owned),
        provides_network: matches!(
            props.get("provides_network").copied().flatten(),
            Some("True" | "true" | "1")
        ),
        config,
    })
}

/// XML-5: a domain's properties (but those the model keeps apart: `name`, `label`,
/// `template`, `netvm`, `qid`, `uuid`), features (but the backup keys), tags and
/// devices, in document order. An empty feature is `""` (false), as upstream reads it.
fn config(dom: &Node) -> Result<VmConfig> {
    let mut c = VmConfig::default();
    for p in dom
        .children_named("properties")
        .flat_map(|n| n.children_named("property"))
    {
        let name = p.attr("name").unwrap_or("");
        // `virt_mode` and `provides_network` are the model's own fields.
        if !RESERVED_PROPERTIES.contains(&name) && !matches!(name, "virt_mode" | "provides_network")
        {
            c.properties.push((name.to_owned(), p.text.clone()));
        }
    }
    for f in dom
        .children_named("features")
        .flat_map(|n| n.children_named("feature"))
    {
        let name = f.attr("name").unwrap_or("");
        if !RESERVED_FEATURES.contains(&name) {
            c.features
                .push((name.to_owned(), f.text.clone().unwrap_or_default()));
        }
    }
    for t in dom
        .children_named("tags")
        .flat_map(|n| n.children_named("tag"))
    {
        c.tags.push(t.attr("name").unwrap_or("").to_owned());
    }
    for bus in dom.children_named("devices") {
        let Some(class) = bus.attr("class") else {
            bail!(Malformed, "qubes.xml: <devices> without a class");
        };
        for d in bus.children_named("device") {
            c.devices.push(Device {
                bus: class.to_owned(),
                backend: d.attr("backend-domain").unwrap_or("").to_owned(),
                port: d.attr("id").unwrap_or("").to_owned(),
                // R4.2+ writes `mode=`; older `required=` (default yes, as upstream reads it).
                required: match d.attr("mode") {
                    Some(mode) => mode == "required",
                    None => d.attr("required").is_none_or(|r| {
                        matches!(r.to_ascii_lowercase().as_str(), "yes" | "true" | "1")
                    }),
                },
                options: d
                    .children_named("option")
                    .map(|o| {
                        (
                            o.attr("name").unwrap_or("").to_owned(),
                            o.text.clone().unwrap_or_default(),
                        )
                    })
                    .collect(),
            });
        }
    }
    Ok(c)
}
