//! What a restore into Qubes will do, decided before any call that changes the host
//! (SPEC.md QRS-2 … QRS-4): which VMs are created under which names, from which
//! templates, on which networks, in which order — or skipped, and why. Pure: the host is
//! given as data.

use std::collections::{BTreeMap, BTreeSet};

use qbackup_format::limits::MAX_VM_NAME_LEN;
use qbackup_format::protocol::{Layout, Manifest, VmConfig};
use qbackup_format::qubes_xml::{validate_vm_name, NetVm};

/// The choices `qvm-backup-restore` users know, plus qbackup's own (QRS-2).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Positional VM names: only these (empty: all; `dom0` is dom0's home).
    pub only: Vec<String>,
    pub exclude: Vec<String>,
    pub skip_broken: bool,
    pub ignore_missing: bool,
    pub skip_conflicting: bool,
    pub rename_conflicting: bool,
    pub skip_dom0_home: bool,
}

/// What the host has, as far as planning needs it.
#[derive(Debug, Clone, Default)]
pub struct Host {
    /// VM name → class.
    pub vms: BTreeMap<String, String>,
    /// Host VMs whose `provides_network` is true.
    pub netvms: BTreeSet<String>,
    /// Host VMs whose `template_for_dispvms` is true.
    pub dispvm_templates: BTreeSet<String>,
    /// The host's `default_template` and `default_dispvm` (for `--ignore-missing`).
    pub default_template: Option<String>,
    pub default_dispvm: Option<String>,
}

/// A VM reference property to set once every VM exists (QRS-4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reference {
    /// Leave the host's default.
    Default,
    /// Explicitly none (an empty value).
    None,
    Named(String),
}

/// What happens to one manifest VM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Created as `name` (the backup's name, or a new one with `--rename-conflicting`).
    Create,
    /// Not restored; the reason is the user's choice or a consequence of it.
    Skip(String),
    /// Cannot be restored as asked (a missing template, a name taken, a loop): the restore
    /// stops before acting unless `--skip-broken`.
    Broken(String),
}

#[derive(Debug, Clone)]
pub struct VmPlan {
    /// Index in the manifest.
    pub index: usize,
    pub backup_name: String,
    /// The name on the host (differs from `backup_name` when renamed).
    pub name: String,
    pub class: String,
    pub label: String,
    /// The template to create it from (`None`: the class has none, or the host default).
    pub template: Option<String>,
    pub netvm: Reference,
    pub default_dispvm: Reference,
    pub action: Action,
    pub config: VmConfig,
}

impl VmPlan {
    /// `template_for_dispvms` as the backup says (set right after creation, QRS-3).
    pub fn template_for_dispvms(&self) -> Option<&str> {
        prop(&self.config, "template_for_dispvms").flatten()
    }
}

/// The whole plan: VMs in manifest order, the creation order, and dom0's home.
#[derive(Debug, Clone)]
pub struct Plan {
    pub vms: Vec<VmPlan>,
    /// Indices into `vms`, templates before the VMs based on them (QRS-3).
    pub order: Vec<usize>,
    /// Manifest index of dom0's home, when it is restored.
    pub dom0: Option<usize>,
    /// Why dom0's home is not restored, when it is in the stream but skipped.
    pub dom0_skipped: Option<String>,
}

impl Plan {
    /// The VMs that stop the restore before it acts (without `--skip-broken`).
    pub fn broken(&self) -> Vec<&VmPlan> {
        self.vms
            .iter()
            .filter(|v| matches!(v.action, Action::Broken(_)))
            .collect()
    }
}

fn prop<'a>(c: &'a VmConfig, name: &str) -> Option<Option<&'a str>> {
    c.properties
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_deref())
}

/// Qubes' reading of a boolean property text.
fn truthy(v: Option<Option<&str>>) -> bool {
    matches!(
        v.flatten().map(str::to_ascii_lowercase).as_deref(),
        Some("true" | "1" | "yes" | "on")
    )
}

/// QRS-2: a free name for a VM whose name is taken: the name cut so that `-N` fits the
/// 31-byte limit, then `-1` … `-99`, never a name on the host or chosen for another VM.
pub fn new_name(orig: &str, taken: &dyn Fn(&str) -> bool) -> Option<String> {
    (1..=99u32).find_map(|n| {
        let suffix = format!("-{n}");
        let keep = MAX_VM_NAME_LEN.saturating_sub(suffix.len()).min(orig.len());
        let mut cut = keep;
        while !orig.is_char_boundary(cut) {
            cut -= 1;
        }
        let candidate = format!("{}{suffix}", &orig[..cut]);
        (validate_vm_name(&candidate).is_ok() && !taken(&candidate)).then_some(candidate)
    })
}

