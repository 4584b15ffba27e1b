//! A client of qubesd, the Qubes Admin API daemon in dom0 (SPEC.md QAPI-1 … QAPI-4).
//!
//! One call is one connection to the socket: `METHOD+ARG dom0 name DEST\0PAYLOAD`, then a
//! half-close; the reply is `0\0RESULT` or `2\0TYPE\0TRACEBACK\0MESSAGE\0` (QAPI-1). Volume
//! data goes through the local qrexec service script, as dom0's own tools run it
//! ([`import`]). Every method, argument and destination is checked against QAPI-2 before
//! it reaches the framing, so an untrusted name can never add a field.
//!
//! `QBACKUP_QUBESD_SOCKET` and `QBACKUP_QUBES_RPC_DIR` replace the socket and the
//! qubes-rpc directory (tests run against a mock qubesd).

pub mod import;
pub mod read;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

/// The socket qubesd listens on in dom0.
pub const DEFAULT_SOCKET: &str = "/var/run/qubesd.sock";
/// Where dom0's qrexec service scripts live.
pub const DEFAULT_RPC_DIR: &str = "/etc/qubes-rpc";
/// QAPI-1: qubesd drops a request (header and payload) larger than this.
pub const MAX_REQUEST_LEN: usize = 65536;
/// QAPI-1: the largest reply read (a VM list of LIM-14 VMs fits easily).
const MAX_REPLY_LEN: u64 = 16 << 20;

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// qubesd refused: its exception type (e.g. `QubesVMNotFoundError`) and message.
    Refused { kind: String, message: String },
    /// No answer that follows QAPI-1 (socket missing, connection cut, empty reply: qubesd
    /// drops requests it cannot parse or that raise a non-Qubes exception).
    Transport(String),
    /// The request itself was refused here (QAPI-2): it never reached qubesd.
    Invalid(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Refused { kind, message } => write!(f, "qubesd refused ({kind}): {message}"),
            CallError::Transport(m) => write!(f, "talking to qubesd: {m}"),
            CallError::Invalid(m) => write!(f, "not sent to qubesd: {m}"),
        }
    }
}

impl std::error::Error for CallError {}

impl CallError {
    /// qubesd has no such method: another release's Admin API (QAPI-5).
    pub fn is_no_such_method(&self) -> bool {
        matches!(self, CallError::Refused { kind, message }
            if kind == "ProtocolError" && message.starts_with("no such method"))
    }
}

pub type CallResult<T> = std::result::Result<T, CallError>;

/// QAPI-2: a method is `admin.` or `internal.` followed by `[A-Za-z0-9_.]`; an argument is
/// `[A-Za-z0-9_.+:-]` (qrexec's service-argument alphabet plus `:` for device ids); a
/// destination is a VM name. Nothing else reaches the framing.
fn check_request(method: &str, dest: &str, arg: &str) -> CallResult<()> {
    let method_ok = (method.starts_with("admin.") || method.starts_with("internal."))
        && method.len() <= 128
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.'));
    if !method_ok {
        return Err(CallError::Invalid(format!("method {method:?}")));
    }
    let arg_ok = arg.len() <= 256
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b':' | b'-'));
    if !arg_ok {
        return Err(CallError::Invalid(format!("argument {arg:?} of {method}")));
    }
    qbackup_format::qubes_xml::validate_vm_name(dest)
        .map_err(|_| CallError::Invalid(format!("destination {dest:?} of {method}")))?;
    Ok(())
}

/// QAPI-1: a reply into its result, or qubesd's exception.
pub fn parse_reply(reply: &[u8]) -> CallResult<Vec<u8>> {
    if let Some(rest) = reply.strip_prefix(b"0\0") {
        return Ok(rest.to_vec());
    }
    if let Some(rest) = reply.strip_prefix(b"2\0") {
        let mut fields = rest.split(|b| *b == 0);
        let kind = fields.next().unwrap_or_default();
        let _traceback = fields.next();
        let message = fields.next().unwrap_or_default();
        // Untrusted text: control characters replaced, at most 1024 characters.
        let text = |b: &[u8]| {
            String::from_utf8_lossy(b)
                .chars()
                .map(|c| if c.is_control() { '?' } else { c })
                .take(1024)
                .collect::<String>()
        };
        return Err(CallError::Refused {
            kind: text(kind),
            message: text(message),
        });
    }
    if reply.is_empty() {
        return Err(CallError::Transport(
            "empty reply (qubesd dropped the request; see journalctl in dom0)".into(),
        ));
    }
    Err(CallError::Transport("reply in an unknown format".into()))
}

/// A connection point to qubesd.
#[derive(Debug, Clone)]
pub struct Qubesd {
    pub socket: PathBuf,
    pub rpc_dir: PathBuf,
}

