//! A ledger in object storage: `s3://bucket/prefix/records/<key>.json`, each write a
//! conditional put against the ETag it merged with (or create-only), retried on conflict.

use std::sync::Arc;

use super::{key_of, parse, Records, MAX_RECORD_BYTES};
use crate::record::Record;
use crate::s3::{S3Url, Storage};

/// Conflicting writers to one record retry this many times (LIM-63).
const MAX_CONFLICTS: u32 = 32;

pub struct ObjectLedger {
    storage: Arc<Storage>,
    bucket: String,
    /// `prefix/records/`.
    records: String,
}

impl ObjectLedger {
    pub fn new(storage: Arc<Storage>, url: S3Url) -> ObjectLedger {
        let base = url.prefix.trim_end_matches('/');
        let records = if base.is_empty() {
            "records/".to_string()
        } else {
            format!("{base}/records/")
        };
        ObjectLedger {
            storage,
            bucket: url.bucket,
            records,
        }
    }

    fn object(&self, key: &str) -> String {
        format!("{}{key}.json", self.records)
    }

    pub fn load(&self) -> Result<Records, String> {
        let url = S3Url {
            bucket: self.bucket.clone(),
            prefix: self.records.clone(),
        };
        let objects: Vec<String> = self
            .storage
            .list(&url)?
            .into_iter()
            .map(|o| o.key)
            .filter(|k| key_of(k.rsplit('/').next().unwrap_or(k)).is_some())
            .collect();
        let mut out = Records::new();
        for (object, bytes) in objects.iter().zip(self.storage.get_many(
            &self.bucket,
            &objects,
            MAX_RECORD_BYTES,
        )?) {
            let key = key_of(object.rsplit('/').next().unwrap_or(object)).unwrap_or_default();
            // Gone since the listing: nothing to know.
            if let Some((bytes, _)) = bytes {
                let r = parse(&bytes, key, &format!("s3://{}/{object}", self.bucket))?;
                out.insert(key.to_string(), r);
            }
        }
        Ok(out)
    }

    pub fn write(&self, new: &Record) -> Result<Record, String> {
        let object = self.object(&new.key);
        for _ in 0..MAX_CONFLICTS {
            let (merged, etag) = match self.storage.get(&self.bucket, &object, MAX_RECORD_BYTES)? {
                Some((bytes, etag)) => {
                    let origin = format!("s3://{}/{object}", self.bucket);
                    (parse(&bytes, &new.key, &origin)?.merge(new), Some(etag))
                }
                None => (new.clone(), None),
            };
            let json = serde_json::to_vec_pretty(&merged).map_err(|e| e.to_string())?;
            if self
                .storage
                .put_if(&self.bucket, &object, json, etag.as_deref())?
            {
                return Ok(merged);
            }
        }
        Err(format!(
            "ledger record s3://{}/{object}: {MAX_CONFLICTS} conflicting writes in a row",
            self.bucket
        ))
    }

    pub fn add_if_absent(&self, pending: &Record) -> Result<(), String> {
        let json = serde_json::to_vec_pretty(pending).map_err(|e| e.to_string())?;
        // Create-only: a record that exists (or appeared meanwhile) is left alone.
        self.storage
            .put_if(&self.bucket, &self.object(&pending.key), json, None)
            .map(drop)
    }
}
