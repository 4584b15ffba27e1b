//! PROTO-*: the decoder against hostile streams. Every byte flip, truncation or extension
//! of a valid stream is an error (never a panic); every state-machine rule has a test.

use proptest::prelude::*;
use qbackup_format::protocol::read::Decoder;
use qbackup_format::protocol::write::Encoder;
use qbackup_format::protocol::{
    record_type as t, Begin, FileHasher, FileKind, Layout, Manifest, ManifestFile, ManifestVm,
    Record,
};
use qbackup_format::qubes_xml::NetVm;
use qbackup_format::{Error, ErrorClass, Result};

fn vm(name: &str, class: &str, layout: Layout, files: &[(&str, u64, u64)]) -> ManifestVm {
    ManifestVm {
        name: name.into(),
        class: class.into(),
        label: Some("blue".into()),
        template: None,
        netvm: NetVm::Default,
        layout,
        files: files
            .iter()
            .map(|(n, s, d)| ManifestFile {
                name: (*n).into(),
                size: *s,
                data_bytes: *d,
            })
            .collect(),
    }
}

fn manifest() -> Manifest {
    Manifest {
        vms: vec![
            vm(
                "work",
                "AppVM",
                Layout::Volumes,
                &[("private.img", 9000, 300), ("firewall.xml", 5, 5)],
            ),
            vm(
                "tpl",
                "TemplateVM",
                Layout::TemplateDir,
                &[("apps", 0, 0), ("apps/x.desktop", 3, 3), ("apps/l", 0, 0)],
            ),
            vm("dom0", "AdminVM", Layout::Dom0Home, &[("user", 0, 0)]),
        ],
    }
}

fn begin(vm: u32, name: &str, kind: FileKind, size: u64) -> Begin {
    Begin {
        vm,
        name: name.into(),
        kind,
        mode: 0o644,
        size,
    }
}

fn prefix() -> Encoder<Vec<u8>> {
    let mut e = Encoder::new(Vec::new());
    e.hello().unwrap();
    e.manifest(&manifest()).unwrap();
    e
}

/// A complete valid stream with holes, several records per file and every kind.
fn valid() -> Vec<u8> {
    let mut e = prefix();
    e.begin(&begin(0, "private.img", FileKind::Regular, 9000))
        .unwrap();
    e.data(100, &[1u8; 100]).unwrap();
    e.data(4096, &[2u8; 200]).unwrap();
    e.end().unwrap();
    e.begin(&begin(0, "firewall.xml", FileKind::Regular, 5))
        .unwrap();
    e.data(0, b"<fw/>").unwrap();
    e.end().unwrap();
    e.begin(&begin(1, "apps", FileKind::Directory, 0)).unwrap();
    e.end().unwrap();
    e.begin(&begin(1, "apps/x.desktop", FileKind::Regular, 3))
        .unwrap();
    e.data(0, b"abc").unwrap();
    e.end().unwrap();
    let link = FileKind::Symlink {
        target: "x.desktop".into(),
    };
    e.begin(&begin(1, "apps/l", link, 0)).unwrap();
    e.end().unwrap();
    e.begin(&begin(2, "user", FileKind::Directory, 0)).unwrap();
    e.end().unwrap();
    e.summary().unwrap();
    e.into_inner()
}

/// A consumer doing everything PROTO-6 asks (digest check) and returning the outcome.
fn consume(bytes: &[u8]) -> Result<usize> {
    let mut d = Decoder::new(bytes);
    let mut hasher = None;
    let mut records = 0;
    while let Some(r) = d.read_record()? {
        records += 1;
        match r {
            Record::Begin(b) => hasher = Some(FileHasher::new(b.size)),
            Record::Data { offset, bytes } => hasher.as_mut().unwrap().data(offset, bytes)?,
            Record::End { sha256 } if hasher.take().unwrap().finish() != sha256 => {
                return Err(Error::mac("digest mismatch"))
            }
            Record::Error { class, message } => return Err(Error::new(class, message)),
            _ => {}
        }
    }
    // A clean end stays clean.
    assert!(d.read_record()?.is_none());
    Ok(records)
}

