//! A ledger in a local (or network) directory: `DIR/records/<key>.json`, each written to a
//! temporary name, synced and renamed; read-merge-write under an exclusive `flock` of
//! `DIR/ledger.lock`, held for one record.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

use super::{key_of, parse, Records, MAX_RECORD_BYTES};
use crate::record::Record;

pub struct DirLedger {
    root: PathBuf,
}

impl DirLedger {
    pub fn open(root: PathBuf) -> Result<DirLedger, String> {
        std::fs::create_dir_all(root.join("records"))
            .map_err(|e| format!("ledger {}: {e}", root.display()))?;
        Ok(DirLedger { root })
    }

    fn path(&self, key: &str) -> PathBuf {
        self.root.join("records").join(format!("{key}.json"))
    }

    pub fn load(&self) -> Result<Records, String> {
        let dir = self.root.join("records");
        let mut out = Records::new();
        for e in std::fs::read_dir(&dir).map_err(|e| format!("ledger {}: {e}", dir.display()))? {
            let e = e.map_err(|e| format!("ledger {}: {e}", dir.display()))?;
            let name = e.file_name();
            let Some(key) = name.to_str().and_then(key_of) else {
                continue;
            };
            let bytes = read_record(&e.path())?;
            let r = parse(&bytes, key, &e.path().display().to_string())?;
            out.insert(key.to_string(), r);
        }
        Ok(out)
    }

    pub fn write(&self, new: &Record) -> Result<Record, String> {
        let _lock = self.lock()?;
        let merged = match self.read(&new.key)? {
            Some(old) => old.merge(new),
            None => new.clone(),
        };
        self.store(&merged)?;
        Ok(merged)
    }

    pub fn add_if_absent(&self, pending: &Record) -> Result<(), String> {
        let _lock = self.lock()?;
        if self.read(&pending.key)?.is_none() {
            self.store(pending)?;
        }
        Ok(())
    }

    fn read(&self, key: &str) -> Result<Option<Record>, String> {
        let p = self.path(key);
        if !p.exists() {
            return Ok(None);
        }
        parse(&read_record(&p)?, key, &p.display().to_string()).map(Some)
    }

    /// Temporary name, data synced, renamed over the record, directory synced.
    fn store(&self, r: &Record) -> Result<(), String> {
        let dir = self.root.join("records");
        let tmp = dir.join(format!(".{}.{}.tmp", r.key, std::process::id()));
        let err = |e: std::io::Error| format!("ledger {}: {e}", tmp.display());
        let mut json = serde_json::to_vec_pretty(r).map_err(|e| e.to_string())?;
        json.push(b'\n');
        let mut f = File::create(&tmp).map_err(err)?;
        f.write_all(&json).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::rename(&tmp, self.path(&r.key)).map_err(err)?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("ledger {}: {e}", dir.display()))
    }

    fn lock(&self) -> Result<File, String> {
        let p = self.root.join("ledger.lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| format!("ledger {}: {e}", p.display()))?;
        // SAFETY: flock on a descriptor we own; released when `f` is closed.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(format!(
                "ledger {}: {}",
                p.display(),
                std::io::Error::last_os_error()
            ));
        }
        Ok(f)
    }
}

/// A record file's bytes, at most [`MAX_RECORD_BYTES`] (LIM-65).
fn read_record(p: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let err = |e: std::io::Error| format!("ledger {}: {e}", p.display());
    let mut bytes = Vec::new();
    File::open(p)
        .map_err(err)?
        .take(MAX_RECORD_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(err)?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err(format!(
            "ledger {}: more than the {MAX_RECORD_BYTES} bytes a record may be",
            p.display()
        ));
    }
    Ok(bytes)
}
