//! A mock qubesd (the Qubes OS Admin API daemon) for tests of the privileged restore:
//! Unix sockets speaking qubesd's framing, a small model of a Qubes host ([`Host`]) that
//! the implemented methods act on, a record of every call, fault injection, and the
//! volume import path through a fake `admin.vm.volume.ImportWithSize` script.
//!
//! Point the packer at it with [`MockQubesd::env`]: `QBACKUP_QUBESD_SOCKET` (the admin
//! socket, upstream `/var/run/qubesd.sock`) and `QBACKUP_QUBES_RPC_DIR` (upstream
//! `/etc/qubes-rpc`, holding `admin.vm.volume.Import` and its `ImportWithSize` symlink).
//!
//! # Framing (qubes-core-admin `qubes/api/__init__.py` `QubesDaemonProtocol`)
//!
//! Request: `METHOD+ARG SRC name DEST\0PAYLOAD` (the `+` always present, ARG possibly
//! empty; `keyword adminvm` also names dom0), ended by the client half-closing its write
//! side; at most 65536 bytes in all, else the connection is dropped unanswered.
//! Reply, then close: `0\0RESULT` on success; `2\0TYPE\0TRACEBACK\0MESSAGE\0` for a
//! QubesException, ProtocolError or PermissionDenied (TRACEBACK is empty: qubesd sends
//! one only with `--debug`); nothing at all for a framing error or any other exception,
//! which qubesadmin reports as "Got empty response from qubesd" (the mock's
//! [`Outcome::Aborted`]). The client side is [`call`], mirroring qubes-core-admin-client
//! `qubesadmin/app.py` `QubesLocal.qubesd_call` and `qubesadmin/base.py`
//! `_parse_qubesd_response`.
//!
//! # Volume import (qubes-core-admin `qubes-rpc/admin.vm.volume.Import`)
//!
//! dom0's qubesadmin does not send volume data through the socket: it runs
//! `/etc/qubes-rpc/admin.vm.volume.ImportWithSize VOLUME` with `QREXEC_REMOTE_DOMAIN=dom0`
//! and `QREXEC_REQUESTED_TARGET=VM`, writes `SIZE\n` and the data to its stdin, and parses
//! its stdout as a qubesd reply (exit status ignored). The script asks qubesd's internal
//! socket (here `qubesd.internal.sock` beside the admin socket) for
//! `internal.vm.volume.ImportBegin` (reply `SIZE PATH`), copies exactly SIZE bytes to
//! PATH, checks that stdin then ends, and reports `ok` or `fail\nREASON` with
//! `internal.vm.volume.ImportEnd`, whose reply it prints. The fake script in
//! `tests/fixtures/qubes-rpc/` does the same; the mock keeps the data in a file per
//! volume ([`MockQubesd::volume_file`]) and records each import ([`MockQubesd::imports`]).
//!
//! # Simplifications
//!
//! Qubes are halted unless a test marks one running ([`Vm::running`]; no start or
//! shutdown methods). Property
//! defaults are fixed values ([`Host`] holds the global ones) where qubesd derives some
//! from the template or the machine. Firewall rules are checked coarsely and returned as
//! set; qubesd returns them re-serialised in its own option order (e.g. `dstports=443`
//! comes back as `dstports=443-443`). Features are listed sorted (qubesd: in insertion
//! order). Imports require a `save_on_stop` volume in every pool (upstream: the file
//! drivers; lvm_thin does not check). Exception messages follow upstream's wording; the
//! exception types are exact.

mod handlers;
mod host;
mod properties;

use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

pub use host::{Assignment, Driver, Host, Pool, Release, Vm, VmClass, Volume};
pub use host::{PRIVATE_IMG_SIZE, ROOT_IMG_SIZE};

/// The variable naming the admin socket.
pub const SOCKET_ENV: &str = "QBACKUP_QUBESD_SOCKET";
/// The variable naming the directory of qrexec service scripts.
pub const RPC_DIR_ENV: &str = "QBACKUP_QUBES_RPC_DIR";

/// `QubesDaemonProtocol.buffer_size`: the longest request qubesd reads.
const MAX_REQUEST: usize = 65536;

/// How qubesd answered a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `0\0` and the result.
    Ok(Vec<u8>),
    /// `2\0TYPE\0\0MESSAGE\0`.
    Exception { ty: String, message: String },
    /// No reply: qubesd dropped the connection (framing error, request too long, or an
    /// exception it does not report); the text says which.
    Aborted(String),
}

