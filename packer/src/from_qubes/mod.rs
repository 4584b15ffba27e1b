//! `create --from-qubes`: the [`Plan`] of a live Qubes R4 host, read through the Admin API
//! (SPEC.md FQ-1 … FQ-5) with the volume data taken from the storage pools
//! ([`storage`]). The archive then has the shape qubesd's own backup gives it: per qube
//! its `save_on_stop` volumes in volume order, `firewall.xml`, `notes.txt`, and a
//! qubes.xml with every qube's settings.

pub mod storage;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use qbackup_format::firewall::{self, Rule};
use qbackup_format::limits::MAX_FIREWALL_RULES;
use qbackup_format::qubes_xml::{NetVm, Vm};
use qbackup_format::vm_config::{VmConfig, RESERVED_FEATURES, RESERVED_PROPERTIES};

use crate::plan::{Data, Plan, Source, VmPlan};
use crate::qubesd::read::{ListedVm, Property};
use crate::qubesd::{CallError, Qubesd};
use crate::Failure;
use storage::Storage;

/// Device classes whose assignments are read (`qubes.devices` of a typical dom0).
const BUSES: [&str; 4] = ["pci", "usb", "block", "mic"];

/// What the user asked for.
pub struct Selection<'a> {
    /// Qubes to back up (`dom0` for its home); empty: those with `include_in_backups`.
    pub vms: &'a [String],
    /// Never these (`-x`).
    pub exclude: &'a [String],
    /// dom0's home directory (default: that of the first member of group `qubes`).
    pub dom0_home: Option<&'a Path>,
}

fn qubesd_err(call: &str, e: CallError) -> Failure {
    Failure::io(format!("{call}: {e}"))
}

/// FQ-1: read the host and plan the backup.
pub fn plan(q: &Qubesd, sel: &Selection<'_>) -> Result<Plan, Failure> {
    let listed = q.vms().map_err(|e| qubesd_err("admin.vm.List", e))?;
    let names: HashSet<&str> = listed.iter().map(|v| v.name.as_str()).collect();
    for name in sel.vms.iter().chain(sel.exclude) {
        if !names.contains(name.as_str()) {
            return Err(Failure::Usage(format!(
                "no qube named {name:?} on this host"
            )));
        }
    }
    let mut notes = Vec::new();
    let mut storage = Storage::from_env();
    let mut vms = Vec::new();
    let mut others = Vec::new();
    let mut dom0_home = None;
    for lv in &listed {
        let props = q
            .properties(&lv.name)
            .map_err(|e| qubesd_err(&format!("properties of {}", lv.name), e))?;
        let selected = !sel.exclude.contains(&lv.name)
            && if sel.vms.is_empty() {
                prop(&props, "include_in_backups").is_some_and(|p| p.value == "True")
            } else {
                sel.vms.contains(&lv.name)
            };
        if lv.class == "AdminVM" {
            let mut vm = Vm::dom0();
            vm.label = prop(&props, "label").map(|p| p.value.clone()).or(vm.label);
            others.push(vm);
            if selected {
                match home(sel.dom0_home) {
                    Ok(h) => dom0_home = Some(h),
                    Err(why) if sel.vms.is_empty() => {
                        notes.push(format!("dom0's home not backed up: {why}"))
                    }
                    Err(why) => return Err(Failure::Usage(format!("dom0's home: {why}"))),
                }
            }
            continue;
        }
        let mut vm = describe(lv, &props)?;
        if !selected {
            others.push(vm);
            continue;
        }
        settings(q, lv, &mut vm)?;
        let files = files(q, lv, &mut vm, &mut storage, &mut notes)?;
        vms.push(VmPlan { vm, files });
    }
    if vms.is_empty() && dom0_home.is_none() {
        return Err(Failure::Usage(
            "nothing to back up: no qube selected (include_in_backups, or name them)".into(),
        ));
    }
    Ok(Plan {
        vms,
        others,
        dom0_home,
        notes,
    })
}

fn prop<'p>(props: &'p [(String, Property)], name: &str) -> Option<&'p Property> {
    props.iter().find(|(n, _)| n == name).map(|(_, p)| p)
}

/// FQ-2: a qube's qubes.xml description from its properties: the identity and references
/// in their own fields, every other explicitly set property in its config (qubes.xml
/// stores only those).
fn describe(lv: &ListedVm, props: &[(String, Property)]) -> Result<Vm, Failure> {
    let get = |n: &str| prop(props, n);
    let set = |n: &str| get(n).filter(|p| !p.is_default).map(|p| p.value.clone());
    let qid = get("qid")
        .and_then(|p| p.value.parse::<u32>().ok())
        .ok_or_else(|| Failure::io(format!("VM {}: no numeric qid from qubesd", lv.name)))?;
    let mut config = VmConfig::default();
    for (name, p) in props {
        if p.is_default
            || RESERVED_PROPERTIES.contains(&name.as_str())
            || matches!(name.as_str(), "virt_mode" | "provides_network")
        {
            continue;
        }
        config
            .properties
            .push((name.clone(), (!p.value.is_empty()).then(|| p.value.clone())));
    }
    Ok(Vm {
        qid: Some(qid),
        name: lv.name.clone(),
        class: lv.class.clone(),
        label: get("label").map(|p| p.value.clone()),
        template: get("template")
            .map(|p| p.value.clone())
            .filter(|t| !t.is_empty()),
        netvm: match set("netvm") {
            None => NetVm::Default,
            Some(n) if n.is_empty() => NetVm::None,
            Some(n) => NetVm::Named(n),
        },
        backup: None,
        volumes_saved: None,
        volume_sizes: Vec::new(),
        virt_mode: set("virt_mode"),
        provides_network: set("provides_network").as_deref() == Some("True"),
        config,
    })
}

