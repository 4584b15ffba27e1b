//! Every limit of the format in one place (SPEC.md LIM-1 … ; the SPEC.md limits table
//! lists the same names and values). Each bounds a length, count or cost that untrusted
//! bytes could otherwise choose.

/// LIM-1: largest `backup-header` accepted. Upstream caps the v4 header at 4096 − 128
/// bytes because its scrypt-encrypted copy must fit `HMAC_MAX_SIZE`; v2/v3 headers are
/// far smaller than this too.
pub const MAX_HEADER_LEN: u64 = 4096;

/// LIM-2: largest `.hmac` member (v2/v3 text MACs and the v4 `backup-header.hmac`
/// container); upstream's `HMAC_MAX_SIZE`.
pub const MAX_HMAC_LEN: u64 = 4096;

/// LIM-3: largest stored `qubes.xml.000[.enc]` chunk; upstream's 1 MiB retrieval limit.
pub const MAX_QUBES_XML_CHUNK_LEN: u64 = 1 << 20;

/// LIM-4: largest decompressed `qubes.xml`. A compressed chunk of 1 MiB may inflate a
/// lot; real files are tens of KiB, so 16 MiB leaves room while refusing XML bombs.
pub const MAX_QUBES_XML_LEN: u64 = 16 << 20;

/// LIM-5: largest outer member (one chunk). Writers split at 100 MiB (plus 128 bytes of
/// scrypt container, or an expanded v2 volume); a reader must hold a whole chunk before
/// its MAC lets anything parse it, so this also bounds memory per chunk in flight.
pub const MAX_CHUNK_LEN: u64 = 128 << 20;

/// LIM-6: largest chunk index. Upstream numbers chunks `%03d` without an upper bound;
/// 10^6 chunks of 100 MiB is 95 TiB, more than any disk image.
pub const MAX_CHUNK_INDEX: u32 = 999_999;

/// LIM-7: most outer members in one archive (bounds per-archive bookkeeping).
pub const MAX_MEMBERS: u64 = 4_000_000;

/// LIM-8: longest member or inner entry path, in bytes (Linux PATH_MAX).
pub const MAX_PATH_LEN: usize = 4096;

/// LIM-9: most path components in a name.
pub const MAX_PATH_DEPTH: usize = 256;

/// LIM-10: largest pax extended header or GNU long-name/long-link record.
pub const MAX_TAR_EXTENSION_LEN: u64 = 1 << 20;

/// LIM-11: most sparse map entries for one file (GNU old sparse or PAX 1.0). A 2 TiB
/// image with a data run every other 4 KiB block would need 2^28; real images need far
/// fewer. Each entry costs 16 bytes of memory while the map is read.
pub const MAX_SPARSE_ENTRIES: usize = 1 << 22;

/// LIM-12: largest logical size of one inner file (a volume image), 16 TiB.
pub const MAX_FILE_SIZE: u64 = 16 << 40;

/// LIM-13: most inner tar entries in one backed-up file (a v3 template directory or a
/// dom0 home holds many files; volume images hold one).
pub const MAX_INNER_ENTRIES: u64 = 1_000_000;

/// LIM-14: most VMs in qubes.xml.
pub const MAX_VMS: usize = 10_000;

/// LIM-15: deepest XML element nesting in qubes.xml.
pub const MAX_XML_DEPTH: usize = 32;

/// LIM-16: longest XML attribute or text value in qubes.xml.
pub const MAX_XML_VALUE_LEN: usize = 64 << 10;

/// LIM-17: scrypt r·p must stay below 2^30 (the scrypt paper's bound, which the
/// Tarsnap tool enforces too).
pub const MAX_SCRYPT_R_TIMES_P: u64 = (1 << 30) - 1;

/// LIM-18: largest log2(N) accepted at all (N = 2^logN ≤ 2^40 as in `scrypt --logN`).
pub const MAX_SCRYPT_LOG_N: u8 = 40;

/// LIM-19: default cap on the memory one scrypt KDF may demand (128·r·N bytes) when the
/// caller does not pass the machine's own figure: 4 GiB. The binaries use half of the
/// machine's RAM, like `scrypt dec`, and allow an explicit override.
pub const DEFAULT_SCRYPT_MAX_MEMORY: u64 = 4 << 30;

/// LIM-20: cap on scrypt work, in units of 128·r·N·p bytes of salsa20/8 mixing; with the
/// memory cap this bounds the time one container can cost. Default: 2^21·8·16 (logN 21,
/// r 8, p 16), 32 × what a default `scrypt enc` picks on a 24 GiB machine.
pub const DEFAULT_SCRYPT_MAX_WORK: u64 = (1 << 21) * 8 * 16;

