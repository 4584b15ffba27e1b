//! The Admin API and internal API methods the mock implements, with qubesd's argument,
//! payload and destination checks and the exceptions its handlers raise.
//!
//! Facts modelled (qubes-core-admin): the generic checks and their order
//! (`qubes/api/__init__.py` `AbstractQubesAPI.__init__`, `decode_vm`, `execute`), the
//! per-method flags and handlers of `qubes/api/admin.py` (`vm_list`, `label_list`,
//! `pool_list`, `_vm_create`, `vm_remove`, `_property_*`, `vm_feature_*`, `vm_tag_*`,
//! `vm_firewall_*`, `vm_notes_*`, `vm_volume_list`, `vm_volume_info`, `vm_device_assign`,
//! `vm_device_attach`; the R4.2 `vm_device_attach` of tag v4.2.39) and of
//! `qubes/api/internal.py` (`vm_volume_import`, `vm_volume_import_end`), name, label and
//! tag validation (`qubes/vm/__init__.py` `validate_name`, `Tags.validate_tag`,
//! `qubes/utils.py` `validate_label_name`), firewall rule syntax (`qubes/firewall.py`
//! `Rule.from_api_string`), device assignment serialisation
//! (`qubes/device_protocol.py` `DeviceSerializer.unpack_properties`,
//! `parse_basic_device_properties`, `VirtualDevice.from_qarg`) and the storage side of an
//! import (`qubes/storage/lvm.py` `ThinVolume.import_data{,_end}`,
//! `qubes/storage/file.py` `FileVolume.import_data{,_end}`).

use std::collections::BTreeMap;
use std::fs;

use super::host::{Assignment, Driver, PoolChoice, Release, VmClass, Volume, VOLUME_ORDER};
use super::{properties, Api, Fail, Import, ImportState, Outcome, State};

/// One framed request.
pub(super) struct Request<'a> {
    pub src: &'a str,
    pub method: &'a str,
    pub dest: &'a str,
    pub arg: &'a str,
    pub payload: &'a [u8],
}

/// The `@qubes.api.method` flags: `Some(true)` requires, `Some(false)` forbids, `None`
/// does not check.
struct Spec {
    wants_arg: Option<bool>,
    wants_payload: Option<bool>,
    dest_adminvm: Option<bool>,
}

const fn spec(
    wants_arg: Option<bool>,
    wants_payload: Option<bool>,
    dest_adminvm: Option<bool>,
) -> Spec {
    Spec {
        wants_arg,
        wants_payload,
        dest_adminvm,
    }
}

const Y: Option<bool> = Some(true);
const N: Option<bool> = Some(false);

enum Method {
    GlobalPropertyGet,
    VmList,
    LabelList,
    PoolList,
    PoolInfo,
    Create {
        class: VmClass,
        in_pool: bool,
    },
    Remove,
    PropertyList,
    PropertyGet,
    PropertySet,
    PropertyReset,
    FeatureList,
    FeatureGet,
    FeatureSet,
    FeatureRemove,
    TagList,
    TagGet,
    TagSet,
    TagRemove,
    FirewallGet,
    FirewallSet,
    NotesGet,
    NotesSet,
    VolumeList,
    VolumeInfo,
    DeviceAssign(String),
    DeviceAttach(String),
    /// R4.3 `Assigned`, R4.2 `List`.
    DeviceAssigned(String),
    ImportBegin,
    ImportEnd,
}

/// `admin.property.Get` (qubes-core-admin `qubes/api/admin.py` `property_get` on the app):
/// the global VM references and pool names, `default=… type=… VALUE`.
fn global_property(host: &super::Host, arg: &str) -> Result<String, Fail> {
    let vm = |v: &Option<String>| format!("default=False type=vm {}", v.as_deref().unwrap_or(""));
    match arg {
        "default_template" => Ok(vm(&host.default_template)),
        "default_netvm" => Ok(vm(&host.default_netvm)),
        "default_dispvm" => Ok(vm(&host.default_dispvm)),
        "default_pool" => Ok(format!("default=False type=str {}", host.default_pool)),
        "default_kernel" => Ok(format!("default=False type=str {}", host.default_kernel)),
        _ => Err(Fail::exc(
            "QubesNoSuchPropertyError",
            format!("Invalid property '{arg}' of dom0"),
        )),
    }
}

/// `admin.pool.Info` (`qubes/api/admin.py` `pool_info`): the pool's config sorted by key,
/// then `size=` and `usage=`.
fn pool_info(host: &super::Host, arg: &str) -> Result<String, Fail> {
    let pool = host.pools.get(arg).ok_or_else(|| {
        Fail::exc(
            "PermissionDenied",
            format!("Argument not in pools: '{arg}'"),
        )
    })?;
    let mut config = std::collections::BTreeMap::from([
        ("name", arg.to_string()),
        ("revisions_to_keep", pool.revisions_to_keep.to_string()),
        ("ephemeral_volatile", "False".to_string()),
    ]);
    match pool.driver {
        Driver::LvmThin => {
            config.insert("driver", "lvm_thin".into());
            config.insert("volume_group", pool.location.clone());
            config.insert("thin_pool", "vm-pool".into());
        }
        Driver::File | Driver::FileReflink | Driver::LinuxKernel => {
            let driver = match pool.driver {
                Driver::File => "file",
                Driver::FileReflink => "file-reflink",
                _ => "linux-kernel",
            };
            config.insert("driver", driver.into());
            config.insert("dir_path", pool.location.clone());
        }
    }
    let mut out: String = config.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    out.push_str("size=107374182400\nusage=1073741824\n");
    Ok(out)
}

