//! PROTO-14, PROTO-15, CFG-1, CFG-2: config and vmend records from a malicious verifier.
//!
//! A compromised verifier may send metadata that the restore would hand to qubesd: names
//! with framing characters (space, `+`, NUL, newline), over-long names, qubesd's own
//! `created-by-*` tags, feature values with control bytes, device options with quotes,
//! firewall lines that smuggle a second rule. Each hostile record here is built by hand
//! from the PROTO-14/15 grammar (bypassing the encoder) and the decoder's error class is
//! asserted; the encoder, given the same value, refuses it too and writes nothing.

use std::ops::Range;

use proptest::prelude::*;
use qbackup_format::limits::{
    MAX_CONFIG_ENTRIES, MAX_CONFIG_VALUE_LEN, MAX_FIREWALL_RULES, MAX_FIREWALL_RULE_LEN,
    MAX_MENU_ITEMS, MAX_NOTES_LEN,
};
use qbackup_format::protocol::read::Decoder;
use qbackup_format::protocol::write::Encoder;
use qbackup_format::protocol::{
    record_type as t, Begin, Device, FileKind, Firewall, Layout, Manifest, ManifestVm, Record,
    VmConfig, VmEnd,
};
use qbackup_format::qubes_xml::NetVm;
use qbackup_format::{Error, ErrorClass};
use sha2::Digest as _;

// ---- the wire grammar, written out by hand (PROTO-2, PROTO-14, PROTO-15) ----------------

fn put(p: &mut Vec<u8>, s: &str) {
    p.extend_from_slice(&(s.len() as u16).to_be_bytes());
    p.extend_from_slice(s.as_bytes());
}

fn count(p: &mut Vec<u8>, n: usize) {
    p.extend_from_slice(&(n as u16).to_be_bytes());
}

/// `vm:u32 ‖ props:u16 ‖ (name ‖ optstr)* ‖ features:u16 ‖ (name ‖ value)* ‖ tags:u16 ‖
/// str* ‖ devices:u16 ‖ (bus ‖ backend ‖ port ‖ required:u8 ‖ options:u16 ‖ (name ‖
/// value)*)*`, whatever the strings hold.
fn config_payload(vm: u32, c: &VmConfig) -> Vec<u8> {
    let mut p = vm.to_be_bytes().to_vec();
    count(&mut p, c.properties.len());
    for (k, v) in &c.properties {
        put(&mut p, k);
        match v {
            None => p.push(0),
            Some(v) => {
                p.push(1);
                put(&mut p, v);
            }
        }
    }
    count(&mut p, c.features.len());
    for (k, v) in &c.features {
        put(&mut p, k);
        put(&mut p, v);
    }
    count(&mut p, c.tags.len());
    for tag in &c.tags {
        put(&mut p, tag);
    }
    count(&mut p, c.devices.len());
    for d in &c.devices {
        put(&mut p, &d.bus);
        put(&mut p, &d.backend);
        put(&mut p, &d.port);
        p.push(u8::from(d.required));
        count(&mut p, d.options.len());
        for (k, v) in &d.options {
            put(&mut p, k);
            put(&mut p, v);
        }
    }
    p
}

