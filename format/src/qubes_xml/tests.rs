use proptest::prelude::*;

use super::*;
use crate::error::ErrorClass;

const R3: &[u8] = include_bytes!("testdata/r3-qubes.xml");
const R4: &[u8] = include_bytes!("testdata/r4-qubes.xml");

fn vm(qid: u32, name: &str, class: &str, label: &str, template: Option<&str>, netvm: NetVm) -> Vm {
    Vm {
        qid: Some(qid),
        name: name.to_owned(),
        class: class.to_owned(),
        label: Some(label.to_owned()),
        template: template.map(str::to_owned),
        netvm,
        backup: None,
        volumes_saved: None,
        volume_sizes: Vec::new(),
        virt_mode: None,
        provides_network: false,
        config: VmConfig::default(),
    }
}

/// The VMs without their CFG-1 settings (tested on their own below).
fn bare(vms: &[Vm]) -> Vec<Vm> {
    vms.iter()
        .map(|v| Vm {
            config: VmConfig::default(),
            ..v.clone()
        })
        .collect()
}

fn backup(path: &str, size: u64) -> Option<BackupInfo> {
    Some(BackupInfo {
        path: path.to_owned(),
        size,
    })
}

fn class_of(r: Result<QubesXml>) -> ErrorClass {
    match r {
        Ok(x) => panic!("accepted: {x:?}"),
        Err(e) => e.class(),
    }
}

fn named(s: &str) -> NetVm {
    NetVm::Named(s.to_owned())
}

#[test]
fn r3_fixture_every_field() {
    let x = parse(R3).unwrap();
    assert_eq!(x.flavor, Flavor::Core2);
    assert!(x.labels.is_empty());
    let pv = || Some("pv".to_owned());
    let expected = vec![
        Vm {
            backup: backup("dom0-home/alice", 81920),
            ..vm(0, "dom0", "AdminVM", "black", None, NetVm::Default)
        },
        Vm {
            virt_mode: pv(),
            ..vm(
                1,
                "fedora-23",
                "TemplateVM",
                "black",
                None,
                named("sys-firewall"),
            )
        },
        Vm {
            virt_mode: pv(),
            provides_network: true,
            ..vm(2, "sys-net", "AppVM", "red", Some("fedora-23"), NetVm::None)
        },
        Vm {
            virt_mode: pv(),
            provides_network: true,
            ..vm(
                3,
                "sys-firewall",
                "AppVM",
                "green",
                Some("fedora-23"),
                named("sys-net"),
            )
        },
        Vm {
            virt_mode: pv(),
            backup: backup("appvms/work", 2101248),
            ..vm(
                4,
                "work",
                "AppVM",
                "blue",
                Some("fedora-23"),
                NetVm::Default,
            )
        },
        Vm {
            virt_mode: pv(),
            backup: backup("vm5", 4096),
            ..vm(
                5,
                "banking",
                "AppVM",
                "green",
                Some("fedora-23"),
                NetVm::None,
            )
        },
        Vm {
            virt_mode: Some("hvm".to_owned()),
            backup: backup("vm6", 10737418240),
            ..vm(
                6,
                "win7",
                "StandaloneVM",
                "orange",
                None,
                named("sys-firewall"),
            )
        },
        Vm {
            virt_mode: Some("hvm".to_owned()),
            ..vm(7, "win-tpl", "TemplateVM", "purple", None, NetVm::Default)
        },
        Vm {
            virt_mode: pv(),
            ..vm(
                9,
                "untrusted.web_1",
                "AppVM",
                "red",
                Some("fedora-23"),
                NetVm::Default,
            )
        },
    ];
    assert_eq!(bare(&x.vms), expected);
    let backed: Vec<&str> = x.backed_up().map(|(v, _)| v.name.as_str()).collect();
    assert_eq!(backed, ["dom0", "work", "banking", "win7"]);
}

#[test]
fn r2_without_dom0_element_gets_a_synthetic_dom0() {
    let text = std::str::from_utf8(R3).unwrap();
    let start = text.find("  <QubesAdminVm").unwrap();
    let end = start + text[start..].find('\n').unwrap() + 1;
    let r2 = format!("{}{}", &text[..start], &text[end..]);
    let x = parse(r2.as_bytes()).unwrap();
    assert_eq!(
        x.vms[0],
        vm(0, "dom0", "AdminVM", "black", None, NetVm::Default)
    );
    assert_eq!(x.vms.len(), 9);
    assert_eq!(x.vms[1].name, "fedora-23");
}

#[test]
fn r4_fixture_every_field() {
    let x = parse(R4).unwrap();
    assert_eq!(x.flavor, Flavor::Core3);
    let colours = [
        "red", "orange", "yellow", "green", "gray", "blue", "purple", "black",
    ];
    let labels: Vec<(String, String)> = colours
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("label-{}", i + 1), (*c).to_owned()))
        .collect();
    assert_eq!(x.labels, labels);
    let vols = |v: &[&str]| Some(v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
    let expected = vec![
        Vm {
            backup: backup("dom0-home/alice", 1048576),
            ..vm(0, "dom0", "AdminVM", "black", None, NetVm::Default)
        },
        Vm {
            virt_mode: Some("pvh".to_owned()),
            volumes_saved: vols(&["root", "private"]),
            volume_sizes: vec![("root".into(), 21474836480), ("private".into(), 2147483648)],
            ..vm(1, "fedora-38", "TemplateVM", "black", None, NetVm::None)
        },
        Vm {
            virt_mode: Some("hvm".to_owned()),
            provides_network: true,
            ..vm(2, "sys-net", "AppVM", "red", Some("fedora-38"), NetVm::None)
        },
        Vm {
            provides_network: true,
            ..vm(
                3,
                "sys-firewall",
                "AppVM",
                "green",
                Some("fedora-38"),
                named("sys-net"),
            )
        },
        Vm {
            backup: backup("vm7/", 2101248),
            volumes_saved: vols(&["private"]),
            volume_sizes: Vec::new(),
            ..vm(
                7,
                "work",
                "AppVM",
                "blue",
                Some("fedora-38"),
                NetVm::Default,
            )
        },
        Vm {
            backup: backup("vm9/", 21474836480),
            volumes_saved: vols(&["root", "private"]),
            volume_sizes: Vec::new(),
            ..vm(
                9,
                "standalone-1",
                "StandaloneVM",
                "gray",
                None,
                named("sys-firewall"),
            )
        },
        // backup-content true without backup-path: not in the backup (as upstream).
        vm(12, "disp12", "DispVM", "red", Some("work"), NetVm::Default),
    ];
    assert_eq!(bare(&x.vms), expected);
}

