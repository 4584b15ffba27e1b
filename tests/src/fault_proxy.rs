//! A loopback TCP proxy in front of an S3 server (e.g. [`crate::seaweed::S3Server`]) that
//! injects faults, to test that a client retries and resumes reads. Plain threads, no
//! async runtime.
//!
//! How it sees the traffic: for each accepted connection it reads the first request head
//! (up to 64 KiB), rewrites its `Connection` header to `Connection: close` (dropping
//! `Keep-Alive`), and forwards the head and everything after it to the target. The server
//! then closes after one response and the client sees `Connection: close`, so every
//! connection carries exactly one request and the decisions below, made from that first
//! head, apply to the right request even with pooling clients. (`Connection` is
//! hop-by-hop and not among the headers S3 clients sign, so the signature still holds.)
//!
//! Faults, in order of accepted connections (0-based index `n`), deterministic:
//! - 503: if `status_503_every > 0` and `n % status_503_every == 0`, the request head is
//!   read (and a `Content-Length` body drained, unless the client waits for `100
//!   Continue`) and answered `503 Slow Down` with an S3
//!   XML `SlowDown` error, without contacting the target. With `object_gets_503`, so is
//!   every object GET (see below), as a server that lists but cannot serve.
//! - cut: on a connection whose request is an object GET (method `GET`, path
//!   `/<bucket>/<key>` with a non-empty key, no `list-type=` in the query) and whose
//!   response status is 2xx, after `cut_after_bytes` bytes of the response *body* (bytes
//!   after the response head, as sent; S3 object bodies have a `Content-Length`) have been
//!   forwarded, and only if the body goes on beyond that, the connection is shut down in
//!   both directions — for at most `max_cuts` connections in total (later ones pass
//!   untouched). The client therefore receives the full head and exactly
//!   `cut_after_bytes` body bytes, then EOF. Listings, HEAD, PUT, errors are never cut.
//!
//! If the target cannot be reached the client connection is just closed.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Which faults to inject (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Of every `every` accepted connections, the first is answered `503 Slow Down` (an
    /// S3 XML error body, Content-Length, Connection: close) after reading the request
    /// head, without contacting upstream. 0 = never.
    pub status_503_every: usize,
    /// Every object GET (not a listing) is answered `503 Slow Down` the same way.
    pub object_gets_503: bool,
    /// Cut (shutdown both directions) an object GET's connection after forwarding this
    /// many response body bytes from upstream to the client, for at most `max_cuts`
    /// connections in total. 0 = never.
    pub cut_after_bytes: u64,
    pub max_cuts: usize,
}

#[derive(Default)]
struct Counters {
    connections: AtomicUsize,
    served_503: AtomicUsize,
    cuts: AtomicUsize,
}

/// The proxy; stops accepting on drop (connections in flight finish on their own).
pub struct FaultProxy {
    addr: SocketAddr,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

const MAX_HEAD: usize = 64 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(60);

impl FaultProxy {
    /// Listen on 127.0.0.1 (a free port) and forward to `target`.
    pub fn start(target: SocketAddr, faults: Faults) -> FaultProxy {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("proxy addr");
        let counters = Arc::new(Counters::default());
        let stop = Arc::new(AtomicBool::new(false));
        let faults = Arc::new(faults);
        let (c, st) = (counters.clone(), stop.clone());
        let accept = std::thread::Builder::new()
            .name(format!("fault-proxy-{}", addr.port()))
            .spawn(move || {
                for conn in listener.incoming() {
                    if st.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(client) = conn else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    let n = c.connections.fetch_add(1, Ordering::SeqCst);
                    let (c, f) = (c.clone(), faults.clone());
                    let _ = std::thread::Builder::new()
                        .name(format!("fault-proxy-conn-{n}"))
                        .spawn(move || {
                            let _ = handle(client, target, n, &f, &c);
                        });
                }
            })
            .expect("proxy accept thread");
        FaultProxy {
            addr,
            counters,
            stop,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
    /// Connections cut so far.
    pub fn cuts(&self) -> usize {
        self.counters.cuts.load(Ordering::SeqCst)
    }
    /// Requests answered 503 so far.
    pub fn served_503(&self) -> usize {
        self.counters.served_503.load(Ordering::SeqCst)
    }
    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counters.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept; join only if it ended (bounded), else leave it.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let start = Instant::now();
            while !h.is_finished() && start.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(5));
            }
            if h.is_finished() {
                let _ = h.join();
            }
        }
    }
}