/// `admin.vm.device.BUS.Assigned` (R4.3: `BACKEND+PORT:DEVID` and the quoted
/// properties, options as `_KEY`) or `.List` (R4.2: `BACKEND+PORT KEY=VALUE …
/// persistent=yes`) of the persistent assignments.
fn device_list(host: &super::Host, dest: &str, bus: &str) -> String {
    let quote = |v: &str| v.replace('\\', "\\\\").replace('\'', "\\'");
    host.vms[dest]
        .devices
        .iter()
        .filter(|d| d.bus == bus)
        .map(|d| match host.release {
            Release::R4_3 => {
                let mut line = format!(
                    "{}+{}:{} device_id='{}' port_id='{}' devclass='{bus}' \
                     backend_domain='{}' mode='{}' frontend_domain='{dest}'",
                    d.backend,
                    d.port,
                    d.device_id,
                    quote(&d.device_id),
                    quote(&d.port),
                    quote(&d.backend),
                    d.mode
                );
                for (k, v) in &d.options {
                    line.push_str(&format!(" _{k}='{}'", quote(v)));
                }
                line + "\n"
            }
            Release::R4_2 => {
                let mut line = format!("{}+{}", d.backend, d.port);
                for (k, v) in &d.options {
                    line.push_str(&format!(" {k}={v}"));
                }
                line + " persistent=yes\n"
            }
        })
        .collect()
}

/// Device classes (`qubes.devices` entry points of a typical dom0).
const BUSES: &[&str] = &["block", "mic", "pci", "usb"];

fn lookup(api: Api, release: Release, name: &str) -> Option<(Method, Spec)> {
    use Method::*;
    if api == Api::Internal {
        return match name {
            "internal.vm.volume.ImportBegin" => Some((ImportBegin, spec(Y, None, None))),
            "internal.vm.volume.ImportEnd" => Some((ImportEnd, spec(Y, Y, None))),
            _ => None,
        };
    }
    let r43 = release == Release::R4_3;
    let found = match name {
        "admin.vm.List" => (VmList, spec(N, N, None)),
        "admin.label.List" => (LabelList, spec(N, N, Y)),
        "admin.property.Get" => (GlobalPropertyGet, spec(Y, N, Y)),
        "admin.pool.List" => (PoolList, spec(N, N, Y)),
        "admin.pool.Info" => (PoolInfo, spec(Y, N, Y)),
        "admin.vm.Remove" => (Remove, spec(N, N, None)),
        "admin.vm.property.List" => (PropertyList, spec(N, N, None)),
        "admin.vm.property.Get" => (PropertyGet, spec(Y, N, None)),
        "admin.vm.property.Set" => (PropertySet, spec(Y, None, None)),
        "admin.vm.property.Reset" => (PropertyReset, spec(Y, N, None)),
        "admin.vm.feature.List" => (FeatureList, spec(N, N, None)),
        "admin.vm.feature.Get" => (FeatureGet, spec(Y, N, None)),
        "admin.vm.feature.Set" => (FeatureSet, spec(Y, None, None)),
        "admin.vm.feature.Remove" => (FeatureRemove, spec(Y, N, None)),
        "admin.vm.tag.List" => (TagList, spec(N, N, None)),
        "admin.vm.tag.Get" => (TagGet, spec(Y, N, None)),
        "admin.vm.tag.Set" => (TagSet, spec(Y, N, None)),
        "admin.vm.tag.Remove" => (TagRemove, spec(Y, N, None)),
        "admin.vm.firewall.Get" => (FirewallGet, spec(N, N, N)),
        "admin.vm.firewall.Set" => (FirewallSet, spec(N, Y, N)),
        "admin.vm.notes.Get" if r43 => (NotesGet, spec(N, N, N)),
        "admin.vm.notes.Set" if r43 => (NotesSet, spec(N, Y, N)),
        "admin.vm.volume.List" => (VolumeList, spec(N, N, None)),
        "admin.vm.volume.Info" => (VolumeInfo, spec(Y, N, None)),
        _ => {
            if let Some(class) = name.strip_prefix("admin.vm.Create.") {
                let class = VmClass::creatable(class)?;
                (
                    Create {
                        class,
                        in_pool: false,
                    },
                    spec(None, None, Y),
                )
            } else if let Some(class) = name.strip_prefix("admin.vm.CreateInPool.") {
                let class = VmClass::creatable(class)?;
                (
                    Create {
                        class,
                        in_pool: true,
                    },
                    spec(None, None, Y),
                )
            } else {
                let rest = name.strip_prefix("admin.vm.device.")?;
                let (bus, action) = rest.split_once('.')?;
                if !BUSES.contains(&bus) {
                    return None;
                }
                match action {
                    "Assign" if r43 => (DeviceAssign(bus.into()), spec(Y, Y, None)),
                    "Attach" if r43 => (DeviceAttach(bus.into()), spec(Y, None, None)),
                    // R4.2 declared Attach without checks.
                    "Attach" => (DeviceAttach(bus.into()), spec(None, None, None)),
                    "Assigned" if r43 => (DeviceAssigned(bus.into()), spec(None, N, None)),
                    "List" if !r43 => (DeviceAssigned(bus.into()), spec(None, N, None)),
                    _ => return None,
                }
            }
        }
    };
    Some(found)
}

fn protocol(msg: impl Into<String>) -> Fail {
    Fail::exc("ProtocolError", msg)
}

/// `qubes.vm.validate_name` (without a property holder: QubesValueError).
fn validate_name(name: &str) -> Result<(), Fail> {
    let bad = |msg: &str| Err(Fail::exc("QubesValueError", msg));
    if name.len() > 31 {
        return bad("VM name must be shorter than 32 characters");
    }
    if name.starts_with(|c: char| c.is_ascii_digit() || "_.-".contains(c)) {
        return bad("VM name cannot start with hyphen, underscore, dot or numbers");
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        return bad("VM name contains illegal characters");
    }
    if name == "Domain-0" {
        return bad("VM name cannot be 'Domain-0'");
    }
    if name == "none" || name == "default" {
        return bad("VM name cannot be 'none' nor 'default'");
    }
    if name.ends_with("-dm") {
        return bad("VM name cannot end with -dm");
    }
    Ok(())
}

