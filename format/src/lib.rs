//! `qbackup-format`: the Qubes OS backup archive format, as specified in SPEC.md.
//!
//! This crate is sans-IO (SPEC.md GEN-1): it parses from byte slices or any [`std::io::Read`]
//! and encodes into `Vec<u8>` or any [`std::io::Write`]; it never opens files, spawns
//! processes, reads the environment or the clock. The binaries (`verifier/`, `packer/`)
//! drive it.
//!
//! Layers, outermost first:
//! - [`outer_tar`]: the concatenated POSIX tar members of the archive file;
//! - [`member_name`]: the grammar of member names (`NAME.NNN[.enc|.hmac]`);
//! - [`header`]: the `backup-header` key/value grammar, parsed only once authenticated;
//! - [`crypto`]: HMAC files and algorithm guessing, `openssl enc` (v2/v3), scrypt
//!   containers (v4);
//! - [`compression`]: the compression filters named by the header;
//! - [`inner_tar`]: the tar stream inside each backed-up file, with sparse maps;
//! - [`qubes_xml`]: the VM metadata of R2/R3 and R4;
//! - [`archive`]: the member-order state machine and what "verified" means.

pub mod error;
pub mod firewall;
#[cfg(fuzzing)]
pub mod fuzzing;
pub mod limits;
pub mod vm_config;

pub mod archive;
pub mod compression;
pub mod crypto;
pub mod header;
pub mod inner_tar;
pub mod member_name;
pub mod outer_tar;
pub mod paths;
pub mod protocol;
pub mod qubes_xml;
pub mod writer;

pub use error::{Error, ErrorClass, Result};