/// `vm:u32 ‖ firewall (0 | 1 count:u16 str* | 2 str) ‖ notes (0 | 1 len:u32 text) ‖ menu
/// (0 | 1 count:u16 str*)`, whatever the strings hold.
fn end_payload(vm: u32, e: &VmEnd) -> Vec<u8> {
    let mut p = vm.to_be_bytes().to_vec();
    match &e.firewall {
        Firewall::Absent => p.push(0),
        Firewall::Rules(lines) => {
            p.push(1);
            count(&mut p, lines.len());
            for l in lines {
                put(&mut p, l);
            }
        }
        Firewall::Unreadable(why) => {
            p.push(2);
            put(&mut p, why);
        }
    }
    match &e.notes {
        None => p.push(0),
        Some(n) => {
            p.push(1);
            p.extend_from_slice(&(n.len() as u32).to_be_bytes());
            p.extend_from_slice(n.as_bytes());
        }
    }
    match &e.menu_items {
        None => p.push(0),
        Some(items) => {
            p.push(1);
            count(&mut p, items.len());
            for i in items {
                put(&mut p, i);
            }
        }
    }
    p
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

// ---- streams ---------------------------------------------------------------------------

fn vm(name: &str, class: &str, layout: Layout, expected: &[&str]) -> ManifestVm {
    ManifestVm {
        name: name.into(),
        class: class.into(),
        label: Some("green".into()),
        template: None,
        netvm: NetVm::None,
        layout,
        backup_size: 0,
        expected_files: expected.iter().map(|s| (*s).into()).collect(),
    }
}

fn manifest() -> Manifest {
    Manifest {
        vms: vec![
            vm("work", "AppVM", Layout::Volumes, &["private.img"]),
            vm("tpl", "TemplateVM", Layout::TemplateDir, &[]),
            vm("dom0", "AdminVM", Layout::Dom0Home, &[]),
        ],
        others: Vec::new(),
    }
}

fn manifest_only() -> Encoder<Vec<u8>> {
    let mut e = Encoder::new(Vec::new());
    e.hello().unwrap();
    e.manifest(&manifest()).unwrap();
    e
}

/// Hello, manifest, empty configs.
fn prefix() -> Encoder<Vec<u8>> {
    let mut e = manifest_only();
    for vm in 0..3 {
        e.config(vm, &VmConfig::default()).unwrap();
    }
    e
}

fn reg(vm: u32, name: &str, size: u64, data_bytes: u64) -> Begin {
    Begin {
        vm,
        name: name.into(),
        kind: FileKind::Regular,
        mode: 0o600,
        size,
        data_bytes,
    }
}

/// Prefix, and VM 0's expected private.img: VM 0's vmend is next.
fn vm0_files() -> Encoder<Vec<u8>> {
    let mut e = prefix();
    e.begin(&reg(0, "private.img", 10, 3)).unwrap();
    e.data(2, b"abc").unwrap();
    e.end().unwrap();
    e
}

/// Records before VM 0's vmend in [`vm0_files`].
const BEFORE_VM0_END: usize = 2 + 3 + 3;

fn device(bus: &str, backend: &str, port: &str, options: &[(&str, &str)]) -> Device {
    Device {
        bus: bus.into(),
        backend: backend.into(),
        port: port.into(),
        required: false,
        options: options
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
    }
}

fn rich_config() -> VmConfig {
    VmConfig {
        properties: vec![
            ("memory".into(), Some("400".into())),
            ("kernelopts".into(), Some("nopat swiotlb=2048".into())),
            ("default_dispvm".into(), None),
            ("vcpus".into(), Some(String::new())),
        ],
        features: vec![
            ("service.meminfo-writer".into(), "1".into()),
            ("gui".into(), String::new()),
            ("os".into(), "Linux".into()),
        ],
        tags: vec!["audiovm-dom0".into(), "my_tag".into(), "created-byx".into()],
        devices: vec![
            Device {
                required: true,
                ..device(
                    "pci",
                    "dom0",
                    "00_1f.3",
                    &[("no-strict-reset", "True"), ("permissive", "False")],
                )
            },
            device("usb", "sys-usb", "2-1", &[]),
            device(
                "block",
                "sys-usb",
                "sda",
                &[("read-only", "yes"), ("frontend-dev", "xvdi")],
            ),
        ],
    }
}

fn rich_end() -> VmEnd {
    VmEnd {
        firewall: Firewall::Rules(vec![
            "action=accept specialtarget=dns".into(),
            "action=accept dsthost=qubes-os.org".into(),
            "action=accept proto=tcp dst4=1.2.3.0/24 dstports=443-445 comment=web and more".into(),
            "action=drop proto=icmp icmptype=8 expire=1700000000".into(),
            "action=drop dst6=2001:db8::/32".into(),
            "action=drop".into(),
        ]),
        notes: Some("Notes: ünïcode\n\tindented\n".into()),
        menu_items: Some(vec![
            "firefox.desktop".into(),
            "org.gnome.Nautilus.desktop".into(),
            "libreoffice-calc+x@y.desktop".into(),
        ]),
    }
}

/// Decodes until the first error: the records accepted and the error; panics if the
/// stream is accepted.
fn refused(bytes: &[u8]) -> (usize, Error) {
    let mut d = Decoder::new(bytes);
    let mut n = 0;
    loop {
        match d.read_record() {
            Ok(Some(Record::Error { class, message })) => panic!("error record {class}: {message}"),
            Ok(Some(_)) => n += 1,
            Ok(None) => panic!("hostile stream accepted"),
            Err(e) => return (n, e),
        }
    }
}

/// The configs and vmends of a stream, with their VM indices.
type Settings = (Vec<(u32, VmConfig)>, Vec<(u32, VmEnd)>);

/// Decodes a whole stream; the configs and vmends seen.
fn accepted(bytes: &[u8]) -> Settings {
    let mut d = Decoder::new(bytes);
    let (mut configs, mut ends) = (Vec::new(), Vec::new());
    while let Some(r) = d.read_record().unwrap() {
        match r {
            Record::Config { vm, config } => configs.push((vm, config)),
            Record::VmEnd { vm, end } => ends.push((vm, end)),
            Record::Error { class, message } => panic!("error record {class}: {message}"),
            _ => {}
        }
    }
    (configs, ends)
}

/// Config `c` for VM 0 both ways: the encoder refuses it and writes nothing; the record
/// built by hand is refused by the decoder right there (after hello and manifest).
/// Returns (encoder class, decoder class).
fn try_config(c: &VmConfig) -> (ErrorClass, ErrorClass) {
    let mut e = manifest_only();
    let len = e.get_mut().len();
    let enc = e.config(0, c).expect_err("encoder accepted").class();
    assert_eq!(e.get_mut().len(), len, "encoder wrote a refused config");
    let s = with(e.into_inner(), &raw(t::CONFIG, &config_payload(0, c)));
    let (n, err) = refused(&s);
    assert_eq!(n, 2, "refused after the config record: {err}");
    (enc, err.class())
}

/// [`try_config`] where both sides agree; the class.
fn config_class(c: &VmConfig) -> ErrorClass {
    let (enc, dec) = try_config(c);
    assert_eq!(enc, dec, "encoder and decoder disagree on {c:?}");
    dec
}

/// A config for VM 0 is accepted both ways, and decodes to itself.
fn config_ok(c: &VmConfig) {
    let mut e = manifest_only();
    e.config(0, c).unwrap();
    let by_encoder = e.into_inner();
    let by_hand = with(
        manifest_only().into_inner(),
        &raw(t::CONFIG, &config_payload(0, c)),
    );
    assert_eq!(by_encoder, by_hand, "the grammar written out differs");
    let mut d = Decoder::new(&by_hand[..]);
    d.read_record().unwrap();
    d.read_record().unwrap();
    match d.read_record().unwrap() {
        Some(Record::Config { vm: 0, config }) => assert_eq!(&config, c),
        other => panic!("{other:?}"),
    }
}

/// VmEnd `v` for VM 0 after its files, both ways (as [`try_config`]).
fn try_end(v: &VmEnd) -> (ErrorClass, ErrorClass) {
    let mut e = vm0_files();
    let len = e.get_mut().len();
    let enc = e.vm_end(0, v).expect_err("encoder accepted").class();
    assert_eq!(e.get_mut().len(), len, "encoder wrote a refused vmend");
    let s = with(e.into_inner(), &raw(t::VM_END, &end_payload(0, v)));
    let (n, err) = refused(&s);
    assert_eq!(n, BEFORE_VM0_END, "refused after the vmend record: {err}");
    (enc, err.class())
}

fn end_class(v: &VmEnd) -> ErrorClass {
    let (enc, dec) = try_end(v);
    assert_eq!(enc, dec, "encoder and decoder disagree on {v:?}");
    dec
}

/// A vmend for VM 0 is accepted both ways, and decodes to itself.
fn end_ok(v: &VmEnd) {
    let mut e = vm0_files();
    e.vm_end(0, v).unwrap();
    let by_encoder = e.into_inner();
    let by_hand = with(
        vm0_files().into_inner(),
        &raw(t::VM_END, &end_payload(0, v)),
    );
    assert_eq!(by_encoder, by_hand, "the grammar written out differs");
    let mut d = Decoder::new(&by_hand[..]);
    for _ in 0..BEFORE_VM0_END {
        d.read_record().unwrap();
    }
    match d.read_record().unwrap() {
        Some(Record::VmEnd { vm: 0, end }) => assert_eq!(&end, v),
        other => panic!("{other:?}"),
    }
}

fn props(name: &str, value: Option<&str>) -> VmConfig {
    VmConfig {
        properties: vec![(name.into(), value.map(Into::into))],
        ..VmConfig::default()
    }
}

fn feature(name: &str, value: &str) -> VmConfig {
    VmConfig {
        features: vec![(name.into(), value.into())],
        ..VmConfig::default()
    }
}

fn tag(tag: &str) -> VmConfig {
    VmConfig {
        tags: vec![tag.into()],
        ..VmConfig::default()
    }
}

fn devices(d: Device) -> VmConfig {
    VmConfig {
        devices: vec![d],
        ..VmConfig::default()
    }
}

fn firewall(lines: &[&str]) -> VmEnd {
    VmEnd {
        firewall: Firewall::Rules(lines.iter().map(|l| (*l).into()).collect()),
        ..VmEnd::default()
    }
}

fn notes(n: &str) -> VmEnd {
    VmEnd {
        notes: Some(n.into()),
        ..VmEnd::default()
    }
}

fn menu(items: &[&str]) -> VmEnd {
    VmEnd {
        menu_items: Some(items.iter().map(|i| (*i).into()).collect()),
        ..VmEnd::default()
    }
}

/// The framing characters of the qubesd protocol and of qrexec arguments, and bytes that
/// end a line or a C string.
const FRAMING: [&str; 8] = [
    "a b", "a+b", "a\0b", "a\nb", "a\rb", "a\tb", "a\u{7f}b", "a\u{85}b",
];

// ---- tests -----------------------------------------------------------------------------

/// PROTO-14, PROTO-15: the grammar as written here is the encoder's, byte for byte, and
/// rich records decode to themselves.
#[test]
fn wire_format_matches_the_grammar() {
    config_ok(&rich_config());
    config_ok(&VmConfig::default());
    end_ok(&rich_end());
    end_ok(&VmEnd::default());
    end_ok(&VmEnd {
        firewall: Firewall::Unreadable("firewall.xml: rule 3: invalid proto".into()),
        notes: None,
        menu_items: Some(Vec::new()),
    });
    // Empty notes are not notes (qubesd refuses them): both sides refuse them.
    assert_eq!(
        end_class(&VmEnd {
            notes: Some(String::new()),
            ..VmEnd::default()
        }),
        ErrorClass::Malformed
    );
    end_ok(&firewall(&[]));
    // Spelled out: an empty config, and one tag.
    assert_eq!(
        config_payload(0, &VmConfig::default()),
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        config_payload(7, &tag("ab")),
        [0, 0, 0, 7, 0, 0, 0, 0, 0, 1, 0, 2, b'a', b'b', 0, 0]
    );
    assert_eq!(end_payload(1, &VmEnd::default()), [0, 0, 0, 1, 0, 0, 0]);
    assert_eq!(
        end_payload(0, &notes("x\n")),
        [0, 0, 0, 0, 0, 1, 0, 0, 0, 2, b'x', b'\n', 0]
    );
    // A whole stream with rich records for the two VMs that may carry them.
    let mut e = manifest_only();
    e.config(0, &rich_config()).unwrap();
    e.config(1, &rich_config()).unwrap();
    e.config(2, &VmConfig::default()).unwrap();
    e.vm_end(1, &rich_end()).unwrap();
    e.vm_end(2, &VmEnd::default()).unwrap();
    e.begin(&reg(0, "private.img", 10, 0)).unwrap();
    e.end().unwrap();
    e.vm_end(0, &rich_end()).unwrap();
    e.summary().unwrap();
    let (configs, ends) = accepted(&e.into_inner());
    assert_eq!(
        configs,
        [
            (0, rich_config()),
            (1, rich_config()),
            (2, VmConfig::default())
        ]
    );
    assert_eq!(
        ends,
        [(1, rich_end()), (2, VmEnd::default()), (0, rich_end())]
    );
}

/// CFG-1: property, feature and tag names with framing characters (space, `+`, NUL,
/// newline, …) or outside their alphabets are malformed.
#[test]
fn names_with_framing_characters_are_refused() {
    for bad in FRAMING {
        assert_eq!(
            config_class(&props(bad, Some("1"))),
            ErrorClass::Malformed,
            "{bad:?}"
        );
        assert_eq!(
            config_class(&props(bad, None)),
            ErrorClass::Malformed,
            "{bad:?}"
        );
        assert_eq!(
            config_class(&feature(bad, "1")),
            ErrorClass::Malformed,
            "{bad:?}"
        );
        assert_eq!(config_class(&tag(bad)), ErrorClass::Malformed, "{bad:?}");
    }
    // Property names: `[a-z][a-z0-9_]*`.
    for bad in ["", "Memory", "1abc", "_x", "a-b", "a.b", "a=b", "a:b", "é"] {
        assert_eq!(
            config_class(&props(bad, Some("1"))),
            ErrorClass::Malformed,
            "{bad:?}"
        );
    }
    // Feature names: `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
    for bad in ["", ".x", "-x", "a=b", "a/b", "a:b", "a'b", "é"] {
        assert_eq!(
            config_class(&feature(bad, "1")),
            ErrorClass::Malformed,
            "{bad:?}"
        );
    }
    // Tags: `[A-Za-z0-9_-]`.
    for bad in ["", "a.b", "a=b", "a/b", "a:b", "a'b", "é"] {
        assert_eq!(config_class(&tag(bad)), ErrorClass::Malformed, "{bad:?}");
    }
    // What passes next to them.
    config_ok(&props("a", Some("1")));
    config_ok(&props("x_1", None));
    config_ok(&feature("Ab_0.-", "1"));
    config_ok(&tag("-_Az09"));
    // A name that is not UTF-8 (a tag "ab" with its `b` made 0xff).
    let mut p = config_payload(0, &tag("ab"));
    let at = p.iter().rposition(|b| *b == b'b').unwrap();
    p[at] = 0xff;
    let (n, err) = refused(&with(manifest_only().into_inner(), &raw(t::CONFIG, &p)));
    assert_eq!((n, err.class()), (2, ErrorClass::Malformed));
}

/// CFG-1: the names qubesd or the manifest own: identity and reference properties, the
/// backup's feature keys, qubesd's audit tags and the restore's markers.
#[test]
fn reserved_names_are_refused() {
    for name in ["name", "qid", "uuid", "klass", "label", "template", "netvm"] {
        assert_eq!(
            config_class(&props(name, Some("x"))),
            ErrorClass::Malformed,
            "{name}"
        );
    }
    for name in ["backup-content", "backup-path", "backup-size"] {
        assert_eq!(
            config_class(&feature(name, "1")),
            ErrorClass::Malformed,
            "{name}"
        );
    }
    for t in [
        "created-by-dom0",
        "created-by-",
        "created-by-sys-usb",
        "backup-restore-in-progress",
        "backup-restore-",
        "backup-restore-mgmt",
    ] {
        assert_eq!(config_class(&tag(t)), ErrorClass::Malformed, "{t}");
    }
    // Hidden among valid entries.
    let mut c = rich_config();
    c.tags.insert(1, "created-by-dom0".into());
    assert_eq!(config_class(&c), ErrorClass::Malformed);
    // Only the prefixes are reserved.
    config_ok(&tag("created-byx"));
    config_ok(&tag("my-created-by-x"));
    config_ok(&feature("backup-sizes", "1"));
    config_ok(&props("labels", Some("x")));
}

/// PROTO-2, CFG-1: names and values one byte over their bound are refused (the decoder
/// from the string's length: limit-exceeded); at the bound they pass.
#[test]
fn over_long_names_and_values_are_refused() {
    let long = |n: usize| "a".repeat(n);
    let over = |c: VmConfig| {
        let (_, dec) = try_config(&c);
        assert_eq!(dec, ErrorClass::LimitExceeded, "{c:?}");
    };
    let v = MAX_CONFIG_VALUE_LEN;
    // Property name 64, feature name 128, tag 128, option name 64; values LIM-53.
    config_ok(&props(&long(64), Some(&long(v))));
    over(props(&long(65), Some("1")));
    over(props("a", Some(&long(v + 1))));
    config_ok(&feature(&long(128), &long(v)));
    over(feature(&long(129), "1"));
    over(feature("a", &long(v + 1)));
    config_ok(&tag(&long(128)));
    over(tag(&long(129)));
    config_ok(&devices(device(
        "pci",
        "dom0",
        "x",
        &[(&long(64), &long(v))],
    )));
    over(devices(device("pci", "dom0", "x", &[(&long(65), "1")])));
    over(devices(device("pci", "dom0", "x", &[("a", &long(v + 1))])));
    // Device bus 32, backend a VM name (31), port 128.
    config_ok(&devices(device(&long(32), &long(31), &long(128), &[])));
    over(devices(device(&long(33), "dom0", "x", &[])));
    over(devices(device("pci", &long(32), "x", &[])));
    over(devices(device("pci", "dom0", &long(129), &[])));
    // A string longer than its record is cut short, not a limit.
    let mut p = config_payload(0, &tag("abc"));
    let n = p.len();
    assert_eq!(&p[n - 7..n - 2], b"\x00\x03abc");
    p[n - 7..n - 5].copy_from_slice(&100u16.to_be_bytes());
    let (_, err) = refused(&with(manifest_only().into_inner(), &raw(t::CONFIG, &p)));
    assert_eq!(err.class(), ErrorClass::Malformed);
}

/// CFG-1: property and feature values are printable ASCII; control bytes (BEL, newline,
/// NUL, DEL, C1) and non-ASCII are refused.
#[test]
fn values_with_control_bytes_are_refused() {
    for bad in [
        "\x07",
        "\n",
        "a\nb",
        "x\0",
        "\r",
        "\t",
        "\u{7f}",
        "\u{85}",
        "\u{1b}[2J",
        "é",
        "\u{202e}",
    ] {
        assert_eq!(
            config_class(&feature("gui", bad)),
            ErrorClass::Malformed,
            "{bad:?}"
        );
        assert_eq!(
            config_class(&props("memory", Some(bad))),
            ErrorClass::Malformed,
            "{bad:?}"
        );
    }
    // Spaces, quotes and `+` are text in property and feature values.
    config_ok(&feature("gui", "a b+c'\"\\"));
    config_ok(&props("kernelopts", Some("nopat swiotlb=2048 'x'")));
}

/// CFG-1: device assignments: bus `[a-z0-9]`, backend a VM name, port `[A-Za-z0-9_.-]`,
/// option names `[A-Za-z0-9_-]` other than `required`, option values printable without
/// space, quotes or backslash (they end up in `name='value'` of the Admin API).
#[test]
fn device_options_with_quotes_are_refused() {
    let opt = |k: &str, v: &str| devices(device("pci", "dom0", "00_1f.3", &[(k, v)]));
    for bad in [
        "True' x='1",
        "True'",
        "\"x\"",
        "a b",
        "a\\b",
        "a\nb",
        "a\0b",
        "\u{85}",
        "é",
    ] {
        assert_eq!(
            config_class(&opt("permissive", bad)),
            ErrorClass::Malformed,
            "{bad:?}"
        );
    }
    for bad in ["required", "", "a b", "a=b", "a.b", "a'b", "a+b", "a\0b"] {
        assert_eq!(
            config_class(&opt(bad, "1")),
            ErrorClass::Malformed,
            "{bad:?}"
        );
    }
    config_ok(&opt("no-strict-reset", "True"));
    config_ok(&opt("a_B-9", "x=y,z+:/@!"));
    config_ok(&opt("permissive", ""));
    let dev = |bus: &str, backend: &str, port: &str| devices(device(bus, backend, port, &[]));
    for bad in ["", "PCI", "p-ci", "p ci", "pci+", "p\0"] {
        assert_eq!(
            config_class(&dev(bad, "dom0", "x")),
            ErrorClass::Malformed,
            "{bad:?}"
        );
    }
    for bad in ["", "-bad", "none", "default", "a b", "a+b", "1vm", "a\nb"] {
        assert_eq!(
            config_class(&dev("pci", bad, "x")),
            ErrorClass::Malformed,
            "{bad:?}"
        );
    }
    for bad in ["", "a:b", "a+b", "a b", "a/b", "a'b", "a\0b"] {
        assert_eq!(
            config_class(&dev("pci", "dom0", bad)),
            ErrorClass::Malformed,
            "{bad:?}"
        );
    }
    // The required flag is 0 or 1.
    let mut p = config_payload(0, &dev("pci", "dom0", "x"));
    let n = p.len();
    assert_eq!(p[n - 3], 0);
    p[n - 3] = 2;
    let (_, err) = refused(&with(manifest_only().into_inner(), &raw(t::CONFIG, &p)));
    assert_eq!(err.class(), ErrorClass::Malformed);
}

/// CFG-1: no property, feature, tag, device or device option twice.
#[test]
fn duplicates_are_refused() {
    let twice = |f: &dyn Fn(&mut VmConfig)| {
        let mut c = rich_config();
        f(&mut c);
        config_class(&c)
    };
    assert_eq!(
        twice(&|c| c.properties.push(("memory".into(), Some("800".into())))),
        ErrorClass::Malformed
    );
    assert_eq!(
        twice(&|c| c.properties.push(("default_dispvm".into(), None))),
        ErrorClass::Malformed
    );
    assert_eq!(
        twice(&|c| c.features.push(("gui".into(), "1".into()))),
        ErrorClass::Malformed
    );
    assert_eq!(
        twice(&|c| c.tags.push("my_tag".into())),
        ErrorClass::Malformed
    );
    assert_eq!(
        twice(&|c| c
            .devices
            .push(device("usb", "sys-usb", "2-1", &[("x", "1")]))),
        ErrorClass::Malformed
    );
    assert_eq!(
        twice(&|c| c.devices[0]
            .options
            .push(("permissive".into(), "True".into()))),
        ErrorClass::Malformed
    );
    // The same name in different kinds, and the same port on another bus, are fine.
    let mut c = rich_config();
    c.features.push(("memory".into(), "1".into()));
    c.tags.push("memory".into());
    c.devices.push(device("block", "sys-usb", "2-1", &[]));
    config_ok(&c);
}

/// PROTO-2, LIM-52: an entry count above LIM-52 (device options: 64) is limit-exceeded,
/// read before any element: the records below hold no element at all (a count within the
/// limit over the same bytes is cut short instead: malformed).
#[test]
fn counts_above_the_limits_are_refused_before_their_elements() {
    let hello = manifest_only().into_inner();
    let max = MAX_CONFIG_ENTRIES as u16;
    // `before` zero counts, then `n`, then 8 zero bytes of padding.
    let config_count = |before: usize, n: u16| {
        let mut p = vec![0u8; 4 + 2 * before];
        p.extend_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 8]);
        raw(t::CONFIG, &p)
    };
    for before in 0..4 {
        for n in [max + 1, u16::MAX] {
            let (k, err) = refused(&with(hello.clone(), &config_count(before, n)));
            assert_eq!(
                (k, err.class()),
                (2, ErrorClass::LimitExceeded),
                "{before} {n}"
            );
        }
        let (_, err) = refused(&with(hello.clone(), &config_count(before, max)));
        assert_eq!(err.class(), ErrorClass::Malformed, "{before}");
    }
    // Device options: one device, then its option count.
    let options = |n: u16| {
        let mut p = config_payload(0, &devices(device("pci", "dom0", "x", &[])));
        let len = p.len();
        p[len - 2..].copy_from_slice(&n.to_be_bytes());
        p.extend_from_slice(&[0; 8]);
        raw(t::CONFIG, &p)
    };
    for n in [65, u16::MAX] {
        let (k, err) = refused(&with(hello.clone(), &options(n)));
        assert_eq!((k, err.class()), (2, ErrorClass::LimitExceeded), "{n}");
    }
    let (_, err) = refused(&with(hello.clone(), &options(64)));
    assert_eq!(err.class(), ErrorClass::Malformed);
    // The encoder refuses the same, writing nothing; exactly at the limits passes.
    let tags = |n: usize| VmConfig {
        tags: (0..n).map(|i| format!("t{i}")).collect(),
        ..VmConfig::default()
    };
    assert_eq!(
        config_class(&tags(MAX_CONFIG_ENTRIES + 1)),
        ErrorClass::LimitExceeded
    );
    config_ok(&tags(MAX_CONFIG_ENTRIES));
    let feats = VmConfig {
        features: (0..=MAX_CONFIG_ENTRIES)
            .map(|i| (format!("f{i}"), "1".into()))
            .collect(),
        ..VmConfig::default()
    };
    assert_eq!(config_class(&feats), ErrorClass::LimitExceeded);
    let opts: Vec<(String, String)> = (0..65).map(|i| (format!("o{i}"), "1".into())).collect();
    let mut d = device("pci", "dom0", "x", &[]);
    d.options = opts[..65].to_vec();
    assert_eq!(config_class(&devices(d.clone())), ErrorClass::LimitExceeded);
    d.options.pop();
    config_ok(&devices(d));

    // vmend: firewall rules above LIM-54, menu items above LIM-58, notes above LIM-57.
    let before = vm0_files().into_inner();
    let end_raw = |p: &[u8]| {
        let mut p = p.to_vec();
        p.extend_from_slice(&[0; 8]);
        raw(t::VM_END, &p)
    };
    let limit = |p: &[u8]| {
        let (k, err) = refused(&with(before.clone(), &end_raw(p)));
        assert_eq!(
            (k, err.class()),
            (BEFORE_VM0_END, ErrorClass::LimitExceeded),
            "{p:?}"
        );
    };
    let cut = |p: &[u8]| {
        let (k, err) = refused(&with(before.clone(), &end_raw(p)));
        assert_eq!(
            (k, err.class()),
            (BEFORE_VM0_END, ErrorClass::Malformed),
            "{p:?}"
        );
    };
    let rules = |n: usize| {
        let mut p = vec![0, 0, 0, 0, 1];
        p.extend_from_slice(&(n as u16).to_be_bytes());
        p
    };
    limit(&rules(MAX_FIREWALL_RULES + 1));
    limit(&rules(u16::MAX as usize));
    cut(&rules(MAX_FIREWALL_RULES));
    let items = |n: usize| {
        let mut p = vec![0, 0, 0, 0, 0, 0, 1];
        p.extend_from_slice(&(n as u16).to_be_bytes());
        p
    };
    limit(&items(MAX_MENU_ITEMS + 1));
    limit(&items(u16::MAX as usize));
    cut(&items(MAX_MENU_ITEMS));
    let text = |n: u32| {
        let mut p = vec![0, 0, 0, 0, 0, 1];
        p.extend_from_slice(&n.to_be_bytes());
        p
    };
    limit(&text(MAX_NOTES_LEN as u32 + 1));
    limit(&text(u32::MAX));
    cut(&text(MAX_NOTES_LEN as u32));
    // The encoder, and the limits themselves.
    let many = |n: usize| firewall(&vec!["action=drop"; n]);
    assert_eq!(
        end_class(&many(MAX_FIREWALL_RULES + 1)),
        ErrorClass::LimitExceeded
    );
    end_ok(&many(MAX_FIREWALL_RULES));
    let names: Vec<String> = (0..=MAX_MENU_ITEMS)
        .map(|i| format!("a{i}.desktop"))
        .collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(end_class(&menu(&refs)), ErrorClass::LimitExceeded);
    end_ok(&menu(&refs[..MAX_MENU_ITEMS]));
    assert_eq!(
        end_class(&notes(&"x".repeat(MAX_NOTES_LEN + 1))),
        ErrorClass::LimitExceeded
    );
    end_ok(&notes(&"\n".repeat(MAX_NOTES_LEN)));
}

