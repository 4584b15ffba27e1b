//! The model of a Qubes host that the mock qubesd serves: qubes, labels, storage pools and
//! the global defaults that qube properties and new volumes fall back to.
//!
//! Facts modelled (qubes-core-admin): the built-in labels and pools of a fresh install
//! (`qubes/app.py` `Qubes.load_initial_values`, `qubes/config.py` `defaults`); the volume
//! layout each class gets on creation (`default_volume_config` / `volume_config` in
//! `qubes/vm/{appvm,dispvm,templatevm,standalonevm}.py`, sources resolved as in
//! `qubes/storage/__init__.py` `Storage._update_volume_config_source`, the `pool=` /
//! `pool:VOL=` overrides as in `qubes/vm/qubesvm.py` `_patch_pool_config`); volume ids and
//! paths of the lvm_thin and file drivers (`qubes/storage/lvm.py`, `qubes/storage/file.py`).

use std::collections::{BTreeMap, BTreeSet};

use super::Fail;

/// The order qubesd lists a qube's volumes in (its `volume_config` order).
pub(super) const VOLUME_ORDER: [&str; 4] = ["root", "private", "volatile", "kernel"];

/// `qubes/config.py` `defaults["root_img_size"]`: 10 GiB.
pub const ROOT_IMG_SIZE: u64 = 10 << 30;
/// `qubes/config.py` `defaults["private_img_size"]`: 2 GiB.
pub const PRIVATE_IMG_SIZE: u64 = 2 << 30;

/// The Qubes release whose Admin API the mock speaks where the releases differ: the
/// `uuid=` field of `admin.vm.List` and `uuid:` destinations (R4.3), the device API
/// (R4.2 `Attach` with `persistent=True`; R4.3 `Assign`), and `admin.vm.notes.*` (R4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    R4_2,
    R4_3,
}

/// A qube class (the `qubes.vm` entry points of qubes-core-admin `setup.py`, less
/// `RemoteVM`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum VmClass {
    AdminVM,
    AppVM,
    DispVM,
    StandaloneVM,
    TemplateVM,
}

impl VmClass {
    /// The class name as qubesd prints it.
    pub fn name(self) -> &'static str {
        match self {
            VmClass::AdminVM => "AdminVM",
            VmClass::AppVM => "AppVM",
            VmClass::DispVM => "DispVM",
            VmClass::StandaloneVM => "StandaloneVM",
            VmClass::TemplateVM => "TemplateVM",
        }
    }

    /// The classes `admin.vm.Create.CLASS` accepts.
    pub fn creatable(name: &str) -> Option<VmClass> {
        [
            VmClass::AppVM,
            VmClass::DispVM,
            VmClass::StandaloneVM,
            VmClass::TemplateVM,
        ]
        .into_iter()
        .find(|c| c.name() == name)
    }

    /// Whether the class has a `template` property (`AppVM`: a TemplateVM; `DispVM`: an
    /// AppVM with `template_for_dispvms`).
    pub fn has_template(self) -> bool {
        matches!(self, VmClass::AppVM | VmClass::DispVM)
    }
}

/// A storage pool driver (`qubes.storage` entry points).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Driver {
    /// `lvm_thin`: vid `VG/vm-NAME-VOLUME`, path `/dev/VID`.
    LvmThin,
    /// `file`: vid `appvms|vm-templates/NAME/VOLUME`, path `DIR/VID.img`.
    File,
    /// `file-reflink`: named like `file`.
    FileReflink,
    /// `linux-kernel`: the kernel volume; vid is the kernel version.
    LinuxKernel,
}

/// A storage pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub driver: Driver,
    /// LVM volume group (`lvm_thin`) or directory (`file`, `file-reflink`,
    /// `linux-kernel`).
    pub location: String,
    /// Default `revisions_to_keep` of new volumes.
    pub revisions_to_keep: i64,
}

/// A qube's volume, with the keys `admin.vm.volume.Info` prints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Volume {
    pub pool: String,
    pub vid: String,
    pub size: u64,
    pub rw: bool,
    /// The vid of the origin volume of a `snap_on_start` volume.
    pub source: Option<String>,
    pub path: String,
    pub save_on_stop: bool,
    pub snap_on_start: bool,
    pub revisions_to_keep: i64,
    pub ephemeral: bool,
}

