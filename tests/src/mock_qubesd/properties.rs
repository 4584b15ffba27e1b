//! Qube properties: which class has which, their types and defaults, and the checks
//! `admin.vm.property.Set` / `Reset` apply.
//!
//! Facts modelled (qubes-core-admin): the Get reply `default=BOOL type=TYPE VALUE`
//! (`qubes/api/admin.py` `_serialize_property`); value sanitising (`qubes/__init__.py`
//! `property.sanitize`, `property.bool`); the setters of `qubes/vm/qubesvm.py`
//! (`_setter_positive_int`, `_setter_non_negative_int`, `_setter_kernel`,
//! `_setter_kernelopts`, `_setter_default_user`, `_setter_virt_mode`, `_setter_kbd_layout`,
//! `_setter_denied_list`), `qubes/vm/mix/net.py` (`_setter_mac`, `_setter_netvm`,
//! `_setter_provides_network`), `qubes/vm/__init__.py` (`VMProperty.__set__`,
//! `setter_label`, `validate_disposable_template`), `qubes/vm/dispvm.py`
//! (`_setter_template`), `qubes/vm/appvm.py` (`on_property_pre_reset_template`) and the
//! write-once / forbidden properties. Defaults are fixed values (upstream derives some
//! from the template or the host's memory).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::host::{Host, VmClass};
use super::Fail;

/// A property's type as `admin.vm.property.Get` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Str,
    Int,
    Bool,
    /// A qube (or none: the empty string).
    Vm,
    Label,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Str => "str",
            Kind::Int => "int",
            Kind::Bool => "bool",
            Kind::Vm => "vm",
            Kind::Label => "label",
        }
    }
}

/// Which classes have a property.
enum Scope {
    /// Every class, dom0 (AdminVM) included.
    All,
    /// Every class but AdminVM.
    Qubes,
    Only(&'static [VmClass]),
}

struct Def {
    name: &'static str,
    kind: Kind,
    scope: Scope,
}

const fn def(name: &'static str, kind: Kind, scope: Scope) -> Def {
    Def { name, kind, scope }
}

/// The properties the mock knows, sorted by name.
const PROPERTIES: &[Def] = &[
    def("audiovm", Kind::Vm, Scope::Qubes),
    def("auto_cleanup", Kind::Bool, Scope::Only(&[VmClass::DispVM])),
    def("autostart", Kind::Bool, Scope::Qubes),
    def("backup_timestamp", Kind::Int, Scope::Qubes),
    def("debug", Kind::Bool, Scope::Qubes),
    def("default_dispvm", Kind::Vm, Scope::All),
    def("default_user", Kind::Str, Scope::Qubes),
    def("devices_denied", Kind::Str, Scope::All),
    def("dispid", Kind::Int, Scope::Only(&[VmClass::DispVM])),
    def("guivm", Kind::Vm, Scope::Qubes),
    def("include_in_backups", Kind::Bool, Scope::All),
    def("installed_by_rpm", Kind::Bool, Scope::Qubes),
    def("ip", Kind::Str, Scope::Qubes),
    def("ip6", Kind::Str, Scope::Qubes),
    def("kernel", Kind::Str, Scope::Qubes),
    def("kernelopts", Kind::Str, Scope::Qubes),
    def("keyboard_layout", Kind::Str, Scope::All),
    def("label", Kind::Label, Scope::All),
    def("mac", Kind::Str, Scope::Qubes),
    def("management_dispvm", Kind::Vm, Scope::Qubes),
    def("maxmem", Kind::Int, Scope::All),
    def("memory", Kind::Int, Scope::Qubes),
    def("name", Kind::Str, Scope::All),
    def("netvm", Kind::Vm, Scope::Qubes),
    def("provides_network", Kind::Bool, Scope::Qubes),
    def("qid", Kind::Int, Scope::All),
    def("qrexec_timeout", Kind::Int, Scope::Qubes),
    def("shutdown_timeout", Kind::Int, Scope::Qubes),
    def("stubdom_mem", Kind::Int, Scope::Qubes),
    def(
        "template",
        Kind::Vm,
        Scope::Only(&[VmClass::AppVM, VmClass::DispVM]),
    ),
    def(
        "template_for_dispvms",
        Kind::Bool,
        Scope::Only(&[VmClass::AppVM, VmClass::StandaloneVM]),
    ),
    def("updateable", Kind::Bool, Scope::All),
    def("uuid", Kind::Str, Scope::All),
    def("vcpus", Kind::Int, Scope::Qubes),
    def("virt_mode", Kind::Str, Scope::Qubes),
];

/// Properties set once at creation (`write_once=True`): Set and Reset raise an
/// AttributeError in qubesd, which drops the connection.
const WRITE_ONCE: &[&str] = &["dispid", "name", "qid", "uuid"];

fn lookup(class: VmClass, name: &str) -> Option<&'static Def> {
    PROPERTIES.iter().find(|d| {
        d.name == name
            && match d.scope {
                Scope::All => true,
                Scope::Qubes => class != VmClass::AdminVM,
                Scope::Only(classes) => classes.contains(&class),
            }
    })
}