/// CFG-2, FW-2: firewall lines are canonical Admin API rule lines: a line may not carry a
/// second rule, through a control character or as extra options.
#[test]
fn firewall_lines_that_smuggle_a_rule_are_refused() {
    for line in [
        "action=accept\naction=drop",
        "action=accept dsthost=a.b action=drop",
        "action=accept\0action=drop",
        "action=accept\raction=drop",
        "action=accept\taction=drop",
        "action=accept dsthost=a.b\naction=drop",
        "action=accept proto=tcp dstports=80-80 action=drop",
        "action=accept specialtarget=dns+action=drop",
        "action=accept dsthost=a.b+action=drop",
        "action=accept  dsthost=a.b",
        "action=accept dsthost=a.b ",
        " action=accept",
        "action=drop comment=x\u{7f}",
        "action=drop comment=ünï",
        "action=accept dsthost=A.B",
        "proto=tcp action=accept",
        "action=accept dst4=1.2.3.4",
        "action=accept dst4=0.0.0.0/0",
        "action=accept,action=drop",
        "",
    ] {
        assert_eq!(
            end_class(&firewall(&[line])),
            ErrorClass::Malformed,
            "{line:?}"
        );
        // Also behind a valid rule.
        assert_eq!(
            end_class(&firewall(&["action=accept specialtarget=dns", line])),
            ErrorClass::Malformed,
            "{line:?}"
        );
    }
    // A comment is one field, last: what looks like an option there is text.
    end_ok(&firewall(&["action=drop comment=x action=accept"]));
    // LIM-56: a comment of 512 bytes passes, 513 not; LIM-55: a line over 1024 bytes is
    // refused (by the decoder from its length).
    let line = |n: usize| format!("action=drop comment={}", "x".repeat(n));
    end_ok(&firewall(&[&line(512)]));
    assert_eq!(end_class(&firewall(&[&line(513)])), ErrorClass::Malformed);
    let (_, dec) = try_end(&firewall(&[&line(MAX_FIREWALL_RULE_LEN + 1 - 20)]));
    assert_eq!(dec, ErrorClass::LimitExceeded);
    // An unreadable firewall's reason is text without control characters.
    for why in ["a\nb", "\u{1b}[2J", "a\0"] {
        let v = VmEnd {
            firewall: Firewall::Unreadable(why.into()),
            ..VmEnd::default()
        };
        assert_eq!(end_class(&v), ErrorClass::Malformed, "{why:?}");
    }
}