/// A persistent device assignment (R4.3 `Assign`, or R4.2 `Attach` with
/// `persistent=True`, recorded with mode `auto-attach`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// `pci`, `usb`, `block` or `mic`.
    pub bus: String,
    pub backend: String,
    pub port: String,
    /// `*` for any device on the port (and always for R4.2 attachments).
    pub device_id: String,
    /// `required`, `auto-attach` or `ask-to-attach`.
    pub mode: String,
    /// The `_KEY='VALUE'` options (R4.3) or `KEY=VALUE` options (R4.2).
    pub options: BTreeMap<String, String>,
}

impl Assignment {
    /// Whether the qube may not start without the device (`mode='required'`).
    pub fn is_required(&self) -> bool {
        self.mode == "required"
    }
}

/// A qube.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vm {
    pub class: VmClass,
    pub qid: u32,
    pub uuid: String,
    /// Explicitly set properties (the ones `admin.vm.property.Get` reports with
    /// `default=False`), in qubesd's text form: `True`/`False`, decimal integers, qube
    /// names (empty for none), label names.
    pub properties: BTreeMap<String, String>,
    pub features: BTreeMap<String, String>,
    pub tags: BTreeSet<String>,
    pub volumes: BTreeMap<String, Volume>,
    /// Firewall rule lines as set (without the newline).
    pub firewall: Vec<String>,
    pub notes: String,
    pub devices: Vec<Assignment>,
    /// Reported as `state=Running` by `admin.vm.List` (dom0 always is); nothing else
    /// changes (a test sets it to model a running qube).
    pub running: bool,
}

/// Where `admin.vm.CreateInPool` puts the new volumes.
#[derive(Clone, Debug, Default)]
pub(super) struct PoolChoice {
    /// `pool=P`: every rw volume that is not a snapshot.
    pub all: Option<String>,
    /// `pool:VOLUME=P`.
    pub per_volume: BTreeMap<String, String>,
}

/// The host: its qubes (always including `dom0`), labels, pools and global defaults.
#[derive(Clone, Debug)]
pub struct Host {
    pub release: Release,
    pub vms: BTreeMap<String, Vm>,
    /// Label names; label index = position + 1.
    pub labels: Vec<String>,
    pub pools: BTreeMap<String, Pool>,
    /// Global `default_pool` (root, private and volatile volumes).
    pub default_pool: String,
    /// Global `default_pool_kernel`.
    pub default_pool_kernel: String,
    pub default_template: Option<String>,
    pub default_netvm: Option<String>,
    pub default_dispvm: Option<String>,
    /// Global `default_kernel` (the default of the `kernel` property).
    pub default_kernel: String,
}

impl Default for Host {
    fn default() -> Self {
        Host::new()
    }
}

impl Host {
    /// A fresh R4.3 LVM install with nothing but `dom0`: the eight built-in labels, pools
    /// `vm-pool` (lvm_thin, the default), `varlibqubes` (file) and `linux-kernel`, no
    /// default template, netvm or disposable template.
    pub fn new() -> Host {
        let dom0 = Vm {
            class: VmClass::AdminVM,
            qid: 0,
            uuid: "00000000-0000-0000-0000-000000000000".into(),
            properties: BTreeMap::from([("label".into(), "black".into())]),
            features: BTreeMap::new(),
            tags: BTreeSet::new(),
            volumes: BTreeMap::new(),
            firewall: Vec::new(),
            notes: String::new(),
            devices: Vec::new(),
            running: false,
        };
        let pool = |driver, location: &str, revisions_to_keep| Pool {
            driver,
            location: location.into(),
            revisions_to_keep,
        };
        Host {
            release: Release::R4_3,
            vms: BTreeMap::from([("dom0".into(), dom0)]),
            labels: [
                "red", "orange", "yellow", "green", "gray", "blue", "purple", "black",
            ]
            .map(String::from)
            .to_vec(),
            pools: BTreeMap::from([
                ("vm-pool".into(), pool(Driver::LvmThin, "qubes_dom0", 1)),
                (
                    "varlibqubes".into(),
                    pool(Driver::File, "/var/lib/qubes", 1),
                ),
                (
                    "linux-kernel".into(),
                    pool(Driver::LinuxKernel, "/var/lib/qubes/vm-kernels", 0),
                ),
            ]),
            default_pool: "vm-pool".into(),
            default_pool_kernel: "linux-kernel".into(),
            default_template: None,
            default_netvm: None,
            default_dispvm: None,
            default_kernel: "6.12.59-1.fc41".into(),
        }
    }

