//! The exit codes of `qbackup-audit run` (SPEC.md AUD-8; README "Auditing many
//! archives"), for batch systems' retry rules. When several apply, the first listed here
//! wins: infrastructure, then incomplete, then findings.

/// Every selected archive verified OK (or was fresh).
pub const ALL_VERIFIED: i32 = 0;
/// Usage error.
pub const USAGE: i32 = 2;
/// At least one archive has a finding (a failed verdict); the ledger has its class.
pub const FINDINGS: i32 = 10;
/// Storage, the ledger or the verifier failed: retry later (sysexits' EX_UNAVAILABLE).
pub const INFRASTRUCTURE: i32 = 69;
/// Archives of this shard are left (`--max-duration`, a signal, an object that changed
/// while read): run again (sysexits' EX_TEMPFAIL).
pub const INCOMPLETE: i32 = 75;