/// CFG-2: notes are UTF-8 whose only control characters are tab and newline; menu items
/// are desktop file names `[A-Za-z0-9_.+@-]`.
#[test]
fn notes_and_menu_items() {
    for bad in [
        "\x07",
        "bell\u{7}",
        "\u{1b}[2J",
        "a\r\nb",
        "\0",
        "\u{85}",
        "\u{7f}",
    ] {
        assert_eq!(end_class(&notes(bad)), ErrorClass::Malformed, "{bad:?}");
    }
    end_ok(&notes("line one\n\tline two — ünïcode"));
    // Notes that are not UTF-8.
    let mut p = end_payload(0, &notes("ab"));
    let at = p.iter().position(|b| *b == b'b').unwrap();
    p[at] = 0xff;
    let (_, err) = refused(&with(vm0_files().into_inner(), &raw(t::VM_END, &p)));
    assert_eq!(err.class(), ErrorClass::Malformed);
    for bad in [
        "",
        "a b.desktop",
        "x\0y",
        "a/b.desktop",
        "../x.desktop",
        "a;b",
        "a\nb",
        "a'b",
        "é.desktop",
    ] {
        assert_eq!(end_class(&menu(&[bad])), ErrorClass::Malformed, "{bad:?}");
        assert_eq!(
            end_class(&menu(&["firefox.desktop", bad])),
            ErrorClass::Malformed,
            "{bad:?}"
        );
    }
    end_ok(&menu(&[&"a".repeat(255)]));
    let (_, dec) = try_end(&menu(&[&"a".repeat(256)]));
    assert_eq!(dec, ErrorClass::LimitExceeded);
    // Tags of the three parts: 0/1/2, 0/1, 0/1.
    let p = end_payload(0, &VmEnd::default());
    for (at, bad) in [(4, 3u8), (4, 0xff), (5, 2), (6, 2)] {
        let mut p = p.clone();
        p[at] = bad;
        let (_, err) = refused(&with(vm0_files().into_inner(), &raw(t::VM_END, &p)));
        assert_eq!(err.class(), ErrorClass::Malformed, "{at} {bad}");
    }
    // Trailing bytes.
    let p = with(end_payload(0, &rich_end()), &[0]);
    let (_, err) = refused(&with(vm0_files().into_inner(), &raw(t::VM_END, &p)));
    assert_eq!(err.class(), ErrorClass::Malformed);
}

