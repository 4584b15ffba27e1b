//! S3-compatible object storage (SPEC.md AUD-3), through `object_store`: listing, reading
//! an object as ranged GETs pinned to its ETag and resumed at the byte offset after a
//! broken connection or a 5xx, and the ledger's conditional puts.
//!
//! Credentials, region and endpoint come from the usual `AWS_*` variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//! `AWS_ALLOW_HTTP`, …). The blocking side of this process (workers feeding verifiers)
//! drives the async client on one small runtime.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientConfigKey, GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt,
    PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion,
};

/// One ranged GET reads at most this much (LIM-61): each request finishes well within
/// the client's timeout even when the verifier consumes slowly.
pub const SEGMENT_BYTES: u64 = 16 << 20;

/// Bytes are handed to the verifier in pieces of this size as they arrive, at most
/// [`QUEUED_PIECES`] ahead of it: memory stays bounded, and a verifier never waits for a
/// whole segment.
const PIECE_BYTES: usize = 1 << 20;
const QUEUED_PIECES: usize = 16;

/// Received bytes as the client gave them (no copy): about [`PIECE_BYTES`].
type Piece = VecDeque<Bytes>;

/// Give up on an object after this many failed requests in a row without a byte of
/// progress (LIM-62); each wait doubles, from [`FIRST_BACKOFF`] up to [`MAX_BACKOFF`].
pub const MAX_STALLS: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Times the S3 client itself repeats one ranged GET of an archive after a 5xx or a failed
/// connection, within [`CLIENT_RETRY_TIMEOUT`], before the audit counts a stall (LIM-66).
/// Kept small: the audit's own loop (LIM-62) owns retrying archive reads, so a dead
/// endpoint ends an object's read in about half a minute, not after eight times the
/// client's default of 11 tries over up to 3 minutes. Listings and ledger records keep
/// that default: nothing else retries them.
pub const CLIENT_RETRIES: usize = 2;
const CLIENT_RETRY_TIMEOUT: Duration = Duration::from_secs(20);

/// Ledger records read at once (one small GET each).
const PARALLEL_GETS: usize = 16;

/// One request (connect, headers and one segment's body) may take this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub prefix: String,
}

impl S3Url {
    pub fn parse(url: &str) -> Option<S3Url> {
        let rest = url.strip_prefix("s3://")?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        (!bucket.is_empty()).then(|| S3Url {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }
}

/// An object as listed.
#[derive(Debug, Clone)]
pub struct Listed {
    pub key: String,
    pub etag: String,
    pub size: u64,
}

/// Why reading an object failed: it changed (or went away), or storage failed.
#[derive(Debug)]
pub enum ReadError {
    Changed(String),
    Storage(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Changed(m) | ReadError::Storage(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ReadError {}

/// Clients by bucket and use, and the runtime that drives them.
pub struct Storage {
    runtime: tokio::runtime::Runtime,
    stores: Mutex<HashMap<(String, Use), Arc<dyn ObjectStore>>>,
}

/// What a client is for, which sets how it retries (LIM-66).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Use {
    /// Ranged GETs of archives: retried by [`segment`]'s own loop.
    ArchiveBytes,
    /// Listings and ledger records: retried by the client.
    Metadata,
}

impl Storage {
    pub fn new() -> Result<Arc<Storage>, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("qbackup-audit-s3")
            .enable_all()
            .build()
            .map_err(|e| format!("starting the S3 client: {e}"))?;
        Ok(Arc::new(Storage {
            runtime,
            stores: Mutex::new(HashMap::new()),
        }))
    }

    fn store(&self, bucket: &str, usage: Use) -> Result<Arc<dyn ObjectStore>, String> {
        let mut stores = self.stores.lock().map_err(|_| "S3 client lock poisoned")?;
        let id = (bucket.to_string(), usage);
        if let Some(s) = stores.get(&id) {
            return Ok(s.clone());
        }
        refuse_metadata_service()?;
        let retry = match usage {
            Use::ArchiveBytes => RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(1),
                    base: 2.0,
                },
                max_retries: CLIENT_RETRIES,
                retry_timeout: CLIENT_RETRY_TIMEOUT,
            },
            Use::Metadata => RetryConfig::default(),
        };
        let store: Arc<dyn ObjectStore> = Arc::new(
            AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                // Not `with_client_options`: that would drop the AWS_* client settings
                // (AWS_ALLOW_HTTP, …) read from the environment.
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                    format!("{}s", REQUEST_TIMEOUT.as_secs()),
                )
                .with_retry(retry)
                .build()
                .map_err(|e| format!("S3 bucket {bucket}: {e}"))?,
        );
        stores.insert(id, store.clone());
        Ok(store)
    }