fn class(bytes: &[u8]) -> ErrorClass {
    consume(bytes).expect_err("stream must be refused").class()
}

fn raw(record_type: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = vec![record_type];
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn with(mut stream: Vec<u8>, more: &[u8]) -> Vec<u8> {
    stream.extend_from_slice(more);
    stream
}

fn begin_payload(vm: u32, name: &str, kind: u8, mode: u32, size: u64) -> Vec<u8> {
    let mut p = vm.to_be_bytes().to_vec();
    p.extend_from_slice(&(name.len() as u16).to_be_bytes());
    p.extend_from_slice(name.as_bytes());
    p.push(kind);
    p.extend_from_slice(&mode.to_be_bytes());
    p.extend_from_slice(&size.to_be_bytes());
    p
}

fn data_payload(offset: u64, bytes: &[u8]) -> Vec<u8> {
    let mut p = offset.to_be_bytes().to_vec();
    p.extend_from_slice(bytes);
    p
}

#[test]
fn valid_stream_is_accepted() {
    assert_eq!(consume(&valid()).unwrap(), 2 + 4 + 3 + 2 + 3 + 2 + 2 + 1);
}

#[test]
fn every_byte_flip_is_an_error() {
    let good = valid();
    for i in 0..good.len() {
        for mask in [0x01u8, 0x80, 0xff] {
            let mut bad = good.clone();
            bad[i] ^= mask;
            assert!(
                consume(&bad).is_err(),
                "flip {mask:#x} at {i} of {} accepted",
                good.len()
            );
        }
    }
}

#[test]
fn every_truncation_and_extension_is_an_error() {
    let good = valid();
    for n in 0..good.len() {
        let c = class(&good[..n]);
        assert!(matches!(c, ErrorClass::Truncated), "truncation at {n}: {c}");
    }
    assert_eq!(class(&with(good.clone(), &[0])), ErrorClass::Malformed);
    assert_eq!(
        class(&with(good, &raw(t::END, &[0; 32]))),
        ErrorClass::Malformed
    );
}

#[test]
fn hello_rules() {
    // Version 2 is not ours; bad magic; nothing before hello.
    let mut p = b"QBKPSTRM".to_vec();
    p.extend_from_slice(&2u16.to_be_bytes());
    assert_eq!(class(&raw(t::HELLO, &p)), ErrorClass::Unsupported);
    let mut p = b"QBKPSTRX".to_vec();
    p.extend_from_slice(&1u16.to_be_bytes());
    assert_eq!(class(&raw(t::HELLO, &p)), ErrorClass::Malformed);
    assert_eq!(class(&raw(t::MANIFEST, &[0; 4])), ErrorClass::Malformed);
    assert_eq!(class(&[]), ErrorClass::Truncated);
    // Hello with trailing payload byte.
    let mut p = b"QBKPSTRM".to_vec();
    p.extend_from_slice(&[0, 1, 0]);
    assert_eq!(class(&raw(t::HELLO, &p)), ErrorClass::Malformed);
    // Unknown record type after hello.
    let mut e = Encoder::new(Vec::new());
    e.hello().unwrap();
    assert_eq!(
        class(&with(e.into_inner(), &raw(0x42, &[]))),
        ErrorClass::Malformed
    );
}

#[test]
fn manifest_rules() {
    let bad = |m: Manifest| {
        let mut e = Encoder::new(Vec::new());
        e.hello().unwrap();
        // The decoder runs the same state machine (protocol::state) on what it parses.
        e.manifest(&m).expect_err("encoder must refuse").class()
    };
    let mut m = manifest();
    m.vms[0].files[0].name = "../private.img".into();
    assert_eq!(bad(m), ErrorClass::UnsafePath);
    let mut m = manifest();
    m.vms[0].files[0].name = "kernel".into();
    assert_eq!(bad(m), ErrorClass::UnsafePath);
    let mut m = manifest();
    m.vms[1].files[1].name = "apps/../../etc".into();
    assert_eq!(bad(m), ErrorClass::UnsafePath);
    let mut m = manifest();
    m.vms[1].files[1].name = "apps//x".into();
    assert_eq!(bad(m), ErrorClass::UnsafePath);
    let mut m = manifest();
    m.vms[0].layout = Layout::TemplateDir; // an AppVM is no template directory
    assert_eq!(bad(m), ErrorClass::Malformed);
    let mut m = manifest();
    m.vms[0].layout = Layout::Dom0Home;
    assert_eq!(bad(m), ErrorClass::Malformed);
    let mut m = manifest();
    m.vms[1].name = "work".into();
    assert_eq!(bad(m), ErrorClass::Malformed);
    let mut m = manifest();
    m.vms[0].files[1].data_bytes = 6; // more data than size
    assert_eq!(bad(m), ErrorClass::LimitExceeded);
    let mut m = manifest();
    m.vms[0].files[0].size = (16 << 40) + 1;
    assert_eq!(bad(m), ErrorClass::LimitExceeded);
    let mut m = manifest();
    m.vms[0].label = Some("r\x1bd".into());
    assert_eq!(bad(m), ErrorClass::Malformed);
    let mut m = manifest();
    m.vms[0].netvm = NetVm::Named("-bad".into());
    assert_eq!(bad(m), ErrorClass::Malformed);
    let mut m = manifest();
    m.vms[0].files[1].name = "private.img".into();
    assert_eq!(bad(m), ErrorClass::Malformed);

    // Decoder side, raw bytes: a second manifest; a huge VM count; a huge file count.
    let good = prefix().into_inner();
    assert_eq!(
        class(&with(good, &raw(t::MANIFEST, &0u32.to_be_bytes()))),
        ErrorClass::Malformed
    );
    let mut e = Encoder::new(Vec::new());
    e.hello().unwrap();
    let hello = e.into_inner();
    assert_eq!(
        class(&with(
            hello.clone(),
            &raw(t::MANIFEST, &u32::MAX.to_be_bytes())
        )),
        ErrorClass::LimitExceeded
    );
    let mut p = 1u32.to_be_bytes().to_vec();
    p.extend_from_slice(&[0, 2, b'v', b'm', 0, 5]);
    p.extend_from_slice(b"AppVM");
    p.extend_from_slice(&[0, 0, 0, 0]); // no label, no template, netvm default, volumes
    p.extend_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        class(&with(hello.clone(), &raw(t::MANIFEST, &p))),
        ErrorClass::LimitExceeded
    );
    // Same VM with no files, plus a trailing byte inside the record.
    let mut p2 = p[..p.len() - 4].to_vec();
    p2.extend_from_slice(&[0, 0, 0, 0, 9]);
    assert_eq!(
        class(&with(hello, &raw(t::MANIFEST, &p2))),
        ErrorClass::Malformed
    );
}