/// PROTO-14: a property value's option tag is 0 or 1; a config is consumed exactly.
#[test]
fn config_grammar_tags_and_trailing_bytes() {
    let hello = manifest_only().into_inner();
    let mut p = config_payload(0, &props("memory", None));
    let at = p.len() - 7;
    assert_eq!(p[at], 0);
    for bad in [2u8, 0xff] {
        p[at] = bad;
        let (_, err) = refused(&with(hello.clone(), &raw(t::CONFIG, &p)));
        assert_eq!(err.class(), ErrorClass::Malformed);
    }
    let p = with(config_payload(0, &rich_config()), &[0]);
    let (n, err) = refused(&with(hello, &raw(t::CONFIG, &p)));
    assert_eq!((n, err.class()), (2, ErrorClass::Malformed));
}

/// PROTO-14: exactly one config per manifest VM, in manifest order, right after the
/// manifest: a config for the wrong VM index, twice, missing, or out of place is
/// malformed.
#[test]
fn config_order_rules() {
    let cfg = |vm: u32| raw(t::CONFIG, &config_payload(vm, &VmConfig::default()));
    let hello = manifest_only().into_inner();
    // The wrong index first; out of range.
    for vm in [1, 2, 3, u32::MAX] {
        let (n, err) = refused(&with(hello.clone(), &cfg(vm)));
        assert_eq!((n, err.class()), (2, ErrorClass::Malformed), "{vm}");
        let mut e = manifest_only();
        assert_eq!(
            e.config(vm, &VmConfig::default()).unwrap_err().class(),
            ErrorClass::Malformed
        );
        assert_eq!(e.get_mut().len(), hello.len());
    }
    // VM 0's config twice.
    let mut e = manifest_only();
    e.config(0, &VmConfig::default()).unwrap();
    assert_eq!(
        e.config(0, &VmConfig::default()).unwrap_err().class(),
        ErrorClass::Malformed
    );
    let (n, err) = refused(&with(e.into_inner(), &cfg(0)));
    assert_eq!((n, err.class()), (3, ErrorClass::Malformed));
    // Out of order: 0, 2.
    let s = with(with(hello.clone(), &cfg(0)), &cfg(2));
    assert_eq!(refused(&s).0, 3);
    // A config after the last one: every VM's again, and the next index.
    for vm in [0, 2, 3] {
        let mut e = prefix();
        assert_eq!(
            e.config(vm, &VmConfig::default()).unwrap_err().class(),
            ErrorClass::Malformed
        );
        let (n, err) = refused(&with(e.into_inner(), &cfg(vm)));
        assert_eq!((n, err.class()), (5, ErrorClass::Malformed), "{vm}");
    }
    // A config after files.
    let (n, err) = refused(&with(vm0_files().into_inner(), &cfg(0)));
    assert_eq!((n, err.class()), (BEFORE_VM0_END, ErrorClass::Malformed));
    // Missing: a begin, a vmend or a summary while configs are due.
    for configs in 0..3 {
        let mut s = hello.clone();
        for vm in 0..configs {
            s = with(s, &cfg(vm));
        }
        let n0 = 2 + configs as usize;
        let mut begin = 0u32.to_be_bytes().to_vec();
        begin.extend_from_slice(&[0, 4, b'u', b's', b'e', b'r', 1]);
        begin.extend_from_slice(&[0; 20]);
        for next in [
            raw(t::BEGIN, &begin),
            raw(t::VM_END, &end_payload(2, &VmEnd::default())),
            raw(t::END, &[0; 16]),
            raw(t::DATA, &[0; 9]),
        ] {
            let (n, err) = refused(&with(s.clone(), &next));
            assert_eq!((n, err.class()), (n0, ErrorClass::Malformed), "{configs}");
        }
        // A summary with correct totals and transcript is refused for its place alone.
        let mut sum = 3u32.to_be_bytes().to_vec();
        sum.extend_from_slice(&[0; 24]);
        sum.extend_from_slice(&sha2::Sha256::digest(&s));
        let (n, err) = refused(&with(s.clone(), &raw(t::SUMMARY, &sum)));
        assert_eq!((n, err.class()), (n0, ErrorClass::Malformed), "{configs}");
    }
    // A config before the manifest.
    let mut e = Encoder::new(Vec::new());
    e.hello().unwrap();
    assert!(e.config(0, &VmConfig::default()).is_err());
    let (n, err) = refused(&with(e.into_inner(), &cfg(0)));
    assert_eq!((n, err.class()), (1, ErrorClass::Malformed));
    // A manifest of no VMs takes no config: the summary follows at once.
    let mut e = Encoder::new(Vec::new());
    e.hello().unwrap();
    e.manifest(&Manifest::default()).unwrap();
    assert!(e.config(0, &VmConfig::default()).is_err());
    let s = e.get_mut().clone();
    let (n, err) = refused(&with(s, &cfg(0)));
    assert_eq!((n, err.class()), (2, ErrorClass::Malformed));
    e.summary().unwrap();
    assert_eq!(accepted(&e.into_inner()), (Vec::new(), Vec::new()));
}