#[test]
fn r4_backup_content_truthiness() {
    for (text, expect) in [
        ("True", true),
        ("1", true),
        ("yes", true),
        ("", false),
        ("0", false),
        ("False", false),
        ("false", false),
        ("NO", false),
        ("TRUE", true),
    ] {
        let xml = r4_one_domain(&format!(
            "<features><feature name=\"backup-content\">{text}</feature>\
             <feature name=\"backup-path\">vm5/</feature></features>"
        ));
        let x = parse(xml.as_bytes()).unwrap();
        assert_eq!(x.vms[0].backup.is_some(), expect, "{text:?}");
        if expect {
            assert_eq!(x.vms[0].backup, backup("vm5/", 0));
        }
    }
}

/// XML-3, DEV-9: a backup-content text outside the listed spellings is malformed.
#[test]
fn r4_backup_content_outside_the_spellings_is_malformed() {
    for text in ["maybe", "2", "on", " True"] {
        let xml = r4_one_domain(&format!(
            "<features><feature name=\"backup-content\">{text}</feature>\
             <feature name=\"backup-path\">vm5/</feature></features>"
        ));
        assert_eq!(
            class_of(parse(xml.as_bytes())),
            ErrorClass::Malformed,
            "{text:?}"
        );
    }
}

fn r4_one_domain(inner: &str) -> String {
    format!(
        "<qubes><labels><label id=\"label-1\">red</label></labels><properties/><domains>\
         <domain id=\"domain-5\" class=\"AppVM\"><properties><property name=\"name\">vm</property>\
         <property name=\"label\">label-1</property></properties>{inner}</domain></domains></qubes>"
    )
}

#[test]
fn predefined_entities_and_char_refs_resolve() {
    let xml = r4_one_domain(
        "<properties><property name=\"virt_mode\">a&lt;&#x41;&#66;&apos;&quot;&gt;&amp;</property></properties>",
    );
    // Two <properties> in one domain are refused.
    assert_eq!(class_of(parse(xml.as_bytes())), ErrorClass::Malformed);
    let xml =
        "<qubes><labels><label id=\"l&amp;1\">r&#x65;d</label></labels><properties/><domains>\
         <domain id=\"domain-5\" class=\"AppVM\"><properties><property name=\"name\">vm</property>\
         <property name=\"virt_mode\">a&lt;&#x41;&#66;&apos;&quot;&gt;&amp;</property>\
         <property name=\"label\">l&amp;1</property></properties></domain></domains></qubes>";
    let x = parse(xml.as_bytes()).unwrap();
    assert_eq!(x.vms[0].virt_mode.as_deref(), Some("a<AB'\">&"));
    assert_eq!(x.vms[0].label.as_deref(), Some("red"));
    assert_eq!(x.labels, [("l&1".to_owned(), "red".to_owned())]);
}

#[test]
fn hostile_dtd_and_entities_refused() {
    let laughs = "<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n<!ENTITY lol \"lol\">\n\
        <!ENTITY lol2 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">\n]>\n\
        <qubes><labels/><properties/><domains>&lol2;</domains></qubes>";
    assert_eq!(class_of(parse(laughs.as_bytes())), ErrorClass::Unsupported);
    let ext = "<!DOCTYPE qubes SYSTEM \"file:///etc/passwd\"><qubes/>";
    assert_eq!(class_of(parse(ext.as_bytes())), ErrorClass::Unsupported);
    // An undeclared entity is not resolved.
    let xml = r4_one_domain("<features><feature name=\"x\">&lol;</feature></features>");
    assert_eq!(class_of(parse(xml.as_bytes())), ErrorClass::Malformed);
    let xml = "<qubes><labels><label id=\"&xxe;\">red</label></labels><properties/></qubes>";
    assert_eq!(class_of(parse(xml.as_bytes())), ErrorClass::Malformed);
    // HTML entities are not XML entities.
    let xml = r4_one_domain("<features><feature name=\"x\">&nbsp;</feature></features>");
    assert_eq!(class_of(parse(xml.as_bytes())), ErrorClass::Malformed);
    // Character references to characters XML forbids.
    for bad in ["&#0;", "&#1;", "&#x1b;", "&#xFFFF;", "&#x110000;"] {
        let xml = r4_one_domain(&format!(
            "<features><feature name=\"x\">{bad}</feature></features>"
        ));
        assert_eq!(
            class_of(parse(xml.as_bytes())),
            ErrorClass::Malformed,
            "{bad}"
        );
    }
}