#[test]
fn files_come_in_manifest_order_and_match_it() {
    let good = prefix().into_inner();
    // Second file first.
    let b = raw(t::BEGIN, &begin_payload(0, "firewall.xml", 0, 0o644, 5));
    assert_eq!(class(&with(good.clone(), &b)), ErrorClass::OrderFailure);
    // A file not in the manifest.
    let b = raw(t::BEGIN, &begin_payload(0, "root.img", 0, 0o644, 9000));
    assert_eq!(class(&with(good.clone(), &b)), ErrorClass::OrderFailure);
    // Wrong VM index.
    let b = raw(t::BEGIN, &begin_payload(7, "private.img", 0, 0o644, 9000));
    assert_eq!(class(&with(good.clone(), &b)), ErrorClass::OrderFailure);
    // Size differs from the manifest.
    let b = raw(t::BEGIN, &begin_payload(0, "private.img", 0, 0o644, 9001));
    assert_eq!(class(&with(good.clone(), &b)), ErrorClass::Malformed);
    // setuid bit.
    let b = raw(t::BEGIN, &begin_payload(0, "private.img", 0, 0o4644, 9000));
    assert_eq!(class(&with(good.clone(), &b)), ErrorClass::Malformed);
    // A directory where a volume goes.
    let b = raw(t::BEGIN, &begin_payload(0, "private.img", 1, 0o755, 9000));
    assert_eq!(class(&with(good.clone(), &b)), ErrorClass::UnsafePath);
    // Unknown kind.
    let b = raw(t::BEGIN, &begin_payload(0, "private.img", 9, 0o644, 9000));
    assert_eq!(class(&with(good.clone(), &b)), ErrorClass::Malformed);
    // Data or end before begin; summary before the files.
    let d = raw(t::DATA, &data_payload(0, b"x"));
    assert_eq!(class(&with(good.clone(), &d)), ErrorClass::Malformed);
    assert_eq!(
        class(&with(good.clone(), &raw(t::END, &[0; 32]))),
        ErrorClass::Malformed
    );
    let mut e = prefix();
    assert_eq!(e.summary().unwrap_err().class(), ErrorClass::MissingData);
}