/// PROTO-4, PROTO-15: a VM's expected files are checked at its vmend: a vmend before a
/// VM's expected file is missing data, however rich the vmend.
#[test]
fn vmend_before_an_expected_file_is_missing_data() {
    for v in [VmEnd::default(), rich_end()] {
        // No file at all.
        let mut e = prefix();
        assert_eq!(
            e.vm_end(0, &v).unwrap_err().class(),
            ErrorClass::MissingData
        );
        let (n, err) = refused(&with(e.into_inner(), &raw(t::VM_END, &end_payload(0, &v))));
        assert_eq!((n, err.class()), (5, ErrorClass::MissingData));
        // Other files, not the expected one.
        let mut e = prefix();
        e.begin(&reg(0, "root.img", 10, 0)).unwrap();
        e.end().unwrap();
        let len = e.get_mut().len();
        assert_eq!(
            e.vm_end(0, &v).unwrap_err().class(),
            ErrorClass::MissingData
        );
        assert_eq!(e.get_mut().len(), len);
        let (n, err) = refused(&with(e.into_inner(), &raw(t::VM_END, &end_payload(0, &v))));
        assert_eq!((n, err.class()), (7, ErrorClass::MissingData));
        // With it, the same vmend passes.
        end_ok(&v);
    }
    // A vmend both bad and early is refused for its content; a second vmend for its
    // order, whatever it holds.
    let smuggle = firewall(&["action=accept dsthost=a.b action=drop"]);
    let mut e = prefix();
    assert_eq!(
        e.vm_end(0, &smuggle).unwrap_err().class(),
        ErrorClass::Malformed
    );
    let mut e = vm0_files();
    e.vm_end(0, &VmEnd::default()).unwrap();
    assert_eq!(
        e.vm_end(0, &smuggle).unwrap_err().class(),
        ErrorClass::OrderFailure
    );
}