impl Outcome {
    /// The bytes qubesd writes for this outcome.
    fn encode(&self) -> Vec<u8> {
        match self {
            Outcome::Ok(result) => [b"0\0".as_slice(), result].concat(),
            Outcome::Exception { ty, message } => format!("2\0{ty}\0\0{message}\0").into_bytes(),
            Outcome::Aborted(_) => Vec::new(),
        }
    }
}

/// A qubesd reply as a client sees it (`_parse_qubesd_response`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Ok(Vec<u8>),
    Exception {
        ty: String,
        message: String,
    },
    /// No bytes at all ("Got empty response from qubesd").
    Empty,
    /// Neither `0\0` nor a complete `2\0` reply ("Invalid response format").
    Malformed(Vec<u8>),
}

impl Reply {
    /// Parse a reply (of the socket, or the stdout of an import script).
    pub fn parse(bytes: &[u8]) -> Reply {
        if bytes.is_empty() {
            return Reply::Empty;
        }
        if let Some(result) = bytes.strip_prefix(b"0\0") {
            return Reply::Ok(result.to_vec());
        }
        if let Some(rest) = bytes.strip_prefix(b"2\0") {
            let fields: Vec<&[u8]> = rest.splitn(4, |b| *b == 0).collect();
            if let [ty, _traceback, message, _] = fields[..] {
                return Reply::Exception {
                    ty: String::from_utf8_lossy(ty).into_owned(),
                    message: String::from_utf8_lossy(message).into_owned(),
                };
            }
        }
        Reply::Malformed(bytes.to_vec())
    }

    /// The result of a successful call as text; panics on anything else.
    pub fn text(&self) -> String {
        match self {
            Reply::Ok(result) => String::from_utf8(result.clone()).expect("UTF-8 result"),
            other => panic!("expected a successful reply, got {other:?}"),
        }
    }

    /// The exception type of a failed call.
    pub fn exception(&self) -> Option<&str> {
        match self {
            Reply::Exception { ty, .. } => Some(ty),
            _ => None,
        }
    }
}

/// Call qubesd at `socket` the way dom0's qubesadmin does: `dom0` as the source, `dest`
/// by name.
pub fn call(
    socket: &Path,
    method: &str,
    dest: &str,
    arg: &str,
    payload: &[u8],
) -> std::io::Result<Reply> {
    let mut stream = UnixStream::connect(socket)?;
    stream.write_all(format!("{method}+{arg} dom0 name {dest}\0").as_bytes())?;
    stream.write_all(payload)?;
    stream.shutdown(Shutdown::Write)?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    Ok(Reply::parse(&reply))
}

/// Which socket a call came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `qubesd.sock`: the Admin API.
    Admin,
    /// `qubesd.internal.sock`: `internal.*` methods, used by the import script.
    Internal,
}

/// One request and its outcome. A request that could not be framed has empty `src`,
/// `method`, `dest` and `arg`, and the whole request as `payload`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub api: Api,
    pub src: String,
    pub method: String,
    pub dest: String,
    pub arg: String,
    pub payload: Vec<u8>,
    pub outcome: Outcome,
}

/// The state of a volume import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImportState {
    /// `ImportBegin` and no `ImportEnd` (yet): the script is still copying, or died.
    InProgress,
    /// `ImportEnd ok`: the data is the volume's.
    Succeeded,
    /// `ImportEnd fail`, with the script's reason; the volume is unchanged.
    Failed(String),
}

/// A volume import (`internal.vm.volume.ImportBegin` and its `ImportEnd`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Import {
    pub vm: String,
    pub volume: String,
    /// The size announced (`ImportWithSize`) or the volume's size (`Import`).
    pub size: u64,
    pub state: ImportState,
    /// SHA-256 (hex) of the committed data, for a succeeded import.
    pub sha256: Option<String>,
}

/// Why a handler failed: an exception qubesd reports, or one it drops the connection on.
#[derive(Debug)]
enum Fail {
    Exc { ty: String, msg: String },
    Abort(String),
}

impl Fail {
    fn exc(ty: &str, msg: impl Into<String>) -> Fail {
        Fail::Exc {
            ty: ty.into(),
            msg: msg.into(),
        }
    }

    fn abort(why: impl Into<String>) -> Fail {
        Fail::Abort(why.into())
    }
}

/// An injected outcome for matching calls.
struct Fault {
    method: String,
    dest: String,
    /// `None`: any argument.
    arg: Option<String>,
    outcome: Outcome,
}