impl Qubesd {
    /// dom0's qubesd, or the overrides in the environment (QAPI-4).
    pub fn from_env() -> Qubesd {
        let var = |k: &str, d: &str| {
            std::env::var_os(k)
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from(d), PathBuf::from)
        };
        Qubesd {
            socket: var("QBACKUP_QUBESD_SOCKET", DEFAULT_SOCKET),
            rpc_dir: var("QBACKUP_QUBES_RPC_DIR", DEFAULT_RPC_DIR),
        }
    }

    /// One Admin API call (QAPI-1, QAPI-2).
    pub fn call(&self, dest: &str, method: &str, arg: &str, payload: &[u8]) -> CallResult<Vec<u8>> {
        check_request(method, dest, arg)?;
        let mut request = format!("{method}+{arg} dom0 name {dest}\0").into_bytes();
        request.extend_from_slice(payload);
        if request.len() > MAX_REQUEST_LEN {
            return Err(CallError::Invalid(format!(
                "{method} request of {} bytes exceeds qubesd's {MAX_REQUEST_LEN}",
                request.len()
            )));
        }
        let transport = |what: &str, e: std::io::Error| {
            CallError::Transport(format!("{what} {}: {e}", self.socket.display()))
        };
        let mut s = UnixStream::connect(&self.socket).map_err(|e| transport("connecting to", e))?;
        s.write_all(&request)
            .map_err(|e| transport("writing to", e))?;
        s.shutdown(std::net::Shutdown::Write)
            .map_err(|e| transport("closing", e))?;
        let mut reply = Vec::new();
        s.take(MAX_REPLY_LEN)
            .read_to_end(&mut reply)
            .map_err(|e| transport("reading from", e))?;
        parse_reply(&reply)
    }

    /// A call whose result is text (lists, property values).
    pub fn call_text(
        &self,
        dest: &str,
        method: &str,
        arg: &str,
        payload: &[u8],
    ) -> CallResult<String> {
        let out = self.call(dest, method, arg, payload)?;
        String::from_utf8(out)
            .map_err(|_| CallError::Transport(format!("{method}: reply is not UTF-8")))
    }

    /// `admin.vm.List`: VM name → class.
    pub fn vm_list(&self) -> CallResult<BTreeMap<String, String>> {
        let text = self.call_text("dom0", "admin.vm.List", "", b"")?;
        let mut vms = BTreeMap::new();
        for line in text.lines() {
            let mut words = line.split(' ');
            let name = words.next().unwrap_or_default().to_owned();
            let class = words
                .find_map(|w| w.strip_prefix("class="))
                .unwrap_or_default()
                .to_owned();
            if !name.is_empty() {
                vms.insert(name, class);
            }
        }
        Ok(vms)
    }

    /// Lines of a list reply (`admin.label.List`, `admin.pool.List`, `admin.vm.volume.List`).
    pub fn list(&self, dest: &str, method: &str) -> CallResult<Vec<String>> {
        Ok(self
            .call_text(dest, method, "", b"")?
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// `admin.vm.volume.Info`: `key=value` lines.
    pub fn volume_info(&self, vm: &str, volume: &str) -> CallResult<BTreeMap<String, String>> {
        Ok(self
            .call_text(vm, "admin.vm.volume.Info", volume, b"")?
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// `admin.vm.property.Get`: the value (after `default=… type=… `).
    pub fn property_get(&self, vm: &str, name: &str) -> CallResult<String> {
        Ok(value_of(&self.call_text(
            vm,
            "admin.vm.property.Get",
            name,
            b"",
        )?))
    }

    /// `admin.property.Get`: a global property's value (`default_template`, …).
    pub fn global_property_get(&self, name: &str) -> CallResult<String> {
        Ok(value_of(&self.call_text(
            "dom0",
            "admin.property.Get",
            name,
            b"",
        )?))
    }
}

/// The value of a property Get reply, `default=… type=… VALUE`.
fn value_of(reply: &str) -> String {
    let mut parts = reply.splitn(3, ' ');
    let (_, _, value) = (parts.next(), parts.next(), parts.next());
    value.unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QAPI-2: requests outside the grammar never reach the socket.
    #[test]
    fn framing_characters_never_reach_the_socket() {
        // The check runs before any connection: a missing socket is never touched.
        let q = Qubesd {
            socket: "/nonexistent/socket".into(),
            rpc_dir: "/nonexistent".into(),
        };
        for (dest, method, arg) in [
            ("work", "admin.vm.tag.Set", "a b"),
            ("work", "admin.vm.tag.Set", "a\0b"),
            ("work dom0", "admin.vm.tag.Set", "x"),
            ("wo\0rk", "admin.vm.tag.Set", "x"),
            ("work", "admin.vm.tag.Set+x", "x"),
            ("work", "admin.vm tag", "x"),
            ("work", "qubes.VMShell", ""),
        ] {
            assert!(
                matches!(q.call(dest, method, arg, b""), Err(CallError::Invalid(_))),
                "{dest:?} {method:?} {arg:?}"
            );
        }
        assert!(matches!(
            q.call("work", "admin.vm.tag.Set", "ok", b""),
            Err(CallError::Transport(_))
        ));
        let big = vec![b'x'; MAX_REQUEST_LEN];
        assert!(matches!(
            q.call("work", "admin.vm.firewall.Set", "", &big),
            Err(CallError::Invalid(_))
        ));
    }

    #[test]
    fn replies() {
        assert_eq!(parse_reply(b"0\0abc").unwrap(), b"abc");
        assert_eq!(
            parse_reply(b"2\0QubesVMNotFoundError\0\0No such domain: 'x'\0").unwrap_err(),
            CallError::Refused {
                kind: "QubesVMNotFoundError".into(),
                message: "No such domain: 'x'".into()
            }
        );
        assert!(matches!(parse_reply(b""), Err(CallError::Transport(_))));
        assert!(matches!(
            parse_reply(b"1\0event"),
            Err(CallError::Transport(_))
        ));
    }
}