    /// [`Host::new`] plus what a typical install has: templates `fedora-42` (the default)
    /// and `debian-13`, `sys-net` (provides network, no netvm), `sys-firewall` (provides
    /// network through `sys-net`; the default netvm) and `default-dvm` (a disposable
    /// template; the default disposable template).
    pub fn typical() -> Host {
        let mut host = Host::new();
        host.add_vm("fedora-42", VmClass::TemplateVM, None, "black");
        host.add_vm("debian-13", VmClass::TemplateVM, None, "black");
        let set = |vm: &mut Vm, props: &[(&str, &str)]| {
            for (k, v) in props {
                vm.properties.insert((*k).into(), (*v).into());
            }
        };
        let net = host.add_vm("sys-net", VmClass::AppVM, Some("fedora-42"), "red");
        set(net, &[("provides_network", "True"), ("netvm", "")]);
        let fw = host.add_vm("sys-firewall", VmClass::AppVM, Some("fedora-42"), "green");
        set(fw, &[("provides_network", "True"), ("netvm", "sys-net")]);
        let dvm = host.add_vm("default-dvm", VmClass::AppVM, Some("fedora-42"), "red");
        set(dvm, &[("template_for_dispvms", "True")]);
        host.default_template = Some("fedora-42".into());
        host.default_netvm = Some("sys-firewall".into());
        host.default_dispvm = Some("default-dvm".into());
        host
    }

    /// Add a qube the way `admin.vm.Create.CLASS` called by dom0 would (volumes in the
    /// default pools, tag `created-by-dom0`), for setting up a test. Panics if the qube
    /// cannot be created.
    pub fn add_vm(
        &mut self,
        name: &str,
        class: VmClass,
        template: Option<&str>,
        label: &str,
    ) -> &mut Vm {
        let mut vm = self
            .new_vm(name, class, template, label, &PoolChoice::default())
            .unwrap_or_else(|f| panic!("adding {name}: {f:?}"));
        vm.tags.insert("created-by-dom0".into());
        self.vms.entry(name.into()).or_insert(vm)
    }

    /// A label by name, or by index (`N` or `label-N`), as `qubes/app.py`
    /// `Qubes.get_label` and `qubes/vm/__init__.py` `setter_label` look it up.
    pub(super) fn label(&self, value: &str) -> Option<&str> {
        if let Some(l) = self.labels.iter().find(|l| *l == value) {
            return Some(l);
        }
        let index: usize = value.strip_prefix("label-").unwrap_or(value).parse().ok()?;
        self.labels.get(index.checked_sub(1)?).map(String::as_str)
    }

    /// The uuid qubesd would show for qid `qid` (stable, so tests can predict it).
    fn uuid_for(qid: u32) -> String {
        format!("00000000-0000-4000-8000-{qid:012x}")
    }

    /// A new qube with the volumes `create_on_disk` gives its class. `template` must
    /// already be checked to exist and be of the right kind.
    pub(super) fn new_vm(
        &self,
        name: &str,
        class: VmClass,
        template: Option<&str>,
        label: &str,
        pools: &PoolChoice,
    ) -> Result<Vm, Fail> {
        assert!(!self.vms.contains_key(name), "qube {name} exists");
        assert_eq!(
            class.has_template(),
            template.is_some(),
            "template of {name}"
        );
        let qid = self.vms.values().map(|v| v.qid).max().unwrap_or(0) + 1;
        let mut properties = BTreeMap::from([("label".to_string(), label.to_string())]);
        if let Some(t) = template {
            properties.insert("template".into(), t.into());
        }
        let mut vm = Vm {
            class,
            qid,
            uuid: Host::uuid_for(qid),
            properties,
            features: BTreeMap::new(),
            tags: BTreeSet::new(),
            volumes: BTreeMap::new(),
            // `qubes/firewall.py` `Firewall.load_defaults`: one rule accepting everything.
            firewall: vec!["action=accept".into()],
            notes: String::new(),
            devices: Vec::new(),
            running: false,
        };
        for spec in volume_specs(class) {
            let volume = self.new_volume(name, class, template, &spec, pools)?;
            vm.volumes.insert(spec.name.into(), volume);
        }
        Ok(vm)
    }

