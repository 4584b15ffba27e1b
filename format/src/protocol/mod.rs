//! The verifier→restore stdio protocol, version 4 (SPEC.md §21, PROTO-1 … PROTO-15).
//!
//! The unprivileged verifier (`qbackup-verify emit`) writes verified VM data with an
//! [`write::Encoder`]; the privileged restore (`qbackup-pack restore`) reads it with a
//! [`read::Decoder`] and treats every byte as hostile. Both sides share one state machine
//! ([`state::Checker`]), so the encoder cannot produce a stream the decoder refuses.
//!
//! A stream is a sequence of records `type:u8 ‖ length:u32be ‖ payload` (PROTO-2):
//! `Hello`, `Manifest` (the VMs), one `Config` per VM (properties, features, tags,
//! devices), then per VM its files — per file `Begin` (name, kind, sizes), `Data`*, `End`
//! (digest) — closed by a `VmEnd` (firewall, notes, menu items), and finally `Summary` —
//! or an `Error` record at any point after `Hello`. It is produced in one pass: a file's sizes are announced by its `Begin`, not
//! by the manifest. Nothing may follow the last record.
//!
//! Sans-IO (GEN-1): generic over [`std::io::Read`] / [`std::io::Write`], no files,
//! processes or clock.

mod codec;
pub mod hash;
pub mod read;
pub mod state;
pub mod write;

pub use hash::{FileHasher, RecordDigest};

use crate::qubes_xml::NetVm;
pub use crate::vm_config::{Device, Firewall, VmConfig, VmEnd};

/// PROTO-1: the 8 magic bytes that open every stream.
pub const MAGIC: [u8; 8] = *b"QBKPSTRM";

/// PROTO-1: the protocol version this crate speaks. A reader accepts exactly the versions
/// it implements; any change to the wire format or the state machine takes a new number.
pub const VERSION: u16 = 5;

/// PROTO-7: length of the file digest an `end` record carries.
pub const FILE_DIGEST_LEN: usize = 16;
/// PROTO-7: the file digest ([`RecordDigest`]).
pub type FileDigest = [u8; FILE_DIGEST_LEN];

/// Record type bytes (PROTO-2).
pub mod record_type {
    pub const HELLO: u8 = 0x01;
    pub const MANIFEST: u8 = 0x02;
    pub const BEGIN: u8 = 0x03;
    pub const DATA: u8 = 0x04;
    pub const END: u8 = 0x05;
    pub const SUMMARY: u8 = 0x06;
    pub const ERROR: u8 = 0x07;
    pub const CONFIG: u8 = 0x08;
    pub const VM_END: u8 = 0x09;
}

/// Which file names a VM's files may have (PROTO-5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A VM directory's files: volume images and the files the format defines as regular
    /// files ([`crate::archive::plan::regular_only`]), anything else also as directories
    /// and symlinks (`apps.templates/…`, `icon.png`).
    Volumes,
    /// A v3 template directory (`vmN/.`): any NAME-3 relative path; class `TemplateVM`.
    TemplateDir,
    /// dom0's home: any NAME-3 relative path (first component the user); VM `dom0`.
    Dom0Home,
}

/// One VM of the manifest (PROTO-3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestVm {
    pub name: String,
    pub class: String,
    pub label: Option<String>,
    pub template: Option<String>,
    pub netvm: NetVm,
    pub layout: Layout,
    /// Declared `backup-size` (VER-4), advisory: information for the restore, not a bound.
    pub backup_size: u64,
    /// Files the stream MUST carry for this VM (VER-2), `volumes` layout only: volume
    /// images (`private.img`), at most LIM-51. Other files may come too.
    pub expected_files: Vec<String>,
}

/// A VM the backup describes that the stream does not carry (PROTO-3): not selected, or
/// no data in the backup. The restore names it when a carried VM refers to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtherVm {
    pub name: String,
    pub class: String,
    /// Its data is in the backup (it was not selected).
    pub in_backup: bool,
}

/// The VMs the stream will carry, known before any data (PROTO-3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    pub vms: Vec<ManifestVm>,
    /// The other VMs of the backup's qubes.xml; `vms` and `others` together at most
    /// LIM-14, names unique across both.
    pub others: Vec<OtherVm>,
}

/// The kind of a file (PROTO-5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    Regular,
    Directory,
    /// The target is UTF-8 without control characters, ≤ LIM-8 bytes; it is *not* checked
    /// to stay inside anything: the consumer applies EXT-4 before creating it.
    Symlink {
        target: String,
    },
}

/// Opens one file (PROTO-5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begin {
    /// Index into [`Manifest::vms`].
    pub vm: u32,
    /// Relative to the VM's output directory (EXT-1): `private.img`, `apps/x.desktop`,
    /// `user/.bashrc` (dom0).
    pub name: String,
    pub kind: FileKind,
    /// Permission bits only (`mode & !0o777 == 0`).
    pub mode: u32,
    /// Logical size, holes included (≤ LIM-12); 0 for directories and symlinks.
    pub size: u64,
    /// Exactly the number of file bytes the data records of this file carry (≤ `size`).
    pub data_bytes: u64,
}

/// The totals closing a stream (PROTO-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub vms: u32,
    pub files: u64,
    /// Sum of logical sizes.
    pub logical_bytes: u64,
    /// Sum of data record lengths.
    pub data_bytes: u64,
    /// SHA-256 over every preceding record except the file bytes of data records.
    pub transcript: [u8; 32],
}

/// A decoded record, already checked against the state machine.
#[derive(Debug, PartialEq, Eq)]
pub enum Record<'a> {
    Hello {
        version: u16,
    },
    Manifest(&'a Manifest),
    /// The settings of manifest VM `vm` (PROTO-14), checked against CFG-1.
    Config {
        vm: u32,
        config: VmConfig,
    },
    Begin(Begin),
    /// File bytes at logical `offset`; the gap since the previous record is a hole.
    Data {
        offset: u64,
        bytes: &'a [u8],
    },
    /// The file is complete and its digest ([`RecordDigest`]) matched what the decoder
    /// computed itself (PROTO-7): the consumer may commit it now.
    End {
        digest: FileDigest,
    },
    /// Manifest VM `vm` is complete: all its files were sent (PROTO-15); what the
    /// restore sets last, checked against CFG-2.
    VmEnd {
        vm: u32,
        end: VmEnd,
    },
    /// The stream is complete (PROTO-8). Terminal.
    Summary(Summary),
    /// The producer gave up (PROTO-9). Terminal.
    Error {
        class: crate::ErrorClass,
        message: String,
    },
}
