//! The fuzz targets of qbackup, one function per parser (see FUZZING.md).
//!
//! Each function takes arbitrary bytes and must never panic, hang or allocate without
//! bound; where an encoder exists it also checks the round trip. cargo-fuzz calls them from
//! `fuzz/fuzz_targets/<name>.rs` (with `--cfg fuzzing`, which switches the format crate to
//! its fixed-key mode, `qbackup_format::fuzzing`); the stable test
//! `tests/tests/fuzz_corpus_replay.rs` calls the same functions on every corpus file,
//! without the fixed key.

use std::io::Read;

use qbackup_format::archive::authenticate::{authenticate_header, Credentials};
use qbackup_format::archive::sequencer::{Sequencer, Step};
use qbackup_format::compression::Filter;
use qbackup_format::crypto::guess::{header_algorithm_agrees, header_mac_candidates, MacAlgorithm};
use qbackup_format::crypto::hmac_file::{format_hmac_file, hmac, parse_hmac_file, Digest};
use qbackup_format::crypto::openssl_enc::{encrypt, CbcDecryptReader, CbcDecryptor, Cipher};
use qbackup_format::crypto::scrypt_container::{self, KdfLimit, Params};
use qbackup_format::header::Version;
use qbackup_format::inner_tar::{DataSink, MultiVolumeReader, TarReader};
use qbackup_format::member_name::{chunk_name, ChunkKind, MemberName};
use qbackup_format::outer_tar::OuterReader;
use qbackup_format::qubes_xml::{self, validate_vm_name};
use qbackup_format::{ErrorClass, Result};
use qbackup_verify::driver::{self, Settings};
use qbackup_verify::output::VerifyOnly;

/// The passphrase every target uses (corpus archives are made with it).
pub const PASSPHRASE: &[u8] = b"fuzz";

/// Separates volumes in an `inner_tar_multivolume` input.
pub const VOLUME_SEPARATOR: &[u8] = b"=QBACKUP-FUZZ-VOLUME=";

/// A target body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its cargo-fuzz binary and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("header", header),
    ("hmac_file", hmac_file),
    ("member_name", member_name),
    ("outer_tar", outer_tar),
    ("scrypt_container", scrypt_container),
    ("openssl_enc", openssl_enc),
    ("compression", compression),
    ("inner_tar", inner_tar),
    ("inner_tar_multivolume", inner_tar_multivolume),
    ("qubes_xml", qubes_xml),
    ("sequencer", sequencer),
    ("pipeline", pipeline),
    ("protocol_decode", protocol_decode),
    ("protocol_roundtrip", protocol_roundtrip),
];

/// Whether the spec check `id` (a finding number of FUZZING.md, e.g. `F1`) is listed in
/// the environment variable `QBACKUP_FUZZ_SKIP` (comma-separated). Fuzzing sessions set it
/// for open findings so the fuzzer can get past them; the replay test never does.
fn skipped(id: &str) -> bool {
    static SKIP: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    SKIP.get_or_init(|| {
        std::env::var("QBACKUP_FUZZ_SKIP")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .collect()
    })
    .iter()
    .any(|s| s == id)
}

/// HDR-5 oracles over an accepted header's text: strict booleans (DEV-9) and, in v2/v3,
/// a digest name rather than `scrypt`.
fn check_accepted_header(data: &[u8], header: &qbackup_format::header::Header) {
    let Ok(text) = std::str::from_utf8(data) else {
        panic!("a non-UTF-8 header was accepted");
    };
    for line in text.split('\n') {
        let line = line.trim();
        for key in ["encrypted=", "compressed="] {
            if let Some(v) = line.strip_prefix(key) {
                let v = v.to_ascii_lowercase();
                if !skipped("F1") {
                    assert!(
                        ["1", "true", "yes", "0", "false", "no"].contains(&v.as_str()),
                        "F1: header boolean {line:?} accepted (HDR-5, DEV-9)"
                    );
                }
            }
        }
    }
    if header.version != Version::V4 && !skipped("F2") {
        assert!(
            Digest::from_name(&header.hmac_algorithm).is_some(),
            "F2: v2/v3 header with hmac-algorithm {:?} accepted (HDR-5)",
            header.hmac_algorithm
        );
    }
}

/// KDF limits small enough that a fuzzer-made container costs at most ~2 MiB and a few ms.
fn small_kdf_limit() -> KdfLimit {
    KdfLimit {
        max_memory: 2 << 20,
        max_work: 1 << 14,
    }
}

fn credentials() -> Credentials {
    Credentials::new(PASSPHRASE.to_vec(), small_kdf_limit())
}

/// The cheapest valid scrypt parameters (the round trips use them).
const CHEAP: Params = Params {
    log_n: 1,
    r: 1,
    p: 1,
};