#[test]
fn data_rules() {
    let open = || {
        let mut e = prefix();
        e.begin(&begin(0, "private.img", FileKind::Regular, 9000))
            .unwrap();
        e.data(100, &[1; 10]).unwrap();
        e.into_inner()
    };
    let d = |off: u64, n: usize| raw(t::DATA, &data_payload(off, &vec![0u8; n]));
    // Overlap, going back, beyond the size, more than declared, empty.
    assert_eq!(class(&with(open(), &d(105, 1))), ErrorClass::Malformed);
    assert_eq!(class(&with(open(), &d(0, 1))), ErrorClass::Malformed);
    assert_eq!(class(&with(open(), &d(8999, 2))), ErrorClass::Malformed);
    assert_eq!(class(&with(open(), &d(u64::MAX, 1))), ErrorClass::Malformed);
    assert_eq!(
        class(&with(open(), &d(200, 291))),
        ErrorClass::LimitExceeded
    );
    assert_eq!(class(&with(open(), &d(200, 0))), ErrorClass::Malformed);
    // A data record longer than LIM-28 is refused from its header alone.
    let mut huge = vec![t::DATA];
    huge.extend_from_slice(&(8 + (1u32 << 20) + 1).to_be_bytes());
    assert_eq!(class(&with(open(), &huge)), ErrorClass::LimitExceeded);
    // End before all declared data.
    let mut e = prefix();
    e.begin(&begin(0, "private.img", FileKind::Regular, 9000))
        .unwrap();
    e.data(0, &[1; 299]).unwrap();
    assert_eq!(e.end().unwrap_err().class(), ErrorClass::MissingData);
    // Data for a directory.
    let mut e = prefix();
    for (vm, name, size, data) in [(0, "private.img", 9000, 300), (0, "firewall.xml", 5, 5)] {
        e.begin(&begin(vm, name, FileKind::Regular, size)).unwrap();
        e.data(0, &vec![0; data]).unwrap();
        e.end().unwrap();
    }
    e.begin(&begin(1, "apps", FileKind::Directory, 0)).unwrap();
    let s = e.into_inner();
    assert_eq!(class(&with(s, &d(0, 1))), ErrorClass::Malformed);
}

#[test]
fn digest_mismatch_is_the_consumers_error() {
    let mut e = prefix();
    e.begin(&begin(0, "private.img", FileKind::Regular, 9000))
        .unwrap();
    e.data(0, &[1; 300]).unwrap();
    let mut s = e.into_inner();
    s.extend(raw(t::END, &[0; 32]));
    assert_eq!(class(&s), ErrorClass::MacFailure);
}