fn no_such_property(vm: &str, prop: &str) -> Fail {
    Fail::exc(
        "QubesNoSuchPropertyError",
        format!("Invalid property '{prop}' of {vm}"),
    )
}

fn value_error(msg: impl Into<String>) -> Fail {
    Fail::exc("QubesValueError", msg)
}

fn property_value_error(msg: impl Into<String>) -> Fail {
    Fail::exc("QubesPropertyValueError", msg)
}

/// `admin.vm.property.List`: the names, one a line.
pub(super) fn list(host: &Host, vm: &str) -> String {
    let class = host.vms[vm].class;
    PROPERTIES
        .iter()
        .filter(|d| lookup(class, d.name).is_some())
        .map(|d| format!("{}\n", d.name))
        .collect()
}

/// A property's value: the explicit one, else the default; `None` when it has neither
/// (for qube-valued properties the empty string means "none").
pub(super) fn value(host: &Host, vm: &str, prop: &str) -> Option<String> {
    let v = &host.vms[vm];
    match prop {
        "name" => return Some(vm.to_string()),
        "qid" => return Some(v.qid.to_string()),
        "uuid" => return Some(v.uuid.clone()),
        _ => {}
    }
    if let Some(value) = v.properties.get(prop) {
        return Some(value.clone());
    }
    let fixed = |s: &str| Some(s.to_string());
    let vm_default = |d: &Option<String>| Some(d.clone().unwrap_or_default());
    match prop {
        "netvm" if v.class == VmClass::TemplateVM => fixed(""),
        "netvm" => vm_default(&host.default_netvm),
        "default_dispvm" if v.class == VmClass::DispVM => v.properties.get("template").cloned(),
        "default_dispvm" | "management_dispvm" => vm_default(&host.default_dispvm),
        "guivm" | "audiovm" => fixed("dom0"),
        "memory" => fixed("400"),
        "maxmem" => fixed("4000"),
        "vcpus" => fixed("2"),
        "kernel" => Some(host.default_kernel.clone()),
        "kernelopts" | "devices_denied" => fixed(""),
        "virt_mode" => fixed("pvh"),
        "qrexec_timeout" | "shutdown_timeout" => fixed("60"),
        "include_in_backups" => fixed("True"),
        "autostart"
        | "debug"
        | "installed_by_rpm"
        | "provides_network"
        | "template_for_dispvms"
        | "auto_cleanup" => fixed("False"),
        "updateable" => fixed(if v.class.has_template() {
            "False"
        } else {
            "True"
        }),
        "default_user" => fixed("user"),
        "mac" => fixed("00:16:3e:5e:6c:00"),
        "keyboard_layout" => fixed("us++"),
        _ => None,
    }
}

/// A qube-valued property as a qube name (`None` for none or no value).
pub(super) fn vm_value(host: &Host, vm: &str, prop: &str) -> Option<String> {
    value(host, vm, prop).filter(|v| !v.is_empty())
}

/// `admin.vm.property.Get`: `default=True|False type=TYPE VALUE`.
pub(super) fn get(host: &Host, vm: &str, prop: &str) -> Result<String, Fail> {
    let v = &host.vms[vm];
    let def = lookup(v.class, prop).ok_or_else(|| no_such_property(vm, prop))?;
    let is_default = match prop {
        "name" | "qid" | "uuid" => v.class == VmClass::AdminVM,
        _ => !v.properties.contains_key(prop),
    };
    let is_default = if is_default { "True" } else { "False" };
    Ok(format!(
        "default={is_default} type={} {}",
        def.kind.name(),
        value(host, vm, prop).unwrap_or_default()
    ))
}