/// `qubes.utils.validate_label_name(creation=True)`.
fn validate_label_name(label: &str) -> Result<(), Fail> {
    let bad = |msg: &str| Err(Fail::exc("QubesInvalidLabelError", msg));
    if label.is_empty() {
        return bad("Label name must be set");
    }
    if label.bytes().all(|b| b.is_ascii_digit()) {
        return bad("Label must not be a digit");
    }
    if !label
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return bad("Label must be in safe set: \
             abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.");
    }
    Ok(())
}

/// `qubes.vm.Tags.validate_tag`.
fn validate_tag(tag: &str) -> Result<(), Fail> {
    if tag.is_empty() {
        return Err(Fail::exc("QubesInvalidTagError", "tag cannot be empty"));
    }
    if !tag
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
    {
        return Err(Fail::exc("QubesInvalidTagError", "disallowed characters"));
    }
    Ok(())
}

/// `AbstractQubesAPI.validate_number` (non-negative).
fn validate_number(number: &[u8], name: &str) -> Result<u64, Fail> {
    let mut cap = name.to_string();
    cap[..1].make_ascii_uppercase();
    if number.is_empty() || !number.iter().all(u8::is_ascii_digit) {
        return Err(protocol(format!("{cap} contains non ASCII digits")));
    }
    if number.len() >= 20 {
        return Err(protocol(format!("{cap} is bigger than 19 decimal digits")));
    }
    if number[0] == b'0' && number != b"0" {
        return Err(protocol(format!("{cap} contains spurious leading zeros")));
    }
    Ok(std::str::from_utf8(number)
        .expect("digits")
        .parse()
        .expect("19 digits"))
}

/// Coarse `Rule.from_api_string`: known options, no repeats, an action, values in the
/// option's syntax. Every error there is a ValueError, which qubesd does not report.
fn check_firewall_rule(line: &str) -> Result<(), Fail> {
    let bad = |why: &str| {
        Err(Fail::abort(format!(
            "ValueError: {why} in firewall rule {line:?}"
        )))
    };
    let (options, comment) = line.split_once("comment=").unwrap_or((line, ""));
    if !comment
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ":;,./-_[] ".contains(c))
    {
        return bad("strange characters comment");
    }
    let mut seen = BTreeMap::new();
    for option in options.trim().split(' ') {
        let Some((key, value)) = option.split_once('=') else {
            return bad("option without '='");
        };
        let key = match key {
            "dst4" | "dst6" | "dstname" => "dsthost",
            k => k,
        };
        if ![
            "action",
            "proto",
            "dsthost",
            "dstports",
            "icmptype",
            "specialtarget",
            "expire",
        ]
        .contains(&key)
        {
            return bad("Unknown firewall option");
        }
        if !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":;,./-_[]".contains(c))
        {
            return bad("strange characters in rule");
        }
        if seen.insert(key, value).is_some() {
            return bad("option already set");
        }
    }
    let proto = seen.get("proto").copied();
    let valid = |key, ok: &dyn Fn(&str) -> bool| seen.get(key).is_none_or(|v| ok(v));
    let port = |p: &str| p.parse::<u32>().ok().filter(|p| *p < 65536);
    let checks = [
        seen.contains_key("action"),
        valid("action", &|v| v == "accept" || v == "drop"),
        valid("proto", &|v| ["tcp", "udp", "icmp"].contains(&v)),
        valid("specialtarget", &|v| v == "dns"),
        valid("expire", &|v| {
            !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())
        }),
        valid("dstports", &|v| {
            matches!(proto, Some("tcp" | "udp"))
                && match v.split_once('-') {
                    Some((a, b)) => matches!((port(a), port(b)), (Some(a), Some(b)) if a <= b),
                    None => port(v).is_some(),
                }
        }),
        valid("icmptype", &|v| {
            proto == Some("icmp") && v.len() <= 3 && v.parse::<u8>().is_ok()
        }),
    ];
    if checks.contains(&false) {
        return bad("invalid option value");
    }
    Ok(())
}

type Strings = BTreeMap<String, String>;

/// `DeviceSerializer.unpack_properties`: `key='value' key='value'` (a `'` inside a value
/// escaped as `\'`), keys starting with `_` being options.
fn unpack_device_properties(payload: &[u8]) -> Result<(Strings, Strings), Fail> {
    const KEY_PUNCT: &str = "!#$%&()*+,-./:;<>?@[\\]^_{|}~";
    let key_ok = |k: &str| {
        k.chars()
            .all(|c| c.is_ascii_alphanumeric() || KEY_PUNCT.contains(c))
    };
    let value_ok = |v: &str| v.chars().all(|c| c.is_ascii_graphic() || c == ' ');
    let text = std::str::from_utf8(payload)
        .ok()
        .filter(|t| t.is_ascii())
        .ok_or_else(|| protocol("'ascii' codec can't decode payload"))?
        .trim();
    let (mut properties, mut options) = (BTreeMap::new(), BTreeMap::new());
    if text.is_empty() {
        return Ok((properties, options));
    }
    let mut pairs = Vec::new();
    let (first_key, mut rest) = text.split_once("='").unwrap_or((text, ""));
    let mut key = first_key.trim().to_string();
    while let Some((value_and_key, after)) = rest.split_once("='") {
        let (value, next_key) = value_and_key
            .rsplit_once("' ")
            .unwrap_or(("", value_and_key));
        pairs.push((key, value.replace("\\'", "'")));
        key = next_key.trim().to_string();
        rest = after;
    }
    // The last value runs to the end, less its closing quote (whatever that character is).
    let last = &rest[..rest.len().saturating_sub(1)];
    pairs.push((key, last.replace("\\'", "'")));
    for (key, value) in pairs {
        if !key_ok(&key) {
            return Err(protocol(format!("Invalid chars in property name: {key:?}")));
        }
        if !value_ok(&value) {
            return Err(protocol(format!(
                "Invalid chars in property value: {value:?}"
            )));
        }
        match key.strip_prefix('_') {
            Some(option) => options.insert(option.to_string(), value),
            None => properties.insert(key, value),
        };
    }
    Ok((properties, options))
}