/// QRS-2 … QRS-4: plan the restore of `m` (with the per-VM `configs`) onto `host`.
pub fn plan(m: &Manifest, configs: &[VmConfig], host: &Host, o: &Options) -> Plan {
    let wanted = |name: &str| {
        (o.only.is_empty() || o.only.iter().any(|n| n == name))
            && !o.exclude.iter().any(|n| n == name)
    };
    let mut vms = Vec::new();
    let mut dom0 = None;
    let mut dom0_skipped = None;
    let mut chosen: BTreeSet<String> = BTreeSet::new();
    for (index, (vm, config)) in m.vms.iter().zip(configs).enumerate() {
        if vm.layout == Layout::Dom0Home {
            if !wanted("dom0") {
                dom0_skipped = Some("excluded".to_owned());
            } else if o.skip_dom0_home {
                dom0_skipped = Some("--skip-dom0-home".to_owned());
            } else {
                dom0 = Some(index);
            }
            continue;
        }
        let mut p = VmPlan {
            index,
            backup_name: vm.name.clone(),
            name: vm.name.clone(),
            class: vm.class.clone(),
            label: vm.label.clone().unwrap_or_else(|| "red".to_owned()),
            template: vm.template.clone(),
            netvm: match &vm.netvm {
                NetVm::Default => Reference::Default,
                NetVm::None => Reference::None,
                NetVm::Named(n) => Reference::Named(n.clone()),
            },
            default_dispvm: match prop(config, "default_dispvm") {
                None => Reference::Default,
                Some(None | Some("")) => Reference::None,
                Some(Some(n)) => Reference::Named(n.to_owned()),
            },
            action: Action::Create,
            config: config.clone(),
        };
        if !wanted(&vm.name) {
            p.action = Action::Skip("excluded".to_owned());
        } else if !matches!(
            vm.class.as_str(),
            "AppVM" | "TemplateVM" | "StandaloneVM" | "DispVM"
        ) {
            p.action = Action::Broken(format!("class {} cannot be created", vm.class));
        } else if host.vms.contains_key(&vm.name) {
            if o.skip_conflicting {
                p.action = Action::Skip("a VM of that name exists on the host".to_owned());
            } else if o.rename_conflicting {
                let taken = |n: &str| {
                    host.vms.contains_key(n)
                        || chosen.contains(n)
                        || m.vms.iter().any(|v| v.name == n)
                };
                match new_name(&vm.name, &taken) {
                    Some(n) => p.name = n,
                    None => p.action = Action::Broken("no free name to rename it to".to_owned()),
                }
            } else {
                p.action = Action::Broken(
                    "a VM of that name exists on the host (--rename-conflicting or \
                     --skip-conflicting)"
                        .to_owned(),
                );
            }
        }
        if p.action == Action::Create {
            chosen.insert(p.name.clone());
        }
        vms.push(p);
    }
    resolve_references(&mut vms, host, o);
    let order = creation_order(&mut vms);
    Plan {
        vms,
        order,
        dom0,
        dom0_skipped,
    }
}