/// FQ-2: features (less the backup keys, and R4.3's `preload-dispvm*` but
/// `preload-dispvm-max`, as qubesd's backup drops them), tags and device assignments.
fn settings(q: &Qubesd, lv: &ListedVm, vm: &mut Vm) -> Result<(), Failure> {
    let ctx = |what: &str| format!("{what} of {}", lv.name);
    for (name, value) in q
        .features(&lv.name)
        .map_err(|e| qubesd_err(&ctx("features"), e))?
    {
        let preload = name.starts_with("preload-dispvm") && name != "preload-dispvm-max";
        if RESERVED_FEATURES.contains(&name.as_str()) || preload {
            continue;
        }
        vm.config.features.push((name, value));
    }
    vm.config.tags = q.tags(&lv.name).map_err(|e| qubesd_err(&ctx("tags"), e))?;
    for bus in BUSES {
        let devices = q
            .assigned_devices(&lv.name, bus)
            .map_err(|e| qubesd_err(&ctx(&format!("{bus} devices")), e))?;
        vm.config.devices.extend(devices);
    }
    Ok(())
}

/// FQ-4: the archive files of a selected qube: each `save_on_stop` volume in qubesd's
/// order, `firewall.xml` made from qubesd's rules (unless they are the default single
/// accept rule, which is what a qube without the file has), and `notes.txt` (R4.3).
fn files(
    q: &Qubesd,
    lv: &ListedVm,
    vm: &mut Vm,
    storage: &mut Storage,
    notes: &mut Vec<String>,
) -> Result<Vec<Source>, Failure> {
    let ctx = |what: &str| format!("{what} of {}", lv.name);
    let mut files = Vec::new();
    let mut saved = Vec::new();
    for volume in q
        .list(&lv.name, "admin.vm.volume.List")
        .map_err(|e| qubesd_err(&ctx("volumes"), e))?
    {
        let info = q
            .volume_info(&lv.name, &volume)
            .map_err(|e| qubesd_err(&ctx(&format!("volume {volume}")), e))?;
        if info.get("save_on_stop").map(String::as_str) != Some("True") {
            continue;
        }
        crate::plan::check_volume_name(&lv.name, &volume)?;
        let export = storage.export(q, lv, &volume, &info)?;
        crate::plan::check_source(&lv.name, &export.path, true)?;
        notes.extend(export.note);
        if let Some(size) = info.get("size").and_then(|s| s.parse::<u64>().ok()) {
            vm.volume_sizes.push((volume.clone(), size));
        }
        files.push(Source {
            name: format!("{volume}.img"),
            data: Data::File(export.path),
        });
        saved.push(volume);
    }
    vm.volumes_saved = Some(saved);
    let lines = q
        .firewall(&lv.name)
        .map_err(|e| qubesd_err(&ctx("firewall"), e))?;
    if lines != ["action=accept"] {
        if lines.len() > MAX_FIREWALL_RULES {
            return Err(Failure::Usage(format!(
                "VM {}: more than LIM-54 ({MAX_FIREWALL_RULES}) firewall rules",
                lv.name
            )));
        }
        let rules = lines
            .iter()
            .map(|l| Rule::parse_qubesd_line(l))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Failure::Usage(format!("VM {}: firewall: {e}", lv.name)))?;
        files.push(Source {
            name: "firewall.xml".into(),
            data: Data::Bytes(firewall::write_xml(&rules)),
        });
    }
    match q
        .notes(&lv.name)
        .map_err(|e| qubesd_err(&ctx("notes"), e))?
    {
        Some(text) if !text.is_empty() => files.push(Source {
            name: "notes.txt".into(),
            data: Data::Bytes(text.into_bytes()),
        }),
        _ => {}
    }
    if files.is_empty() {
        notes.push(format!(
            "VM {}: no volume to save; stored as `empty`",
            lv.name
        ));
        files.push(Source {
            name: "empty".into(),
            data: Data::Empty,
        });
    }
    Ok(files)
}

/// FQ-5: dom0's home: the given directory, else the home of the first member of group
/// `qubes` (`/etc/group`, `/etc/passwd`), as qubesd's backup picks it. Its directory name
/// is the user name in the archive.
fn home(given: Option<&Path>) -> Result<(PathBuf, String), String> {
    let dir = match given {
        Some(d) => d.to_path_buf(),
        None => {
            let group =
                std::fs::read_to_string("/etc/group").map_err(|e| format!("/etc/group: {e}"))?;
            let user = group
                .lines()
                .filter_map(|l| l.strip_prefix("qubes:"))
                .find_map(|rest| rest.splitn(3, ':').nth(2))
                .and_then(|members| members.split(',').next())
                .filter(|u| !u.is_empty())
                .ok_or("group qubes has no member (give --dom0-home)")?
                .to_owned();
            let passwd =
                std::fs::read_to_string("/etc/passwd").map_err(|e| format!("/etc/passwd: {e}"))?;
            passwd
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 7 && f[0] == user)
                .map(|f| PathBuf::from(f[5]))
                .ok_or_else(|| format!("user {user} of group qubes is not in /etc/passwd"))?
        }
    };
    let user = crate::plan::home_user(&dir).map_err(|e| e.to_string())?;
    Ok((dir, user))
}