/// Everything the server threads share.
struct State {
    host: Host,
    calls: Vec<Call>,
    faults: Vec<Fault>,
    imports: Vec<Import>,
    /// `VM/VOLUME.img` (committed data) and `VM/VOLUME-import.img` (an import).
    volumes: PathBuf,
}

/// A running mock qubesd; stops (and deletes its directory) when dropped.
pub struct MockQubesd {
    dir: tempfile::TempDir,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    acceptors: Vec<JoinHandle<()>>,
}

/// The fake import script, relative to `tests/fixtures/`.
const IMPORT_SCRIPT: &str = "qubes-rpc/admin.vm.volume.Import";

impl MockQubesd {
    /// Serve `host` on fresh sockets in a temporary directory, with the import scripts in
    /// its `qubes-rpc/` (`admin.vm.volume.Import` and the `ImportWithSize` symlink to it,
    /// as qubes-core-admin's Makefile installs them).
    pub fn start(host: Host) -> MockQubesd {
        let dir = tempfile::Builder::new()
            .prefix("mock-qubesd")
            .tempdir()
            .expect("temporary directory");
        let rpc = dir.path().join("qubes-rpc");
        let volumes = dir.path().join("volumes");
        std::fs::create_dir(&rpc).expect("qubes-rpc directory");
        std::fs::create_dir(&volumes).expect("volumes directory");
        let script = rpc.join("admin.vm.volume.Import");
        std::fs::copy(crate::fixture_script(IMPORT_SCRIPT), &script).expect("import script");
        std::os::unix::fs::symlink(
            "admin.vm.volume.Import",
            rpc.join("admin.vm.volume.ImportWithSize"),
        )
        .expect("ImportWithSize symlink");
        let state = Arc::new(Mutex::new(State {
            host,
            calls: Vec::new(),
            faults: Vec::new(),
            imports: Vec::new(),
            volumes,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let mut mock = MockQubesd {
            dir,
            state,
            stop,
            acceptors: Vec::new(),
        };
        for api in [Api::Admin, Api::Internal] {
            let listener = UnixListener::bind(mock.socket_for(api)).expect("binding a socket");
            let (state, stop) = (mock.state.clone(), mock.stop.clone());
            mock.acceptors.push(std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    if let Ok(stream) = stream {
                        let state = state.clone();
                        std::thread::spawn(move || serve(stream, api, &state));
                    }
                }
            }));
        }
        mock
    }

    fn socket_for(&self, api: Api) -> PathBuf {
        self.dir.path().join(match api {
            Api::Admin => "qubesd.sock",
            Api::Internal => "qubesd.internal.sock",
        })
    }

    /// The admin socket (`/var/run/qubesd.sock`).
    pub fn socket(&self) -> PathBuf {
        self.socket_for(Api::Admin)
    }

    /// The directory of qrexec service scripts (`/etc/qubes-rpc`).
    pub fn rpc_dir(&self) -> PathBuf {
        self.dir.path().join("qubes-rpc")
    }