/// QRS-3: templates, netvms and DispVM templates, from the restore or the host, until
/// nothing changes (a VM whose template is not restored is not restorable either).
fn resolve_references(vms: &mut [VmPlan], host: &Host, o: &Options) {
    loop {
        let restored: BTreeMap<String, (String, String, bool, bool)> = vms
            .iter()
            .filter(|v| v.action == Action::Create)
            .map(|v| {
                (
                    v.backup_name.clone(),
                    (
                        v.name.clone(),
                        v.class.clone(),
                        truthy(prop(&v.config, "provides_network")),
                        truthy(prop(&v.config, "template_for_dispvms")),
                    ),
                )
            })
            .collect();
        let mut changed = false;
        for v in vms.iter_mut().filter(|v| v.action == Action::Create) {
            let mut problems = Vec::new();
            let dispvm = v.class == "DispVM";
            let needs_template = matches!(v.class.as_str(), "AppVM" | "DispVM");
            match (&v.template, needs_template) {
                (Some(_), false) => {
                    problems.push(format!("a {} has no template", v.class));
                }
                (Some(t), true) => {
                    let from_backup =
                        restored.get(t).filter(
                            |(_, class, _, tfd)| if dispvm { *tfd } else { class == "TemplateVM" },
                        );
                    let on_host = if dispvm {
                        host.dispvm_templates.contains(t)
                    } else {
                        host.vms.get(t).is_some_and(|c| c == "TemplateVM")
                    };
                    if let Some((name, ..)) = from_backup {
                        v.template = Some(name.clone());
                    } else if !on_host {
                        // As upstream: the host's default, named in the Create call.
                        let default = if dispvm {
                            &host.default_dispvm
                        } else {
                            &host.default_template
                        };
                        match default {
                            Some(d) if o.ignore_missing => v.template = Some(d.clone()),
                            None if o.ignore_missing => problems.push(format!(
                                "template {t} is neither restored nor on the host, which has \
                                 no default to use instead"
                            )),
                            _ => problems
                                .push(format!("template {t} is neither restored nor on the host")),
                        }
                    }
                }
                _ => {}
            }
            if let Reference::Named(n) = &v.netvm {
                if let Some((name, _, true, _)) = restored.get(n) {
                    v.netvm = Reference::Named(name.clone());
                } else if !host.netvms.contains(n) {
                    if o.ignore_missing {
                        v.netvm = Reference::Default;
                    } else {
                        problems.push(format!("netvm {n} is neither restored nor on the host"));
                    }
                }
            }
            if let Reference::Named(n) = &v.default_dispvm {
                if let Some((name, _, _, true)) = restored.get(n) {
                    v.default_dispvm = Reference::Named(name.clone());
                } else if !host.dispvm_templates.contains(n) {
                    if o.ignore_missing {
                        v.default_dispvm = Reference::Default;
                    } else {
                        problems.push(format!(
                            "default DispVM {n} is neither restored nor on the host"
                        ));
                    }
                }
            }
            if !problems.is_empty() {
                v.action = Action::Broken(problems.join("; "));
                changed = true;
            }
        }
        if !changed {
            break;
        }
        // A reference resolved to a restored VM that is now broken must be seen again.
        reset_resolved(vms);
    }
    if o.skip_broken {
        for v in vms.iter_mut() {
            if let Action::Broken(why) = &v.action {
                v.action = Action::Skip(format!("broken ({why}); --skip-broken"));
            }
        }
    }
}

/// References were rewritten to restore names in a pass; the next pass starts from the
/// backup's names again, so that a VM that became broken is seen by its dependants.
fn reset_resolved(vms: &mut [VmPlan]) {
    let renamed: BTreeMap<String, String> = vms
        .iter()
        .map(|v| (v.name.clone(), v.backup_name.clone()))
        .collect();
    for v in vms.iter_mut() {
        if let Some(t) = &v.template {
            if let Some(orig) = renamed.get(t) {
                v.template = Some(orig.clone());
            }
        }
        for r in [&mut v.netvm, &mut v.default_dispvm] {
            if let Reference::Named(n) = r {
                if let Some(orig) = renamed.get(n) {
                    *n = orig.clone();
                }
            }
        }
    }
}