#[test]
fn hostile_structure_refused() {
    // Deep nesting.
    let depth = crate::limits::MAX_XML_DEPTH + 1;
    let deep = format!("{}{}", "<a>".repeat(depth), "</a>".repeat(depth));
    assert_eq!(class_of(parse(deep.as_bytes())), ErrorClass::LimitExceeded);
    let very_deep = "<a>".repeat(1 << 20);
    assert_eq!(
        class_of(parse(very_deep.as_bytes())),
        ErrorClass::LimitExceeded
    );
    // Huge attribute and text values.
    let big = "x".repeat(crate::limits::MAX_XML_VALUE_LEN + 1);
    let xml = format!("<qubes a=\"{big}\"/>");
    assert_eq!(class_of(parse(xml.as_bytes())), ErrorClass::LimitExceeded);
    let xml = r4_one_domain(&format!(
        "<features><feature name=\"x\">{big}</feature></features>"
    ));
    assert_eq!(class_of(parse(xml.as_bytes())), ErrorClass::LimitExceeded);
    // Too many attributes / elements / too long input.
    let attrs: String = (0..300).map(|i| format!(" a{i}=\"\"")).collect();
    let xml = format!("<qubes{attrs}/>");
    assert_eq!(class_of(parse(xml.as_bytes())), ErrorClass::LimitExceeded);
    let many = format!("<q>{}</q>", "<a/>".repeat(crate::limits::MAX_XML_ELEMENTS));
    assert_eq!(class_of(parse(many.as_bytes())), ErrorClass::LimitExceeded);
    let long = vec![b' '; crate::limits::MAX_QUBES_XML_LEN as usize + 1];
    assert_eq!(class_of(parse(&long)), ErrorClass::LimitExceeded);
    // Invalid UTF-8, raw control characters, other encodings.
    let mut bad = R4.to_vec();
    let at = bad.windows(4).position(|w| w == b"work").unwrap();
    bad[at] = 0xff;
    assert_eq!(class_of(parse(&bad)), ErrorClass::Malformed);
    let mut bad = R4.to_vec();
    bad[at] = 0x01;
    assert_eq!(class_of(parse(&bad)), ErrorClass::Malformed);
    let latin1 = "<?xml version='1.0' encoding='ISO-8859-1'?><qubes/>";
    assert_eq!(class_of(parse(latin1.as_bytes())), ErrorClass::Unsupported);
    // Not well-formed.
    for xml in [
        "",
        "   ",
        "<qubes>",
        "<qubes></qubes><qubes></qubes>",
        "<qubes></other>",
        "</qubes>",
        "text<qubes/>",
        "<qubes a=\"1\" a=\"2\"/>",
        "<qubes a=1/>",
        "<qubes>&amp</qubes>",
        "<foo/>",
    ] {
        // XML-4: not well-formed (a document cut short included) is malformed.
        let c = class_of(parse(xml.as_bytes()));
        assert_eq!(c, ErrorClass::Malformed, "{xml:?}");
    }
}

fn replace_once(src: &[u8], from: &str, to: &str) -> Vec<u8> {
    let s = std::str::from_utf8(src).unwrap();
    assert!(s.contains(from), "{from}");
    s.replacen(from, to, 1).into_bytes()
}

#[test]
fn hostile_semantics_refused() {
    let m = ErrorClass::Malformed;
    let cases: &[(&[u8], &str, &str)] = &[
        // Duplicate VM name (a shared qid is a note: shared_qids_* below).
        (R4, "<property name=\"name\">work</property>", "<property name=\"name\">sys-net</property>"),
        (R3, "name=\"banking\"", "name=\"work\""),
        // Bad backup size.
        (R4, ">2101248<", ">12abc<"),
        (R4, ">2101248<", ">-1<"),
        (R4, ">2101248<", ">99999999999999999999<"),
        (R3, "backup_size=\"4096\"", "backup_size=\"0x10\""),
        // Bad names.
        (R4, ">work</property>", ">../../etc</property>"),
        (R4, ">work</property>", ">none</property>"),
        (R4, ">work</property>", ">dom0</property>"),
        (R4, ">work</property>", ">0work</property>"),
        (R4, ">work</property>", ">a-name-that-is-32-characters-xxx</property>"),
        (R4, "<property name=\"netvm\">sys-net</property>", "<property name=\"netvm\">sys net</property>"),
        (R3, "name=\"banking\"", "name=\"bank/ing\""),
        // Unknown label, missing label.
        (R4, ">label-6<", ">label-99<"),
        (R4, "<property name=\"label\">green</property>", ""),
        // Unresolvable qids in R3.
        (R3, "netvm_qid=\"2\" qid=\"3\"", "netvm_qid=\"42\" qid=\"3\""),
        (R3, "qid=\"4\" services=\"{'ntpd': False}\" template_qid=\"1\"", "qid=\"4\" template_qid=\"77\""),
        // dom0 rules.
        (R3, "name=\"dom0\"", "name=\"admin\""),
        (R3, "<QubesAdminVm", "<QubesAppVm template_qid=\"1\""),
        (R4, "<domain class=\"AppVM\" id=\"domain-3\">", "<domain class=\"AdminVM\" id=\"domain-3\">"),
        (R4, "<property name=\"qid\">12</property>", "<property name=\"qid\">0</property>"),
        // Backed up with an empty path.
        (R4, "<feature name=\"backup-path\">vm7/</feature>", "<feature name=\"backup-path\"/>"),
        (R3, "backup_path=\"vm5\"", "backup_path=\"\""),
        // Duplicates inside a domain, bad volume names, bad class.
        (R4, "<property name=\"template\">work</property>", "<property name=\"template\">work</property><property name=\"template\">work</property>"),
        (R4, "<volume name=\"private\" pool=\"lvm\" save_on_stop=\"True\" snap_on_start=\"False\"/>", "<volume name=\"../x\" save_on_stop=\"True\"/>"),
        (R4, "<volume name=\"volatile\" pool=\"lvm\" save_on_stop=\"False\"/>", "<volume name=\"private\"/>"),
        (R4, "class=\"DispVM\"", "class=\"Disp VM\""),
        // XML-2: only the five core3 classes.
        (R4, "class=\"DispVM\"", "class=\"FooVM\""),
        // XML-3, DEV-9: strict truthiness of backup-content and save_on_stop.
        (R4, "save_on_stop=\"False\"", "save_on_stop=\"Perhaps\""),
        (R3, "backup_content=\"True\"", "backup_content=\"Yes please\""),
        // Bad qid.
        (R4, "id=\"domain-9\"", "id=\"domain-x\""),
        (R3, "qid=\"9\"", "qid=\"-9\""),
    ];
    for (src, from, to) in cases {
        let bad = replace_once(src, from, to);
        assert_eq!(class_of(parse(&bad)), m, "{from} -> {to}");
    }
}

