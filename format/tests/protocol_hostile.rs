//! PROTO-*: the decoder against hostile streams. Every byte flip, truncation or extension
//! of a valid stream (with non-empty config and vmend records) is an error (never a
//! panic); every state-machine rule has a test that checks its error class. The metadata
//! of config and vmend records (CFG-1, CFG-2) is attacked in `protocol_config_hostile.rs`.

use proptest::prelude::*;
use qbackup_format::protocol::read::Decoder;
use qbackup_format::protocol::write::Encoder;
use qbackup_format::protocol::{
    record_type as t, Begin, Device, FileKind, Firewall, Layout, Manifest, ManifestVm, OtherVm,
    Record, VmConfig, VmEnd,
};
use qbackup_format::qubes_xml::NetVm;
use qbackup_format::{Error, ErrorClass, Result};
use sha2::Digest as _;

fn vm(name: &str, class: &str, layout: Layout, expected: &[&str]) -> ManifestVm {
    ManifestVm {
        name: name.into(),
        class: class.into(),
        label: Some("blue".into()),
        template: None,
        netvm: NetVm::Default,
        layout,
        backup_size: 0,
        expected_files: expected.iter().map(|s| (*s).into()).collect(),
    }
}

fn other(name: &str, class: &str, in_backup: bool) -> OtherVm {
    OtherVm {
        name: name.into(),
        class: class.into(),
        in_backup,
    }
}

/// Three carried VMs (one of each layout) and two the stream does not carry.
fn manifest() -> Manifest {
    Manifest {
        vms: vec![
            vm("work", "AppVM", Layout::Volumes, &["private.img"]),
            vm("tpl", "TemplateVM", Layout::TemplateDir, &[]),
            vm("dom0", "AdminVM", Layout::Dom0Home, &[]),
        ],
        others: vec![
            other("sys-net", "AppVM", false),
            other("fedora-41", "TemplateVM", true),
        ],
    }
}

/// A config using every part of the grammar (PROTO-14, CFG-1).
fn rich_config() -> VmConfig {
    VmConfig {
        properties: vec![
            ("memory".into(), Some("400".into())),
            ("kernelopts".into(), Some("nopat swiotlb=2048".into())),
            ("default_dispvm".into(), None),
        ],
        features: vec![
            ("service.meminfo-writer".into(), "1".into()),
            ("gui".into(), String::new()),
        ],
        tags: vec!["audiovm-dom0".into(), "my_tag".into()],
        devices: vec![
            Device {
                bus: "pci".into(),
                backend: "dom0".into(),
                port: "00_1f.3".into(),
                required: true,
                options: vec![
                    ("no-strict-reset".into(), "True".into()),
                    ("permissive".into(), "False".into()),
                ],
            },
            Device {
                bus: "usb".into(),
                backend: "sys-usb".into(),
                port: "2-1".into(),
                required: false,
                options: Vec::new(),
            },
        ],
    }
}

/// A vmend using every part of the grammar (PROTO-15, CFG-2).
fn rich_end() -> VmEnd {
    VmEnd {
        firewall: Firewall::Rules(vec![
            "action=accept dsthost=qubes-os.org".into(),
            "action=accept proto=tcp dst4=1.2.3.0/24 dstports=443-445 comment=web and more".into(),
            "action=drop".into(),
        ]),
        notes: Some("line one\n\tline two".into()),
        menu_items: Some(vec!["firefox.desktop".into(), "xterm.desktop".into()]),
    }
}

fn begin(vm: u32, name: &str, kind: FileKind, size: u64, data_bytes: u64) -> Begin {
    Begin {
        vm,
        name: name.into(),
        kind,
        mode: 0o644,
        size,
        data_bytes,
    }
}

fn reg(vm: u32, name: &str, size: u64, data_bytes: u64) -> Begin {
    begin(vm, name, FileKind::Regular, size, data_bytes)
}

fn dir(vm: u32, name: &str) -> Begin {
    begin(vm, name, FileKind::Directory, 0, 0)
}

/// Hello and manifest, no config yet.
fn manifest_only(m: &Manifest) -> Encoder<Vec<u8>> {
    let mut e = Encoder::new(Vec::new());
    e.hello().unwrap();
    e.manifest(m).unwrap();
    e
}

/// Hello, manifest and an empty config per VM (PROTO-14): ready for files.
fn prefix_with(m: &Manifest) -> Encoder<Vec<u8>> {
    let mut e = manifest_only(m);
    for i in 0..m.vms.len() {
        e.config(i as u32, &VmConfig::default()).unwrap();
    }
    e
}

fn prefix() -> Encoder<Vec<u8>> {
    prefix_with(&manifest())
}

/// PROTO-15: closes VM `vm` with an empty vmend.
fn close(e: &mut Encoder<Vec<u8>>, vm: u32) {
    e.vm_end(vm, &VmEnd::default()).unwrap();
}

/// A complete valid stream with holes, several records per file, every kind, non-empty
/// configs and vmends, and every VM closed.
fn valid() -> Vec<u8> {
    let mut e = manifest_only(&manifest());
    e.config(0, &rich_config()).unwrap();
    e.config(
        1,
        &VmConfig {
            features: vec![("os".into(), "Linux".into())],
            tags: vec!["t".into()],
            ..VmConfig::default()
        },
    )
    .unwrap();
    e.config(2, &VmConfig::default()).unwrap();
    e.begin(&reg(0, "private.img", 9000, 300)).unwrap();
    e.data(100, &[1u8; 100]).unwrap();
    e.data(4096, &[2u8; 200]).unwrap();
    e.end().unwrap();
    e.begin(&reg(0, "firewall.xml", 5, 5)).unwrap();
    e.data(0, b"<fw/>").unwrap();
    e.end().unwrap();
    e.vm_end(0, &rich_end()).unwrap();
    e.begin(&dir(1, "apps")).unwrap();
    e.end().unwrap();
    e.begin(&reg(1, "apps/x.desktop", 3, 3)).unwrap();
    e.data(0, b"abc").unwrap();
    e.end().unwrap();
    let link = FileKind::Symlink {
        target: "x.desktop".into(),
    };
    e.begin(&begin(1, "apps/l", link, 0, 0)).unwrap();
    e.end().unwrap();
    e.vm_end(
        1,
        &VmEnd {
            firewall: Firewall::Unreadable("firewall.xml: rule 1: invalid proto".into()),
            notes: None,
            menu_items: Some(Vec::new()),
        },
    )
    .unwrap();
    e.begin(&dir(2, "user")).unwrap();
    e.end().unwrap();
    close(&mut e, 2);
    e.summary().unwrap();
    e.into_inner()
}