impl State {
    /// Answer one request: an injected fault if one matches, else the method.
    pub(super) fn handle(&mut self, api: Api, req: &Request) -> Outcome {
        let fault = self.faults.iter().find(|f| {
            f.method == req.method
                && f.dest == req.dest
                && f.arg.as_deref().is_none_or(|a| a == req.arg)
        });
        if let Some(fault) = fault {
            return fault.outcome.clone();
        }
        match self.dispatch(api, req) {
            Ok(reply) => Outcome::Ok(reply.into_bytes()),
            Err(Fail::Exc { ty, msg }) => Outcome::Exception { ty, message: msg },
            Err(Fail::Abort(why)) => Outcome::Aborted(why),
        }
    }

    /// `decode_vm`: a qube by name (checked by `validate_name`) or, on R4.3, by
    /// `uuid:UUID`; returns its name.
    fn decode_vm(&self, vm: &str) -> Result<String, Fail> {
        if let (Release::R4_3, Some(uuid)) = (self.host.release, vm.strip_prefix("uuid:")) {
            let groups: Vec<&str> = uuid.split('-').collect();
            let well_formed = vm.len() == 41
                && groups.len() == 5
                && [8, 4, 4, 4, 12]
                    .iter()
                    .zip(&groups)
                    .all(|(n, g)| g.len() == *n)
                && uuid
                    .bytes()
                    .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !well_formed {
                return Err(Fail::exc(
                    "QubesVMInvalidUUIDError",
                    format!("VM UUID is not valid: '{uuid}'"),
                ));
            }
            return self
                .host
                .vms
                .iter()
                .find(|(_, v)| v.uuid == uuid)
                .map(|(name, _)| name.clone())
                .ok_or_else(|| {
                    Fail::exc("QubesVMNotFoundError", format!("No such domain: '{vm}'"))
                });
        }
        validate_name(vm)?;
        if self.host.vms.contains_key(vm) {
            Ok(vm.to_string())
        } else {
            Err(Fail::exc(
                "QubesVMNotFoundError",
                format!("No such domain: '{vm}'"),
            ))
        }
    }

    fn dispatch(&mut self, api: Api, req: &Request) -> Result<String, Fail> {
        self.decode_vm(req.src)?;
        let dest = self.decode_vm(req.dest)?;
        let (method, spec) = lookup(api, self.host.release, req.method)
            .ok_or_else(|| protocol(format!("no such method: '{}'", req.method)))?;
        match (spec.wants_payload, req.payload.is_empty()) {
            (Some(true), true) => return Err(protocol("expected payload")),
            (Some(false), false) => return Err(protocol("unexpected payload")),
            _ => {}
        }
        match (spec.wants_arg, req.arg.is_empty()) {
            (Some(true), true) => return Err(protocol("expected an argument")),
            (Some(false), false) => return Err(protocol("unexpected argument")),
            _ => {}
        }
        let is_admin = self.host.vms[&dest].class == VmClass::AdminVM;
        match (spec.dest_adminvm, is_admin) {
            (Some(true), false) => return Err(protocol("expected destination to be AdminVM")),
            (Some(false), true) => return Err(protocol("expected destination to not be AdminVM")),
            _ => {}
        }
        let (dest, arg, payload) = (dest.as_str(), req.arg, req.payload);
        let host = &mut self.host;
        let done = |()| String::new();
        match method {
            Method::VmList => Ok(self.vm_list(dest)),
            Method::LabelList => Ok(host.labels.iter().map(|l| format!("{l}\n")).collect()),
            Method::GlobalPropertyGet => global_property(host, arg),
            Method::PoolList => Ok(host.pools.keys().map(|p| format!("{p}\n")).collect()),
            Method::PoolInfo => pool_info(host, arg),
            Method::Create { class, in_pool } => {
                self.create(class, in_pool, req.src, arg, payload).map(done)
            }
            Method::Remove => self.remove(dest).map(done),
            Method::PropertyList => Ok(properties::list(host, dest)),
            Method::PropertyGet => properties::get(host, dest, arg),
            Method::PropertySet => properties::set(host, dest, arg, payload).map(done),
            Method::PropertyReset => properties::reset(host, dest, arg).map(done),
            Method::FeatureList => Ok(host.vms[dest]
                .features
                .keys()
                .map(|f| format!("{f}\n"))
                .collect()),
            Method::FeatureGet => host.vms[dest]
                .features
                .get(arg)
                .cloned()
                .ok_or_else(|| feature_not_found(dest, arg)),
            Method::FeatureSet => self.feature_set(dest, arg, payload).map(done),
            Method::FeatureRemove => {
                let features = &mut host.vms.get_mut(dest).expect("dest").features;
                features
                    .remove(arg)
                    .map(|_| String::new())
                    .ok_or_else(|| feature_not_found(dest, arg))
            }
            Method::TagList => Ok(host.vms[dest]
                .tags
                .iter()
                .map(|t| format!("{t}\n"))
                .collect()),
            Method::TagGet => {
                validate_tag(arg)?;
                Ok(if host.vms[dest].tags.contains(arg) {
                    "1"
                } else {
                    "0"
                }
                .into())
            }
            Method::TagSet => {
                validate_tag(arg)?;
                host.vms
                    .get_mut(dest)
                    .expect("dest")
                    .tags
                    .insert(arg.into());
                Ok(String::new())
            }
            Method::TagRemove => {
                validate_tag(arg)?;
                if host.vms.get_mut(dest).expect("dest").tags.remove(arg) {
                    Ok(String::new())
                } else {
                    Err(Fail::exc(
                        "QubesTagNotFoundError",
                        format!("Tag not set for domain {dest}: {arg}"),
                    ))
                }
            }
            Method::FirewallGet => Ok(host.vms[dest]
                .firewall
                .iter()
                .map(|r| format!("{r}\n"))
                .collect()),
            Method::FirewallSet => self.firewall_set(dest, payload).map(done),
            Method::NotesGet => Ok(host.vms[dest].notes.clone()),
            Method::NotesSet => self.notes_set(dest, payload).map(done),
            Method::VolumeList => {
                let volumes = &host.vms[dest].volumes;
                Ok(VOLUME_ORDER
                    .iter()
                    .filter(|v| volumes.contains_key(**v))
                    .map(|v| format!("{v}\n"))
                    .collect())
            }
            Method::VolumeInfo => self.volume_info(dest, arg),
            Method::DeviceAssign(bus) => self.device_assign(dest, &bus, arg, payload).map(done),
            Method::DeviceAttach(bus) => self.device_attach(dest, &bus, arg, payload).map(done),
            Method::DeviceAssigned(bus) => Ok(device_list(host, dest, &bus)),
            Method::ImportBegin => self.import_begin(dest, arg, payload),
            Method::ImportEnd => self.import_end(dest, arg, payload).map(done),
        }
    }

