//! What to back up: a JSON plan (`--plan`) or a dom0-like directory (`--qubes-dir`),
//! validated into a [`Plan`]. The plan format is documented in `packer/PLAN.md`.

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use qbackup_format::qubes_xml::{self, Flavor, NetVm, Vm};
use serde::Deserialize;

use crate::Failure;

/// Small per-VM files the plan may name (stored as `vm<qid>/<name>`; the upstream
/// restore reads exactly these).
pub const SMALL_FILES: [&str; 3] = ["firewall.xml", "notes.txt", "whitelisted-appmenus.list"];

/// VM classes a plan may back up.
const CLASSES: [&str; 4] = ["AppVM", "TemplateVM", "StandaloneVM", "DispVM"];

/// One file of a VM, as it will appear in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// File name inside the VM's directory (`private.img`, `firewall.xml`, `empty`).
    pub name: String,
    pub data: Data,
}

/// Where a [`Source`]'s bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// The zero-length `empty` placeholder (VER-2).
    Empty,
    /// A regular file or block device, read (holes skipped) when the archive is written.
    File(PathBuf),
    /// Made in memory (`--from-qubes`: `firewall.xml` from qubesd's rules, `notes.txt`).
    Bytes(Vec<u8>),
}

impl Source {
    /// The file it reads, if any.
    pub fn path(&self) -> Option<&Path> {
        match &self.data {
            Data::File(p) => Some(p),
            Data::Empty | Data::Bytes(_) => None,
        }
    }
}

/// One VM to back up.
#[derive(Debug, Clone)]
pub struct VmPlan {
    /// qubes.xml model (qid, name, class, label, template, netvm, volumes_saved).
    pub vm: Vm,
    pub files: Vec<Source>,
}

