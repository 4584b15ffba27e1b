//! scrypt KDFs ahead of the data (SPEC.md V4-2): a chunk's keys depend only on its name,
//! so they are derived on all cores while earlier chunks are still being read and
//! compressed. Requests are served lowest archive position first; at most `threads`
//! KDFs (each 128·r·N bytes) run at once.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use qbackup_format::crypto::scrypt_container::Params;
use qbackup_format::writer::v4::{Binding, SealingKey};
use qbackup_format::{Error, ErrorClass, Result};
use zeroize::Zeroizing;

/// The result of one KDF.
pub type KeyResult = Result<SealingKey>;

struct Job {
    /// `None`: the header container.
    name: Option<String>,
    tx: Sender<KeyResult>,
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Reverse<(u64, u64)>>,
    jobs: std::collections::HashMap<u64, Job>,
    seq: u64,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    ready: Condvar,
    passphrase: Zeroizing<Vec<u8>>,
    backup_id: String,
    params: Params,
}

/// A pool of KDF threads. Dropping it lets the threads finish the requests already
/// made (their results are still awaited by the writer) and then exit; it does not wait.
pub struct KdfPool {
    shared: Arc<Shared>,
    _threads: Vec<JoinHandle<()>>,
}

fn salt() -> Result<[u8; 32]> {
    let mut s = [0u8; 32];
    getrandom::fill(&mut s)
        .map_err(|e| Error::new(ErrorClass::Io, format!("no random salt: {e}")))?;
    Ok(s)
}

impl KdfPool {
    pub fn new(passphrase: &[u8], backup_id: &str, params: Params, threads: usize) -> KdfPool {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            ready: Condvar::new(),
            passphrase: Zeroizing::new(passphrase.to_vec()),
            backup_id: backup_id.to_owned(),
            params,
        });
        let threads = (0..threads.max(1))
            .map(|_| {
                let s = shared.clone();
                std::thread::spawn(move || worker(&s))
            })
            .collect();
        KdfPool {
            shared,
            _threads: threads,
        }
    }

    /// Ask for the keys of chunk `name` (`None`: `backup-header.hmac`); `priority` is its
    /// position in the archive (lower first).
    pub fn request(&self, priority: u64, name: Option<String>) -> Receiver<KeyResult> {
        let (tx, rx) = bounded(1);
        if let Ok(mut q) = self.shared.queue.lock() {
            let seq = q.seq;
            q.seq += 1;
            q.heap.push(Reverse((priority, seq)));
            q.jobs.insert(seq, Job { name, tx });
        }
        self.shared.ready.notify_one();
        rx
    }
}

impl Drop for KdfPool {
    fn drop(&mut self) {
        if let Ok(mut q) = self.shared.queue.lock() {
            q.closed = true;
        }
        self.shared.ready.notify_all();
    }
}

fn worker(s: &Shared) {
    loop {
        let job = {
            let Ok(mut q) = s.queue.lock() else { return };
            loop {
                if let Some(Reverse((_, seq))) = q.heap.pop() {
                    if let Some(job) = q.jobs.remove(&seq) {
                        break job;
                    }
                    continue;
                }
                if q.closed {
                    return;
                }
                q = match s.ready.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
        };
        crate::trace(format_args!("kdf start {:?}", job.name));
        let result = salt().and_then(|salt| {
            let binding = match &job.name {
                None => Binding::Header,
                Some(n) => Binding::Chunk {
                    backup_id: &s.backup_id,
                    name: n,
                },
            };
            SealingKey::derive(&s.passphrase, &binding, s.params, salt)
        });
        crate::trace(format_args!("kdf done {:?}", job.name));
        let _ = job.tx.send(result);
    }
}