/// Read until the end of a request/response head: (head including the blank line, the
/// bytes read after it). `None` on EOF before a complete head or a head over 64 KiB.
fn read_head(s: &mut TcpStream) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok(Some((buf, rest)));
        }
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

struct RequestHead {
    method: String,
    target: String,
    /// The head to forward, with `Connection: close`.
    rewritten: Vec<u8>,
    content_length: u64,
    /// `Expect: 100-continue`: the body only follows a `100 Continue`.
    expect_continue: bool,
}

fn parse_request(head: &[u8]) -> RequestHead {
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let mut parts = request_line.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut rewritten = format!("{request_line}\r\n");
    let mut content_length = 0;
    let mut expect_continue = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default().trim();
        if ["connection", "keep-alive", "proxy-connection"]
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h))
        {
            continue;
        }
        if name.eq_ignore_ascii_case("expect") {
            expect_continue = line.to_ascii_lowercase().contains("100-continue");
        }
        if name.eq_ignore_ascii_case("content-length") {
            content_length = line[name.len() + 1..].trim().parse().unwrap_or(0);
        }
        rewritten.push_str(line);
        rewritten.push_str("\r\n");
    }
    rewritten.push_str("Connection: close\r\n\r\n");
    RequestHead {
        method,
        target,
        rewritten: rewritten.into_bytes(),
        content_length,
        expect_continue,
    }
}

/// A GET of `/<bucket>/<key>` (non-empty key), not a listing.
fn is_object_get(method: &str, target: &str) -> bool {
    if method != "GET" {
        return false;
    }
    // Absolute form (`http://host/path`) to origin form.
    let t = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let (path, query) = t.split_once('?').unwrap_or((t, ""));
    let mut seg = path.trim_start_matches('/').splitn(2, '/');
    let bucket = seg.next().unwrap_or_default();
    let key = seg.next().unwrap_or_default();
    !bucket.is_empty() && !key.is_empty() && !query.contains("list-type=")
}

fn handle(
    mut client: TcpStream,
    target: SocketAddr,
    n: usize,
    faults: &Faults,
    counters: &Counters,
) -> io::Result<()> {
    let _ = client.set_nodelay(true);
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    client.set_write_timeout(Some(IO_TIMEOUT))?;
    let Some((head, mut rest)) = read_head(&mut client)? else {
        return Ok(());
    };
    let req = parse_request(&head);

    let every = faults.status_503_every > 0 && n % faults.status_503_every == 0;
    if every || (faults.object_gets_503 && is_object_get(&req.method, &req.target)) {
        // Drain the request body so the client reads our answer rather than a reset
        // (unless it waits for `100 Continue`, which it will not get).
        let mut left = if req.expect_continue {
            0
        } else {
            req.content_length.saturating_sub(rest.len() as u64)
        };
        let mut sink = [0u8; 65536];
        while left > 0 {
            let k = client.read(&mut sink)?;
            if k == 0 {
                break;
            }
            left = left.saturating_sub(k as u64);
        }
        let path = req.target.split('?').next().unwrap_or_default();
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>\
             <Message>Please reduce your request rate.</Message><Resource>{}</Resource>\
             <RequestId>fault-proxy-{n}</RequestId></Error>",
            path.replace('&', "&amp;").replace('<', "&lt;")
        );
        let mut resp = format!(
            "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\
             Retry-After: 0\r\nx-amz-request-id: fault-proxy-{n}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if req.method != "HEAD" {
            resp.extend_from_slice(body.as_bytes());
        }
        counters.served_503.fetch_add(1, Ordering::SeqCst);
        client.write_all(&resp)?;
        client.flush()?;
        let _ = client.shutdown(Shutdown::Write);
        return Ok(());
    }

    let Ok(mut upstream) = TcpStream::connect_timeout(&target, Duration::from_secs(10)) else {
        let _ = client.shutdown(Shutdown::Both);
        return Ok(());
    };
    let _ = upstream.set_nodelay(true);
    upstream.write_all(&req.rewritten)?;
    upstream.write_all(&rest)?;
    rest.clear();

    // Client -> upstream: the rest of the request body. No half-close is passed on (the
    // server would take it for an aborted request); this ends when the sockets are shut.
    let (mut c_in, mut u_out) = (client.try_clone()?, upstream.try_clone()?);
    let _ = c_in.set_read_timeout(None);
    std::thread::spawn(move || {
        let mut buf = [0u8; 65536];
        while let Ok(k) = c_in.read(&mut buf) {
            if k == 0 || u_out.write_all(&buf[..k]).is_err() {
                break;
            }
        }
    });

    let result = pump_response(&mut upstream, &mut client, &req, faults, counters);
    let _ = client.shutdown(Shutdown::Both);
    let _ = upstream.shutdown(Shutdown::Both);
    result
}