/// `backup-header` (HDR-1 … HDR-6, MAC-1 … MAC-3, V4-3): the input is the header; the
/// harness authenticates it both ways: with a real `.hmac` line (digest taken from the
/// input's `hmac-algorithm=` if it names one) and with a v4 scrypt container (real, logN 1,
/// or in fixed-key mode a fuzz container holding the input).
pub fn header(data: &[u8]) {
    let creds = credentials();
    let digest = named_digest(data).unwrap_or(Digest::Sha512);
    let line = format_hmac_file(digest, &hmac(digest, PASSPHRASE, data));
    if let Ok(auth) = authenticate_header(data, line.as_bytes(), &creds) {
        check_accepted_header(data, &auth.header);
        assert_eq!(Digest::from_name(&auth.header.hmac_algorithm), Some(digest));
    }

    let mut header_pass = b"backup-header!".to_vec();
    header_pass.extend_from_slice(PASSPHRASE);
    if let Some(container) = v4_container(&header_pass, data) {
        if let Ok(auth) = authenticate_header(data, &container, &creds) {
            check_accepted_header(data, &auth.header);
            // MAC-3: a header verified by scrypt must name scrypt.
            assert!(auth.header.hmac_algorithm.eq_ignore_ascii_case("scrypt"));
        }
    }
}

/// The digest named by a `hmac-algorithm=` line of `data`, if any.
fn named_digest(data: &[u8]) -> Option<Digest> {
    let key = b"hmac-algorithm=";
    let at = data.windows(key.len()).position(|w| w == key)?;
    let rest = data.get(at + key.len()..)?;
    let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    Digest::from_name(std::str::from_utf8(rest.get(..end)?).ok()?)
}

/// A scrypt container holding `plaintext` that authenticates under `passphrase`: a real
/// one (logN 1) normally, a fuzz container (header, plaintext, 32 bytes) in fixed-key mode.
fn v4_container(passphrase: &[u8], plaintext: &[u8]) -> Option<Vec<u8>> {
    if cfg!(fuzzing) {
        let sealed = scrypt_container::seal(passphrase, CHEAP, [0; 32], b"").ok()?;
        let mut c = sealed.get(..scrypt_container::HEADER_LEN)?.to_vec();
        c.extend_from_slice(plaintext);
        c.extend_from_slice(&[0; 32]);
        Some(c)
    } else {
        scrypt_container::seal(passphrase, CHEAP, [0; 32], plaintext).ok()
    }
}

/// `.hmac` files and algorithm guessing (MAC-2, MAC-3, MAC-4), with the round trip
/// `parse_hmac_file(format_hmac_file(d, mac)) == mac`.
pub fn hmac_file(data: &[u8]) {
    let parsed = parse_hmac_file(data);
    let candidates = header_mac_candidates(data);
    if data.starts_with(scrypt_container::MAGIC) {
        assert_eq!(candidates, vec![MacAlgorithm::Scrypt]);
    } else if let Ok(mac) = &parsed {
        for c in &candidates {
            let MacAlgorithm::Hmac(d) = c else {
                panic!("scrypt candidate for a non-scrypt member");
            };
            assert_eq!(d.output_len(), mac.len());
            assert!(header_algorithm_agrees(d.name(), *c));
        }
        for d in Digest::ALL {
            if d.output_len() == mac.len() {
                let line = format_hmac_file(d, mac);
                assert_eq!(parse_hmac_file(line.as_bytes()).ok().as_ref(), Some(mac));
                assert!(candidates.contains(&MacAlgorithm::Hmac(d)));
            }
        }
    } else {
        assert!(candidates.is_empty());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(d) = Digest::from_name(text) {
            assert_eq!(Digest::from_name(d.name()), Some(d));
        }
        for c in &candidates {
            let _ = header_algorithm_agrees(text, *c);
        }
    }
}

/// Member names (NAME-1 … NAME-4), with the round trip: an accepted chunk name is exactly
/// `chunk_name(path, index)` plus its suffix.
pub fn member_name(data: &[u8]) {
    let Ok(name) = MemberName::parse(data) else {
        return;
    };
    if let MemberName::Chunk { path, index, kind } = &name {
        let suffix = match kind {
            ChunkKind::Data => "",
            ChunkKind::Enc => ".enc",
            ChunkKind::Hmac => ".hmac",
        };
        let text = format!("{}{suffix}", chunk_name(path, *index));
        assert_eq!(text.as_bytes(), data, "accepted name is not canonical");
        assert_eq!(MemberName::parse(text.as_bytes()).ok(), Some(name.clone()));
    }
}