/// PROTO-14, PROTO-15: dom0 (layout dom0 home) carries an empty config and an empty
/// vmend; anything else is malformed.
#[test]
fn dom0_carries_no_settings() {
    let hello = manifest_only().into_inner();
    let two = with(
        with(
            hello,
            &raw(t::CONFIG, &config_payload(0, &VmConfig::default())),
        ),
        &raw(t::CONFIG, &config_payload(1, &VmConfig::default())),
    );
    for c in [
        tag("x"),
        feature("gui", "1"),
        props("memory", Some("1")),
        props("memory", None),
        devices(device("pci", "dom0", "x", &[])),
    ] {
        let mut e = manifest_only();
        e.config(0, &VmConfig::default()).unwrap();
        e.config(1, &VmConfig::default()).unwrap();
        assert_eq!(e.config(2, &c).unwrap_err().class(), ErrorClass::Malformed);
        assert_eq!(e.get_mut().len(), two.len());
        let (n, err) = refused(&with(two.clone(), &raw(t::CONFIG, &config_payload(2, &c))));
        assert_eq!((n, err.class()), (4, ErrorClass::Malformed), "{c:?}");
    }
    let ready = prefix().into_inner();
    for v in [
        firewall(&[]),
        firewall(&["action=drop"]),
        VmEnd {
            firewall: Firewall::Unreadable("x".into()),
            ..VmEnd::default()
        },
        notes(""),
        menu(&[]),
    ] {
        let mut e = prefix();
        assert_eq!(e.vm_end(2, &v).unwrap_err().class(), ErrorClass::Malformed);
        assert_eq!(e.get_mut().len(), ready.len());
        let (n, err) = refused(&with(ready.clone(), &raw(t::VM_END, &end_payload(2, &v))));
        assert_eq!((n, err.class()), (5, ErrorClass::Malformed), "{v:?}");
    }
    // The template directory may carry all of it.
    let mut e = prefix();
    e.vm_end(1, &rich_end()).unwrap();
    e.vm_end(2, &VmEnd::default()).unwrap();
}