/// A validated plan.
#[derive(Debug, Clone)]
pub struct Plan {
    /// VMs to back up, in archive order.
    pub vms: Vec<VmPlan>,
    /// VMs written to qubes.xml without data (from `--qubes-dir`), dom0 included.
    pub others: Vec<Vm>,
    /// dom0's home directory and its user name.
    pub dom0_home: Option<(PathBuf, String)>,
    /// What the user should know about how the plan was read (e.g. a running VM's
    /// volumes backed up as of its last start, FQ-3).
    pub notes: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonPlan {
    #[serde(default)]
    vms: Vec<JsonVm>,
    #[serde(default)]
    dom0_home: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonVm {
    name: String,
    class: String,
    label: String,
    #[serde(default)]
    qid: Option<u32>,
    #[serde(default)]
    template: Option<String>,
    /// Absent: the default netvm; `null`: none; a string: that VM.
    #[serde(default, deserialize_with = "present")]
    netvm: Option<Option<String>>,
    #[serde(default)]
    volumes: Vec<JsonFile>,
    #[serde(default)]
    files: Vec<JsonFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonFile {
    name: String,
    path: PathBuf,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

fn usage(msg: impl Into<String>) -> Failure {
    Failure::Usage(msg.into())
}

/// Volume names become member names `<volume>.img`: `[A-Za-z0-9_-]{1,64}`.
pub(crate) fn check_volume_name(vm: &str, name: &str) -> Result<(), Failure> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(usage(format!(
            "VM {vm}: invalid volume name {name:?} (1-64 of A-Z a-z 0-9 _ -)"
        )))
    }
}

/// A volume must be a regular file or a block device; a small file a regular file.
pub(crate) fn check_source(vm: &str, path: &Path, allow_device: bool) -> Result<(), Failure> {
    let md = fs::metadata(path)
        .map_err(|e| usage(format!("VM {vm}: cannot use {}: {e}", path.display())))?;
    let ft = md.file_type();
    if ft.is_file() || (allow_device && ft.is_block_device()) {
        Ok(())
    } else {
        Err(usage(format!(
            "VM {vm}: {} is not a regular file{}",
            path.display(),
            if allow_device { " or block device" } else { "" }
        )))
    }
}

pub(crate) fn home_user(home: &Path) -> Result<String, Failure> {
    let md = fs::metadata(home).map_err(|e| usage(format!("dom0 home {}: {e}", home.display())))?;
    if !md.is_dir() {
        return Err(usage(format!(
            "dom0 home {} is not a directory",
            home.display()
        )));
    }
    let canon =
        fs::canonicalize(home).map_err(|e| usage(format!("dom0 home {}: {e}", home.display())))?;
    let user = canon
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| {
            !n.is_empty()
                && n.len() <= 64
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
                && !n.starts_with('.')
        })
        .ok_or_else(|| {
            usage(format!(
                "dom0 home {}: its name must be a user name (A-Z a-z 0-9 _ . -)",
                home.display()
            ))
        })?;
    Ok(user.to_owned())
}

/// Read and validate a JSON plan.
pub fn from_json(text: &[u8]) -> Result<Plan, Failure> {
    let jp: JsonPlan = serde_json::from_slice(text).map_err(|e| usage(format!("plan: {e}")))?;
    let mut names = HashSet::new();
    let mut qids: HashSet<u32> = jp.vms.iter().filter_map(|v| v.qid).collect();
    if qids.len() != jp.vms.iter().filter(|v| v.qid.is_some()).count() {
        return Err(usage("plan: duplicate qid"));
    }
    if qids.contains(&0) {
        return Err(usage("plan: qid 0 is dom0's"));
    }
    let mut next_qid = 1u32;
    let mut vms = Vec::new();
    for v in jp.vms {
        qubes_xml::validate_vm_name(&v.name).map_err(|_| {
            usage(format!(
                "plan: invalid VM name {:?} (a letter, then up to 30 of A-Z a-z 0-9 _ . -)",
                v.name
            ))
        })?;
        if v.name == "dom0" {
            return Err(usage(
                "plan: dom0 is backed up with \"dom0_home\", not as a VM",
            ));
        }
        if !names.insert(v.name.clone()) {
            return Err(usage(format!("plan: duplicate VM name {:?}", v.name)));
        }
        if !CLASSES.contains(&v.class.as_str()) {
            return Err(usage(format!(
                "VM {}: class {:?} is not one of {}",
                v.name,
                v.class,
                CLASSES.join(", ")
            )));
        }
        if v.label.is_empty()
            || !v
                .label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            || v.label.starts_with("label-")
        {
            return Err(usage(format!(
                "VM {}: invalid label {:?} (a colour name such as red, blue)",
                v.name, v.label
            )));
        }
        for other in [&v.template, &v.netvm.clone().flatten()]
            .into_iter()
            .flatten()
        {
            qubes_xml::validate_vm_name(other)
                .map_err(|_| usage(format!("VM {}: invalid VM name {other:?}", v.name)))?;
        }
        let qid = match v.qid {
            Some(q) => q,
            None => {
                while qids.contains(&next_qid) {
                    next_qid = next_qid
                        .checked_add(1)
                        .ok_or_else(|| usage("plan: out of qids"))?;
                }
                qids.insert(next_qid);
                next_qid
            }
        };
        let mut files = Vec::new();
        let mut seen = HashSet::new();
        let mut volumes = Vec::new();
        for f in &v.volumes {
            check_volume_name(&v.name, &f.name)?;
            if !seen.insert(format!("{}.img", f.name)) {
                return Err(usage(format!(
                    "VM {}: duplicate volume {:?}",
                    v.name, f.name
                )));
            }
            check_source(&v.name, &f.path, true)?;
            volumes.push(f.name.clone());
            files.push(Source {
                name: format!("{}.img", f.name),
                data: Data::File(f.path.clone()),
            });
        }
        for f in &v.files {
            if !SMALL_FILES.contains(&f.name.as_str()) {
                return Err(usage(format!(
                    "VM {}: file {:?} is not one of {}",
                    v.name,
                    f.name,
                    SMALL_FILES.join(", ")
                )));
            }
            if !seen.insert(f.name.clone()) {
                return Err(usage(format!("VM {}: duplicate file {:?}", v.name, f.name)));
            }
            check_source(&v.name, &f.path, false)?;
            files.push(Source {
                name: f.name.clone(),
                data: Data::File(f.path.clone()),
            });
        }
        vms.push(finish_vm(
            Vm {
                qid: Some(qid),
                name: v.name,
                class: v.class,
                label: Some(v.label),
                template: v.template,
                netvm: match v.netvm {
                    None => NetVm::Default,
                    Some(None) => NetVm::None,
                    Some(Some(n)) => NetVm::Named(n),
                },
                backup: None,
                volumes_saved: Some(volumes),
                volume_sizes: Vec::new(),
                virt_mode: None,
                provides_network: false,
                config: Default::default(),
            },
            files,
        ));
    }
    let dom0_home = match jp.dom0_home {
        Some(h) => Some((h.clone(), home_user(&h)?)),
        None => None,
    };
    if vms.is_empty() && dom0_home.is_none() {
        return Err(usage("plan: nothing to back up (no VMs and no dom0_home)"));
    }
    Ok(Plan {
        vms,
        others: vec![dom0_vm()],
        dom0_home,
        notes: Vec::new(),
    })
}

/// VER-2: a VM without files gets the zero-length `empty`, as upstream writes.
fn finish_vm(vm: Vm, mut files: Vec<Source>) -> VmPlan {
    if files.is_empty() {
        files.push(Source {
            name: "empty".into(),
            data: Data::Empty,
        });
    }
    VmPlan { vm, files }
}

fn dom0_vm() -> Vm {
    Vm::dom0()
}

/// `--qubes-dir DIR [VM…]`: DIR is laid out like dom0's `/var/lib/qubes` with an R4
/// `qubes.xml`; `selected` names the VMs (default: every VM with files under DIR).
pub fn from_qubes_dir(
    dir: &Path,
    selected: &[String],
    dom0_home: Option<&Path>,
) -> Result<Plan, Failure> {
    let xml_path = dir.join("qubes.xml");
    let text = fs::read(&xml_path).map_err(|e| usage(format!("{}: {e}", xml_path.display())))?;
    let xml = qubes_xml::parse(&text).map_err(|e| usage(format!("{}: {e}", xml_path.display())))?;
    if xml.flavor != Flavor::Core3 {
        return Err(usage(format!(
            "{}: not an R4 qubes.xml",
            xml_path.display()
        )));
    }
    for name in selected {
        if name == "dom0" {
            return Err(usage("use --dom0-home to back up dom0's home"));
        }
        if xml.vm(name).is_none() {
            return Err(usage(format!(
                "VM {name:?} is not in {}",
                xml_path.display()
            )));
        }
    }
    let mut vms = Vec::new();
    let mut others = Vec::new();
    for vm in &xml.vms {
        let mut vm = vm.clone();
        vm.backup = None;
        if vm.qid.is_none() {
            return Err(usage(format!("VM {}: no qid in qubes.xml", vm.name)));
        }
        if vm.class == "AdminVM" {
            others.push(vm);
            continue;
        }
        let sub = if vm.class == "TemplateVM" {
            "vm-templates"
        } else {
            "appvms"
        };
        let vm_dir = dir.join(sub).join(&vm.name);
        let volumes = vm
            .volumes_saved
            .clone()
            .unwrap_or_else(|| match vm.class.as_str() {
                "TemplateVM" | "StandaloneVM" => vec!["private".into(), "root".into()],
                "AppVM" => vec!["private".into()],
                _ => Vec::new(),
            });
        let mut files = Vec::new();
        let mut missing = Vec::new();
        for v in &volumes {
            check_volume_name(&vm.name, v)?;
            let p = vm_dir.join(format!("{v}.img"));
            if p.exists() {
                files.push(Source {
                    name: format!("{v}.img"),
                    data: Data::File(p),
                });
            } else {
                missing.push(p);
            }
        }
        for small in SMALL_FILES {
            let p = vm_dir.join(small);
            if p.is_file() {
                files.push(Source {
                    name: small.into(),
                    data: Data::File(p),
                });
            }
        }
        let wanted = if selected.is_empty() {
            !files.is_empty()
        } else {
            selected.contains(&vm.name)
        };
        if !wanted {
            others.push(vm);
            continue;
        }
        if let Some(m) = missing.first() {
            return Err(usage(format!(
                "VM {}: volume image {} is missing",
                vm.name,
                m.display()
            )));
        }
        for f in &files {
            if let Some(p) = f.path() {
                check_source(&vm.name, p, f.name.ends_with(".img"))?;
            }
        }
        vm.volumes_saved = Some(volumes);
        vms.push(finish_vm(vm, files));
    }
    if !others.iter().any(|v| v.class == "AdminVM") {
        others.insert(0, dom0_vm());
    }
    let dom0_home = match dom0_home {
        Some(h) => Some((h.to_path_buf(), home_user(h)?)),
        None => None,
    };
    if vms.is_empty() && dom0_home.is_none() {
        return Err(usage(format!("nothing to back up under {}", dir.display())));
    }
    Ok(Plan {
        vms,
        others,
        dom0_home,
        notes: Vec::new(),
    })
}