/// The outer tar stream (OUT-1 … OUT-5): every other member is read whole, the rest are
/// skipped; names go on to the member-name parser.
pub fn outer_tar(data: &[u8]) {
    let mut outer = OuterReader::new(data);
    let mut buf = Vec::new();
    let mut i = 0u64;
    while let Ok(Some(member)) = outer.next_member() {
        let _ = MemberName::parse(&member.untrusted_name);
        if i.is_multiple_of(2) {
            if outer.read_member(&mut buf, 1 << 16, "member").is_err() {
                break;
            }
            assert_eq!(buf.len() as u64, member.size);
        }
        i += 1;
    }
    assert!(outer.position() <= data.len() as u64);
}

/// The scrypt container (V4-1, V4-4, V4-5): parse the input's header, check its cost,
/// and open it when the KDF is tiny. Round trip: `seal` (logN 1..3) then `open` gives the
/// plaintext back; a flipped header-MAC byte is WrongPassphrase, a flipped final byte
/// MacFailure.
pub fn scrypt_container(data: &[u8]) {
    if let Ok(h) = scrypt_container::parse_header(data) {
        assert_eq!(Some(&h.raw()[..]), data.get(..64));
        let _ = scrypt_container::check_cost(&h.params, &KdfLimit::default());
        let tiny = KdfLimit {
            max_memory: 128 * 16 * 4,
            max_work: 64,
        };
        if scrypt_container::check_cost(&h.params, &tiny).is_ok() {
            if let Ok(keys) = scrypt_container::derive_keys(PASSPHRASE, &h) {
                let opened = scrypt_container::open(&keys, data);
                let mut copy = data.to_vec();
                let in_place = scrypt_container::open_in_place(&keys, &mut copy);
                match (opened, in_place) {
                    (Ok(a), Ok(())) => assert_eq!(a, copy),
                    (Err(a), Err(b)) => {
                        assert_eq!(a.class(), b.class());
                        assert_eq!(copy, data, "failed open_in_place changed the container");
                    }
                    _ => panic!("open and open_in_place disagree"),
                }
            }
        }
    }

    // Round trip.
    let sel = data.first().copied().unwrap_or(0);
    let params = Params {
        log_n: 1 + sel % 3,
        r: 1 + u32::from(sel / 3 % 2),
        p: 1,
    };
    let mut salt = [0u8; 32];
    for (s, d) in salt.iter_mut().zip(data) {
        *s = *d;
    }
    let sealed = match scrypt_container::seal(PASSPHRASE, params, salt, data) {
        Ok(s) => s,
        Err(e) => panic!("seal failed: {e}"),
    };
    assert_eq!(sealed.len(), data.len() + scrypt_container::OVERHEAD);
    let h = match scrypt_container::parse_header(&sealed) {
        Ok(h) => h,
        Err(e) => panic!("sealed header does not parse: {e}"),
    };
    assert_eq!(h.params, params);
    let keys = match scrypt_container::derive_keys(PASSPHRASE, &h) {
        Ok(k) => k,
        Err(e) => panic!("derive_keys: {e}"),
    };
    assert_eq!(
        scrypt_container::open(&keys, &sealed).ok().as_deref(),
        Some(data)
    );
    let mut tampered = sealed.clone();
    if let Some(b) = tampered.get_mut(70) {
        *b ^= 1;
    }
    assert_eq!(
        scrypt_container::open(&keys, &tampered).map_err(|e| e.class()),
        Err(ErrorClass::WrongPassphrase)
    );
    let mut tampered = sealed;
    if let Some(b) = tampered.last_mut() {
        *b ^= 0x80;
    }
    assert_eq!(
        scrypt_container::open(&keys, &tampered).map_err(|e| e.class()),
        Err(ErrorClass::MacFailure)
    );
}

const CIPHERS: [Cipher; 3] = [Cipher::Aes128Cbc, Cipher::Aes192Cbc, Cipher::Aes256Cbc];

fn decrypt_in_pieces(cipher: Cipher, stream: &[u8], piece: usize) -> Option<Result<Vec<u8>>> {
    let header: [u8; 16] = stream.get(..16)?.try_into().ok()?;
    let mut dec = match CbcDecryptor::new(cipher, PASSPHRASE, &header) {
        Ok(d) => d,
        Err(e) => return Some(Err(e)),
    };
    let mut out = Vec::new();
    for c in stream.get(16..)?.chunks(piece) {
        dec.update(c, &mut out);
    }
    Some(dec.finish(&mut out).map(|()| out))
}