    /// `admin.vm.List`: every qube when asked of dom0, else just the destination.
    fn vm_list(&self, dest: &str) -> String {
        let host = &self.host;
        host.vms
            .iter()
            .filter(|(name, _)| dest == "dom0" || *name == dest)
            .map(|(name, vm)| {
                let state = if vm.class == VmClass::AdminVM || vm.running {
                    "Running"
                } else {
                    "Halted"
                };
                let uuid = match host.release {
                    Release::R4_3 => format!(" uuid={}", vm.uuid),
                    Release::R4_2 => String::new(),
                };
                format!("{name} class={} state={state}{uuid}\n", vm.class.name())
            })
            .collect()
    }

    /// `admin.vm.Create.CLASS` / `admin.vm.CreateInPool.CLASS` (`_vm_create` and
    /// `Qubes.add_new_vm`).
    fn create(
        &mut self,
        class: VmClass,
        in_pool: bool,
        src: &str,
        arg: &str,
        payload: &[u8],
    ) -> Result<(), Fail> {
        let host = &self.host;
        let mut template = None;
        let mut invalid_template = false;
        if !arg.is_empty() {
            if !class.has_template() {
                return Err(protocol(format!(
                    "{} cannot be based on template",
                    class.name()
                )));
            }
            if host.vms.contains_key(arg) {
                template = Some(arg.to_string());
            } else {
                invalid_template = true;
            }
        }
        let payload = std::str::from_utf8(payload)
            .ok()
            .filter(|p| p.is_ascii())
            .ok_or_else(|| protocol("Parameters contains non-ASCII characters"))?;
        let (mut name, mut label, mut invalid_label) = (None, None, false);
        let mut pools = PoolChoice::default();
        let mut invalid_pool = None;
        for param in payload.split(' ') {
            let Some((key, value)) = param.split_once('=') else {
                return Err(Fail::abort(format!(
                    "ValueError: creation parameter {param:?} has no '='"
                )));
            };
            // Only found values count as given (`kwargs` in `_vm_create`).
            let given = match key {
                "name" => name.is_some(),
                "label" => label.is_some(),
                "template" => template.is_some(),
                _ => false,
            };
            if given {
                return Err(protocol("Options must be unique"));
            }
            let volume = key.strip_prefix("pool:");
            let mut pick_pool = |value: &str| {
                if !host.pools.contains_key(value) {
                    invalid_pool = Some(format!("Unknown storage pool {value}"));
                }
                value.to_string()
            };
            match (key, volume) {
                ("name", _) => {
                    validate_name(value)?;
                    name = Some(value.to_string());
                }
                ("label", _) => {
                    validate_label_name(value)?;
                    if host.labels.iter().any(|l| l == value) {
                        label = Some(value.to_string());
                    } else {
                        invalid_label = true;
                    }
                }
                ("pool", _) if in_pool => {
                    if pools.all.is_some() {
                        return Err(protocol("Option 'pool' must be unique"));
                    }
                    pools.all = Some(pick_pool(value));
                }
                (_, Some(volume)) if in_pool => {
                    if !VOLUME_ORDER.contains(&volume) {
                        return Err(protocol(
                            "Volume must be one of: root, private, volatile, kernel",
                        ));
                    }
                    if pools.per_volume.contains_key(volume) {
                        return Err(protocol(format!("Option 'pool:{volume}' must be unique")));
                    }
                    let pool = pick_pool(value);
                    pools.per_volume.insert(volume.to_string(), pool);
                }
                ("pool", _) | (_, Some(_)) => {
                    return Err(protocol("Pool option specified but 'allow_pool' is False"))
                }
                _ => return Err(protocol("Options does not match: name, label, pool, pool:")),
            }
        }
        // An unknown label is not stored, so it fails as a missing one (the
        // QubesLabelNotFoundError below needs an unknown label and then a known one).
        let name = name.ok_or_else(|| protocol("Creation requested without key: name"))?;
        let label = label.ok_or_else(|| protocol("Creation requested without key: label"))?;
        if pools.all.is_some() && !pools.per_volume.is_empty() {
            return Err(protocol(
                "Conflicting options specified: 'pool=', 'pool:volume='",
            ));
        }
        if host.vms.contains_key(&name) {
            return Err(Fail::exc(
                "QubesVMAlreadyExistsError",
                format!("Qube already exists: {name}"),
            ));
        }
        if invalid_template {
            return Err(Fail::exc(
                "QubesVMNotFoundError",
                format!("No such domain: '{arg}'"),
            ));
        }
        if invalid_label {
            return Err(Fail::exc(
                "QubesLabelNotFoundError",
                "Label does not exist: untrusted label",
            ));
        }
        if let Some(msg) = invalid_pool {
            return Err(Fail::exc("QubesException", msg));
        }
        if class.has_template() && template.is_none() {
            let default = match class {
                VmClass::DispVM => &host.default_dispvm,
                _ => &host.default_template,
            };
            template = Some(default.clone().ok_or_else(|| {
                Fail::exc(
                    "QubesValueError",
                    "Template for the qube not specified, nor default template set.",
                )
            })?);
        }
        if let Some(t) = &template {
            properties::check_vm(host, &name, class, "template", t.clone())?;
        }
        let mut vm = host.new_vm(&name, class, template.as_deref(), &label, &pools)?;
        vm.tags.insert(format!("created-by-{src}"));
        self.host.vms.insert(name, vm);
        Ok(())
    }