    /// The object `url` names, if it names one, and every object below it as a folder
    /// (`s3://b/site` lists `site/…`, not `sitemap`), by key.
    pub fn list(&self, url: &S3Url) -> Result<Vec<Listed>, String> {
        let store = self.store(&url.bucket, Use::Metadata)?;
        let prefix = (!url.prefix.is_empty()).then(|| ObjectPath::from(url.prefix.as_str()));
        let listed = |meta: ObjectMeta| -> Result<Listed, String> {
            let key = meta.location.to_string();
            let etag = meta
                .e_tag
                .ok_or_else(|| format!("s3://{}/{key}: the server gave no ETag", url.bucket))?;
            Ok(Listed {
                key,
                etag,
                size: meta.size,
            })
        };
        let mut out = self.runtime.block_on(async {
            let mut out = Vec::new();
            if let Some(p) = prefix.as_ref().filter(|_| !url.prefix.ends_with('/')) {
                match store.head(p).await {
                    Ok(meta) => out.push(listed(meta)?),
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(format!("reading {}: {e}", display(url))),
                }
            }
            let mut stream = store.list(prefix.as_ref());
            while let Some(meta) = stream.next().await {
                let meta = meta.map_err(|e| format!("listing {}: {e}", display(url)))?;
                out.push(listed(meta)?);
            }
            Ok::<_, String>(out)
        })?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Read `key` at version `etag` (`size` bytes) as a stream of ranged GETs, prefetched
    /// up to [`QUEUED_PIECES`] pieces ahead by a thread of its own.
    pub fn open(
        self: &Arc<Storage>,
        bucket: &str,
        key: &str,
        etag: &str,
        size: u64,
    ) -> Result<ObjectReader, String> {
        let store = self.store(bucket, Use::ArchiveBytes)?;
        let (tx, rx) = sync_channel::<Result<Piece, ReadError>>(QUEUED_PIECES);
        let this = self.clone();
        let (key, etag) = (key.to_string(), etag.to_string());
        let name = format!("s3://{bucket}/{key}");
        std::thread::Builder::new()
            .name("qbackup-audit-get".into())
            .spawn(move || {
                let mut offset = 0;
                while offset < size {
                    let end = offset.saturating_add(SEGMENT_BYTES).min(size);
                    let seg = this.runtime.block_on(segment(
                        store.as_ref(),
                        &name,
                        &key,
                        &etag,
                        size,
                        offset..end,
                        &tx,
                    ));
                    match seg {
                        Ok(true) => offset = end,
                        // The reader went away.
                        Ok(false) => return,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    }
                }
            })
            .map_err(|e| format!("starting a reader thread: {e}"))?;
        Ok(ObjectReader {
            rx,
            current: Piece::new(),
            left: size,
        })
    }

    /// A small object's bytes and ETag, or `None` when it does not exist; one larger
    /// than `max` bytes is an error, refused before its body is read.
    pub fn get(&self, bucket: &str, key: &str, max: u64) -> Result<Option<Fetched>, String> {
        let store = self.store(bucket, Use::Metadata)?;
        self.runtime
            .block_on(fetch_small(store.as_ref(), bucket, key, max))
    }

    /// [`Storage::get`] of many objects, up to [`PARALLEL_GETS`] requests at a time, in
    /// `keys` order.
    pub fn get_many(
        &self,
        bucket: &str,
        keys: &[String],
        max: u64,
    ) -> Result<Vec<Option<Fetched>>, String> {
        let store = self.store(bucket, Use::Metadata)?;
        self.runtime.block_on(async {
            futures::stream::iter(
                keys.iter()
                    .map(|key| fetch_small(store.as_ref(), bucket, key, max)),
            )
            .buffered(PARALLEL_GETS)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect()
        })
    }

    /// Write `data` to `key` only if the object is still at `etag` (`None`: only if it does
    /// not exist). `Ok(false)`: someone else wrote first (precondition failed).
    pub fn put_if(
        &self,
        bucket: &str,
        key: &str,
        data: Vec<u8>,
        etag: Option<&str>,
    ) -> Result<bool, String> {
        let store = self.store(bucket, Use::Metadata)?;
        let mode = match etag {
            None => PutMode::Create,
            Some(e) => PutMode::Update(UpdateVersion {
                e_tag: Some(e.to_string()),
                version: None,
            }),
        };
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        self.runtime.block_on(async {
            match store
                .put_opts(&ObjectPath::from(key), PutPayload::from(data), opts)
                .await
            {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => Ok(false),
                Err(e) => Err(format!("writing s3://{bucket}/{key}: {e}")),
            }
        })
    }
}

/// Without credentials in the environment the client asks the EC2 instance metadata
/// service (169.254.169.254); `AWS_EC2_METADATA_DISABLED=true`, as in the AWS SDKs, forbids
/// that: then missing credentials are an error here, and nothing leaves the machine.
fn refuse_metadata_service() -> Result<(), String> {
    let set = |k: &str| std::env::var_os(k).is_some_and(|v| !v.is_empty());
    let disabled =
        std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    let credentials = [
        "AWS_ACCESS_KEY_ID",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_SKIP_SIGNATURE",
    ]
    .iter()
    .any(|k| set(k));
    if disabled && !credentials {
        return Err(
            "no S3 credentials in the environment (AWS_ACCESS_KEY_ID and \
             AWS_SECRET_ACCESS_KEY), and AWS_EC2_METADATA_DISABLED=true forbids asking the \
             instance metadata service"
                .into(),
        );
    }
    Ok(())
}

/// A small object's bytes and ETag.
pub type Fetched = (Vec<u8>, String);

/// See [`Storage::get`].
async fn fetch_small(
    store: &dyn ObjectStore,
    bucket: &str,
    key: &str,
    max: u64,
) -> Result<Option<Fetched>, String> {
    let err = |e: object_store::Error| format!("reading s3://{bucket}/{key}: {e}");
    let r = match store
        .get_opts(&ObjectPath::from(key), GetOptions::default())
        .await
    {
        Ok(r) => r,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(err(e)),
    };
    if r.meta.size > max {
        return Err(format!(
            "s3://{bucket}/{key} is {} bytes, more than the {max} a ledger record may be",
            r.meta.size
        ));
    }
    let etag = r.meta.e_tag.clone().unwrap_or_default();
    let bytes = r.bytes().await.map_err(err)?;
    Ok(Some((bytes.to_vec(), etag)))
}

fn display(url: &S3Url) -> String {
    format!("s3://{}/{}", url.bucket, url.prefix)
}

/// One segment of the object, resumed at the byte offset until complete, sent to `tx` in
/// pieces as it arrives. `Ok(false)`: the reader went away.
async fn segment(
    store: &dyn ObjectStore,
    name: &str,
    key: &str,
    etag: &str,
    size: u64,
    range: std::ops::Range<u64>,
    tx: &SyncSender<Result<Piece, ReadError>>,
) -> Result<bool, ReadError> {
    let want = range.end - range.start;
    // Bytes of this segment received so far (sent, or in `piece`).
    let mut got = 0u64;
    let mut piece = Piece::new();
    let mut piece_len = 0usize;
    let mut stalls = 0u32;
    let mut last_error = String::new();
    while got < want {
        if stalls >= MAX_STALLS {
            return Err(ReadError::Storage(format!(
                "{name}: {stalls} requests in a row failed at byte {}: {last_error}",
                range.start + got
            )));
        }
        if stalls > 0 {
            let wait = FIRST_BACKOFF
                .saturating_mul(1 << (stalls - 1).min(16))
                .min(MAX_BACKOFF);
            tokio::time::sleep(wait).await;
        }
        let from = range.start + got;
        let opts = GetOptions {
            if_match: Some(etag.to_string()),
            range: Some(GetRange::Bounded(from..range.end)),
            ..GetOptions::default()
        };
        let before = got;
        match store.get_opts(&ObjectPath::from(key), opts).await {
            Err(object_store::Error::Precondition { .. }) => {
                return Err(ReadError::Changed(format!(
                    "{name} changed while it was read (its ETag is no longer {etag})"
                )));
            }
            Err(object_store::Error::NotFound { .. }) => {
                return Err(ReadError::Changed(format!(
                    "{name} was deleted while it was read"
                )));
            }
            Err(e) => last_error = e.to_string(),
            Ok(r) => {
                // A server that ignores If-Match must not mix two versions.
                if r.meta.e_tag.as_deref().is_some_and(|e| e != etag) || r.meta.size != size {
                    return Err(ReadError::Changed(format!(
                        "{name} changed while it was read (ETag {:?}, {} bytes; was {etag}, \
                         {size} bytes)",
                        r.meta.e_tag, r.meta.size
                    )));
                }
                let mut body = r.into_stream();
                while let Some(next) = body.next().await {
                    match next {
                        Ok(bytes) => {
                            if bytes.len() as u64 > want - got {
                                return Err(ReadError::Storage(format!(
                                    "{name}: the server sent more than the range asked for"
                                )));
                            }
                            got += bytes.len() as u64;
                            piece_len += bytes.len();
                            piece.push_back(bytes);
                            if piece_len >= PIECE_BYTES {
                                piece_len = 0;
                                // Blocks this reader thread only, while the verifier
                                // catches up.
                                if tx.send(Ok(std::mem::take(&mut piece))).is_err() {
                                    return Ok(false);
                                }
                            }
                        }
                        Err(e) => {
                            last_error = e.to_string();
                            break;
                        }
                    }
                }
                if got < want && last_error.is_empty() {
                    last_error = "the response ended early".into();
                }
            }
        }
        if got > before {
            stalls = 0;
        }
        if got < want {
            stalls += 1;
        }
    }
    Ok(piece.is_empty() || tx.send(Ok(piece)).is_ok())
}

/// The blocking side of [`Storage::open`].
pub struct ObjectReader {
    rx: Receiver<Result<Piece, ReadError>>,
    current: Piece,
    /// Bytes not yet handed out: a reader thread that stops early is an error, never an
    /// early end (which the verifier would report as a truncated archive).
    left: u64,
}

impl Read for ObjectReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.current.front().is_none_or(|b| b.is_empty()) {
            if self.current.pop_front().is_some() {
                continue;
            }
            match self.rx.recv() {
                Ok(Ok(piece)) => self.current = piece,
                Ok(Err(e)) => return Err(io::Error::other(e)),
                Err(_) if self.left == 0 => return Ok(0),
                Err(_) => {
                    return Err(io::Error::other(ReadError::Storage(format!(
                        "the reader stopped {} bytes before the end",
                        self.left
                    ))))
                }
            }
        }
        let Some(front) = self.current.front_mut() else {
            return Ok(0);
        };
        let n = out.len().min(front.len());
        out[..n].copy_from_slice(&front.split_to(n));
        self.left = self.left.saturating_sub(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            S3Url::parse("s3://b/some/prefix"),
            Some(S3Url {
                bucket: "b".into(),
                prefix: "some/prefix".into()
            })
        );
        assert_eq!(
            S3Url::parse("s3://b"),
            Some(S3Url {
                bucket: "b".into(),
                prefix: String::new()
            })
        );
        assert_eq!(S3Url::parse("s3:///x"), None);
        assert_eq!(S3Url::parse("/srv/b"), None);
    }
}