    /// The environment pointing the packer at this mock.
    pub fn env(&self) -> Vec<(String, String)> {
        let text = |p: PathBuf| p.to_str().expect("UTF-8 temporary path").to_string();
        vec![
            (SOCKET_ENV.into(), text(self.socket())),
            (RPC_DIR_ENV.into(), text(self.rpc_dir())),
        ]
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every request so far, in the order they were handled.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// A snapshot of the host.
    pub fn host(&self) -> Host {
        self.lock().host.clone()
    }

    /// Make calls of `method` to `dest` (with argument `arg`, or any argument) raise
    /// `exc_type` with `message` from now on, changing nothing.
    pub fn fail(&self, method: &str, dest: &str, arg: Option<&str>, exc_type: &str, message: &str) {
        self.add_fault(
            method,
            dest,
            arg,
            Outcome::Exception {
                ty: exc_type.into(),
                message: message.into(),
            },
        );
    }

    /// Make matching calls (as for [`MockQubesd::fail`]) get no reply at all, as when
    /// qubesd meets an exception it does not report.
    pub fn drop_connection(&self, method: &str, dest: &str, arg: Option<&str>) {
        self.add_fault(method, dest, arg, Outcome::Aborted("injected".into()));
    }

    fn add_fault(&self, method: &str, dest: &str, arg: Option<&str>, outcome: Outcome) {
        self.lock().faults.push(Fault {
            method: method.into(),
            dest: dest.into(),
            arg: arg.map(String::from),
            outcome,
        });
    }

    /// Remove all injected faults.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Every volume import begun so far, in order.
    /// The imports so far; a succeeded one carries the SHA-256 of its volume's data file
    /// (computed here, from the data the last import of that volume committed).
    pub fn imports(&self) -> Vec<Import> {
        let mut list = self.lock().imports.clone();
        for i in &mut list {
            if i.state == ImportState::Succeeded && i.sha256.is_none() {
                i.sha256 = self.volume_file(&i.vm, &i.volume).map(|p| sha256_file(&p));
            }
        }
        list
    }

    /// The file holding the data last imported into `vm`'s `volume`, if any.
    pub fn volume_file(&self, vm: &str, volume: &str) -> Option<PathBuf> {
        let path = self.lock().volumes.join(vm).join(format!("{volume}.img"));
        path.exists().then_some(path)
    }

    /// [`call`] this mock's admin socket.
    pub fn call(&self, method: &str, dest: &str, arg: &str, payload: &[u8]) -> Reply {
        call(&self.socket(), method, dest, arg, payload).expect("talking to the mock qubesd")
    }
}

impl Drop for MockQubesd {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for api in [Api::Admin, Api::Internal] {
            // Wake the accept loop so it sees `stop`.
            let _ = UnixStream::connect(self.socket_for(api));
        }
        for acceptor in self.acceptors.drain(..) {
            let _ = acceptor.join();
        }
    }
}

/// Split a request into `(src, method, dest, arg, payload)` as `eof_received` does;
/// `Err` for anything qubesd would drop (header fields must also be ASCII).
fn frame(raw: &[u8]) -> Result<(&str, &str, &str, &str, &[u8]), String> {
    let nul = raw
        .iter()
        .position(|b| *b == 0)
        .ok_or("no NUL after the header")?;
    let header = std::str::from_utf8(&raw[..nul])
        .ok()
        .filter(|h| h.is_ascii())
        .ok_or("non-ASCII header")?;
    let fields: Vec<&str> = header.splitn(4, ' ').collect();
    let [method_arg, src, dest_type, dest] = fields[..] else {
        return Err(format!("header {header:?} has fewer than 4 fields"));
    };
    let dest = match (dest_type, dest) {
        ("keyword", "adminvm") => "dom0",
        ("name", dest) => dest,
        _ => return Err(format!("destination type {dest_type:?}")),
    };
    let (method, arg) = method_arg.split_once('+').unwrap_or((method_arg, ""));
    Ok((src, method, dest, arg, &raw[nul + 1..]))
}

/// Serve one connection: read the request to EOF, handle it, reply, close.
fn serve(mut stream: UnixStream, api: Api, state: &Mutex<State>) {
    // A client that never half-closes would hold a thread forever.
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let mut raw = Vec::new();
    if (&mut stream)
        .take(MAX_REQUEST as u64 + 1)
        .read_to_end(&mut raw)
        .is_err()
    {
        return;
    }
    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
    let framed = if raw.len() > MAX_REQUEST {
        Err("request too long".to_string())
    } else {
        frame(&raw).map_err(|e| format!("framing error: {e}"))
    };
    let (call, outcome) = match framed {
        Ok((src, method, dest, arg, payload)) => {
            let request = handlers::Request {
                src,
                method,
                dest,
                arg,
                payload,
            };
            let outcome = state.handle(api, &request);
            let call = Call {
                api,
                src: src.into(),
                method: method.into(),
                dest: dest.into(),
                arg: arg.into(),
                payload: payload.to_vec(),
                outcome: outcome.clone(),
            };
            (call, outcome)
        }
        Err(why) => {
            let outcome = Outcome::Aborted(why);
            let call = Call {
                api,
                src: String::new(),
                method: String::new(),
                dest: String::new(),
                arg: String::new(),
                payload: raw,
                outcome: outcome.clone(),
            };
            (call, outcome)
        }
    };
    state.calls.push(call);
    drop(state);
    let _ = stream.write_all(&outcome.encode());
    let _ = stream.shutdown(Shutdown::Both);
}

/// Hex SHA-256 of a file's content.
fn sha256_file(path: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    let mut file = std::fs::File::open(path).expect("opening the volume data");
    let mut buf = vec![0; 1 << 20];
    loop {
        let n = file.read(&mut buf).expect("reading the volume data");
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
