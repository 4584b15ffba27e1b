//! `qbackup-audit`: resumable, sharded integrity audits of many stored Qubes OS backups,
//! from local files or S3-compatible object storage (SPEC.md §29).
//!
//! This process lists and reads storage, keeps the ledger and schedules the work; it never
//! parses archive bytes (AUD-1). Each archive is piped into a sandboxed
//! `qbackup-verify verify -` child ([`child`]), and only that child's JSON report is read.

pub mod child;
pub mod cli;
pub mod clock;
pub mod estimate;
pub mod exit;
pub mod inputs;
pub mod interrupt;
pub mod ledger;
pub mod location;
pub mod passphrases;
pub mod progress;
pub mod record;
pub mod report;
pub mod run;
pub mod s3;
pub mod select;
pub mod shard;
pub mod span;