/// A valid stream with rich config and vmend records (VMs 0 and 1), and where those
/// records lie.
fn rich_stream() -> (Vec<u8>, Vec<Range<usize>>) {
    let mut e = manifest_only();
    e.config(0, &rich_config()).unwrap();
    e.config(
        1,
        &VmConfig {
            tags: vec!["t".into()],
            ..VmConfig::default()
        },
    )
    .unwrap();
    e.config(2, &VmConfig::default()).unwrap();
    e.begin(&reg(0, "private.img", 10, 3)).unwrap();
    e.data(2, b"abc").unwrap();
    e.end().unwrap();
    e.vm_end(0, &rich_end()).unwrap();
    e.vm_end(
        1,
        &VmEnd {
            firewall: Firewall::Unreadable("why".into()),
            notes: Some("n".into()),
            menu_items: Some(vec!["a.desktop".into()]),
        },
    )
    .unwrap();
    e.vm_end(2, &VmEnd::default()).unwrap();
    e.summary().unwrap();
    let s = e.into_inner();
    // Walk the framing.
    let mut spans = Vec::new();
    let mut at = 0;
    while at < s.len() {
        let len = u32::from_be_bytes(s[at + 1..at + 5].try_into().unwrap()) as usize;
        if matches!(s[at], t::CONFIG | t::VM_END) {
            spans.push(at..at + 5 + len);
        }
        at += 5 + len;
    }
    assert_eq!(at, s.len());
    assert_eq!(spans.len(), 6);
    (s, spans)
}

fn decodes(bytes: &[u8]) -> bool {
    let mut d = Decoder::new(bytes);
    loop {
        match d.read_record() {
            Ok(Some(Record::Error { .. })) | Err(_) => return false,
            Ok(Some(_)) => {}
            Ok(None) => return true,
        }
    }
}

/// PROTO-8, PROTO-14, PROTO-15: every other value of every byte of the config and vmend
/// records (headers included) of a valid stream is refused.
#[test]
fn every_byte_value_in_config_and_vmend_records_is_refused() {
    let (good, spans) = rich_stream();
    assert!(decodes(&good));
    let mut bad = good.clone();
    let mut tried = 0;
    for i in spans.into_iter().flatten() {
        for v in 0..=255u8 {
            if v == good[i] {
                continue;
            }
            bad[i] = v;
            assert!(!decodes(&bad), "byte {i} = {v:#04x} accepted");
            tried += 1;
        }
        bad[i] = good[i];
    }
    assert!(tried > 255 * 300, "{tried}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// PROTO-2: several random edits inside config and vmend records: never accepted,
    /// never a panic.
    #[test]
    fn edits_of_config_and_vmend_records_are_refused(
        edits in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..6),
    ) {
        let (good, spans) = rich_stream();
        let at: Vec<usize> = spans.into_iter().flatten().collect();
        let mut bad = good.clone();
        for (i, x) in edits {
            bad[at[i.index(at.len())]] ^= x;
        }
        prop_assume!(bad != good);
        prop_assert!(!decodes(&bad));
    }
}