/// `openssl enc` streams (V3-1 … V3-3): the first byte picks the cipher and how the rest
/// is cut into pieces; the rest is decrypted as a `Salted__` stream by [`CbcDecryptor`]
/// and [`CbcDecryptReader`], which must agree. Round trip: `encrypt` then decrypt.
pub fn openssl_enc(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let cipher = CIPHERS[usize::from(sel) % 3];
    let piece = usize::from(sel / 3 % 37) + 1;

    let pieces = decrypt_in_pieces(cipher, rest, piece);
    let mut reader = CbcDecryptReader::new(rest, cipher, PASSPHRASE);
    let mut out = Vec::new();
    let read = reader.read_to_end(&mut out).map(|_| out);
    if let Some(pieces) = pieces {
        match (&pieces, &read) {
            (Ok(a), Ok(b)) => assert_eq!(a, b),
            (Err(_), Err(_)) => {}
            _ => panic!(
                "CbcDecryptor and CbcDecryptReader disagree: {:?} vs {:?}",
                pieces.as_ref().map(Vec::len),
                read.as_ref().map(Vec::len)
            ),
        }
        if let Ok(p) = &pieces {
            assert!(p.len() < rest.len() - 16);
        }
    }

    // Round trip.
    let mut salt = [0u8; 8];
    for (s, d) in salt.iter_mut().zip(rest) {
        *s = *d;
    }
    let sealed = encrypt(cipher, PASSPHRASE, salt, rest);
    assert_eq!(sealed.len(), 16 + (rest.len() / 16 + 1) * 16);
    match decrypt_in_pieces(cipher, &sealed, piece) {
        Some(Ok(plain)) => assert_eq!(plain, rest),
        other => panic!("round trip failed: {:?}", other.map(|r| r.map(|v| v.len()))),
    }
}

/// The compression filters (CMP-1 … CMP-3): the first byte picks the filter, the rest is
/// decoded (at most 16 MiB of output are read).
pub fn compression(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let filter = [
        Filter::Gzip,
        Filter::Bzip2,
        Filter::Xz,
        Filter::Lzma,
        Filter::Zstd,
        Filter::None,
    ][usize::from(sel) % 6];
    let Ok(decoder) = filter.decoder(rest) else {
        return;
    };
    let mut out = Vec::new();
    let _ = decoder.take(16 << 20).read_to_end(&mut out);
    if filter == Filter::None {
        assert_eq!(out, rest);
    }
}

/// A sink that checks the [`DataSink`] contract: runs in increasing, non-overlapping
/// order, within the logical size.
struct CheckingSink {
    size: u64,
    end: u64,
    total: u64,
}

impl DataSink for CheckingSink {
    fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        let end = offset.checked_add(bytes.len() as u64);
        assert!(
            end.is_some_and(|e| e <= self.size),
            "run at {offset}+{} beyond size {}",
            bytes.len(),
            self.size
        );
        assert!(
            offset >= self.end,
            "run at {offset} overlaps the previous one"
        );
        self.end = end.unwrap_or(u64::MAX);
        self.total += bytes.len() as u64;
        Ok(())
    }
}

