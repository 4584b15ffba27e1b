//! Reading a host's qubes through the Admin API, for `create --from-qubes` (SPEC.md
//! QAPI-5): the list with power states, properties with their default flag, features,
//! tags, device assignments (R4.3 `Assigned`, R4.1/R4.2 `List`), firewall rules, notes
//! and storage pools. Replies come from qubesd in dom0 and are parsed strictly all the
//! same: a line this client cannot read is an error naming the call, never skipped.

use std::collections::BTreeMap;

use qbackup_format::vm_config::Device;

use super::{value_of, CallError, CallResult, Qubesd};

/// One line of `admin.vm.List`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedVm {
    pub name: String,
    pub class: String,
    /// `Halted`, `Running`, `Paused`, … (dom0 is always `Running`).
    pub state: String,
}

impl ListedVm {
    /// Anything but `Halted` counts as running: its volumes may be in use.
    pub fn is_running(&self) -> bool {
        self.state != "Halted"
    }
}

/// A property as `admin.vm.property.Get` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Property {
    /// `default=True`: not set on this qube (qubes.xml does not store it).
    pub is_default: bool,
    /// The value in qubesd's text form (empty for a `None` qube reference).
    pub value: String,
}

fn bad_reply(method: &str, what: &str) -> CallError {
    CallError::Transport(format!("{method}: unreadable reply ({what})"))
}

/// R4.3 device properties: `key='value'` pairs separated by spaces, `\'` and `\\`
/// escaped inside values.
fn quoted_pairs(method: &str, text: &str) -> CallResult<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("='")
            .ok_or_else(|| bad_reply(method, "a device property without ='"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, c)) => value.push(c),
                    None => return Err(bad_reply(method, "an escape at the end")),
                },
                Some((i, '\'')) => break i,
                Some((_, c)) => value.push(c),
                None => return Err(bad_reply(method, "an unterminated value")),
            }
        };
        pairs.push((key.to_owned(), value));
        rest = after[end + 1..].trim_start();
    }
    Ok(pairs)
}