#[test]
fn error_record_ends_the_stream() {
    let mut e = prefix();
    e.begin(&begin(0, "private.img", FileKind::Regular, 9000))
        .unwrap();
    e.error(
        ErrorClass::MacFailure,
        "chunk vm3/private.img.004\x1b[2J failed",
    )
    .unwrap();
    let s = e.into_inner();
    let err = consume(&s).unwrap_err();
    assert_eq!(err.class(), ErrorClass::MacFailure);
    assert_eq!(err.message(), "chunk vm3/private.img.004?[2J failed");
    // Nothing may follow it.
    let s = with(s, &raw(t::END, &[0; 32]));
    let mut d = Decoder::new(&s[..]);
    while !matches!(d.read_record().unwrap(), Some(Record::Error { .. })) {}
    assert_eq!(d.read_record().unwrap_err().class(), ErrorClass::Malformed);
    // A control character or unknown class in a raw error record.
    let mut p = vec![12u8, 0, 2, b'a', b'\n'];
    assert_eq!(
        class(&with(prefix().into_inner(), &raw(t::ERROR, &p))),
        ErrorClass::Malformed
    );
    p = vec![99u8, 0, 1, b'a'];
    assert_eq!(
        class(&with(prefix().into_inner(), &raw(t::ERROR, &p))),
        ErrorClass::Malformed
    );
}

#[test]
fn summary_must_match() {
    let good = valid();
    // Replace the summary by one with wrong counts but a correct transcript: still refused.
    let body = &good[..good.len() - 65];
    let mut summary = good[good.len() - 60..].to_vec();
    summary[3] ^= 1; // VM count
    assert_eq!(
        class(&with(body.to_vec(), &raw(t::SUMMARY, &summary))),
        ErrorClass::Malformed
    );
}

#[test]
fn encoder_refuses_what_the_decoder_would() {
    let mut e = prefix();
    assert_eq!(
        e.begin(&begin(0, "firewall.xml", FileKind::Regular, 5))
            .unwrap_err()
            .class(),
        ErrorClass::OrderFailure
    );
    e.begin(&begin(0, "private.img", FileKind::Regular, 9000))
        .unwrap();
    assert!(e.data(9000, b"x").is_err());
    assert!(e.hello().is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random edits of a valid stream: refused or accepted, never a panic.
    #[test]
    fn random_edits_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                                tail in prop::collection::vec(any::<u8>(), 0..64)) {
        let mut s = valid();
        for (i, b) in edits {
            let i = i.index(s.len());
            s[i] = b;
        }
        s.extend_from_slice(&tail);
        let _ = consume(&s);
    }

    /// Arbitrary bytes after hello: never a panic.
    #[test]
    fn arbitrary_records_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let mut e = Encoder::new(Vec::new());
        e.hello().unwrap();
        let s = with(e.into_inner(), &body);
        prop_assert!(consume(&s).is_err());
    }
}

/// A reader that hands out one byte per call, interrupting itself every other call.
struct Trickle<'a> {
    data: &'a [u8],
    interrupt: bool,
}

impl std::io::Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.interrupt = !self.interrupt;
        if self.interrupt {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        match (self.data.split_first(), buf.first_mut()) {
            (Some((b, rest)), Some(slot)) => {
                *slot = *b;
                self.data = rest;
                Ok(1)
            }
            _ => Ok(0),
        }
    }
}

#[test]
fn short_and_interrupted_reads_change_nothing() {
    let good = valid();
    let mut d = Decoder::new(Trickle {
        data: &good,
        interrupt: false,
    });
    let mut n = 0;
    while d.read_record().unwrap().is_some() {
        n += 1;
    }
    assert_eq!(n, 19);
}