/// LIM-21: longest passphrase, in bytes (scrypt's `readpass` reads at most 2047).
pub const MAX_PASSPHRASE_LEN: usize = 2047;

/// LIM-22: longest backup-id (header value); upstream's is about 22 bytes.
pub const MAX_BACKUP_ID_LEN: usize = 128;

/// LIM-23: most zero bytes accepted after an inner tar's first end-of-archive block (GNU
/// tar pads its output to a 10240-byte record; anything beyond padding is suspect).
pub const MAX_TAR_TRAILING_ZERO_BYTES: u64 = 1 << 20;

/// LIM-24: most XML elements in qubes.xml. A domain has a few dozen (properties,
/// features, tags, devices, volumes), so this covers [`MAX_VMS`] VMs while bounding the
/// element tree the parser builds.
pub const MAX_XML_ELEMENTS: usize = 1 << 20;

/// LIM-25: most attributes on one qubes.xml element (upstream writes at most about 30,
/// on R2/R3 VM elements); also bounds the parser's quadratic duplicate-attribute check.
pub const MAX_XML_ATTRIBUTES: usize = 256;

/// LIM-26: most memory one decompressor may use (xz/lzma dictionary, zstd window). Real
/// archives need at most 64 MiB (`xz -9`) or 128 MiB (`zstd --long=27`); a header cannot
/// make the reader allocate more.
pub const MAX_DECODER_MEMORY: u64 = 256 << 20;

/// LIM-27: how far a VM's stored data may exceed its declared `backup-size` before the
/// verifier reports it (VER-4). Upstream's size is the disk usage of what it *meant* to
/// store, which real archives exceed (R3 tar dereferences `icon.png` links and adds small
/// files; #7198: compressing file systems). Advisory by default (a warning); a failure only
/// with `--strict-backup-size`.
pub const BACKUP_SIZE_SLACK: u64 = 16 << 20;
/// LIM-28: most file bytes in one protocol data record (PROTO-6). Bounds the buffer the
/// privileged reader of the verifier↔packer stream holds per record.
pub const MAX_PROTO_DATA_LEN: usize = 1 << 20;

/// LIM-29: largest protocol manifest record (PROTO-3); a manifest of [`MAX_VMS`] VMs
/// needs at most about 5.2 MB, and the privileged decoder buffers no more than this.
pub const MAX_PROTO_MANIFEST_LEN: usize = 8 << 20;

/// LIM-30: most files in one protocol stream, all VMs together (PROTO-5); the same
/// bound as the inner entries of one backed-up file ([`MAX_INNER_ENTRIES`]).
pub const MAX_PROTO_FILES: u64 = MAX_INNER_ENTRIES;

/// LIM-31: longest message of a protocol error record, in bytes (PROTO-9).
pub const MAX_PROTO_MESSAGE_LEN: usize = 4096;

/// LIM-32: longest VM label in a protocol manifest (a colour name such as `red`).
pub const MAX_PROTO_LABEL_LEN: usize = 64;

/// LIM-33: most bytes of file names one VM's files may have in a protocol stream
/// (PROTO-5). The checker remembers them to refuse duplicates; 64 MiB is 64 bytes for
/// each of [`MAX_PROTO_FILES`] files.
pub const MAX_PROTO_NAME_BYTES: usize = 64 << 20;

/// LIM-37: default time-out, in seconds, on silence of the restore's verifier child
/// (RST-5). A header KDF at logN 21 takes 5–10 s per chunk on a slow machine and the
/// child says nothing meanwhile; five minutes leaves a wide margin.
pub const DEFAULT_RESTORE_TIMEOUT_SECS: u64 = 300;

/// LIM-38: longest time-out a restore accepts (`--timeout`), one day: silence beyond it is
/// a hung child, not a slow one.
pub const MAX_RESTORE_TIMEOUT_SECS: u64 = 86_400;

/// LIM-39: most files (of any kind) one restore writes (RST-2), independent of the
/// protocol's own count (LIM-30): the consumer bounds what it creates itself.
pub const MAX_RESTORE_FILES: u64 = 1_000_000;

/// LIM-41: address space the sandboxed verifier may map besides KDF memory, chunk buffers,
/// the allocator's cache and threads (SBX-5): code, libraries, decoder state (LIM-26),
/// qubes.xml (LIM-4), bounded tables and the report.
pub const SANDBOX_AS_BASE: u64 = 1 << 30;

/// LIM-42: address space per thread of the sandboxed verifier besides its chunk buffer
/// (SBX-5): a glibc malloc arena reserves up to 64 MiB, twice that when it grows a second
/// heap, plus the thread's stack (8 MiB for main, 2 MiB for the others).
pub const SANDBOX_AS_PER_THREAD: u64 = (128 + 8) << 20;