impl Qubesd {
    /// `admin.vm.List`: every qube with its class and power state, dom0 included.
    pub fn vms(&self) -> CallResult<Vec<ListedVm>> {
        let method = "admin.vm.List";
        let text = self.call_text("dom0", method, "", b"")?;
        let mut vms = Vec::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let mut words = line.split(' ');
            let name = words.next().unwrap_or_default().to_owned();
            let (mut class, mut state) = (None, None);
            for w in words {
                match w.split_once('=') {
                    Some(("class", c)) => class = Some(c.to_owned()),
                    Some(("state", s)) => state = Some(s.to_owned()),
                    _ => {}
                }
            }
            let (Some(class), Some(state)) = (class, state) else {
                return Err(bad_reply(method, "a line without class= or state="));
            };
            vms.push(ListedVm { name, class, state });
        }
        Ok(vms)
    }

    /// `admin.vm.property.List` then `admin.vm.property.Get` of each: name → property.
    pub fn properties(&self, vm: &str) -> CallResult<Vec<(String, Property)>> {
        let mut out = Vec::new();
        for name in self.list(vm, "admin.vm.property.List")? {
            let reply = self.call_text(vm, "admin.vm.property.Get", &name, b"")?;
            let is_default = match reply.split(' ').next() {
                Some("default=True") => true,
                Some("default=False") => false,
                _ => return Err(bad_reply("admin.vm.property.Get", "no default= flag")),
            };
            out.push((
                name,
                Property {
                    is_default,
                    value: value_of(&reply),
                },
            ));
        }
        Ok(out)
    }

    /// `admin.vm.feature.List` then `admin.vm.feature.Get` of each, in qubesd's order.
    pub fn features(&self, vm: &str) -> CallResult<Vec<(String, String)>> {
        let mut out = Vec::new();
        for name in self.list(vm, "admin.vm.feature.List")? {
            let value = self.call_text(vm, "admin.vm.feature.Get", &name, b"")?;
            out.push((name, value));
        }
        Ok(out)
    }

    /// `admin.vm.tag.List`.
    pub fn tags(&self, vm: &str) -> CallResult<Vec<String>> {
        self.list(vm, "admin.vm.tag.List")
    }

    /// `admin.vm.firewall.Get`: the rule lines (qubesd's own option order).
    pub fn firewall(&self, vm: &str) -> CallResult<Vec<String>> {
        self.list(vm, "admin.vm.firewall.Get")
    }

    /// `admin.vm.notes.Get` (R4.3); `None` where qubesd has no notes (R4.1, R4.2).
    pub fn notes(&self, vm: &str) -> CallResult<Option<String>> {
        match self.call_text(vm, "admin.vm.notes.Get", "", b"") {
            Ok(t) => Ok(Some(t)),
            Err(e) if e.is_no_such_method() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The persistent device assignments of `vm` on `bus`: R4.3's
    /// `admin.vm.device.BUS.Assigned`, else R4.1/R4.2's `admin.vm.device.BUS.List` (only
    /// `persistent=yes` lines). Empty when qubesd has neither for this bus.
    pub fn assigned_devices(&self, vm: &str, bus: &str) -> CallResult<Vec<Device>> {
        let method = format!("admin.vm.device.{bus}.Assigned");
        match self.list(vm, &method) {
            Ok(lines) => lines
                .iter()
                .map(|l| assigned_r43(&method, bus, l))
                .collect(),
            Err(e) if e.is_no_such_method() => {
                let method = format!("admin.vm.device.{bus}.List");
                match self.list(vm, &method) {
                    Ok(lines) => Ok(lines
                        .iter()
                        .map(|l| listed_r42(&method, bus, l))
                        .collect::<CallResult<Vec<_>>>()?
                        .into_iter()
                        .flatten()
                        .collect()),
                    Err(e) if e.is_no_such_method() => Ok(Vec::new()),
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// `admin.pool.Info`: `key=value` lines.
    pub fn pool_info(&self, pool: &str) -> CallResult<BTreeMap<String, String>> {
        Ok(self
            .call_text("dom0", "admin.pool.Info", pool, b"")?
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }
}

/// R4.3: `BACKEND+PORT:DEVID device_id='…' port_id='…' devclass='…' backend_domain='…'
/// mode='…' [frontend_domain='…'] [_OPTION='…' …]`.
fn assigned_r43(method: &str, bus: &str, line: &str) -> CallResult<Device> {
    let (_, props) = line
        .split_once(' ')
        .ok_or_else(|| bad_reply(method, "an assignment without properties"))?;
    let mut backend = None;
    let mut port = None;
    let mut mode = None;
    let mut options = Vec::new();
    for (k, v) in quoted_pairs(method, props)? {
        match k.as_str() {
            "backend_domain" => backend = Some(v),
            "port_id" => port = Some(v),
            "mode" => mode = Some(v),
            _ => {
                if let Some(option) = k.strip_prefix('_') {
                    options.push((option.to_owned(), v));
                }
            }
        }
    }
    let (Some(backend), Some(port)) = (backend, port) else {
        return Err(bad_reply(method, "an assignment without backend or port"));
    };
    Ok(Device {
        bus: bus.to_owned(),
        backend,
        port,
        required: mode.as_deref() == Some("required"),
        options,
    })
}

/// R4.1/R4.2: `BACKEND+IDENT KEY=VALUE … persistent=yes|no`; `None` for a live
/// (non-persistent) attachment, which qubes.xml does not store.
fn listed_r42(method: &str, bus: &str, line: &str) -> CallResult<Option<Device>> {
    let mut words = line.split(' ');
    let (backend, port) = words
        .next()
        .and_then(|w| w.split_once('+'))
        .ok_or_else(|| bad_reply(method, "a device without BACKEND+IDENT"))?;
    let mut persistent = false;
    let mut required = false;
    let mut options = Vec::new();
    for w in words.filter(|w| !w.is_empty()) {
        let (k, v) = w
            .split_once('=')
            .ok_or_else(|| bad_reply(method, "an option without ="))?;
        match k {
            "persistent" => persistent = v == "yes" || v == "True",
            "required" => required = v == "yes" || v == "True",
            _ => options.push((k.to_owned(), v.to_owned())),
        }
    }
    Ok(persistent.then(|| Device {
        bus: bus.to_owned(),
        backend: backend.to_owned(),
        port: port.to_owned(),
        required,
        options,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn r43_assignments() {
        let d = assigned_r43(
            "m",
            "pci",
            "dom0+00_14.0:8086:a0ed device_id='8086:a0ed' port_id='00_14.0' devclass='pci' \
             backend_domain='dom0' mode='required' frontend_domain='sys-usb' \
             _no-strict-reset='True' _note='it\\'s'",
        )
        .unwrap();
        assert_eq!(d.backend, "dom0");
        assert_eq!(d.port, "00_14.0");
        assert!(d.required);
        assert_eq!(
            d.options,
            vec![
                ("no-strict-reset".to_owned(), "True".to_owned()),
                ("note".to_owned(), "it's".to_owned())
            ]
        );
        assert!(assigned_r43("m", "pci", "dom0+x port_id='unterminated").is_err());
        assert!(assigned_r43("m", "pci", "dom0+x mode='required'").is_err());
    }

    #[test]
    fn r42_assignments() {
        let d = listed_r42(
            "m",
            "pci",
            "dom0+00_14.0 no-strict-reset=True persistent=yes",
        )
        .unwrap()
        .unwrap();
        assert_eq!((d.backend.as_str(), d.port.as_str()), ("dom0", "00_14.0"));
        assert_eq!(d.options, vec![("no-strict-reset".into(), "True".into())]);
        assert_eq!(
            listed_r42("m", "usb", "sys-usb+2-1 persistent=no").unwrap(),
            None
        );
        assert!(listed_r42("m", "usb", "nobackend").is_err());
    }
}