    /// One volume of a new qube (`Storage.init_volume` with `_patch_pool_config`).
    fn new_volume(
        &self,
        vm_name: &str,
        class: VmClass,
        template: Option<&str>,
        spec: &VolumeSpec,
        pools: &PoolChoice,
    ) -> Result<Volume, Fail> {
        let origin = match (spec.snap_on_start, template) {
            (true, Some(t)) => Some(self.origin_volume(t, spec.name)),
            _ => None,
        };
        let mut pool_name = match &origin {
            Some(o) => o.pool.clone(),
            None if spec.name == "kernel" => self.default_pool_kernel.clone(),
            None => self.default_pool.clone(),
        };
        if let Some(p) = &pools.all {
            if !spec.snap_on_start && spec.rw {
                pool_name = p.clone();
            }
        } else if let Some(p) = pools.per_volume.get(spec.name) {
            if spec.snap_on_start {
                return Err(Fail::exc(
                    "QubesException",
                    format!(
                        "Snapshot volume {0} must be in the same pool as its origin ({0} \
                         volume of template),cannot move to pool {p} ",
                        spec.name
                    ),
                ));
            }
            pool_name = p.clone();
        }
        let pool = &self.pools[&pool_name];
        let vid = match pool.driver {
            Driver::LvmThin => format!("{}/vm-{vm_name}-{}", pool.location, spec.name),
            Driver::File | Driver::FileReflink => {
                let prefix = if class == VmClass::TemplateVM {
                    "vm-templates"
                } else {
                    "appvms"
                };
                format!("{prefix}/{vm_name}/{}", spec.name)
            }
            Driver::LinuxKernel => self.default_kernel.clone(),
        };
        let path = match pool.driver {
            Driver::LvmThin => format!("/dev/{vid}"),
            Driver::File | Driver::FileReflink => match &origin {
                Some(o) => format!("{}/{}.img", pool.location, o.vid),
                None => format!("{}/{vid}.img", pool.location),
            },
            Driver::LinuxKernel => format!("{}/{vid}", pool.location),
        };
        let revisions_to_keep = match pool.driver {
            Driver::File | Driver::FileReflink if !spec.save_on_stop => 0,
            _ => pool.revisions_to_keep,
        };
        Ok(Volume {
            size: match (&origin, spec.name) {
                (Some(o), _) => o.size,
                (None, "kernel") => 0,
                (None, _) => spec.size,
            },
            source: origin.map(|o| o.vid),
            pool: pool_name,
            vid,
            rw: spec.rw,
            path,
            save_on_stop: spec.save_on_stop,
            snap_on_start: spec.snap_on_start,
            revisions_to_keep,
            ephemeral: false,
        })
    }

    /// The volume a snapshot of `template`'s `name` volume starts from: followed through
    /// templates while the volume is itself a snapshot (a DispVM's root comes from the
    /// TemplateVM, its private from the AppVM).
    fn origin_volume(&self, template: &str, name: &str) -> Volume {
        let mut vm = &self.vms[template];
        loop {
            let volume = &vm.volumes[name];
            match (&volume.source, vm.properties.get("template")) {
                (Some(_), Some(t)) => vm = &self.vms[t],
                _ => return volume.clone(),
            }
        }
    }
}

/// A volume of a class's `volume_config`.
struct VolumeSpec {
    name: &'static str,
    snap_on_start: bool,
    save_on_stop: bool,
    rw: bool,
    /// Size when not a snapshot (kernel volumes: 0).
    size: u64,
}

/// The volumes each class gets.
fn volume_specs(class: VmClass) -> Vec<VolumeSpec> {
    let spec = |name, snap_on_start, save_on_stop, rw, size| VolumeSpec {
        name,
        snap_on_start,
        save_on_stop,
        rw,
        size,
    };
    let kernel = spec("kernel", false, false, false, 0);
    match class {
        VmClass::AdminVM => Vec::new(),
        VmClass::AppVM => vec![
            spec("root", true, false, true, ROOT_IMG_SIZE),
            spec("private", false, true, true, PRIVATE_IMG_SIZE),
            spec("volatile", false, false, true, ROOT_IMG_SIZE),
            kernel,
        ],
        VmClass::DispVM => vec![
            spec("root", true, false, true, ROOT_IMG_SIZE),
            spec("private", true, false, true, PRIVATE_IMG_SIZE),
            spec(
                "volatile",
                false,
                false,
                true,
                ROOT_IMG_SIZE + PRIVATE_IMG_SIZE,
            ),
            kernel,
        ],
        VmClass::StandaloneVM | VmClass::TemplateVM => vec![
            spec("root", false, true, true, ROOT_IMG_SIZE),
            spec("private", false, true, true, PRIVATE_IMG_SIZE),
            spec("volatile", false, false, true, ROOT_IMG_SIZE),
            kernel,
        ],
    }
}