/// LIM-43: largest regular file `verify`, `list` or `emit` may grow when stdout or stderr is
/// redirected to one (a report, a log, an emitted stream saved for later; SBX-6). Without
/// such a redirection they may not grow any file (`RLIMIT_FSIZE` 0).
pub const SANDBOX_REPORT_FILE_MAX: u64 = 1 << 30;

/// LIM-44: open file descriptors of the sandboxed verifier (`RLIMIT_NOFILE`, SBX-6): the
/// archive, stdio, and for `extract` a few directories and one output file per file in
/// flight. Nothing else is opened after the sandbox is applied.
pub const SANDBOX_MAX_OPEN_FILES: u64 = 256;

/// LIM-45: longest VM name, Qubes' own rule (XML-3; also the protocol's VM, template and
/// netvm names, PROTO-3).
pub const MAX_VM_NAME_LEN: usize = 31;

/// LIM-46: longest VM class name (XML-2; PROTO-3).
pub const MAX_VM_CLASS_LEN: usize = 64;

/// LIM-47: largest logical size of the small text files a restore reads from a VM's
/// directory (`firewall.xml`, `notes.txt`, menu lists; VER-4). Real ones are a few KiB;
/// upstream caps notes at 256 KB.
pub const MAX_VM_TEXT_FILE_LEN: u64 = 16 << 20;

/// LIM-48: largest logical size of any other entry of a VM's files that is not a volume
/// image (`*.img`): icons, menu templates, R3 `kernels/vmlinuz` and `initramfs` (VER-4).
/// Real ones are at most tens of MiB.
pub const MAX_VM_AUX_FILE_LEN: u64 = 4 << 30;

/// LIM-49: how far a v4 volume image's logical size may exceed its `volume-config` size
/// (VER-4). LVM rounds a logical volume up to whole extents (4 MiB by default, larger for
/// big volume groups) and the backup reads the whole device.
pub const VOLUME_SIZE_SLACK: u64 = 64 << 20;

/// LIM-50: default free-space reserve of `extract` and `restore` (EXT-6): writing stops
/// with `limit-exceeded` before the destination file system's free space would fall
/// below the smaller of this and 5 % of its size.
pub const DEFAULT_SPACE_RESERVE: u64 = 1 << 30;

/// LIM-51: most expected files (volume images) one VM of a protocol manifest may list
/// (PROTO-3); a Qubes VM has four volumes. Checked before any name is read.
pub const MAX_PROTO_EXPECTED_FILES: u32 = 64;

/// Longest expected file name in a protocol manifest: a volume name (at most 64 bytes,
/// XML-2) plus `.img` (PROTO-2).
pub const MAX_PROTO_EXPECTED_NAME_LEN: usize = 68;

/// LIM-52: most properties, features, tags or device assignments of one VM in a protocol
/// `config` record (PROTO-14, CFG-1; a device's options: `vm_config::MAX_DEVICE_OPTIONS`). Real VMs have a
/// few dozen features; qubes.xml (LIM-24) could hold more, which the verifier reports.
pub const MAX_CONFIG_ENTRIES: usize = 1024;

/// LIM-53: longest property or feature value, or device option value, in a `config`
/// record (CFG-1). Real values are short (kernel options, a `menu-items` list).
pub const MAX_CONFIG_VALUE_LEN: usize = 8192;

/// LIM-54: most firewall rules of one VM (FW-1). qubesd keeps rules in memory and in
/// nftables; real firewalls have a handful to a few hundred.
pub const MAX_FIREWALL_RULES: usize = 4096;

/// LIM-55: longest firewall rule line (FW-2), comment included.
pub const MAX_FIREWALL_RULE_LEN: usize = 1024;

/// LIM-56: longest firewall rule comment (FW-1).
pub const MAX_FIREWALL_COMMENT_LEN: usize = 512;

/// LIM-57: longest VM notes text (CFG-2): qubesd's own cap on `admin.vm.notes.Set`.
pub const MAX_NOTES_LEN: usize = 256_000;

/// LIM-58: most menu items of one VM (CFG-2).
pub const MAX_MENU_ITEMS: usize = 1024;

/// LIM-59: largest `config` record (PROTO-2): LIM-52 entries of each kind with values
/// of LIM-53 bytes would not fit; real configurations are a few KiB.
pub const MAX_PROTO_CONFIG_LEN: usize = 4 << 20;

/// LIM-60: largest `vmend` record (PROTO-2): LIM-54 rules of LIM-55 bytes, LIM-57 bytes
/// of notes and LIM-58 menu items of 255 bytes fit.
pub const MAX_PROTO_VMEND_LEN: usize = 8 << 20;