#[test]
fn too_many_vms() {
    let n = crate::limits::MAX_VMS + 1;
    let mut xml = String::from("<QubesVmCollection>");
    for i in 1..=n {
        xml.push_str(&format!(
            "<QubesAppVm qid=\"{i}\" name=\"v{i}\" template_qid=\"none\"/>"
        ));
    }
    xml.push_str("</QubesVmCollection>");
    assert_eq!(class_of(parse(xml.as_bytes())), ErrorClass::LimitExceeded);
}

#[test]
fn fixtures_round_trip_through_the_writer() {
    for src in [R3, R4] {
        let x = parse(src).unwrap();
        let mut out = Vec::new();
        write_r4(
            &x.vms,
            &[("default_netvm".into(), "sys-firewall".into())],
            &mut out,
        )
        .unwrap();
        let y = parse(&out).unwrap();
        assert_eq!(y.flavor, Flavor::Core3);
        assert_eq!(bare(&y.vms), bare(&x.vms));
    }
}

#[test]
fn writer_output_shape() {
    let vms = vec![
        Vm {
            backup: backup("dom0-home/alice", 4096),
            ..vm(0, "dom0", "AdminVM", "black", None, NetVm::Default)
        },
        Vm {
            backup: backup("vm3/", 123),
            volumes_saved: Some(vec!["private".into()]),
            volume_sizes: Vec::new(),
            ..vm(3, "work", "AppVM", "blue", Some("fedora-38"), NetVm::None)
        },
    ];
    let mut out = Vec::new();
    write_r4(&vms, &[], &mut out).unwrap();
    let s = String::from_utf8(out).unwrap();
    for needle in [
        "<label id=\"label-6\" color=\"0x3465a4\">blue</label>",
        "<domain id=\"domain-0\" class=\"AdminVM\">",
        "<feature name=\"backup-path\">dom0-home/alice</feature>",
        "<domain id=\"domain-3\" class=\"AppVM\">",
        "<property name=\"name\">work</property>",
        "<property name=\"label\">label-6</property>",
        "<property name=\"template\">fedora-38</property>",
        "<property name=\"netvm\"/>",
        "<feature name=\"backup-content\">True</feature>",
        "<feature name=\"backup-path\">vm3/</feature>",
        "<feature name=\"backup-size\">123</feature>",
        "<volume name=\"private\" pool=\"default\" rw=\"True\" save_on_stop=\"True\"",
    ] {
        assert!(s.contains(needle), "{needle} missing from\n{s}");
    }
    assert!(!s.contains("<property name=\"name\">dom0</property>"));
}

#[test]
fn writer_refuses_bad_input() {
    let ok = vm(3, "work", "AppVM", "blue", None, NetVm::Default);
    let bad = [
        Vm {
            qid: None,
            ..ok.clone()
        },
        Vm {
            label: None,
            ..ok.clone()
        },
        Vm {
            name: "dom0".into(),
            ..ok.clone()
        },
        Vm {
            name: "bad name".into(),
            ..ok.clone()
        },
        Vm {
            qid: Some(0),
            ..ok.clone()
        },
        Vm {
            backup: backup("", 1),
            ..ok.clone()
        },
        Vm {
            volumes_saved: Some(vec!["a/b".into()]),
            volume_sizes: Vec::new(),
            ..ok.clone()
        },
        Vm {
            netvm: named("none"),
            ..ok.clone()
        },
        Vm {
            label: Some("label-3".into()),
            ..ok.clone()
        },
    ];
    for v in bad {
        let mut out = Vec::new();
        let e = write_r4(std::slice::from_ref(&v), &[], &mut out).unwrap_err();
        assert_eq!(e.class(), ErrorClass::Malformed, "{v:?}");
        assert!(out.is_empty());
    }
    let mut out = Vec::new();
    assert!(write_r4(&[ok.clone(), ok], &[], &mut out).is_err());
}

fn arb_name() -> impl Strategy<Value = String> {
    "[a-zA-Z][a-zA-Z0-9_.-]{0,30}".prop_filter("reserved", |n| {
        !matches!(n.as_str(), "none" | "default" | "dom0")
    })
}

fn arb_text() -> impl Strategy<Value = String> {
    // Includes XML-special characters, whitespace and non-ASCII.
    "[a-z<>&\"' \t\r\né€0-9/-]{1,12}"
}