/// QRS-3: TemplateVMs first, then DispVM templates, then the rest (manifest order within
/// each), and never a VM before the restored template it is based on; VMs caught in a
/// template loop are broken.
fn creation_order(vms: &mut [VmPlan]) -> Vec<usize> {
    let key = |v: &VmPlan| match () {
        _ if v.class == "TemplateVM" => 0,
        _ if truthy(prop(&v.config, "template_for_dispvms")) => 1,
        _ => 2,
    };
    let mut pending: Vec<usize> = (0..vms.len())
        .filter(|i| vms[*i].action == Action::Create)
        .collect();
    pending.sort_by_key(|i| key(&vms[*i]));
    let mut order = Vec::new();
    let mut placed: BTreeSet<String> = BTreeSet::new();
    let restored_names: BTreeSet<String> = pending.iter().map(|i| vms[*i].name.clone()).collect();
    while !pending.is_empty() {
        let ready = pending.iter().position(|i| {
            vms[*i]
                .template
                .as_ref()
                .is_none_or(|t| !restored_names.contains(t) || placed.contains(t))
        });
        match ready {
            Some(pos) => {
                let i = pending.remove(pos);
                placed.insert(vms[i].name.clone());
                order.push(i);
            }
            None => {
                for i in pending.drain(..) {
                    vms[i].action = Action::Broken("its template is part of a loop".to_owned());
                }
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use qbackup_format::protocol::ManifestVm;

    fn mvm(name: &str, class: &str, template: Option<&str>, netvm: NetVm) -> ManifestVm {
        ManifestVm {
            name: name.into(),
            class: class.into(),
            label: Some("red".into()),
            template: template.map(Into::into),
            netvm,
            layout: Layout::Volumes,
            backup_size: 0,
            expected_files: Vec::new(),
        }
    }

    fn with_props(props: &[(&str, &str)]) -> VmConfig {
        VmConfig {
            properties: props
                .iter()
                .map(|(k, v)| ((*k).to_owned(), Some((*v).to_owned())))
                .collect(),
            ..VmConfig::default()
        }
    }

    fn host(vms: &[(&str, &str)]) -> Host {
        Host {
            vms: vms
                .iter()
                .map(|(n, c)| ((*n).to_owned(), (*c).to_owned()))
                .collect(),
            netvms: ["sys-firewall".to_owned()].into(),
            dispvm_templates: BTreeSet::new(),
            default_template: Some("fedora".to_owned()),
            default_dispvm: None,
        }
    }

    #[test]
    fn templates_first_and_references_to_restored_names() {
        let m = Manifest {
            vms: vec![
                mvm("work", "AppVM", Some("tpl"), NetVm::Named("net".into())),
                mvm("net", "AppVM", Some("fedora"), NetVm::None),
                mvm("tpl", "TemplateVM", None, NetVm::Default),
            ],
            others: Vec::new(),
        };
        let configs = vec![
            VmConfig::default(),
            with_props(&[("provides_network", "True")]),
            VmConfig::default(),
        ];
        let h = host(&[
            ("dom0", "AdminVM"),
            ("fedora", "TemplateVM"),
            ("tpl", "AppVM"),
        ]);
        let o = Options {
            rename_conflicting: true,
            ..Options::default()
        };
        let p = plan(&m, &configs, &h, &o);
        let names: Vec<&str> = p.order.iter().map(|i| p.vms[*i].name.as_str()).collect();
        assert_eq!(names, ["tpl-1", "work", "net"]);
        assert_eq!(p.vms[0].template.as_deref(), Some("tpl-1"));
        assert_eq!(p.vms[0].netvm, Reference::Named("net".into()));
        assert!(p.broken().is_empty());
    }

    #[test]
    fn missing_template_breaks_unless_ignored_or_skipped() {
        let m = Manifest {
            vms: vec![mvm(
                "work",
                "AppVM",
                Some("gone"),
                NetVm::Named("nope".into()),
            )],
            others: Vec::new(),
        };
        let configs = vec![VmConfig::default()];
        let h = host(&[("dom0", "AdminVM")]);
        let p = plan(&m, &configs, &h, &Options::default());
        assert!(
            matches!(&p.vms[0].action, Action::Broken(w) if w.contains("gone") && w.contains("nope"))
        );
        let p = plan(
            &m,
            &configs,
            &h,
            &Options {
                ignore_missing: true,
                ..Options::default()
            },
        );
        assert_eq!(p.vms[0].action, Action::Create);
        assert_eq!(
            (p.vms[0].template.as_deref(), &p.vms[0].netvm),
            (Some("fedora"), &Reference::Default)
        );
        let p = plan(
            &m,
            &configs,
            &h,
            &Options {
                skip_broken: true,
                ..Options::default()
            },
        );
        assert!(matches!(p.vms[0].action, Action::Skip(_)));
        assert!(p.order.is_empty());
    }

    #[test]
    fn a_template_loop_is_refused() {
        let m = Manifest {
            vms: vec![
                mvm("a", "DispVM", Some("b"), NetVm::Default),
                mvm("b", "DispVM", Some("a"), NetVm::Default),
            ],
            others: Vec::new(),
        };
        let c = with_props(&[("template_for_dispvms", "True")]);
        let p = plan(&m, &[c.clone(), c], &host(&[]), &Options::default());
        assert!(p.order.is_empty());
        assert_eq!(p.broken().len(), 2);
    }

    #[test]
    fn conflicts_and_new_names() {
        let m = Manifest {
            vms: vec![mvm("sys-net", "StandaloneVM", None, NetVm::Default)],
            others: Vec::new(),
        };
        let h = host(&[("sys-net", "AppVM"), ("sys-net-1", "AppVM")]);
        let c = vec![VmConfig::default()];
        assert!(matches!(
            plan(&m, &c, &h, &Options::default()).vms[0].action,
            Action::Broken(_)
        ));
        let o = Options {
            rename_conflicting: true,
            ..Options::default()
        };
        assert_eq!(plan(&m, &c, &h, &o).vms[0].name, "sys-net-2");
        let long = "a".repeat(31);
        let n = new_name(&long, &|_| false).unwrap();
        assert_eq!(n.len(), 31);
        assert!(n.ends_with("-1"));
        let n = new_name(&long, &|c: &str| !c.ends_with("-10")).unwrap();
        assert_eq!(n, format!("{}-10", "a".repeat(28)));
        assert!(new_name("x", &|_| true).is_none());
    }
}