/// The qubes whose network goes through `netvm`, directly or not.
fn connected_to(host: &Host, netvm: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut todo = vec![netvm.to_string()];
    while let Some(up) = todo.pop() {
        for name in host.vms.keys() {
            if vm_value(host, name, "netvm").as_deref() == Some(&up) && found.insert(name.clone()) {
                todo.push(name.clone());
            }
        }
    }
    found
}

/// Python's `int(str)` for the values a client sends: optional sign, digits, surrounding
/// whitespace.
fn parse_int(s: &str) -> Option<i64> {
    let t = s.trim();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    t.parse().ok()
}

/// `qubes.property.bool`.
pub(super) fn parse_bool(s: &str) -> Result<bool, Fail> {
    match s.to_ascii_lowercase().as_str() {
        "0" | "no" | "false" | "off" => Ok(false),
        "1" | "yes" | "true" | "on" => Ok(true),
        _ => Err(value_error(format!(
            "Invalid literal for boolean property: '{s}'"
        ))),
    }
}

/// `admin.vm.property.Set`: sanitise the payload by type, run the property's setter and
/// store the canonical text.
pub(super) fn set(host: &mut Host, vm: &str, prop: &str, payload: &[u8]) -> Result<(), Fail> {
    let class = host.vms[vm].class;
    let def = lookup(class, prop).ok_or_else(|| no_such_property(vm, prop))?;
    let raw = std::str::from_utf8(payload)
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or_else(|| value_error("Non-ASCII bytes in property value"))?;
    let value = match (def.kind, prop) {
        (Kind::Bool, _) => if parse_bool(raw)? { "True" } else { "False" }.to_string(),
        (Kind::Int, _) => parse_int(raw)
            .ok_or_else(|| value_error("Failed to parse property value as int"))?
            .to_string(),
        (_, "ip") => raw
            .parse::<Ipv4Addr>()
            .map_err(|_| value_error("Failed to parse property value as IPv4Address"))?
            .to_string(),
        (_, "ip6") => raw
            .parse::<Ipv6Addr>()
            .map_err(|_| value_error("Failed to parse property value as IPv6Address"))?
            .to_string(),
        _ => {
            // Python's string.printable: ASCII graphic characters and whitespace.
            if !raw
                .bytes()
                .all(|b| b.is_ascii_graphic() || b" \t\n\r\x0b\x0c".contains(&b))
            {
                return Err(value_error("Invalid characters in property value"));
            }
            raw.to_string()
        }
    };
    let value = check(host, vm, class, prop, def.kind, value)?;
    host.vms
        .get_mut(vm)
        .expect("qube exists")
        .properties
        .insert(prop.to_string(), value);
    Ok(())
}

/// The setter of `prop`: validate a sanitised value, return what is stored.
fn check(
    host: &Host,
    vm: &str,
    class: VmClass,
    prop: &str,
    kind: Kind,
    value: String,
) -> Result<String, Fail> {
    if WRITE_ONCE.contains(&prop) {
        return Err(Fail::abort(format!(
            "AttributeError: property '{prop}' is write-once and already set"
        )));
    }
    let int = || parse_int(&value).expect("sanitised");
    match prop {
        "updateable" => Err(property_value_error(format!(
            "property 'updateable' on {} instance cannot be set",
            class.name()
        ))),
        "label" => host.label(&value).map(String::from).ok_or_else(|| {
            Fail::exc(
                "QubesLabelNotFoundError",
                format!("Label does not exist: {value}"),
            )
        }),
        _ if kind == Kind::Vm => check_vm(host, vm, class, prop, value),
        "memory" | "vcpus" | "qrexec_timeout" | "shutdown_timeout" | "stubdom_mem"
            if int() <= 0 =>
        {
            Err(property_value_error(format!("{prop} must be positive")))
        }
        "maxmem" if int() < 0 => Err(property_value_error("maxmem must be positive or zero")),
        "provides_network" if value == "False" && !connected_to(host, vm).is_empty() => Err(
            value_error("The qube is still used by other qubes, change theirs 'netvm' first"),
        ),
        "kernel" if value.contains('/') => {
            Err(property_value_error("Kernel name cannot contain '/'"))
        }
        "kernelopts" if value.len() > 512 => Err(property_value_error(
            "Kernelopts value too long (512 chars max)",
        )),
        "default_user" => {
            const ALLOWED: &str = "_-+,.";
            if value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ALLOWED.contains(c))
            {
                Ok(value)
            } else {
                Err(property_value_error(format!(
                    "Username can contain only those characters: \
                     abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789{ALLOWED}"
                )))
            }
        }
        "virt_mode" => {
            let mode = value.to_ascii_lowercase();
            if !["hvm", "pv", "pvh"].contains(&mode.as_str()) {
                return Err(property_value_error(
                    "Invalid virtualization mode, supported values: hvm, pv, pvh",
                ));
            }
            if mode == "pvh" && host.vms[vm].devices.iter().any(|d| d.bus == "pci") {
                return Err(property_value_error(
                    "pvh mode can't be set if pci devices are assigned",
                ));
            }
            Ok(mode)
        }
        "mac" => {
            let mac = value.to_ascii_lowercase();
            let ok = mac.len() == 17
                && mac.split(':').count() == 6
                && mac
                    .split(':')
                    .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()));
            // `_setter_mac` raises ValueError, which qubesd does not report.
            if ok {
                Ok(mac)
            } else {
                Err(Fail::abort("ValueError: Invalid MAC address value"))
            }
        }
        "keyboard_layout" if value.split('+').count() != 3 => Err(property_value_error(
            "invalid number of keyboard layout parameters",
        )),
        "devices_denied" => {
            let b = value.as_bytes();
            let ok = b.len() % 7 == 0
                && b.chunks(7).all(|c| {
                    b"bump*".contains(&c[0])
                        && c[1..].iter().all(|x| b"0123456789abcdef*".contains(x))
                });
            if ok {
                Ok(value)
            } else {
                Err(property_value_error(
                    "Interface code list should be in the form chhhhhhchhhhhh...,where c is \
                     one of \"b\", \"u\", \"m\", \"p\", \"*\" and h is a hexdigit or \"*\".",
                ))
            }
        }
        _ => Ok(value),
    }
}