    /// `admin.vm.Remove`, refused while the qube is dom0, installed by rpm, or used by
    /// another qube or a global default (`Qubes.on_domain_pre_deleted`).
    fn remove(&mut self, dest: &str) -> Result<(), Fail> {
        let host = &self.host;
        let in_use = |msg: String| Err(Fail::exc("QubesVMInUseError", msg));
        if dest == "dom0" {
            return in_use("'dom0' cannot be removed".into());
        }
        if properties::value(host, dest, "installed_by_rpm").as_deref() == Some("True") {
            return in_use(format!("VM installed by package manager: {dest}"));
        }
        let refs = [
            "template",
            "netvm",
            "default_dispvm",
            "management_dispvm",
            "guivm",
            "audiovm",
        ];
        let used_by_qube = host.vms.keys().filter(|n| *n != dest).any(|other| {
            refs.iter()
                .any(|p| properties::vm_value(host, other, p).as_deref() == Some(dest))
        });
        let globals = [
            &host.default_template,
            &host.default_netvm,
            &host.default_dispvm,
        ];
        if used_by_qube || globals.iter().any(|g| g.as_deref() == Some(dest)) {
            return in_use(format!(
                "Domain is in use: '{dest}';  see 'journalctl -u qubesd -e' in dom0 for details"
            ));
        }
        let ports: Vec<&str> = host
            .vms
            .values()
            .flat_map(|v| &v.devices)
            .filter(|a| a.backend == dest)
            .map(|a| a.port.as_str())
            .collect();
        if !ports.is_empty() {
            return in_use(format!(
                "VM has devices assigned to other VMs: {}",
                ports.join(", ")
            ));
        }
        self.host.vms.remove(dest);
        let dir = self.volumes.join(dest);
        if dir.exists() {
            fs::remove_dir_all(&dir).expect("removing the qube's volume files");
        }
        Ok(())
    }