/// Read every entry of a tar and its data through a [`CheckingSink`].
fn drain_entries(
    next: &mut dyn FnMut() -> Result<Option<qbackup_format::inner_tar::Entry>>,
    read: &mut dyn FnMut(&mut dyn DataSink) -> Result<()>,
) -> bool {
    loop {
        match next() {
            Ok(Some(entry)) => {
                let mut sink = CheckingSink {
                    size: entry.size,
                    end: 0,
                    total: 0,
                };
                if read(&mut sink).is_err() {
                    return false;
                }
                assert!(sink.total <= entry.size);
                assert_eq!(
                    sink.total, entry.stored,
                    "data bytes delivered differ from the entry's stored size"
                );
            }
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

/// The inner tar (TAR-1 … TAR-9): GNU and pax headers, old-GNU and PAX 1.0 sparse maps.
pub fn inner_tar(data: &[u8]) {
    let tar = std::cell::RefCell::new(TarReader::new(data));
    drain_entries(&mut || tar.borrow_mut().next_entry(), &mut |s| {
        tar.borrow_mut().read_data(s)
    });
}

/// GNU multi-volume tar (TAR-10): the input is cut into volumes at [`VOLUME_SEPARATOR`].
pub fn inner_tar_multivolume(data: &[u8]) {
    let volumes = split_volumes(data);
    let Ok(tar) = MultiVolumeReader::new(volumes.into_iter()) else {
        return;
    };
    let tar = std::cell::RefCell::new(tar);
    let complete = drain_entries(&mut || tar.borrow_mut().next_entry(), &mut |s| {
        tar.borrow_mut().read_data(s)
    });
    if complete {
        let _ = tar.into_inner().finish();
    }
}

fn split_volumes(data: &[u8]) -> Vec<&[u8]> {
    let mut volumes = Vec::new();
    let mut rest = data;
    while let Some(at) = rest
        .windows(VOLUME_SEPARATOR.len())
        .position(|w| w == VOLUME_SEPARATOR)
    {
        volumes.push(&rest[..at]);
        rest = &rest[at + VOLUME_SEPARATOR.len()..];
    }
    volumes.push(rest);
    volumes
}

/// qubes.xml R2/R3 and R4 (XML-1 … XML-4). Round trip: when `write_r4` accepts the parsed
/// VMs, parsing its output gives the same VMs back.
pub fn qubes_xml(data: &[u8]) {
    let Ok(xml) = qubes_xml::parse(data) else {
        return;
    };
    for vm in &xml.vms {
        assert!(
            validate_vm_name(&vm.name).is_ok(),
            "invalid name {:?}",
            vm.name
        );
    }
    let mut out = Vec::new();
    if qubes_xml::write_r4(&xml.vms, &[], &mut out).is_ok() {
        match qubes_xml::parse(&out) {
            Ok(back) => assert_eq!(back.vms, xml.vms, "write_r4 round trip differs"),
            Err(e) => panic!(
                "write_r4 output does not parse: {e}\n{}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

/// Member order (ORD-2 … ORD-7): the first byte picks the version, the rest is a list of
/// member names separated by NUL.
pub fn sequencer(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let version = [Version::V2, Version::V3, Version::V4][usize::from(sel) % 3];
    let mut seq = Sequencer::new(version);
    for name in rest.split(|&b| b == 0) {
        match seq.on_member(name) {
            Ok(Step::Chunk { path, index } | Step::ChunkMac { path, index }) => {
                let Ok(MemberName::Chunk {
                    path: p, index: i, ..
                }) = MemberName::parse(name)
                else {
                    panic!("sequencer accepted a name the name parser refuses");
                };
                assert_eq!((p, i), (path, index));
            }
            Err(_) => return,
        }
    }
    let _ = seq.finish();
}

/// The whole verifier (`qbackup_verify::driver::run` with `verify` output) over the input
/// as an archive, passphrase [`PASSPHRASE`]. Under `cfg(fuzzing)` the format crate's
/// fixed-key mode lets made-up members pass authentication.
pub fn pipeline(data: &[u8]) {
    let _ = pipeline_verifies(data);
}

/// [`pipeline`], returning the report's first finding: `Ok` when the archive verified.
pub fn pipeline_verifies(data: &[u8]) -> std::result::Result<(), String> {
    let settings = Settings {
        jobs: 1,
        kdf_budget: 4 << 20,
        ..Settings::new(credentials())
    };
    let report = driver::run(data, settings, &mut VerifyOnly);
    let _ = report.to_json("verify");
    let human = report.human("verify", true);
    if std::env::var_os("QBACKUP_FUZZ_DEBUG").is_some() {
        eprintln!("{human}");
    }
    if report.ok() {
        Ok(())
    } else {
        Err(human)
    }
}

// ---- the verifier→restore protocol (SPEC.md §21) ----------------------------------------

use qbackup_format::protocol::read::Decoder;
use qbackup_format::protocol::write::Encoder;
use qbackup_format::protocol::{
    Begin, Device, FileKind, Firewall, Layout, Manifest, ManifestVm, OtherVm, Record, Summary,
    VmConfig, VmEnd,
};
use qbackup_format::qubes_xml::NetVm;

/// A protocol record with owned parts, to compare what was encoded with what decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProtoRecord {
    Hello,
    Manifest(Manifest),
    Config(u32, VmConfig),
    Begin(Begin),
    Data(u64, Vec<u8>),
    End(qbackup_format::protocol::FileDigest),
    Summary(Summary),
    Error(ErrorClass, String),
    VmEnd(u32, VmEnd),
}

fn owned(r: &Record<'_>) -> ProtoRecord {
    match r {
        Record::Hello { .. } => ProtoRecord::Hello,
        Record::Manifest(m) => ProtoRecord::Manifest((*m).clone()),
        Record::Config { vm, config } => ProtoRecord::Config(*vm, config.clone()),
        Record::VmEnd { vm, end } => ProtoRecord::VmEnd(*vm, end.clone()),
        Record::Begin(b) => ProtoRecord::Begin(b.clone()),
        Record::Data { offset, bytes } => ProtoRecord::Data(*offset, bytes.to_vec()),
        Record::End { digest } => ProtoRecord::End(*digest),
        Record::Summary(s) => ProtoRecord::Summary(*s),
        Record::Error { class, message } => ProtoRecord::Error(*class, message.clone()),
    }
}

/// Decode `stream` with the protocol [`Decoder`]: the records it accepted, and whether it
/// ended cleanly (summary or error record, then end of input).
pub fn protocol_records(stream: &[u8]) -> (Vec<ProtoRecord>, bool) {
    let mut d = Decoder::new(stream);
    let mut out = Vec::new();
    loop {
        match d.read_record() {
            Ok(Some(r)) => out.push(owned(&r)),
            Ok(None) => return (out, true),
            Err(_) => return (out, false),
        }
    }
}

/// Feed `r` to the encoder; `Ok(false)` when the encoder refuses it.
fn encode_record<W: std::io::Write>(e: &mut Encoder<W>, r: &ProtoRecord) -> bool {
    match r {
        ProtoRecord::Hello => e.hello().is_ok(),
        ProtoRecord::Manifest(m) => e.manifest(m).is_ok(),
        ProtoRecord::Config(vm, c) => e.config(*vm, c).is_ok(),
        ProtoRecord::VmEnd(vm, end) => e.vm_end(*vm, end).is_ok(),
        ProtoRecord::Begin(b) => e.begin(b).is_ok(),
        ProtoRecord::Data(offset, bytes) => e.data(*offset, bytes).is_ok(),
        ProtoRecord::End(want) => e.end().is_ok_and(|got| got == *want),
        ProtoRecord::Summary(want) => e.summary().is_ok_and(|got| got == *want),
        ProtoRecord::Error(class, message) => e.error(*class, message).is_ok(),
    }
}

/// The protocol decoder (PROTO-1 … PROTO-10) on arbitrary bytes: the [`Decoder`] with its
/// state machine ([`qbackup_format::protocol::state::Checker`]). Oracle: the encoder
/// accepts every record the decoder accepted, in order, and re-encodes them to exactly the
/// bytes they were decoded from (so a complete stream round-trips byte for byte).
pub fn protocol_decode(data: &[u8]) {
    let (records, clean) = protocol_records(data);
    let mut e = Encoder::new(Vec::new());
    for r in &records {
        assert!(
            encode_record(&mut e, r),
            "the encoder refuses a record the decoder accepted: {r:?}"
        );
    }
    let again = e.into_inner();
    assert!(
        data.starts_with(&again),
        "re-encoded records differ from the input"
    );
    if clean {
        assert_eq!(again.len(), data.len(), "a clean stream re-encodes whole");
    }
}

/// Reads the structured input of [`protocol_roundtrip`]; zeros once exhausted.
struct Ops<'a> {
    rest: &'a [u8],
}

impl<'a> Ops<'a> {
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.rest.len());
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        head
    }
    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    fn uint(&mut self, n: usize) -> u64 {
        self.bytes(n)
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b))
    }
    fn string(&mut self, len_bytes: usize) -> String {
        let n = self.uint(len_bytes) as usize;
        String::from_utf8_lossy(self.bytes(n)).into_owned()
    }
    fn opt(&mut self) -> Option<String> {
        (self.u8() & 1 == 1).then(|| self.string(1))
    }
    fn pairs(&mut self) -> Vec<(String, String)> {
        (0..self.u8() % 4)
            .map(|_| (self.string(1), self.string(1)))
            .collect()
    }
    /// A config as [`protocol_ops`] writes it.
    fn config(&mut self) -> VmConfig {
        VmConfig {
            properties: (0..self.u8() % 4)
                .map(|_| (self.string(1), self.opt()))
                .collect(),
            features: self.pairs(),
            tags: (0..self.u8() % 4).map(|_| self.string(1)).collect(),
            devices: (0..self.u8() % 4)
                .map(|_| Device {
                    bus: self.string(1),
                    backend: self.string(1),
                    port: self.string(1),
                    required: self.u8() & 1 == 1,
                    options: self.pairs(),
                })
                .collect(),
        }
    }
    /// A vmend as [`protocol_ops`] writes it.
    fn vm_end(&mut self) -> VmEnd {
        VmEnd {
            firewall: match self.u8() % 3 {
                0 => Firewall::Absent,
                1 => Firewall::Rules((0..self.u8() % 4).map(|_| self.string(2)).collect()),
                _ => Firewall::Unreadable(self.string(2)),
            },
            notes: (self.u8() & 1 == 1).then(|| self.string(2)),
            menu_items: (self.u8() & 1 == 1)
                .then(|| (0..self.u8() % 4).map(|_| self.string(1)).collect()),
        }
    }
}

/// Serialise records as [`protocol_roundtrip`] input (used to make its seeds from real
/// `qbackup-verify emit` output).
pub fn protocol_ops(records: &[ProtoRecord]) -> Vec<u8> {
    fn s8(out: &mut Vec<u8>, s: &str) {
        let b = &s.as_bytes()[..s.len().min(255)];
        out.push(b.len() as u8);
        out.extend_from_slice(b);
    }
    fn s16(out: &mut Vec<u8>, s: &str) {
        let b = &s.as_bytes()[..s.len().min(65535)];
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        out.extend_from_slice(b);
    }
    fn opt(out: &mut Vec<u8>, s: &Option<String>) {
        match s {
            Some(s) => {
                out.push(1);
                s8(out, s);
            }
            None => out.push(0),
        }
    }
    let mut out = Vec::new();
    if !records
        .iter()
        .any(|r| matches!(r, ProtoRecord::Manifest(_)))
    {
        out.extend_from_slice(&[0, 0]); // no VMs, no others
    }
    for r in records {
        match r {
            ProtoRecord::Hello => {}
            ProtoRecord::Manifest(m) => {
                out.push(m.vms.len().min(255) as u8);
                for vm in m.vms.iter().take(255) {
                    s8(&mut out, &vm.name);
                    s8(&mut out, &vm.class);
                    opt(&mut out, &vm.label);
                    opt(&mut out, &vm.template);
                    match &vm.netvm {
                        NetVm::Default => out.push(0),
                        NetVm::None => out.push(1),
                        NetVm::Named(n) => {
                            out.push(2);
                            s8(&mut out, n);
                        }
                    }
                    out.push(match vm.layout {
                        Layout::Volumes => 0,
                        Layout::TemplateDir => 1,
                        Layout::Dom0Home => 2,
                    });
                    out.extend_from_slice(&vm.backup_size.to_be_bytes());
                    out.push(vm.expected_files.len().min(255) as u8);
                    for f in vm.expected_files.iter().take(255) {
                        s8(&mut out, f);
                    }
                }
                out.push(m.others.len().min(3) as u8);
                for o in m.others.iter().take(3) {
                    s8(&mut out, &o.name);
                    s8(&mut out, &o.class);
                    out.push(u8::from(o.in_backup));
                }
            }
            ProtoRecord::Config(vm, c) => {
                fn pairs(out: &mut Vec<u8>, list: &[(String, String)]) {
                    out.push(list.len().min(3) as u8);
                    for (k, v) in list.iter().take(3) {
                        s8(out, k);
                        s8(out, v);
                    }
                }
                out.push(5);
                out.extend_from_slice(&vm.to_be_bytes());
                out.push(c.properties.len().min(3) as u8);
                for (k, v) in c.properties.iter().take(3) {
                    s8(&mut out, k);
                    opt(&mut out, v);
                }
                pairs(&mut out, &c.features);
                out.push(c.tags.len().min(3) as u8);
                for t in c.tags.iter().take(3) {
                    s8(&mut out, t);
                }
                out.push(c.devices.len().min(3) as u8);
                for d in c.devices.iter().take(3) {
                    s8(&mut out, &d.bus);
                    s8(&mut out, &d.backend);
                    s8(&mut out, &d.port);
                    out.push(u8::from(d.required));
                    pairs(&mut out, &d.options);
                }
            }
            ProtoRecord::VmEnd(vm, end) => {
                out.push(6);
                out.extend_from_slice(&vm.to_be_bytes());
                match &end.firewall {
                    Firewall::Absent => out.push(0),
                    Firewall::Rules(lines) => {
                        out.push(1);
                        out.push(lines.len().min(3) as u8);
                        for l in lines.iter().take(3) {
                            s16(&mut out, l);
                        }
                    }
                    Firewall::Unreadable(why) => {
                        out.push(2);
                        s16(&mut out, why);
                    }
                }
                match &end.notes {
                    Some(n) => {
                        out.push(1);
                        s16(&mut out, n);
                    }
                    None => out.push(0),
                }
                match &end.menu_items {
                    Some(items) => {
                        out.push(1);
                        out.push(items.len().min(3) as u8);
                        for i in items.iter().take(3) {
                            s8(&mut out, i);
                        }
                    }
                    None => out.push(0),
                }
            }
            ProtoRecord::Begin(b) => {
                out.push(0);
                out.extend_from_slice(&b.vm.to_be_bytes());
                s16(&mut out, &b.name);
                match &b.kind {
                    FileKind::Regular => out.push(0),
                    FileKind::Directory => out.push(1),
                    FileKind::Symlink { target } => {
                        out.push(2);
                        s16(&mut out, target);
                    }
                }
                out.extend_from_slice(&b.mode.to_be_bytes());
                out.extend_from_slice(&b.size.to_be_bytes());
                out.extend_from_slice(&b.data_bytes.to_be_bytes());
            }
            ProtoRecord::Data(offset, bytes) => {
                out.push(1);
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
                out.extend_from_slice(bytes);
            }
            ProtoRecord::End(_) => out.push(2),
            ProtoRecord::Summary(_) => out.push(3),
            ProtoRecord::Error(class, message) => {
                out.push(4);
                out.push(ErrorClass::ALL.iter().position(|c| c == class).unwrap_or(0) as u8);
                s16(&mut out, message);
            }
        }
    }
    out
}

/// The protocol in the other direction (PROTO-10): arbitrary structured input (a manifest,
/// then begin / data / end / summary / error operations with arbitrary fields; see
/// [`protocol_ops`]) drives the [`Encoder`]. Oracle: what the encoder accepted decodes to
/// exactly the same records, ending cleanly — the encoder refuses whatever the decoder's
/// checker would refuse, and a refused operation writes nothing.
pub fn protocol_roundtrip(data: &[u8]) {
    let mut ops = Ops { rest: data };
    let mut e = Encoder::new(Vec::new());
    let mut sent = vec![ProtoRecord::Hello];
    assert!(e.hello().is_ok());
    let n = usize::from(ops.u8() % 9);
    let mut vms = Vec::new();
    for _ in 0..n {
        vms.push(ManifestVm {
            name: ops.string(1),
            class: ops.string(1),
            label: ops.opt(),
            template: ops.opt(),
            netvm: match ops.u8() % 3 {
                0 => NetVm::Default,
                1 => NetVm::None,
                _ => NetVm::Named(ops.string(1)),
            },
            layout: match ops.u8() % 3 {
                0 => Layout::Volumes,
                1 => Layout::TemplateDir,
                _ => Layout::Dom0Home,
            },
            backup_size: ops.uint(8),
            expected_files: (0..ops.u8() % 10).map(|_| ops.string(1)).collect(),
        });
    }
    let others = (0..ops.u8() % 4)
        .map(|_| OtherVm {
            name: ops.string(1),
            class: ops.string(1),
            in_backup: ops.u8() & 1 == 1,
        })
        .collect();
    let manifest = Manifest { vms, others };
    let len = e.get_mut().len();
    if e.manifest(&manifest).is_ok() {
        sent.push(ProtoRecord::Manifest(manifest));
    } else {
        assert_eq!(e.get_mut().len(), len, "a refused manifest wrote bytes");
    }
    while !ops.rest.is_empty() && !e.is_done() {
        let len = e.get_mut().len();
        let (rec, ok) = match ops.u8() % 7 {
            5 => {
                let vm = ops.uint(4) as u32;
                let c = ops.config();
                let ok = e.config(vm, &c).is_ok();
                (ProtoRecord::Config(vm, c), ok)
            }
            6 => {
                let vm = ops.uint(4) as u32;
                let end = ops.vm_end();
                let ok = e.vm_end(vm, &end).is_ok();
                (ProtoRecord::VmEnd(vm, end), ok)
            }
            0 => {
                let b = Begin {
                    vm: ops.uint(4) as u32,
                    name: ops.string(2),
                    kind: match ops.u8() % 3 {
                        0 => FileKind::Regular,
                        1 => FileKind::Directory,
                        _ => FileKind::Symlink {
                            target: ops.string(2),
                        },
                    },
                    mode: ops.uint(4) as u32,
                    size: ops.uint(8),
                    data_bytes: ops.uint(8),
                };
                let ok = e.begin(&b).is_ok();
                (ProtoRecord::Begin(b), ok)
            }
            1 => {
                let offset = ops.uint(8);
                // At most LIM-28 bytes, so the encoder writes one record or none.
                let n = (ops.uint(4) as usize).min(qbackup_format::limits::MAX_PROTO_DATA_LEN);
                let bytes = ops.bytes(n).to_vec();
                let ok = e.data(offset, &bytes).is_ok();
                if bytes.is_empty() {
                    assert_eq!(e.get_mut().len(), len, "empty data wrote bytes");
                    continue;
                }
                (ProtoRecord::Data(offset, bytes), ok)
            }
            2 => match e.end() {
                Ok(d) => (ProtoRecord::End(d), true),
                Err(_) => (ProtoRecord::End(Default::default()), false),
            },
            3 => match e.summary() {
                Ok(s) => (ProtoRecord::Summary(s), true),
                Err(_) => (ProtoRecord::Hello, false),
            },
            _ => {
                let class = ErrorClass::ALL[usize::from(ops.u8()) % ErrorClass::ALL.len()];
                let message = ops.string(2);
                let ok = e.error(class, &message).is_ok();
                // The encoder makes the text safe: control characters become `?`, and
                // it is cut to LIM-31 bytes.
                let mut clean = String::new();
                for c in message.chars() {
                    let c = if c.is_control() { '?' } else { c };
                    if clean.len() + c.len_utf8() > qbackup_format::limits::MAX_PROTO_MESSAGE_LEN {
                        break;
                    }
                    clean.push(c);
                }
                (ProtoRecord::Error(class, clean), ok)
            }
        };
        if ok {
            sent.push(rec);
        } else {
            assert_eq!(e.get_mut().len(), len, "a refused operation wrote bytes");
        }
    }
    if !e.is_done() {
        if let Ok(s) = e.summary() {
            sent.push(ProtoRecord::Summary(s));
        } else {
            assert!(e.error(ErrorClass::Io, "stop").is_ok(), "error refused");
            sent.push(ProtoRecord::Error(ErrorClass::Io, "stop".into()));
        }
    }
    let stream = e.into_inner();
    let (decoded, clean) = protocol_records(&stream);
    assert!(clean, "the decoder refuses what the encoder wrote");
    assert_eq!(
        decoded, sent,
        "decoded records differ from the encoded ones"
    );
}