prop_compose! {
    fn arb_vm()(
        name in arb_name(),
        class in prop::sample::select(vec!["AppVM", "TemplateVM", "StandaloneVM", "DispVM"]),
        label in prop_oneof![
            prop::sample::select(vec!["red", "blue", "black"]).prop_map(String::from),
            "[a-z]{1,8}",
        ],
        template in prop::option::of(arb_name()),
        netvm in prop_oneof![
            Just(NetVm::Default),
            Just(NetVm::None),
            arb_name().prop_map(NetVm::Named),
        ],
        backup in prop::option::of((arb_text(), any::<u64>())),
        volumes in prop::option::of(prop::collection::btree_set("[a-z_-]{1,10}", 0..4)),
        virt_mode in prop::option::of(arb_text()),
        provides_network in any::<bool>(),
    ) -> Vm {
        Vm {
            qid: None,
            name,
            class: class.to_owned(),
            label: Some(label),
            template,
            netvm,
            backup: backup.map(|(path, size)| BackupInfo { path, size }),
            volumes_saved: volumes.map(|v| v.into_iter().collect()),
            volume_sizes: Vec::new(),
            virt_mode,
            provides_network,
            config: VmConfig::default(),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn write_then_parse_round_trips(
        vms in prop::collection::vec(arb_vm(), 0..12),
        with_dom0 in any::<bool>(),
        dom0_backup in prop::option::of(any::<u64>()),
    ) {
        let mut all = Vec::new();
        if with_dom0 {
            all.push(Vm {
                backup: dom0_backup.and_then(|s| backup("dom0-home/user", s)),
                ..vm(0, "dom0", "AdminVM", "black", None, NetVm::Default)
            });
        }
        let mut seen = std::collections::HashSet::new();
        for (i, mut v) in vms.into_iter().enumerate() {
            if seen.insert(v.name.clone()) {
                v.qid = Some(u32::try_from(i).unwrap() + 1);
                all.push(v);
            }
        }
        let mut out = Vec::new();
        write_r4(&all, &[], &mut out).unwrap();
        let parsed = parse(&out).unwrap();
        prop_assert_eq!(parsed.flavor, Flavor::Core3);
        prop_assert_eq!(bare(&parsed.vms), all);
    }

    #[test]
    fn random_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse(&data);
    }

    #[test]
    fn mutated_fixtures_never_panic(
        which in any::<bool>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut data = if which { R3.to_vec() } else { R4.to_vec() };
        for (at, byte) in edits {
            let i = at.index(data.len());
            data[i] = byte;
        }
        let _ = parse(&data);
        let n = cut.index(data.len());
        let _ = parse(&data[..n]);
    }
}

#[test]
fn hostile_attribute_references_refused() {
    for bad in ["&nbsp;", "&#0;", "&#1;", "&#x1b;", "&lol;", "&amp", "<"] {
        let xml =
            format!("<qubes><labels><label id=\"{bad}\">red</label></labels><properties/></qubes>");
        assert_eq!(
            class_of(parse(xml.as_bytes())),
            ErrorClass::Malformed,
            "{bad}"
        );
    }
}

/// WRT-6: the R3 writer's output reads back (XML-1) as the VMs it was given.
#[test]
fn r3_fixture_round_trips_through_the_r3_writer() {
    let x = parse(R3).unwrap();
    let mut out = Vec::new();
    write_r3(&x.vms, &mut out).unwrap();
    let y = parse(&out).unwrap();
    assert_eq!(y.flavor, Flavor::Core2);
    assert_eq!(bare(&y.vms), bare(&x.vms));
}

/// WRT-6: R3 references are qids, so templates and netvms named but not given get
/// placeholder elements outside the backup; no `disp-*` VM is implied.
#[test]
fn r3_writer_adds_placeholders_for_references() {
    let vms = vec![
        Vm {
            backup: backup("dom0-home/alice", 4096),
            ..vm(0, "dom0", "AdminVM", "black", None, NetVm::Default)
        },
        Vm {
            backup: backup("vm3", 123),
            ..vm(
                3,
                "work",
                "AppVM",
                "blue",
                Some("fedora-40"),
                named("sys-firewall"),
            )
        },
        Vm {
            backup: backup("vm5", 9),
            ..vm(5, "sa", "StandaloneVM", "red", None, NetVm::None)
        },
    ];
    let mut out = Vec::new();
    write_r3(&vms, &mut out).unwrap();
    let s = String::from_utf8(out.clone()).unwrap();
    for needle in [
        "<QubesVmCollection default_netvm=\"None\" default_template=\"None\">",
        "<QubesAppVm qid=\"3\" name=\"work\" label=\"blue\" template_qid=\"6\" \
         uses_default_netvm=\"False\" netvm_qid=\"7\"",
        "backup_content=\"True\" backup_path=\"vm3\" backup_size=\"123\"/>",
        "<QubesAppVm qid=\"5\" name=\"sa\" label=\"red\" template_qid=\"none\" \
         uses_default_netvm=\"False\" netvm_qid=\"none\"",
        "<QubesTemplateVm qid=\"6\" name=\"fedora-40\"",
        "<QubesProxyVm qid=\"7\" name=\"sys-firewall\"",
        "dispvm_netvm_qid=\"none\"",
    ] {
        assert!(s.contains(needle), "{needle} missing in\n{s}");
    }
    let y = parse(&out).unwrap();
    let names: Vec<&str> = y.vms.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["dom0", "work", "sa", "fedora-40", "sys-firewall"]);
    let work = y.vm("work").unwrap();
    assert_eq!(work.template.as_deref(), Some("fedora-40"));
    assert_eq!(work.netvm, named("sys-firewall"));
    assert_eq!(y.vm("sa").unwrap().class, "StandaloneVM");
    assert!(y.vm("fedora-40").unwrap().backup.is_none());
    assert_eq!(y.backed_up().count(), 3);
}

#[test]
fn r3_writer_refuses_what_r3_cannot_say() {
    let mut out = Vec::new();
    let disp = vm(4, "d", "DispVM", "red", Some("t"), NetVm::Default);
    let e = write_r3(&[disp], &mut out).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Unsupported);
    let no_qid = Vm {
        qid: None,
        ..vm(4, "w", "AppVM", "red", Some("t"), NetVm::Default)
    };
    assert!(write_r3(&[no_qid], &mut out).is_err());
    let a = vm(4, "a", "AppVM", "red", Some("t"), NetVm::Default);
    let b = vm(4, "b", "AppVM", "red", Some("t"), NetVm::Default);
    assert!(write_r3(&[a, b], &mut out).is_err());
    assert!(out.is_empty());
}

/// XML-3: no VM but dom0 may have a backup-path under `dom0-home/`.
#[test]
fn only_dom0_lives_under_dom0_home() {
    let xml = |path: &str| {
        format!(
                "<qubes><labels><label id=\"label-1\">red</label></labels><properties/><domains>\
                 <domain id=\"domain-5\" class=\"AppVM\"><properties>\
                 <property name=\"name\">vm</property><property name=\"label\">label-1</property>\
                 </properties><features><feature name=\"backup-content\">True</feature>\
                 <feature name=\"backup-path\">{path}</feature></features></domain></domains></qubes>"
            )
    };
    let plan = |path: &str| parse(xml(path).as_bytes());
    assert!(plan("vm5/").is_ok());
    assert!(plan("dom0-homes/").is_ok());
    for bad in ["dom0-home/user/", "dom0-home/x", "dom0-home/"] {
        assert_eq!(
            plan(bad).unwrap_err().class(),
            ErrorClass::Malformed,
            "{bad}"
        );
    }
}