/// The setter of a qube-valued property (`VMProperty.__set__` plus the property's own
/// checks).
pub(super) fn check_vm(
    host: &Host,
    vm: &str,
    class: VmClass,
    prop: &str,
    value: String,
) -> Result<String, Fail> {
    if value.is_empty() {
        // `template` is the one qube property without `allow_none`.
        return if prop == "template" {
            Err(property_value_error(format!(
                "Invalid value None for property 'template' of {vm}"
            )))
        } else {
            Ok(value)
        };
    }
    let Some(target) = host.vms.get(&value) else {
        return Err(property_value_error(format!(
            "Can't set {prop} to non-existing qube {value}"
        )));
    };
    let is_dvm_template = value_is_true(host, &value, "template_for_dispvms");
    match prop {
        "template" if class == VmClass::AppVM && target.class != VmClass::TemplateVM => {
            Err(property_value_error(format!(
                "wrong VM class: domains['{value}'] is of type {} and not TemplateVM",
                target.class.name()
            )))
        }
        "template" if class == VmClass::DispVM && !is_dvm_template => Err(property_value_error(
            "template for disposable must have template_for_dispvms=True",
        )),
        "default_dispvm" | "management_dispvm" if !is_dvm_template => {
            Err(property_value_error(format!(
                "Cannot set invalid property to qube '{vm}', {prop} '{value}' has \
                 template_for_dispvms set to False"
            )))
        }
        "netvm" if !value_is_true(host, &value, "provides_network") => Err(value_error(format!(
            "The {value} qube does not provide network"
        ))),
        "netvm" if value == vm || connected_to(host, vm).contains(&value) => {
            Err(value_error("Loops in network are unsupported"))
        }
        _ => Ok(value),
    }
}

/// Whether a boolean property of `vm` is true (false when `vm` lacks it).
fn value_is_true(host: &Host, vm: &str, prop: &str) -> bool {
    lookup(host.vms[vm].class, prop).is_some() && value(host, vm, prop).as_deref() == Some("True")
}

/// `admin.vm.property.Reset`: back to the default.
pub(super) fn reset(host: &mut Host, vm: &str, prop: &str) -> Result<(), Fail> {
    let class = host.vms[vm].class;
    lookup(class, prop).ok_or_else(|| no_such_property(vm, prop))?;
    if WRITE_ONCE.contains(&prop) {
        return Err(Fail::abort(format!(
            "AttributeError: property '{prop}' is write-once and already set"
        )));
    }
    if prop == "template" && class == VmClass::AppVM {
        return Err(value_error(match &host.default_template {
            Some(t) => format!(
                "Cannot unset template. You can set it to the current default ({t}) instead"
            ),
            None => "Cannot unset template".to_string(),
        }));
    }
    host.vms
        .get_mut(vm)
        .expect("qube exists")
        .properties
        .remove(prop);
    Ok(())
}