/// Upstream -> client, cutting an object GET's 2xx body if it is armed and a cut is left.
fn pump_response(
    upstream: &mut TcpStream,
    client: &mut TcpStream,
    req: &RequestHead,
    faults: &Faults,
    counters: &Counters,
) -> io::Result<()> {
    upstream.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut armed = faults.cut_after_bytes > 0
        && faults.max_cuts > 0
        && is_object_get(&req.method, &req.target);
    let Some((head, first)) = read_head(upstream)? else {
        return Ok(());
    };
    let status_2xx = head.get(9..10) == Some(&b"2"[..]);
    armed &= status_2xx;
    client.write_all(&head)?;
    let mut sent: u64 = 0;
    let mut buf = vec![0u8; 65536];
    let mut pending = first;
    loop {
        if pending.is_empty() {
            let k = upstream.read(&mut buf)?;
            if k == 0 {
                return Ok(());
            }
            pending.extend_from_slice(&buf[..k]);
        }
        if armed {
            let allowed = faults.cut_after_bytes - sent;
            if pending.len() as u64 > allowed {
                let claimed = counters
                    .cuts
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                        (c < faults.max_cuts).then_some(c + 1)
                    })
                    .is_ok();
                if claimed {
                    let allowed = usize::try_from(allowed).expect("fits: less than a buffer");
                    client.write_all(&pending[..allowed])?;
                    client.flush()?;
                    return Ok(()); // the caller shuts both connections
                }
                armed = false;
            }
        }
        client.write_all(&pending)?;
        sent += pending.len() as u64;
        pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seaweed::{test_bytes, S3Server};

    #[test]
    fn object_get_detection() {
        assert!(is_object_get("GET", "/b/k"));
        assert!(is_object_get("GET", "/b/dir/k?versionId=1"));
        assert!(is_object_get("GET", "http://127.0.0.1:1/b/k"));
        assert!(!is_object_get("GET", "/b"));
        assert!(!is_object_get("GET", "/b/"));
        assert!(!is_object_get("GET", "/b?list-type=2&prefix=x"));
        assert!(!is_object_get("GET", "/"));
        assert!(!is_object_get("HEAD", "/b/k"));
        assert!(!is_object_get("PUT", "/b/k"));
        let h = parse_request(
            b"GET /b/k HTTP/1.1\r\nHost: x\r\nconnection: keep-alive\r\nKeep-Alive: 5\r\nContent-Length: 3\r\n\r\n",
        );
        assert_eq!(
            String::from_utf8(h.rewritten).unwrap(),
            "GET /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
        );
        assert_eq!(h.content_length, 3);
    }

    #[test]
    fn fault_proxy_cuts_object_get() {
        let s = S3Server::start();
        let b = "qb-cut";
        s.create_bucket(b);
        let data = test_bytes(3 << 20, 11);
        s.put(b, "obj", &data);
        let p = FaultProxy::start(
            s.addr(),
            Faults {
                cut_after_bytes: 1 << 20,
                max_cuts: 1,
                ..Faults::default()
            },
        );
        let c = s.client().via(p.addr());
        // A listing passes untouched.
        let r = c
            .request("GET", b, "", &[("list-type", "2")], &[], b"")
            .unwrap();
        assert_eq!((r.status, r.complete), (200, true), "{}", r.text());
        assert!(r.text().contains("<Key>obj</Key>"));
        assert_eq!(p.cuts(), 0);
        // The first object GET is cut after 1 MiB of body.
        let r = c.request("GET", b, "obj", &[], &[], b"").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.content_length(), Some(3 << 20));
        assert!(!r.complete);
        assert_eq!(r.body.len(), 1 << 20);
        assert_eq!(r.body, &data[..1 << 20]);
        assert_eq!(p.cuts(), 1);
        // Resuming with a range works; cuts are used up, so this one goes through whole.
        let range = format!("bytes={}-", r.body.len());
        let r2 = c
            .request("GET", b, "obj", &[], &[("Range", &range)], b"")
            .unwrap();
        assert_eq!((r2.status, r2.complete), (206, true));
        assert_eq!(r2.body, &data[1 << 20..]);
        let r3 = c.request("GET", b, "obj", &[], &[], b"").unwrap();
        assert_eq!((r3.status, r3.complete), (200, true));
        assert_eq!(r3.body, data);
        assert_eq!((p.cuts(), p.served_503(), p.connections()), (1, 0, 4));
    }

    #[test]
    fn fault_proxy_503_every_second_connection() {
        let s = S3Server::start();
        let b = "qb-503";
        s.create_bucket(b);
        s.put(b, "obj", b"hello");
        let p = FaultProxy::start(
            s.addr(),
            Faults {
                status_503_every: 2,
                ..Faults::default()
            },
        );
        let c = s.client().via(p.addr());
        let r = c.request("GET", b, "obj", &[], &[], b"").unwrap();
        assert_eq!((r.status, r.complete), (503, true));
        assert!(r.text().contains("<Code>SlowDown</Code>"), "{}", r.text());
        let r = c.request("GET", b, "obj", &[], &[], b"").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        // A PUT with a body on a 503 connection gets the 503 (body drained), not a reset.
        let big = test_bytes(1 << 20, 3);
        let r = c.request("PUT", b, "obj2", &[], &[], &big).unwrap();
        assert_eq!(r.status, 503);
        let r = c.request("PUT", b, "obj2", &[], &[], &big).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(s.get(b, "obj2"), Some(big));
        assert_eq!((p.served_503(), p.cuts(), p.connections()), (2, 0, 4));
    }

    #[test]
    fn fault_proxy_object_gets_503() {
        let s = S3Server::start();
        let b = "qb-get503";
        s.create_bucket(b);
        s.put(b, "obj", b"hello");
        let p = FaultProxy::start(
            s.addr(),
            Faults {
                object_gets_503: true,
                ..Faults::default()
            },
        );
        let c = s.client().via(p.addr());
        // Listings and writes pass; every object GET is refused.
        let r = c
            .request("GET", b, "", &[("list-type", "2")], &[], b"")
            .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains("<Key>obj</Key>"));
        let r = c.request("PUT", b, "obj2", &[], &[], b"x").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        for _ in 0..2 {
            let r = c.request("GET", b, "obj", &[], &[], b"").unwrap();
            assert_eq!(r.status, 503);
        }
        assert_eq!((p.served_503(), p.connections()), (2, 4));
    }
}