/// LIM-45, LIM-46 (XML-2, XML-3): VM names up to 31 bytes and class names up to 64 bytes
/// pass; one byte more is malformed.
#[test]
fn vm_name_and_class_lengths_are_bounded() {
    use crate::limits::{MAX_VM_CLASS_LEN, MAX_VM_NAME_LEN};
    assert!(super::validate_vm_name(&"a".repeat(MAX_VM_NAME_LEN)).is_ok());
    let long = super::validate_vm_name(&"a".repeat(MAX_VM_NAME_LEN + 1)).unwrap_err();
    assert_eq!(long.class(), ErrorClass::Malformed);
    assert!(super::validate_class(&"A".repeat(MAX_VM_CLASS_LEN)).is_ok());
    let long = super::validate_class(&"A".repeat(MAX_VM_CLASS_LEN + 1)).unwrap_err();
    assert_eq!(long.class(), ErrorClass::Malformed);
}

// ---- shared qids (issue 9 item 2; XML-1, XML-3, DEV-23) ----------------------------------

/// One core3 domain with a qid property and, when `path` is given, in the backup.
fn r4_domain(name: &str, qid: u32, path: Option<&str>) -> String {
    let features = match path {
        Some(p) => format!(
            "<features><feature name=\"backup-content\">True</feature>\
             <feature name=\"backup-path\">{p}</feature></features>"
        ),
        None => "<features/>".to_owned(),
    };
    format!(
        "<domain id=\"domain-{qid}\" class=\"AppVM\"><properties>\
         <property name=\"qid\">{qid}</property><property name=\"name\">{name}</property>\
         <property name=\"label\">label-1</property></properties>{features}</domain>"
    )
}

fn r4_doc(domains: &[String]) -> Vec<u8> {
    format!(
        "<qubes><labels><label id=\"label-1\">red</label></labels><properties/><domains>\
         <domain id=\"domain-0\" class=\"AdminVM\"><properties><property name=\"qid\">0</property>\
         <property name=\"label\">label-1</property></properties></domain>{}</domains></qubes>",
        domains.concat()
    )
    .into_bytes()
}

/// An R3 document: `root` attributes of `QubesVmCollection`, then dom0 and `vms`.
fn r3_doc(root: &str, vms: &[&str]) -> Vec<u8> {
    format!(
        "<QubesVmCollection {root}><QubesAdminVm qid=\"0\" name=\"dom0\" label=\"black\"/>{}\
         </QubesVmCollection>",
        vms.concat()
    )
    .into_bytes()
}

fn malformed_message(doc: &[u8]) -> String {
    match parse(doc) {
        Ok(x) => panic!("accepted: {x:?}"),
        Err(e) => {
            assert_eq!(e.class(), ErrorClass::Malformed, "{e}");
            e.to_string()
        }
    }
}

#[test]
fn fixtures_have_no_notes() {
    assert_eq!(parse(R3).unwrap().notes, Vec::<String>::new());
    assert_eq!(parse(R4).unwrap().notes, Vec::<String>::new());
}

/// The bug: upstream's own v4 test qubes.xml gives two DispVM templates qid 10, and the
/// whole archive was refused as `duplicate qid 10`. core3 refers to VMs by name only.
#[test]
fn issue9_core3_dvm_templates_sharing_qid_10_parse_with_a_note() {
    let doc = r4_doc(&[
        r4_domain("fedora-25-clone-dvm", 10, Some("vm10/")),
        r4_domain("fedora-25-dvm", 10, Some("vm11/")),
        r4_domain("work", 3, Some("vm3/")),
    ]);
    let x = parse(&doc).unwrap();
    assert_eq!(x.flavor, Flavor::Core3);
    let backed: Vec<(&str, &str)> = x
        .backed_up()
        .map(|(v, b)| (v.name.as_str(), b.path.as_str()))
        .collect();
    assert_eq!(
        backed,
        [
            ("fedora-25-clone-dvm", "vm10/"),
            ("fedora-25-dvm", "vm11/"),
            ("work", "vm3/")
        ]
    );
    assert_eq!(x.vm("fedora-25-dvm").unwrap().qid, Some(10));
    assert_eq!(x.vm("fedora-25-clone-dvm").unwrap().qid, Some(10));
    assert_eq!(
        x.notes,
        ["qubes.xml: qid 10 is shared by VMs fedora-25-clone-dvm and fedora-25-dvm (XML-3)"]
    );
}

#[test]
fn shared_qids_core3_one_note_per_qid_in_qid_order() {
    // The fixture with work's qid 7 changed to sys-firewall's 3.
    let x = parse(&replace_once(
        R4,
        "<property name=\"qid\">7</property>",
        "<property name=\"qid\">3</property>",
    ))
    .unwrap();
    assert_eq!(
        x.notes,
        ["qubes.xml: qid 3 is shared by VMs sys-firewall and work (XML-3)"]
    );
    let doc = r4_doc(&[
        r4_domain("c", 9, None),
        r4_domain("a", 4, None),
        r4_domain("b", 9, None),
        r4_domain("d", 4, None),
        r4_domain("e", 9, None),
        r4_domain("f", 5, None),
    ]);
    assert_eq!(
        parse(&doc).unwrap().notes,
        [
            "qubes.xml: qid 4 is shared by VMs a and d (XML-3)",
            "qubes.xml: qid 9 is shared by VMs c, b and e (XML-3)",
        ]
    );
}