    /// `admin.vm.feature.Set`.
    fn feature_set(&mut self, dest: &str, name: &str, payload: &[u8]) -> Result<(), Fail> {
        let value = std::str::from_utf8(payload)
            .ok()
            .filter(|v| v.is_ascii())
            .ok_or_else(|| protocol("Feature value contains non-ASCII characters"))?;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        {
            return Err(protocol("feature name contains illegal characters"));
        }
        if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
            return Err(protocol(format!(
                "{name} value contains illegal characters"
            )));
        }
        let vm = self.host.vms.get_mut(dest).expect("dest");
        vm.features.insert(name.into(), value.into());
        Ok(())
    }

    /// `admin.vm.firewall.Set`: one rule a line; all or nothing.
    fn firewall_set(&mut self, dest: &str, payload: &[u8]) -> Result<(), Fail> {
        let text = std::str::from_utf8(payload)
            .ok()
            .filter(|t| t.is_ascii())
            .ok_or_else(|| protocol("Rules contains non-ASCII characters"))?;
        let rules: Vec<String> = text.lines().map(String::from).collect();
        for rule in &rules {
            check_firewall_rule(rule)?;
        }
        self.host.vms.get_mut(dest).expect("dest").firewall = rules;
        Ok(())
    }

    /// `admin.vm.notes.Set`: UTF-8, at most 256000 bytes, characters unsafe for display
    /// (here: control characters other than tab and newline) replaced by `_`.
    fn notes_set(&mut self, dest: &str, payload: &[u8]) -> Result<(), Fail> {
        if payload.len() > 256_000 {
            return Err(protocol(format!(
                "Maximum note size is 256000 bytes ({} bytes received)",
                payload.len()
            )));
        }
        let text = std::str::from_utf8(payload)
            .map_err(|e| protocol(format!("Unable to sanitise qube notes: {e}")))?;
        let notes = text
            .chars()
            .map(|c| {
                if c.is_control() && c != '\t' && c != '\n' {
                    '_'
                } else {
                    c
                }
            })
            .collect();
        self.host.vms.get_mut(dest).expect("dest").notes = notes;
        Ok(())
    }

    /// `admin.vm.volume.Info`.
    fn volume_info(&self, dest: &str, arg: &str) -> Result<String, Fail> {
        let volume = self.host.vms[dest].volumes.get(arg).ok_or_else(|| {
            Fail::exc(
                "PermissionDenied",
                format!("Argument not in '{dest} volumes'"),
            )
        })?;
        let py = |b: bool| if b { "True" } else { "False" };
        Ok(format!(
            "pool={}\nvid={}\nsize={}\nusage=0\nrw={}\nsource={}\npath={}\nsave_on_stop={}\n\
             snap_on_start={}\nrevisions_to_keep={}\nephemeral={}\nis_outdated=False\n",
            volume.pool,
            volume.vid,
            volume.size,
            py(volume.rw),
            volume.source.as_deref().unwrap_or(""),
            volume.path,
            py(volume.save_on_stop),
            py(volume.snap_on_start),
            volume.revisions_to_keep,
            py(volume.ephemeral),
        ))
    }

    /// The device a qrexec argument `BACKEND+PORT[:DEVID]` (`+` also between port and
    /// device id; `_` for `*`) names: backend, port, device id. An unknown backend is a
    /// KeyError in qubesd (dropped connection).
    fn device_arg(&self, arg: &str) -> Result<(String, String, String), Fail> {
        let (backend, identity) = arg.split_once('+').ok_or_else(|| {
            Fail::abort(format!("ValueError: device argument {arg:?} without '+'"))
        })?;
        let backend = if backend == "_" { "*" } else { backend };
        if backend != "*" && !self.host.vms.contains_key(backend) {
            return Err(Fail::abort(format!("KeyError: backend {backend:?}")));
        }
        let identity = identity.replace('+', ":");
        let (port, devid) = identity.split_once(':').unwrap_or((&identity, ""));
        let star = |s: &str| {
            if s == "_" || s.is_empty() {
                "*".to_string()
            } else {
                s.to_string()
            }
        };
        Ok((backend.to_string(), star(port), star(devid)))
    }

    /// The R4.3 assignment payload, checked against the device the argument names
    /// (`DeviceAssignment.deserialize`; any error there is a ProtocolError).
    fn assignment(&self, bus: &str, arg: &str, payload: &[u8]) -> Result<Assignment, Fail> {
        let (backend, port, expected_id) = self.device_arg(arg)?;
        let (mut props, options) = unpack_device_properties(payload)?;
        let mut expect = |key: &str, want: &str, what: &str| match props.remove(key) {
            Some(got) if got != want => Err(Fail::exc(
                "ProtocolError",
                format!("Got {what} {got} when expected {want}."),
            )),
            _ => Ok(()),
        };
        expect("backend_domain", &backend, "device exposed by")?;
        expect("port_id", &port, "device from port:")?;
        expect("devclass", bus, "device of class")?;
        let device_id = match props.remove("device_id") {
            Some(got) if expected_id != "*" && got != expected_id => {
                return Err(protocol(format!(
                    "Unrecognized device identity '{got}' expected '{expected_id}'"
                )))
            }
            Some(got) => got,
            None => expected_id,
        };
        let mode = props.remove("mode").unwrap_or_else(|| "manual".into());
        if !["manual", "ask-to-attach", "auto-attach", "required"].contains(&mode.as_str()) {
            return Err(protocol(format!("'{mode}' is not a valid AssignmentMode")));
        }
        props.remove("frontend_domain");
        if let Some(key) = props.keys().next() {
            return Err(protocol(format!(
                "DeviceAssignment.__init__() got an unexpected keyword argument '{key}'"
            )));
        }
        Ok(Assignment {
            bus: bus.into(),
            backend,
            port,
            device_id,
            mode,
            options,
        })
    }

    /// R4.3 `admin.vm.device.BUS.Assign`.
    fn device_assign(
        &mut self,
        dest: &str,
        bus: &str,
        arg: &str,
        payload: &[u8],
    ) -> Result<(), Fail> {
        let assignment = self.assignment(bus, arg, payload)?;
        let vm = self.host.vms.get_mut(dest).expect("dest");
        let same = |a: &Assignment| {
            (&a.bus, &a.backend, &a.port, &a.device_id)
                == (
                    &assignment.bus,
                    &assignment.backend,
                    &assignment.port,
                    &assignment.device_id,
                )
        };
        if vm.devices.iter().any(same) {
            return Err(Fail::exc(
                "DeviceAlreadyAssigned",
                format!(
                    "{bus} device {}:{}:{} already assigned to {dest}",
                    assignment.backend, assignment.port, assignment.device_id
                ),
            ));
        }
        if assignment.mode == "manual" {
            return Err(Fail::abort(
                "ValueError: Only auto-attachable devices can be assigned.",
            ));
        }
        vm.devices.push(assignment);
        Ok(())
    }

    /// `admin.vm.device.BUS.Attach`: on R4.3 only for running qubes (so always refused
    /// here); on R4.2 `persistent=True` makes a persistent assignment of a halted qube.
    fn device_attach(
        &mut self,
        dest: &str,
        bus: &str,
        arg: &str,
        payload: &[u8],
    ) -> Result<(), Fail> {
        if self.host.release == Release::R4_3 {
            self.assignment(bus, arg, payload)?;
            return Err(Fail::exc(
                "QubesVMNotRunningError",
                "VM not running, cannot attach device, do you mean `assign`?",
            ));
        }
        let text = std::str::from_utf8(payload)
            .ok()
            .filter(|t| t.is_ascii())
            .ok_or_else(|| Fail::abort("UnicodeDecodeError: attach options"))?;
        let mut options = BTreeMap::new();
        let mut persistent = false;
        for option in text.split_ascii_whitespace() {
            let (key, value) = option
                .split_once('=')
                .ok_or_else(|| protocol("Invalid options format"))?;
            if key == "persistent" {
                persistent = properties::parse_bool(value)?;
                continue;
            }
            let key_ok = |c: char| c.is_ascii_alphanumeric() || "-_.".contains(c);
            if !key.chars().all(key_ok) {
                return Err(protocol("Invalid chars in option name"));
            }
            if !value.chars().all(|c| key_ok(c) || ",+:".contains(c)) {
                return Err(protocol("Invalid chars in option value"));
            }
            options.insert(key.to_string(), value.to_string());
        }
        let (backend, ident) = arg.split_once('+').ok_or_else(|| {
            Fail::abort(format!("ValueError: device argument {arg:?} without '+'"))
        })?;
        if !self.host.vms.contains_key(backend) {
            return Err(Fail::abort(format!("KeyError: backend {backend:?}")));
        }
        if !persistent {
            return Err(Fail::exc(
                "QubesVMNotRunningError",
                "VM not running, can only attach device with persistent flag",
            ));
        }
        let vm = self.host.vms.get_mut(dest).expect("dest");
        if vm
            .devices
            .iter()
            .any(|a| a.bus == bus && a.backend == backend && a.port == ident)
        {
            return Err(Fail::exc(
                "DeviceAlreadyAttached",
                format!("device {backend}:{ident} of class {bus} already attached to {dest}"),
            ));
        }
        vm.devices.push(Assignment {
            bus: bus.into(),
            backend: backend.into(),
            port: ident.into(),
            device_id: "*".into(),
            mode: "auto-attach".into(),
            options,
        });
        Ok(())
    }

    /// `dest`'s volume `arg`, or the import methods' error for a volume it lacks.
    fn import_volume(&self, dest: &str, arg: &str) -> Result<Volume, Fail> {
        self.host.vms[dest]
            .volumes
            .get(arg)
            .cloned()
            .ok_or_else(|| protocol(format!("Argument not in {dest} volumes")))
    }

    /// `internal.vm.volume.ImportBegin`: size = the payload (or the volume's size when
    /// empty); create a sparse file of that size for the data and reply `SIZE PATH`.
    /// Refused for a volume that is not `save_on_stop` (the file driver's rule; applied to
    /// every pool here) and while an import into the volume is in progress (lvm_thin:
    /// StoragePoolException; file drivers: an IOError, dropped connection).
    fn import_begin(&mut self, dest: &str, arg: &str, payload: &[u8]) -> Result<String, Fail> {
        let volume = self.import_volume(dest, arg)?;
        let size = if payload.is_empty() {
            volume.size
        } else {
            validate_number(payload, "size of new data")?
        };
        if !volume.save_on_stop {
            return Err(Fail::exc(
                "StoragePoolException",
                format!(
                    "Can not import into save_on_stop=False volume {}",
                    volume.vid
                ),
            ));
        }
        let path = self.volumes.join(dest).join(format!("{arg}-import.img"));
        if path.exists() {
            return Err(match self.host.pools[&volume.pool].driver {
                Driver::LvmThin => Fail::exc(
                    "StoragePoolException",
                    format!("Import operation in progress on {}", volume.vid),
                ),
                _ => Fail::abort(format!("IOError: Volume {} already exists", path.display())),
            });
        }
        fs::create_dir_all(path.parent().expect("parent")).expect("creating the volume directory");
        fs::File::create(&path)
            .and_then(|f| f.set_len(size))
            .expect("creating the import file");
        let path = path.to_str().expect("UTF-8 temporary path").to_string();
        if path.contains(' ') {
            return Err(protocol("Path contains whitespace"));
        }
        self.imports.push(Import {
            vm: dest.into(),
            volume: arg.into(),
            size,
            state: ImportState::InProgress,
            sha256: None,
        });
        Ok(format!("{size} {path}"))
    }

    /// `internal.vm.volume.ImportEnd`: payload `ok` commits the data (the volume takes
    /// the new size), anything else (`fail\nREASON`) discards it and raises
    /// `QubesException("Data import failed: REASON")`.
    fn import_end(&mut self, dest: &str, arg: &str, payload: &[u8]) -> Result<(), Fail> {
        let volume = self.import_volume(dest, arg)?;
        let dir = self.volumes.join(dest);
        let import_path = dir.join(format!("{arg}-import.img"));
        if !import_path.exists() {
            return Err(match self.host.pools[&volume.pool].driver {
                Driver::LvmThin => Fail::exc(
                    "StoragePoolException",
                    format!("No import operation in progress on {}", volume.vid),
                ),
                _ => Fail::abort("FileNotFoundError: no import file"),
            });
        }
        let record = self
            .imports
            .iter_mut()
            .rev()
            .find(|i| i.vm == dest && i.volume == arg && i.state == ImportState::InProgress)
            .expect("an import in progress has a record");
        if payload == b"ok" {
            let data_path = dir.join(format!("{arg}.img"));
            fs::rename(&import_path, &data_path).expect("committing the import");
            // The digest is computed when asked ([`MockQubesd::imports`]), so that the
            // commit costs what a real one does (benchmarks time restores through this).
            record.sha256 = None;
            record.state = ImportState::Succeeded;
            let size = record.size;
            let vm = self.host.vms.get_mut(dest).expect("dest");
            vm.volumes.get_mut(arg).expect("volume").size = size;
            Ok(())
        } else {
            fs::remove_file(&import_path).expect("discarding the import");
            let text = String::from_utf8_lossy(payload);
            let reason = text
                .split_once('\n')
                .map(|(_, r)| r)
                .unwrap_or("")
                .to_string();
            record.state = ImportState::Failed(reason.clone());
            Err(Fail::exc(
                "QubesException",
                format!("Data import failed: {reason}"),
            ))
        }
    }
}

fn feature_not_found(dest: &str, feature: &str) -> Fail {
    Fail::exc(
        "QubesFeatureNotFoundError",
        format!("Feature not set for domain {dest}: {feature}"),
    )
}