/// Records of a valid stream: hello, manifest, 3 configs; VM 0: 4 + 3 + vmend; VM 1:
/// 2 + 3 + 2 + vmend; VM 2: 2 + vmend; summary.
const VALID_RECORDS: usize = 2 + 3 + (4 + 3 + 1) + (2 + 3 + 2 + 1) + (2 + 1) + 1;

/// Decodes to the end; the decoder itself checks digests (PROTO-7).
fn consume(bytes: &[u8]) -> Result<usize> {
    let mut d = Decoder::new(bytes);
    let mut records = 0;
    while let Some(r) = d.read_record()? {
        records += 1;
        if let Record::Error { class, message } = r {
            return Err(Error::new(class, message));
        }
    }
    // A clean end stays clean.
    assert!(d.read_record()?.is_none());
    Ok(records)
}

/// Every record decoded (as `Debug` text) and how decoding ended.
fn records(bytes: &[u8]) -> (Vec<String>, Result<()>) {
    let mut d = Decoder::new(bytes);
    let mut seen = Vec::new();
    loop {
        match d.read_record() {
            Ok(Some(r)) => seen.push(format!("{r:?}")),
            Ok(None) => return (seen, Ok(())),
            Err(e) => return (seen, Err(e)),
        }
    }
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

fn begin_payload(vm: u32, name: &str, kind: u8, mode: u32, size: u64, data: u64) -> Vec<u8> {
    let mut p = vm.to_be_bytes().to_vec();
    p.extend_from_slice(&(name.len() as u16).to_be_bytes());
    p.extend_from_slice(name.as_bytes());
    p.push(kind);
    p.extend_from_slice(&mode.to_be_bytes());
    p.extend_from_slice(&size.to_be_bytes());
    p.extend_from_slice(&data.to_be_bytes());
    p
}

fn data_payload(offset: u64, bytes: &[u8]) -> Vec<u8> {
    let mut p = offset.to_be_bytes().to_vec();
    p.extend_from_slice(bytes);
    p
}

/// PROTO-10: the grammar accepts a complete stream; records are counted as sent.
#[test]
fn valid_stream_is_accepted() {
    assert_eq!(consume(&valid()).unwrap(), VALID_RECORDS);
    // The configs and vmends come back as sent, in place.
    let s = valid();
    let mut d = Decoder::new(&s[..]);
    let mut configs = Vec::new();
    let mut ends = Vec::new();
    let mut others = Vec::new();
    while let Some(r) = d.read_record().unwrap() {
        match r {
            Record::Manifest(m) => others.clone_from(&m.others),
            Record::Config { vm, config } => configs.push((vm, config)),
            Record::VmEnd { vm, end } => ends.push((vm, end)),
            _ => {}
        }
    }
    assert_eq!(others, manifest().others);
    assert_eq!(configs.len(), 3);
    assert_eq!(configs[0], (0, rich_config()));
    assert_eq!(configs[2], (2, VmConfig::default()));
    assert_eq!(ends.iter().map(|e| e.0).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(ends[0].1, rich_end());
    assert_eq!(ends[2].1, VmEnd::default());
}

/// PROTO-7, PROTO-8: every single-byte change of a stream is detected.
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

/// PROTO-2, PROTO-10: a cut stream is truncated; bytes after the summary are malformed.
#[test]
fn every_truncation_and_extension_is_an_error() {
    let good = valid();
    for n in 0..good.len() {
        let c = class(&good[..n]);
        assert!(matches!(c, ErrorClass::Truncated), "truncation at {n}: {c}");
    }
    assert_eq!(class(&with(good.clone(), &[0])), ErrorClass::Malformed);
    assert_eq!(
        class(&with(good, &raw(t::END, &[0; 16]))),
        ErrorClass::Malformed
    );
}

/// PROTO-1: version and magic; PROTO-2: unknown types, fixed lengths, trailing bytes.
#[test]
fn hello_and_framing_rules() {
    // Earlier versions (3: no config or vmend records; 4: BLAKE3 file digests) and later
    // ones.
    for version in [1u16, 2, 3, 4, 6, u16::MAX] {
        let mut p = b"QBKPSTRM".to_vec();
        p.extend_from_slice(&version.to_be_bytes());
        assert_eq!(class(&raw(t::HELLO, &p)), ErrorClass::Unsupported);
    }
    let mut p = b"QBKPSTRX".to_vec();
    p.extend_from_slice(&5u16.to_be_bytes());
    assert_eq!(class(&raw(t::HELLO, &p)), ErrorClass::Malformed);
    assert_eq!(class(&raw(t::MANIFEST, &[0; 4])), ErrorClass::Malformed);
    assert_eq!(class(&[]), ErrorClass::Truncated);
    // Hello with a trailing payload byte: a fixed-size record of the wrong length.
    let mut p = b"QBKPSTRM".to_vec();
    p.extend_from_slice(&[0, 5, 0]);
    assert_eq!(class(&raw(t::HELLO, &p)), ErrorClass::Malformed);
    let hello = prefix_hello();
    assert_eq!(
        class(&with(hello.clone(), &raw(0x42, &[]))),
        ErrorClass::Malformed
    );
    assert_eq!(
        class(&with(hello.clone(), &raw(0x00, &[]))),
        ErrorClass::Malformed
    );
    // An end record of 31 bytes; a summary of 61.
    let good = prefix().into_inner();
    assert_eq!(
        class(&with(good.clone(), &raw(t::END, &[0; 15]))),
        ErrorClass::Malformed
    );
    assert_eq!(
        class(&with(good.clone(), &raw(t::SUMMARY, &[0; 61]))),
        ErrorClass::Malformed
    );
    // Trailing bytes inside a begin record.
    let mut b = begin_payload(0, "private.img", 0, 0o644, 10, 0);
    b.push(0);
    assert_eq!(
        class(&with(good.clone(), &raw(t::BEGIN, &b))),
        ErrorClass::Malformed
    );
    // A string that is not UTF-8, one with a control character.
    let b = begin_payload(0, "priv\u{7f}te.img", 0, 0o644, 10, 0);
    assert_eq!(
        class(&with(good.clone(), &raw(t::BEGIN, &b))),
        ErrorClass::Malformed
    );
    let mut b = begin_payload(0, "private.img", 0, 0o644, 10, 0);
    b[6] = 0xff;
    assert_eq!(
        class(&with(good.clone(), &raw(t::BEGIN, &b))),
        ErrorClass::Malformed
    );
    // Config and vmend lengths: below the minimum (vm and four counts; vm and three
    // tags) → malformed, above LIM-59 / LIM-60 → limit-exceeded, from the header alone.
    let configs = manifest_only(&manifest()).into_inner();
    assert_eq!(
        class(&with(configs.clone(), &raw(t::CONFIG, &[0; 11]))),
        ErrorClass::Malformed
    );
    let mut huge = vec![t::CONFIG];
    huge.extend_from_slice(&((4u32 << 20) + 1).to_be_bytes());
    assert_eq!(class(&with(configs, &huge)), ErrorClass::LimitExceeded);
    assert_eq!(
        class(&with(good.clone(), &raw(t::VM_END, &[0; 6]))),
        ErrorClass::Malformed
    );
    let mut huge = vec![t::VM_END];
    huge.extend_from_slice(&((8u32 << 20) + 1).to_be_bytes());
    assert_eq!(class(&with(good.clone(), &huge)), ErrorClass::LimitExceeded);
    // The smallest vmend (VM 2, nothing carried) is accepted; with a trailing byte not.
    let end2 = [0, 0, 0, 2, 0, 0, 0];
    let (seen, rest) = records(&with(good.clone(), &raw(t::VM_END, &end2)));
    assert_eq!(seen.len(), 5 + 1, "{seen:?}");
    assert!(seen[5].starts_with("VmEnd { vm: 2,"), "{seen:?}");
    assert_eq!(rest.unwrap_err().class(), ErrorClass::Truncated);
    assert_eq!(
        class(&with(good, &raw(t::VM_END, &[0, 0, 0, 2, 0, 0, 0, 0]))),
        ErrorClass::Malformed
    );
}

fn prefix_hello() -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.hello().unwrap();
    e.into_inner()
}

/// PROTO-3, LIM-51: the manifest's checks, on both the encoder and the decoder side.
#[test]
fn manifest_rules() {
    let bad = |m: Manifest| {
        let mut e = Encoder::new(Vec::new());
        e.hello().unwrap();
        e.manifest(&m).expect_err("encoder must refuse").class()
    };
    let mut m = manifest();
    m.vms[0].expected_files = vec!["../private.img".into()];
    assert_eq!(bad(m), ErrorClass::UnsafePath);
    // Expected files are volume images directly in the VM's directory.
    for name in ["apps/x.img", "icon.png", "private.img/"] {
        let mut m = manifest();
        m.vms[0].expected_files = vec![name.into()];
        assert_eq!(bad(m), ErrorClass::UnsafePath, "{name}");
    }
    let mut m = manifest();
    m.vms[0].expected_files = vec!["root.img".into(), "root.img".into()];
    assert_eq!(bad(m), ErrorClass::Malformed);
    let mut m = manifest();
    m.vms[1].expected_files = vec!["root.img".into()]; // only volumes layouts expect files
    assert_eq!(bad(m), ErrorClass::Malformed);
    let mut m = manifest();
    m.vms[0].layout = Layout::TemplateDir; // an AppVM is no template directory
    assert_eq!(bad(m), ErrorClass::Malformed);
    let mut m = manifest();
    m.vms[0].layout = Layout::Dom0Home;
    assert_eq!(bad(m), ErrorClass::Malformed);
    let mut m = manifest();
    m.vms[2].layout = Layout::Volumes; // dom0 never has volumes
    assert_eq!(bad(m), ErrorClass::Malformed);
    let mut m = manifest();
    m.vms[1].name = "work".into();
    assert_eq!(bad(m), ErrorClass::Malformed);
    let mut m = manifest();
    m.vms[1].name = "../x".into();
    assert_eq!(bad(m), ErrorClass::Malformed);
    let mut m = manifest();
    m.vms[0].class = "App VM".into();
    assert_eq!(bad(m), ErrorClass::Malformed);
    let mut m = manifest();
    m.vms[0].label = Some("r\x1bd".into());
    assert_eq!(bad(m), ErrorClass::Malformed);
    let mut m = manifest();
    m.vms[0].label = Some(String::new());
    assert_eq!(bad(m), ErrorClass::Malformed);
    let mut m = manifest();
    m.vms[0].template = Some("a b".into());
    assert_eq!(bad(m), ErrorClass::Malformed);
    let mut m = manifest();
    m.vms[0].netvm = NetVm::Named("-bad".into());
    assert_eq!(bad(m), ErrorClass::Malformed);
    // The other VMs: valid names and classes, unique across the whole manifest.
    for (name, class) in [
        ("work", "AppVM"),
        ("sys-net", "AppVM"),
        ("a b", "AppVM"),
        ("none", "AppVM"),
        ("x", "App VM"),
        ("x", ""),
    ] {
        let mut m = manifest();
        m.others.push(other(name, class, true));
        assert_eq!(bad(m), ErrorClass::Malformed, "{name:?} {class:?}");
    }
    // VMs and others together at most LIM-14.
    let max = qbackup_format::limits::MAX_VMS;
    let mut m = manifest();
    m.others = (0..max - 3)
        .map(|i| other(&format!("o{i}"), "AppVM", false))
        .collect();
    let ok = manifest_only(&m).into_inner();
    m.others.push(other("one-more", "AppVM", false));
    assert_eq!(bad(m), ErrorClass::LimitExceeded);

    // Decoder side, raw bytes: a second manifest; a huge VM count; bad tags; a huge
    // expected-file count; a trailing byte.
    let good = prefix().into_inner();
    assert_eq!(
        class(&with(good, &raw(t::MANIFEST, &[0; 8]))),
        ErrorClass::Malformed
    );
    let hello = prefix_hello();
    assert_eq!(
        class(&with(
            hello.clone(),
            &raw(t::MANIFEST, &u32::MAX.to_be_bytes())
        )),
        ErrorClass::LimitExceeded
    );
    // The manifest VM `vm` (AppVM, volumes), with no other VMs.
    let vm_only = |label_tag: u8, netvm: u8, layout: u8, nfiles: u32| {
        let mut p = 1u32.to_be_bytes().to_vec();
        p.extend_from_slice(&[0, 2, b'v', b'm', 0, 5]);
        p.extend_from_slice(b"AppVM");
        p.extend_from_slice(&[label_tag, 0, netvm, layout]);
        p.extend_from_slice(&0u64.to_be_bytes());
        p.extend_from_slice(&nfiles.to_be_bytes());
        p
    };
    let vm_payload = |label_tag: u8, netvm: u8, layout: u8, nfiles: u32| {
        let mut p = vm_only(label_tag, netvm, layout, nfiles);
        p.extend_from_slice(&0u32.to_be_bytes());
        p
    };
    assert!(consume(&with(
        hello.clone(),
        &raw(t::MANIFEST, &vm_payload(0, 0, 0, 0))
    ))
    .is_err_and(|e| e.class() == ErrorClass::Truncated));
    // Version 3's manifest (no others count) is cut short.
    assert_eq!(
        class(&with(
            hello.clone(),
            &raw(t::MANIFEST, &vm_only(0, 0, 0, 0))
        )),
        ErrorClass::Malformed
    );
    // Other VMs on the wire: `name ‖ class ‖ in_backup` (0 or 1), after the VMs.
    let with_others = |others: &[(&str, &str, u8)]| {
        let mut p = vm_only(0, 0, 0, 0);
        p.extend_from_slice(&(others.len() as u32).to_be_bytes());
        for (name, class, flag) in others {
            for s in [name, class] {
                p.extend_from_slice(&(s.len() as u16).to_be_bytes());
                p.extend_from_slice(s.as_bytes());
            }
            p.push(*flag);
        }
        raw(t::MANIFEST, &p)
    };
    let (seen, end) = records(&with(
        hello.clone(),
        &with_others(&[("sys-net", "AppVM", 0), ("fedora-41", "TemplateVM", 1)]),
    ));
    assert_eq!(end.unwrap_err().class(), ErrorClass::Truncated);
    assert!(
        seen[1].contains(r#"others: [OtherVm { name: "sys-net", class: "AppVM", in_backup: false }, OtherVm { name: "fedora-41", class: "TemplateVM", in_backup: true }]"#),
        "{seen:?}"
    );
    for (others, want) in [
        (&[("sys-net", "AppVM", 2u8)][..], ErrorClass::Malformed),
        (&[("vm", "AppVM", 0)][..], ErrorClass::Malformed),
        (
            &[("sys-net", "AppVM", 0), ("sys-net", "AppVM", 1)][..],
            ErrorClass::Malformed,
        ),
        (&[("sys net", "AppVM", 0)][..], ErrorClass::Malformed),
        (&[("sys-net", "App\nVM", 0)][..], ErrorClass::Malformed),
        (
            &[(&*"x".repeat(32), "AppVM", 0)][..],
            ErrorClass::LimitExceeded,
        ),
    ] {
        assert_eq!(
            class(&with(hello.clone(), &with_others(others))),
            want,
            "{others:?}"
        );
    }
    // An others count that, with the VMs, exceeds LIM-14: refused before any other VM
    // is read (the record holds none).
    let mut p = vm_only(0, 0, 0, 0);
    p.extend_from_slice(&(max as u32).to_be_bytes());
    assert_eq!(
        class(&with(hello.clone(), &raw(t::MANIFEST, &p))),
        ErrorClass::LimitExceeded
    );
    let mut p = vm_only(0, 0, 0, 0);
    p.extend_from_slice(&u32::MAX.to_be_bytes());
    assert_eq!(
        class(&with(hello.clone(), &raw(t::MANIFEST, &p))),
        ErrorClass::LimitExceeded
    );
    // Exactly LIM-14 VMs and others is accepted (the stream then lacks its configs).
    assert_eq!(class(&ok), ErrorClass::Truncated);
    for p in [
        vm_payload(2, 0, 0, 0),
        vm_payload(0, 3, 0, 0),
        vm_payload(0, 0, 3, 0),
    ] {
        assert_eq!(
            class(&with(hello.clone(), &raw(t::MANIFEST, &p))),
            ErrorClass::Malformed
        );
    }
    assert_eq!(
        class(&with(
            hello.clone(),
            &raw(t::MANIFEST, &vm_payload(0, 0, 0, 65))
        )),
        ErrorClass::LimitExceeded
    );
    let mut p = vm_payload(0, 0, 0, 0);
    p.push(9);
    assert_eq!(
        class(&with(hello, &raw(t::MANIFEST, &p))),
        ErrorClass::Malformed
    );
}

/// The raw payload of an empty vmend for VM `vm` (PROTO-15).
fn end_payload(vm: u32) -> Vec<u8> {
    let mut p = vm.to_be_bytes().to_vec();
    p.extend_from_slice(&[0, 0, 0]);
    p
}

/// A raw summary with the given totals and the right transcript of `stream`, which must
/// hold no data record (the transcript is then the SHA-256 of all of it, PROTO-8).
fn summary_for(stream: &[u8], vms: u32, files: u64, logical: u64) -> Vec<u8> {
    let mut p = vms.to_be_bytes().to_vec();
    p.extend_from_slice(&files.to_be_bytes());
    p.extend_from_slice(&logical.to_be_bytes());
    p.extend_from_slice(&0u64.to_be_bytes());
    p.extend_from_slice(&sha2::Sha256::digest(stream));
    raw(t::SUMMARY, &p)
}

/// PROTO-4, PROTO-15: VM indices, contiguity of a VM's files (closed by its vmend), each
/// VM closed exactly once, expected files checked at the vmend.
#[test]
fn vm_order_rules() {
    let good = prefix().into_inner();
    let b = raw(t::BEGIN, &begin_payload(3, "private.img", 0, 0o644, 10, 0));
    assert_eq!(class(&with(good.clone(), &b)), ErrorClass::Malformed);
    let b = raw(
        t::BEGIN,
        &begin_payload(u32::MAX, "private.img", 0, 0o644, 10, 0),
    );
    assert_eq!(class(&with(good.clone(), &b)), ErrorClass::Malformed);
    for vm in [3, u32::MAX] {
        let b = raw(t::VM_END, &end_payload(vm));
        assert_eq!(class(&with(good.clone(), &b)), ErrorClass::Malformed);
        assert_eq!(
            prefix().vm_end(vm, &VmEnd::default()).unwrap_err().class(),
            ErrorClass::Malformed
        );
    }
    // Another VM while VM 0's files are open (no vmend yet): neither its begin nor its
    // vmend; the encoder writes nothing for either.
    let mut e = prefix();
    e.begin(&reg(0, "private.img", 10, 0)).unwrap();
    e.end().unwrap();
    let len = e.get_mut().len();
    assert_eq!(
        e.begin(&dir(1, "apps")).unwrap_err().class(),
        ErrorClass::OrderFailure
    );
    assert_eq!(
        e.vm_end(1, &VmEnd::default()).unwrap_err().class(),
        ErrorClass::OrderFailure
    );
    assert_eq!(e.get_mut().len(), len);
    let s = e.into_inner();
    let b = raw(t::BEGIN, &begin_payload(1, "apps", 1, 0o755, 0, 0));
    assert_eq!(class(&with(s.clone(), &b)), ErrorClass::OrderFailure);
    let b = raw(t::VM_END, &end_payload(1));
    assert_eq!(class(&with(s.clone(), &b)), ErrorClass::OrderFailure);
    // Its own vmend is fine there.
    let (seen, rest) = records(&with(s, &raw(t::VM_END, &end_payload(0))));
    assert!(seen.last().unwrap().starts_with("VmEnd { vm: 0,"));
    assert_eq!(rest.unwrap_err().class(), ErrorClass::Truncated);
    // Back to a VM whose files ended: a begin or a second vmend.
    let mut e = prefix();
    e.begin(&reg(0, "private.img", 10, 0)).unwrap();
    e.end().unwrap();
    close(&mut e, 0);
    e.begin(&dir(1, "apps")).unwrap();
    e.end().unwrap();
    close(&mut e, 1);
    assert_eq!(
        e.begin(&reg(0, "root.img", 1, 0)).unwrap_err().class(),
        ErrorClass::OrderFailure
    );
    for vm in [0, 1] {
        assert_eq!(
            e.vm_end(vm, &VmEnd::default()).unwrap_err().class(),
            ErrorClass::OrderFailure
        );
    }
    let s = e.into_inner();
    let b = raw(t::BEGIN, &begin_payload(0, "root.img", 0, 0o644, 10, 0));
    assert_eq!(class(&with(s.clone(), &b)), ErrorClass::OrderFailure);
    for vm in [0, 1] {
        let b = raw(t::VM_END, &end_payload(vm));
        assert_eq!(class(&with(s.clone(), &b)), ErrorClass::OrderFailure);
    }
    // A VM that sent no file, ended twice or visited after its end.
    let mut e = prefix();
    close(&mut e, 2);
    assert_eq!(
        e.vm_end(2, &VmEnd::default()).unwrap_err().class(),
        ErrorClass::OrderFailure
    );
    assert_eq!(
        e.begin(&dir(2, "user")).unwrap_err().class(),
        ErrorClass::OrderFailure
    );
    let s = e.into_inner();
    let b = raw(t::BEGIN, &begin_payload(2, "user", 1, 0o755, 0, 0));
    assert_eq!(class(&with(s.clone(), &b)), ErrorClass::OrderFailure);
    let b = raw(t::VM_END, &end_payload(2));
    assert_eq!(class(&with(s, &b)), ErrorClass::OrderFailure);
    // A vmend inside a file.
    let mut e = prefix();
    e.begin(&reg(0, "private.img", 10, 0)).unwrap();
    assert_eq!(
        e.vm_end(0, &VmEnd::default()).unwrap_err().class(),
        ErrorClass::Malformed
    );
    let s = with(e.into_inner(), &raw(t::VM_END, &end_payload(0)));
    assert_eq!(class(&s), ErrorClass::Malformed);
    // Ending VM 0 without its expected private.img: after another file, or with none.
    let mut e = prefix();
    e.begin(&reg(0, "root.img", 10, 0)).unwrap();
    e.end().unwrap();
    assert_eq!(
        e.vm_end(0, &VmEnd::default()).unwrap_err().class(),
        ErrorClass::MissingData
    );
    let s = with(e.into_inner(), &raw(t::VM_END, &end_payload(0)));
    assert_eq!(class(&s), ErrorClass::MissingData);
    let mut e = prefix();
    assert_eq!(
        e.vm_end(0, &VmEnd::default()).unwrap_err().class(),
        ErrorClass::MissingData
    );
    let s = with(e.into_inner(), &raw(t::VM_END, &end_payload(0)));
    assert_eq!(class(&s), ErrorClass::MissingData);
    // Summary before every VM's vmend: none ended, VM 0 open, dom0 never ended.
    let mut e = prefix();
    assert_eq!(e.summary().unwrap_err().class(), ErrorClass::Malformed);
    let mut e = prefix();
    e.begin(&reg(0, "private.img", 10, 0)).unwrap();
    e.end().unwrap();
    assert_eq!(e.summary().unwrap_err().class(), ErrorClass::Malformed);
    let open = e.get_mut().clone();
    close(&mut e, 0);
    close(&mut e, 1);
    let len = e.get_mut().len();
    assert_eq!(e.summary().unwrap_err().class(), ErrorClass::Malformed);
    assert_eq!(e.get_mut().len(), len);
    // The decoder too, with a summary whose totals and transcript are right, so only
    // the missing vmend refuses it; with dom0 ended the same kind of summary passes.
    let s = e.into_inner();
    assert_eq!(
        class(&with(s.clone(), &summary_for(&s, 3, 1, 10))),
        ErrorClass::Malformed
    );
    assert_eq!(
        class(&with(open.clone(), &summary_for(&open, 3, 1, 10))),
        ErrorClass::Malformed
    );
    let s = with(s, &raw(t::VM_END, &end_payload(2)));
    assert_eq!(
        consume(&with(s.clone(), &summary_for(&s, 3, 1, 10))).unwrap(),
        2 + 3 + 2 + 3 + 1
    );
    // VMs in any order, some with no file at all, is fine.
    let mut e = prefix();
    e.begin(&dir(2, "user")).unwrap();
    e.end().unwrap();
    close(&mut e, 2);
    close(&mut e, 1);
    e.begin(&reg(0, "private.img", 10, 0)).unwrap();
    e.end().unwrap();
    close(&mut e, 0);
    e.summary().unwrap();
    assert_eq!(
        consume(&e.into_inner()).unwrap(),
        2 + 3 + (2 + 1) + 1 + (2 + 1) + 1
    );
}

/// PROTO-5: names, kinds, modes and sizes of a begin record.
#[test]
fn begin_rules() {
    let good = prefix().into_inner();
    let cases: &[(u32, &str, u8, u32, u64, u64, ErrorClass)] = &[
        (0, "firewall.xml", 1, 0o755, 0, 0, ErrorClass::UnsafePath),
        (0, "apps.templates/", 1, 0o755, 0, 0, ErrorClass::UnsafePath),
        (0, "../private.img", 0, 0o644, 10, 0, ErrorClass::UnsafePath),
        (1, "apps/../../etc", 0, 0o644, 10, 0, ErrorClass::UnsafePath),
        (1, "apps//x", 0, 0o644, 10, 0, ErrorClass::UnsafePath),
        (1, "/etc/passwd", 0, 0o644, 10, 0, ErrorClass::UnsafePath),
        (1, "apps/", 1, 0o755, 0, 0, ErrorClass::UnsafePath),
        (2, "./user", 1, 0o755, 0, 0, ErrorClass::UnsafePath),
        (1, "", 1, 0o755, 0, 0, ErrorClass::UnsafePath),
        (0, "private.img", 0, 0o4644, 10, 0, ErrorClass::Malformed),
        (0, "private.img", 1, 0o755, 0, 0, ErrorClass::UnsafePath),
        (0, "private.img", 9, 0o644, 10, 0, ErrorClass::Malformed),
        (
            0,
            "private.img",
            0,
            0o644,
            10,
            11,
            ErrorClass::LimitExceeded,
        ),
        (
            0,
            "private.img",
            0,
            0o644,
            (16 << 40) + 1,
            0,
            ErrorClass::LimitExceeded,
        ),
        (1, "apps", 1, 0o755, 1, 0, ErrorClass::Malformed),
    ];
    for &(vm, name, kind, mode, size, data, want) in cases {
        let b = raw(t::BEGIN, &begin_payload(vm, name, kind, mode, size, data));
        assert_eq!(class(&with(good.clone(), &b)), want, "{name:?} kind {kind}");
    }
    // Symlink targets: empty, control characters (the decoder refuses both).
    for target in ["", "a\u{1}b"] {
        let mut p = 1u32.to_be_bytes().to_vec();
        p.extend_from_slice(&[0, 1, b'l', 2]);
        p.extend_from_slice(&(target.len() as u16).to_be_bytes());
        p.extend_from_slice(target.as_bytes());
        p.extend_from_slice(&[0; 4 + 8 + 8]);
        let want = if target.is_empty() {
            ErrorClass::UnsafePath
        } else {
            ErrorClass::Malformed
        };
        assert_eq!(
            class(&with(good.clone(), &raw(t::BEGIN, &p))),
            want,
            "{target:?}"
        );
    }
    // The same name twice in a VM.
    let mut e = prefix();
    e.begin(&dir(1, "apps")).unwrap();
    e.end().unwrap();
    assert_eq!(
        e.begin(&dir(1, "apps")).unwrap_err().class(),
        ErrorClass::OrderFailure
    );
    let s = e.into_inner();
    let b = raw(t::BEGIN, &begin_payload(1, "apps", 1, 0o755, 0, 0));
    assert_eq!(class(&with(s, &b)), ErrorClass::OrderFailure);
    // A VM directory's other files may be trees and links (upstream archives them as
    // they are: `apps.templates/`, `kernels/`, an `icon.png` link).
    let mut e = prefix();
    e.begin(&begin(0, "apps.templates", FileKind::Directory, 0, 0))
        .unwrap();
    e.end().unwrap();
    e.begin(&reg(0, "apps.templates/a.desktop", 3, 0)).unwrap();
    e.end().unwrap();
    let icon = FileKind::Symlink {
        target: "/usr/share/icons/green.png".into(),
    };
    e.begin(&begin(0, "icon.png", icon, 0, 0)).unwrap();
    e.end().unwrap();
    e.begin(&reg(0, "private.img", 1, 0)).unwrap();
    e.end().unwrap();
    for vm in 0..3 {
        close(&mut e, vm);
    }
    e.summary().unwrap();
    assert_eq!(consume(&e.into_inner()).unwrap(), 2 + 3 + 8 + 3 + 1);
    // The same name in two VMs is fine.
    let mut e = prefix();
    e.begin(&reg(1, "private.img", 1, 0)).unwrap();
    e.end().unwrap();
    close(&mut e, 1);
    e.begin(&reg(0, "private.img", 1, 0)).unwrap();
    e.end().unwrap();
    close(&mut e, 0);
    close(&mut e, 2);
    e.summary().unwrap();
    assert_eq!(
        consume(&e.into_inner()).unwrap(),
        2 + 3 + 2 + 1 + 2 + 1 + 1 + 1
    );
}

/// PROTO-3, VER-4: a VM's declared backup-size is advisory, not a bound of the stream
/// (the verifier reports an excess; `--strict-backup-size` makes it fail there).
#[test]
fn declared_backup_size_is_not_a_bound() {
    let mut m = manifest();
    m.vms[0].backup_size = 1000;
    let mut e = prefix_with(&m);
    e.begin(&reg(0, "root.img", 1 << 20, 2000)).unwrap();
    e.data(0, &[1; 2000]).unwrap();
    e.end().unwrap();
    e.begin(&reg(0, "private.img", 1 << 30, 0)).unwrap();
    e.end().unwrap();
    for vm in 0..3 {
        close(&mut e, vm);
    }
    e.summary().unwrap();
    let s = e.into_inner();
    assert_eq!(consume(&s).unwrap(), 2 + 3 + 3 + 2 + 3 + 1);
}

/// PROTO-6: offsets strictly increase, stay inside the size, and data matches the begin.
#[test]
fn data_rules() {
    let open = || {
        let mut e = prefix();
        e.begin(&reg(0, "private.img", 9000, 300)).unwrap();
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
    // Data for a directory.
    let mut e = prefix();
    e.begin(&dir(1, "apps")).unwrap();
    assert!(e.data(0, b"x").is_err());
    let s = e.into_inner();
    assert_eq!(class(&with(s, &d(0, 1))), ErrorClass::Malformed);
}

/// PROTO-7: an end before all declared data is missing data; a wrong digest is a MAC
/// failure, detected by the decoder itself.
#[test]
fn end_rules() {
    let mut e = prefix();
    e.begin(&reg(0, "private.img", 9000, 300)).unwrap();
    e.data(0, &[1; 299]).unwrap();
    assert_eq!(e.end().unwrap_err().class(), ErrorClass::MissingData);
    let s = with(e.into_inner(), &raw(t::END, &[0; 16]));
    assert_eq!(class(&s), ErrorClass::MissingData);
    let mut e = prefix();
    e.begin(&reg(0, "private.img", 9000, 300)).unwrap();
    e.data(0, &[1; 300]).unwrap();
    let s = with(e.into_inner(), &raw(t::END, &[0; 16]));
    assert_eq!(class(&s), ErrorClass::MacFailure);
    // End outside a file, and before the configs.
    assert_eq!(
        class(&with(prefix().into_inner(), &raw(t::END, &[0; 16]))),
        ErrorClass::Malformed
    );
    assert_eq!(
        class(&with(
            manifest_only(&manifest()).into_inner(),
            &raw(t::END, &[0; 16])
        )),
        ErrorClass::Malformed
    );
}

/// PROTO-8: a summary's counts and transcript must match the stream.
#[test]
fn summary_must_match() {
    let good = valid();
    let body = &good[..good.len() - 65];
    for byte in [3usize, 11, 19, 27, 59] {
        let mut summary = good[good.len() - 60..].to_vec();
        summary[byte] ^= 1;
        assert_eq!(
            class(&with(body.to_vec(), &raw(t::SUMMARY, &summary))),
            ErrorClass::Malformed,
            "summary byte {byte}"
        );
    }
    // A summary inside a file.
    let mut e = prefix();
    e.begin(&reg(0, "private.img", 1, 0)).unwrap();
    assert_eq!(e.summary().unwrap_err().class(), ErrorClass::Malformed);
}

/// PROTO-9: an error record ends the stream with its class; its text is made safe.
#[test]
fn error_record_ends_the_stream() {
    let mut e = prefix();
    e.begin(&reg(0, "private.img", 9000, 300)).unwrap();
    e.error(
        ErrorClass::MacFailure,
        "chunk vm3/private.img.004\x1b[2J failed",
    )
    .unwrap();
    assert!(e.is_done());
    let s = e.into_inner();
    let err = consume(&s).unwrap_err();
    assert_eq!(err.class(), ErrorClass::MacFailure);
    assert_eq!(err.message(), "chunk vm3/private.img.004?[2J failed");
    // Nothing may follow it.
    let s = with(s, &raw(t::END, &[0; 16]));
    let mut d = Decoder::new(&s[..]);
    while !matches!(d.read_record().unwrap(), Some(Record::Error { .. })) {}
    assert_eq!(d.read_record().unwrap_err().class(), ErrorClass::Malformed);
    // And a failed decoder stays failed.
    assert!(d.read_record().is_err());
    // A control character or unknown class in a raw error record; error before hello.
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
    assert_eq!(
        class(&raw(t::ERROR, &[12, 0, 1, b'a'])),
        ErrorClass::Malformed
    );
    // Right after hello and inside a manifest-less stream it is allowed, and between the
    // manifest and the configs, and between a VM's files and its vmend.
    let s = with(prefix_hello(), &raw(t::ERROR, &[12, 0, 1, b'a']));
    assert_eq!(class(&s), ErrorClass::MacFailure);
    let mut e = manifest_only(&manifest());
    e.config(0, &rich_config()).unwrap();
    e.error(ErrorClass::Malformed, "qubes.xml: bad feature")
        .unwrap();
    assert!(e.config(1, &VmConfig::default()).is_err());
    assert_eq!(class(&e.into_inner()), ErrorClass::Malformed);
    let mut e = prefix();
    e.begin(&reg(0, "private.img", 1, 0)).unwrap();
    e.end().unwrap();
    e.error(ErrorClass::Unsupported, "firewall").unwrap();
    assert!(e.vm_end(0, &VmEnd::default()).is_err());
    assert_eq!(class(&e.into_inner()), ErrorClass::Unsupported);
    // A long message is cut to LIM-31.
    let mut e = prefix();
    e.error(ErrorClass::Io, &"é".repeat(5000)).unwrap();
    let err = consume(&e.into_inner()).unwrap_err();
    assert!(err.message().len() <= qbackup_format::limits::MAX_PROTO_MESSAGE_LEN);
    assert_eq!(err.class(), ErrorClass::Io);
}

/// PROTO-10: the encoder runs the same state machine, so it refuses what the decoder
/// would.
#[test]
fn encoder_refuses_what_the_decoder_would() {
    let mut e = Encoder::new(Vec::new());
    assert!(e.manifest(&manifest()).is_err());
    assert!(e.error(ErrorClass::Io, "x").is_err());
    assert!(e.config(0, &VmConfig::default()).is_err());
    assert!(e.vm_end(0, &VmEnd::default()).is_err());
    assert!(e.get_mut().is_empty());
    // Files, vmends and the summary wait for every config.
    let mut e = manifest_only(&manifest());
    e.config(0, &VmConfig::default()).unwrap();
    let len = e.get_mut().len();
    assert_eq!(
        e.begin(&reg(0, "private.img", 1, 0)).unwrap_err().class(),
        ErrorClass::Malformed
    );
    assert_eq!(
        e.vm_end(0, &VmEnd::default()).unwrap_err().class(),
        ErrorClass::Malformed
    );
    assert_eq!(e.summary().unwrap_err().class(), ErrorClass::Malformed);
    assert_eq!(e.get_mut().len(), len);
    let mut e = prefix();
    assert!(e.config(0, &VmConfig::default()).is_err());
    assert_eq!(
        e.begin(&reg(0, "kernel/../x", 5, 0)).unwrap_err().class(),
        ErrorClass::UnsafePath
    );
    assert!(e.data(0, b"x").is_err());
    assert!(e.end().is_err());
    e.begin(&reg(0, "private.img", 9000, 10)).unwrap();
    assert!(e.data(9000, b"x").is_err());
    assert!(e.hello().is_err());
    assert!(e.manifest(&manifest()).is_err());
    e.error(ErrorClass::Io, "stop").unwrap();
    assert!(e.summary().is_err());
    assert!(e.error(ErrorClass::Io, "again").is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// PROTO-2: random edits of a valid stream: refused or accepted, never a panic.
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

    /// PROTO-2: arbitrary bytes after hello: never a panic, never accepted.
    #[test]
    fn arbitrary_records_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let s = with(prefix_hello(), &body);
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

/// PROTO-2: framing does not depend on how reads are split.
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
    assert_eq!(n, VALID_RECORDS);
}

/// PROTO-7: holes cost the decoder nothing: a 16 TiB file with one byte at its end
/// decodes at once (the digest covers records, not the logical content).
#[test]
fn huge_sparse_files_are_cheap() {
    let size = 16u64 << 40;
    let mut e = prefix();
    e.begin(&reg(0, "private.img", size, 1)).unwrap();
    e.data(size - 1, b"x").unwrap();
    e.end().unwrap();
    for vm in 0..3 {
        close(&mut e, vm);
    }
    e.summary().unwrap();
    // Hashing 16 TiB of zeros would take hours: this returning at all is the check.
    assert_eq!(consume(&e.into_inner()).unwrap(), 2 + 3 + 3 + 3 + 1);
}

/// PROTO-5, LIM-33: one VM's file names are bounded in total (the checker remembers
/// them); LIM-30 bounds the file count. Run on the shared state machine directly.
#[test]
fn name_bytes_of_a_vm_are_bounded() {
    use qbackup_format::limits::MAX_PROTO_NAME_BYTES;
    use qbackup_format::protocol::state::Checker;
    let mut c = Checker::new();
    c.hello(qbackup_format::protocol::VERSION).unwrap();
    c.accept_manifest(manifest()).unwrap();
    for vm in 0..3 {
        c.config(vm, &VmConfig::default()).unwrap();
    }
    let long = "a".repeat(4000);
    let mut total = 0usize;
    let mut i = 0u32;
    let err = loop {
        let name = format!("{i:06}/{long}");
        let r = c.begin(&begin(1, &name, FileKind::Directory, 0, 0));
        match r {
            Ok(()) => {
                total += name.len();
                c.end().unwrap();
            }
            Err(e) => break e,
        }
        i += 1;
    };
    assert_eq!(err.class(), ErrorClass::LimitExceeded);
    assert!(total <= MAX_PROTO_NAME_BYTES && total + 4007 > MAX_PROTO_NAME_BYTES);
    // Another VM starts afresh once this one ended.
    c.vm_end(1, &VmEnd::default()).unwrap();
    // The name VM 1 could not send any more (4007 bytes) is fine for VM 2.
    c.begin(&dir(2, &format!("{i:06}/{long}"))).unwrap();
    c.end().unwrap();
    c.begin(&dir(2, "user")).unwrap();
}

/// PROTO-10: a refused record changes nothing: a refused config, begin or vmend neither
/// advances nor closes anything, and writes no byte.
#[test]
fn refused_records_leave_the_state_alone() {
    // A refused config: the same VM's config is still the one expected.
    let mut e = manifest_only(&manifest());
    let len = e.get_mut().len();
    let bad = VmConfig {
        tags: vec!["created-by-dom0".into()],
        ..rich_config()
    };
    assert_eq!(
        e.config(0, &bad).unwrap_err().class(),
        ErrorClass::Malformed
    );
    assert_eq!(e.get_mut().len(), len);
    assert_eq!(
        e.config(1, &VmConfig::default()).unwrap_err().class(),
        ErrorClass::Malformed
    );
    e.config(0, &rich_config()).unwrap();
    e.config(1, &VmConfig::default()).unwrap();
    // dom0 carries no settings; refused, then its empty config passes.
    let len = e.get_mut().len();
    assert_eq!(
        e.config(2, &rich_config()).unwrap_err().class(),
        ErrorClass::Malformed
    );
    assert_eq!(e.get_mut().len(), len);
    e.config(2, &VmConfig::default()).unwrap();

    e.begin(&reg(0, "root.img", 1, 0)).unwrap();
    e.end().unwrap();
    let len = e.get_mut().len();
    // VM 0 still misses private.img: its vmend is refused, it stays open (so VM 1 may
    // not begin) and the summary is refused.
    assert_eq!(
        e.vm_end(0, &rich_end()).unwrap_err().class(),
        ErrorClass::MissingData
    );
    assert_eq!(
        e.begin(&dir(1, "apps")).unwrap_err().class(),
        ErrorClass::OrderFailure
    );
    assert_eq!(e.summary().unwrap_err().class(), ErrorClass::Malformed);
    assert_eq!(e.get_mut().len(), len);
    e.begin(&reg(0, "private.img", 1, 0)).unwrap();
    e.end().unwrap();
    // A vmend with a smuggled firewall rule is refused; VM 0 stays open.
    let smuggle = VmEnd {
        firewall: Firewall::Rules(vec!["action=accept dsthost=a.b action=drop".into()]),
        ..rich_end()
    };
    let len = e.get_mut().len();
    assert_eq!(
        e.vm_end(0, &smuggle).unwrap_err().class(),
        ErrorClass::Malformed
    );
    assert_eq!(e.get_mut().len(), len);
    e.begin(&reg(0, "volatile.img", 1, 0)).unwrap();
    e.end().unwrap();
    e.vm_end(0, &rich_end()).unwrap();
    e.begin(&dir(1, "apps")).unwrap();
    e.end().unwrap();
    let len = e.get_mut().len();
    // A begin for VM 2 while VM 1 is open is refused; VM 1 stays open, VM 2 unvisited.
    assert_eq!(
        e.begin(&dir(2, "user")).unwrap_err().class(),
        ErrorClass::OrderFailure
    );
    assert_eq!(e.get_mut().len(), len);
    e.begin(&dir(1, "apps/y")).unwrap();
    e.end().unwrap();
    close(&mut e, 1);
    // A bad name for VM 2 is refused; VM 2 stays unvisited and may still come.
    let len = e.get_mut().len();
    assert_eq!(
        e.begin(&reg(2, "../x", 1, 0)).unwrap_err().class(),
        ErrorClass::UnsafePath
    );
    // dom0 carries no notes.
    let notes = VmEnd {
        notes: Some("n".into()),
        ..VmEnd::default()
    };
    assert_eq!(
        e.vm_end(2, &notes).unwrap_err().class(),
        ErrorClass::Malformed
    );
    assert_eq!(e.get_mut().len(), len);
    e.begin(&dir(2, "user")).unwrap();
    e.end().unwrap();
    close(&mut e, 2);
    e.summary().unwrap();
    assert_eq!(
        consume(&e.into_inner()).unwrap(),
        2 + 3 + (2 + 2 + 2 + 1) + (2 + 2 + 1) + (2 + 1) + 1
    );
}