#[test]
fn shared_qid_0_is_still_refused() {
    // core3: only the AdminVM dom0 has qid 0, so dom0 detection is never ambiguous.
    let m = malformed_message(&r4_doc(&[r4_domain("work", 0, None)]));
    assert!(m.contains("qid 0 belongs to the AdminVM dom0"), "{m}");
    let second_dom0 = "<domain id=\"domain-0\" class=\"AdminVM\"><properties>\
         <property name=\"label\">label-1</property></properties></domain>"
        .to_owned();
    let m = malformed_message(&r4_doc(&[second_dom0]));
    assert!(m.contains("duplicate VM name \"dom0\""), "{m}");
    // core2: a second element with qid 0 is not dom0.
    let m = malformed_message(&r3_doc(
        "",
        &["<QubesAppVm qid=\"0\" name=\"work\" template_qid=\"none\"/>"],
    ));
    assert!(m.contains("dom0 is QubesAdminVm qid 0"), "{m}");
    // R2 (no dom0 element): a VM with qid 0 is not taken for dom0 either.
    let m = malformed_message(
        b"<QubesVmCollection><QubesAppVm qid=\"0\" name=\"work\" template_qid=\"none\"/>\
          </QubesVmCollection>",
    );
    assert!(m.contains("dom0 is QubesAdminVm qid 0"), "{m}");
}

/// core2 VMs sharing qid 4 that nothing refers to: accepted, with the note.
#[test]
fn shared_qids_core2_unreferenced_is_a_note() {
    let x = parse(&replace_once(R3, "qid=\"5\"", "qid=\"4\"")).unwrap();
    assert_eq!(x.flavor, Flavor::Core2);
    assert_eq!(x.vm("banking").unwrap().qid, Some(4));
    assert_eq!(x.vm("work").unwrap().qid, Some(4));
    assert_eq!(
        x.notes,
        ["qubes.xml: qid 4 is shared by VMs work and banking (XML-3)"]
    );
    // References that are not followed do not count: netvm_qid of a VM using the default
    // netvm, dispvm_netvm_qid of a VM using the default dispvm netvm.
    let x = parse(&r3_doc(
        "default_template=\"none\"",
        &[
            "<QubesAppVm qid=\"3\" name=\"a\" template_qid=\"none\"/>",
            "<QubesAppVm qid=\"3\" name=\"b\" template_qid=\"none\"/>",
            "<QubesAppVm qid=\"4\" name=\"c\" template_qid=\"none\" uses_default_netvm=\"True\" \
             netvm_qid=\"3\" uses_default_dispvm_netvm=\"True\" dispvm_netvm_qid=\"3\"/>",
        ],
    ))
    .unwrap();
    assert_eq!(x.vm("c").unwrap().netvm, NetVm::Default);
    assert_eq!(
        x.notes,
        ["qubes.xml: qid 3 is shared by VMs a and b (XML-3)"]
    );
}

/// core2 references by qid: one naming a shared qid is Malformed, naming the VM (or the
/// root) and the attribute; the same document with the shared qid unreferenced parses.
#[test]
fn shared_qids_core2_ambiguous_references_refused() {
    let pair = [
        "<QubesTemplateVm qid=\"5\" name=\"tpl-a\"/>",
        "<QubesProxyVm qid=\"5\" name=\"tpl-b\" template_qid=\"none\"/>",
    ];
    let cases: &[(&str, &str, &str)] = &[
        (
            "",
            "<QubesAppVm qid=\"7\" name=\"work\" template_qid=\"5\"/>",
            "VM \"work\": template_qid 5",
        ),
        (
            "",
            "<QubesAppVm qid=\"7\" name=\"work\" template_qid=\"none\" \
             uses_default_netvm=\"False\" netvm_qid=\"5\"/>",
            "VM \"work\": netvm_qid 5",
        ),
        (
            "",
            "<QubesAppVm qid=\"7\" name=\"work\" template_qid=\"none\" \
             uses_default_dispvm_netvm=\"False\" dispvm_netvm_qid=\"5\"/>",
            "VM \"work\": dispvm_netvm_qid 5",
        ),
        (
            "default_template=\"5\"",
            "",
            "<QubesVmCollection>: default_template 5",
        ),
        (
            "default_netvm=\"5\"",
            "",
            "<QubesVmCollection>: default_netvm 5",
        ),
        ("updatevm=\"5\"", "", "<QubesVmCollection>: updatevm 5"),
        ("clockvm=\"5\"", "", "<QubesVmCollection>: clockvm 5"),
    ];
    for (root, el, want) in cases {
        let m = malformed_message(&r3_doc(root, &[pair[0], pair[1], el]));
        assert!(
            m.contains(&format!(
                "{want} is an ambiguous reference: VMs \"tpl-a\" and \"tpl-b\" share qid 5 (XML-1)"
            )),
            "{m}"
        );
        // The same reference to an unshared qid is fine.
        let single = r3_doc(
            root,
            &[pair[0], &pair[1].replace("qid=\"5\"", "qid=\"6\""), el],
        );
        let x = parse(&single).unwrap_or_else(|e| panic!("{want}: {e}"));
        assert!(x.notes.is_empty());
    }
    // Three VMs on one qid: the message says how many more.
    let m = malformed_message(&r3_doc(
        "",
        &[
            pair[0],
            pair[1],
            "<QubesAppVm qid=\"5\" name=\"third\" template_qid=\"none\"/>",
            "<QubesAppVm qid=\"7\" name=\"work\" template_qid=\"5\"/>",
        ],
    ));
    assert!(
        m.contains("VMs \"tpl-a\" and \"tpl-b\" and 1 more share qid 5"),
        "{m}"
    );
}

#[test]
fn writers_refuse_shared_qids_naming_both_vms() {
    let a = vm(3, "work", "AppVM", "blue", None, NetVm::Default);
    let b = vm(3, "mail", "AppVM", "blue", None, NetVm::Default);
    let mut out = Vec::new();
    let e = write_r4(&[a.clone(), b.clone()], &[], &mut out).unwrap_err();
    assert_eq!(e.class(), ErrorClass::Malformed);
    assert!(
        e.to_string()
            .contains("duplicate qid 3: VMs \"work\" and \"mail\""),
        "{e}"
    );
    assert!(out.is_empty());
    let e = write_r3(&[a.clone(), b], &mut out).unwrap_err();
    assert!(
        e.to_string()
            .contains("duplicate qid 3: VMs \"work\" and \"mail\""),
        "{e}"
    );
    let e = write_r4(&[a.clone(), a], &[], &mut out).unwrap_err();
    assert!(e.to_string().contains("duplicate VM name \"work\""), "{e}");
}

fn props(list: &[(&str, Option<&str>)]) -> Vec<(String, Option<String>)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), v.map(str::to_owned)))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// XML-5: R3 attributes as upstream's core2 reader translates them.
#[test]
fn r3_config_as_upstreams_core2_reader() {
    let x = parse(R3).unwrap();
    let tpl = &x.vm("fedora-23").unwrap().config;
    assert_eq!(
        tpl.features,
        pairs(&[
            ("qrexec", "1"),
            ("gui", "1"),
            ("service.meminfo-writer", "1")
        ])
    );
    let net = &x.vm("sys-net").unwrap().config;
    assert_eq!(
        net.properties,
        props(&[
            ("memory", Some("300")),
            ("default_dispvm", Some("disp-no-netvm"))
        ])
    );
    // Upstream's core2 reader synthesises the DispVM templates such VMs name.
    let tpls: Vec<(&str, &NetVm)> = x
        .dispvm_templates
        .iter()
        .map(|v| (v.name.as_str(), &v.netvm))
        .collect();
    assert_eq!(
        tpls,
        [
            ("disp-no-netvm", &NetVm::None),
            ("disp-sys-net", &named("sys-net"))
        ]
    );
    assert_eq!(
        x.dispvm_templates[0].config.properties,
        props(&[("template_for_dispvms", Some("True"))])
    );
    let ports: Vec<(&str, &str, &str, bool)> = net
        .devices
        .iter()
        .map(|d| {
            (
                d.bus.as_str(),
                d.backend.as_str(),
                d.port.as_str(),
                d.required,
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("pci", "dom0", "00_19.0", true),
            ("pci", "dom0", "03_00.0", true)
        ]
    );
    let work = &x.vm("work").unwrap().config;
    assert_eq!(work.features, pairs(&[("service.ntpd", "")]));
    let win7 = &x.vm("win7").unwrap().config;
    assert_eq!(win7.properties[..1], props(&[("kernel", None)])[..]);
    // The model's own fields carry what upstream also sets as properties.
    assert_eq!(x.vm("win7").unwrap().virt_mode.as_deref(), Some("hvm"));
    assert!(x.vm("sys-net").unwrap().provides_network);
    assert_eq!(win7.features, pairs(&[("linux-stubdom", "")]));
    assert_eq!(x.vm("dom0").unwrap().config, VmConfig::default());
}

#[test]
fn r4_config_keeps_everything_but_identity_and_backup_keys() {
    let x = parse(R4).unwrap();
    let dom0 = &x.vm("dom0").unwrap().config;
    assert_eq!(
        dom0.features,
        pairs(&[("gui-default-secure-copy-sequence", "Ctrl-Shift-c")])
    );
    let tpl = &x.vm("fedora-38").unwrap().config;
    assert_eq!(tpl.features, pairs(&[("os", "Linux")]));
    assert_eq!(tpl.tags, ["created-by-dom0"]);
    assert!(tpl.properties.iter().all(|(k, _)| !matches!(
        k.as_str(),
        "name" | "qid" | "uuid" | "label" | "template" | "netvm"
    )));
    let net = &x.vm("sys-net").unwrap().config;
    assert_eq!(net.devices.len(), 1);
    assert_eq!(
        (net.devices[0].bus.as_str(), net.devices[0].port.as_str()),
        ("pci", "00_19.0")
    );
    // The `<option>` children six levels deep are kept (CFG-1).
    assert_eq!(
        net.devices[0].options,
        pairs(&[("no-strict-reset", "True")])
    );
    let work = &x.vm("work").unwrap().config;
    assert_eq!(
        work.features,
        pairs(&[("menu-items", "org.gnome.Nautilus.desktop firefox.desktop")])
    );
}

#[test]
fn config_round_trips_through_the_r4_writer() {
    let x = parse(R4).unwrap();
    let mut out = Vec::new();
    write_r4(&x.vms, &[], &mut out).unwrap();
    let y = parse(&out).unwrap();
    for (a, b) in x.vms.iter().zip(&y.vms) {
        assert_eq!(a.config.features, b.config.features, "{}", a.name);
        assert_eq!(a.config.tags, b.config.tags, "{}", a.name);
        assert_eq!(a.config.devices, b.config.devices, "{}", a.name);
        for p in &a.config.properties {
            assert!(b.config.properties.contains(p), "{} {p:?}", a.name);
        }
    }
}

/// XML-5: a `services` or `pcidevs` literal outside what R3 writes loses only those
/// settings, with a note; the file still parses.
#[test]
fn unreadable_r3_services_are_a_note() {
    let xml = br#"<QubesVmCollection default_template="1" default_netvm="none"><QubesTemplateVm qid="1" name="t" services="{'a': Maybe}" pcidevs="[x]"/></QubesVmCollection>"#;
    let x = parse(xml).unwrap();
    let t = x.vm("t").unwrap();
    assert_eq!(t.config.features, pairs(&[("qrexec", "1"), ("gui", "1")]));
    assert!(t.config.devices.is_empty());
    assert_eq!(x.notes.len(), 2, "{:?}", x.notes);
    assert!(x.notes[0].contains("services not restored"));
    assert!(x.notes[1].contains("pcidevs not restored"));
}
