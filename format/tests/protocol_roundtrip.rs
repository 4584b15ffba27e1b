//! PROTO-*: streams the encoder writes decode to the same records (proptest), configs
//! and vmends included (PROTO-14, PROTO-15), and the digest a consumer computes with
//! [`RecordDigest`] agrees with the encoder's and the decoder's own check (PROTO-7).

use std::collections::BTreeMap;

use proptest::prelude::*;
use qbackup_format::firewall::{Action, Host, Proto, Rule};
use qbackup_format::protocol::read::Decoder;
use qbackup_format::protocol::write::Encoder;
use qbackup_format::protocol::{
    Begin, Device, FileHasher, FileKind, Firewall, Layout, Manifest, ManifestVm, OtherVm, Record,
    RecordDigest, VmConfig, VmEnd,
};
use qbackup_format::qubes_xml::NetVm;
use qbackup_format::ErrorClass;
use sha2::Digest as _;

mod common;

/// One file as the test producer holds it: runs at offsets inside `size`.
#[derive(Debug, Clone)]
struct TestFile {
    name: String,
    kind: FileKind,
    mode: u32,
    size: u64,
    runs: Vec<(u64, Vec<u8>)>,
}

#[derive(Debug, Clone)]
struct TestVm {
    vm: ManifestVm,
    config: VmConfig,
    end: VmEnd,
    files: Vec<TestFile>,
}

// ---- CFG-1 / CFG-2 values (each valid; the encoder would refuse anything else) ---------

fn printable(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(0x20u8..0x7f, 0..=max).prop_map(|b| String::from_utf8(b).unwrap())
}

/// Entries with distinct keys (a map), in the generated order of first appearance.
fn distinct<K: Ord + Clone, V>(entries: Vec<(K, V)>) -> Vec<(K, V)> {
    let mut seen = BTreeMap::new();
    let mut out = Vec::new();
    for (k, v) in entries {
        if seen.insert(k.clone(), ()).is_none() {
            out.push((k, v));
        }
    }
    out
}

fn device_strategy() -> impl Strategy<Value = Device> {
    (
        "[a-z0-9]{1,6}",
        "sys-[a-z]{1,5}|dom0",
        "[A-Za-z0-9_.-]{1,10}",
        any::<bool>(),
        prop::collection::vec(("[A-Za-z0-9_-]{1,8}", "[!#-&(-\\[\\]-~]{0,10}"), 0..4),
    )
        .prop_map(|(bus, backend, port, required, options)| Device {
            bus,
            backend,
            port,
            required,
            options: distinct(options)
                .into_iter()
                .filter(|(k, _)| k != "required")
                .collect(),
        })
}

fn config_strategy() -> impl Strategy<Value = VmConfig> {
    (
        prop::collection::vec(
            ("[a-z][a-z0-9_]{0,12}", prop::option::of(printable(30))),
            0..5,
        ),
        prop::collection::vec(("[A-Za-z0-9][A-Za-z0-9_.-]{0,12}", printable(30)), 0..5),
        prop::collection::vec("[A-Za-z0-9_-]{1,12}", 0..5),
        prop::collection::vec(device_strategy(), 0..3),
    )
        .prop_map(|(properties, features, tags, devices)| {
            let reserved = ["name", "qid", "uuid", "klass", "label", "template", "netvm"];
            VmConfig {
                properties: distinct(properties)
                    .into_iter()
                    .filter(|(k, _)| !reserved.contains(&k.as_str()))
                    .collect(),
                features: distinct(features)
                    .into_iter()
                    .filter(|(k, _)| !k.starts_with("backup-"))
                    .collect(),
                tags: distinct(tags.into_iter().map(|t| (t, ())).collect())
                    .into_iter()
                    .map(|(t, ())| t)
                    .filter(|t| !t.starts_with("created-by-") && !t.starts_with("backup-restore-"))
                    .collect(),
                devices: {
                    let keyed = devices
                        .into_iter()
                        .map(|d| ((d.bus.clone(), d.backend.clone(), d.port.clone()), d))
                        .collect();
                    distinct(keyed).into_iter().map(|(_, d)| d).collect()
                },
            }
        })
}

/// FW-1: a consistent rule; its canonical line is what travels.
fn rule_strategy() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        0u8..4,
        0u8..4,
        (any::<[u8; 4]>(), 1u8..=32, any::<[u16; 8]>(), 1u8..=128),
        "[a-z0-9][a-z0-9.-]{0,15}",
        (any::<u16>(), any::<u16>(), any::<u8>()),
        any::<bool>(),
        prop::option::of(any::<u32>()),
        prop::option::of("[ -~]{1,20}"),
    )
        .prop_map(
            |(
                accept,
                proto,
                host,
                (v4, l4, v6, l6),
                name,
                (p1, p2, icmp),
                dns,
                expire,
                comment,
            )| {
                let proto = [None, Some(Proto::Tcp), Some(Proto::Udp), Some(Proto::Icmp)]
                    [usize::from(proto)];
                Rule {
                    action: if accept { Action::Accept } else { Action::Drop },
                    proto,
                    dsthost: match host {
                        0 => None,
                        1 => Some(Host::V4(v4.into(), l4)),
                        2 => Some(Host::V6(v6.into(), l6)),
                        _ => Some(Host::Name(name)),
                    },
                    dstports: matches!(proto, Some(Proto::Tcp | Proto::Udp))
                        .then_some((p1.min(p2), p1.max(p2))),
                    icmptype: (proto == Some(Proto::Icmp)).then_some(icmp),
                    dns,
                    expire: expire.map(u64::from),
                    comment,
                }
                .line()
            },
        )
        // A DNS name that reads as an address is not a `dsthost`.
        .prop_filter("canonical", |l| Rule::parse_line(l).is_ok())
}

fn end_strategy() -> impl Strategy<Value = VmEnd> {
    (
        0u8..3,
        prop::collection::vec(rule_strategy(), 0..5),
        printable(40),
        prop::option::of("(\\PC|\n|\t){1,40}"),
        prop::option::of(prop::collection::vec("[A-Za-z0-9_.+@-]{1,20}", 0..4)),
    )
        .prop_map(|(fw, rules, why, notes, menu_items)| VmEnd {
            firewall: match fw {
                0 => Firewall::Absent,
                1 => Firewall::Rules(rules),
                _ => Firewall::Unreadable(why),
            },
            notes,
            menu_items,
        })
}

/// Runs: sorted, non-overlapping, inside `size`.
fn runs(size: u64, raw: Vec<(u64, Vec<u8>)>) -> Vec<(u64, Vec<u8>)> {
    let mut out: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut pos = 0u64;
    let mut raw = raw;
    raw.sort_by_key(|r| r.0);
    for (gap, bytes) in raw {
        // Adjacent runs would be indistinguishable from one run: keep a gap.
        let off = pos + u64::from(!out.is_empty()) + gap % 5000;
        if bytes.is_empty() || off + bytes.len() as u64 > size {
            continue;
        }
        pos = off + bytes.len() as u64;
        out.push((off, bytes));
    }
    out
}

fn file_strategy(layout: Layout, idx: usize) -> impl Strategy<Value = TestFile> {
    // Volume images first (regular only, PROTO-5), then a VM directory's other files.
    let images = ["private.img", "root.img", "volatile.img"];
    (
        0u64..20_000,
        prop::collection::vec(
            (0u64..10_000, prop::collection::vec(any::<u8>(), 0..3000)),
            0..5,
        ),
        0u32..0o777,
        0u8..3,
    )
        .prop_map(move |(size, raw, mode, kind)| {
            let image = layout == Layout::Volumes && idx < images.len();
            let name = match image {
                true => images[idx].to_string(),
                false => format!("d{idx}/f-é{idx}"),
            };
            let kind = match (image, kind) {
                (true, _) | (_, 0) => FileKind::Regular,
                (_, 1) => FileKind::Directory,
                _ => FileKind::Symlink {
                    target: format!("../t{idx}"),
                },
            };
            let (size, runs) = if kind == FileKind::Regular {
                (size, runs(size, raw))
            } else {
                (0, Vec::new())
            };
            TestFile {
                name,
                kind,
                mode,
                size,
                runs,
            }
        })
}

fn vm_strategy(i: usize) -> impl Strategy<Value = TestVm> {
    (
        0u8..3,
        0usize..5,
        any::<bool>(),
        0u8..3,
        0usize..3,
        config_strategy(),
        end_strategy(),
    )
        .prop_flat_map(move |(l, n, lab, net, exp, config, end)| {
            let (layout, name, class) = match l {
                0 => (Layout::Volumes, format!("vm{i}"), "AppVM"),
                1 => (Layout::TemplateDir, format!("tpl{i}"), "TemplateVM"),
                _ if i == 0 => (Layout::Dom0Home, "dom0".to_string(), "AdminVM"),
                _ => (Layout::Volumes, format!("sa{i}"), "StandaloneVM"),
            };
            let n = if layout == Layout::Volumes {
                n.min(8)
            } else {
                n
            };
            // dom0 carries no settings (PROTO-14, PROTO-15).
            let (config, end) = if layout == Layout::Dom0Home {
                (VmConfig::default(), VmEnd::default())
            } else {
                (config, end)
            };
            let files: Vec<_> = (0..n).map(|k| file_strategy(layout, k)).collect();
            files.prop_map(move |files| TestVm {
                config: config.clone(),
                end: end.clone(),
                vm: ManifestVm {
                    name: name.clone(),
                    class: class.to_string(),
                    label: lab.then(|| "red".to_string()),
                    template: (class == "AppVM").then(|| "fedora-41".to_string()),
                    netvm: match net {
                        0 => NetVm::Default,
                        1 => NetVm::None,
                        _ => NetVm::Named("sys-firewall".to_string()),
                    },
                    layout,
                    backup_size: if lab { 0 } else { 1 << 20 },
                    expected_files: if layout == Layout::Volumes {
                        files
                            .iter()
                            .take(exp)
                            .filter(|f| f.name.ends_with(".img"))
                            .map(|f| f.name.clone())
                            .collect()
                    } else {
                        Vec::new()
                    },
                },
                files,
            })
        })
}

fn stream_strategy() -> impl Strategy<Value = Vec<TestVm>> {
    (0usize..4).prop_flat_map(|n| (0..n).map(vm_strategy).collect::<Vec<_>>())
}

/// The VMs of the backup the stream does not carry (names distinct from `vmN`, `tplN`,
/// `saN`, `dom0`).
fn others_strategy() -> impl Strategy<Value = Vec<OtherVm>> {
    prop::collection::vec((any::<bool>(), any::<bool>()), 0..4).prop_map(|v| {
        v.into_iter()
            .enumerate()
            .map(|(i, (tpl, in_backup))| OtherVm {
                name: format!("other-{i}"),
                class: if tpl { "TemplateVM" } else { "DispVM" }.into(),
                in_backup,
            })
            .collect()
    })
}

/// The order VMs are sent in: manifest order, or reversed for odd `split` (PROTO-4
/// allows any order as long as each VM's files are contiguous and closed by its vmend;
/// configs always come in manifest order, PROTO-14).
fn order(n: usize, split: usize) -> Vec<usize> {
    if split % 2 == 1 {
        (0..n).rev().collect()
    } else {
        (0..n).collect()
    }
}

fn manifest_of(vms: &[TestVm], others: &[OtherVm]) -> Manifest {
    Manifest {
        vms: vms.iter().map(|v| v.vm.clone()).collect(),
        others: others.to_vec(),
    }
}

/// Encodes `vms`, splitting each run at `split` to exercise record boundaries.
fn encode(vms: &[TestVm], others: &[OtherVm], split: usize) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.hello().unwrap();
    e.manifest(&manifest_of(vms, others)).unwrap();
    for (i, vm) in vms.iter().enumerate() {
        e.config(i as u32, &vm.config).unwrap();
    }
    for i in order(vms.len(), split) {
        let vm = &vms[i];
        for f in &vm.files {
            e.begin(&Begin {
                vm: i as u32,
                name: f.name.clone(),
                kind: f.kind.clone(),
                mode: f.mode,
                size: f.size,
                data_bytes: f.runs.iter().map(|r| r.1.len() as u64).sum(),
            })
            .unwrap();
            for (off, bytes) in &f.runs {
                let cut = split.min(bytes.len());
                e.data(*off, &bytes[..cut]).unwrap();
                e.data(off + cut as u64, &bytes[cut..]).unwrap();
            }
            e.end().unwrap();
        }
        e.vm_end(i as u32, &vm.end).unwrap();
    }
    e.summary().unwrap();
    e.into_inner()
}

type Runs = Vec<(u64, Vec<u8>)>;

/// What a consumer sees, with its own digest check too (PROTO-7).
#[derive(Debug, PartialEq)]
struct Seen {
    manifest: Manifest,
    configs: Vec<(u32, VmConfig)>,
    files: Vec<(Begin, Runs)>,
    /// Per vmend: the VM and how many files had been seen before it.
    ends: Vec<(u32, VmEnd, usize)>,
}

fn consume(bytes: &[u8]) -> qbackup_format::Result<Seen> {
    let mut d = Decoder::new(bytes);
    let mut seen = Seen {
        manifest: Manifest::default(),
        configs: Vec::new(),
        files: Vec::new(),
        ends: Vec::new(),
    };
    let mut hasher = None;
    while let Some(r) = d.read_record()? {
        match r {
            Record::Hello { version } => assert_eq!(version, qbackup_format::protocol::VERSION),
            Record::Manifest(m) => seen.manifest = m.clone(),
            Record::Config { vm, config } => seen.configs.push((vm, config)),
            Record::VmEnd { vm, end } => seen.ends.push((vm, end, seen.files.len())),
            Record::Begin(b) => {
                hasher = Some(RecordDigest::new(b.size, b.data_bytes));
                seen.files.push((b, Vec::new()));
            }
            Record::Data { offset, bytes } => {
                hasher.as_mut().unwrap().record(offset, bytes);
                let runs = &mut seen.files.last_mut().unwrap().1;
                // Merge adjacent records back into the producer's runs.
                match runs.last_mut() {
                    Some((o, b)) if *o + b.len() as u64 == offset => b.extend_from_slice(bytes),
                    _ => runs.push((offset, bytes.to_vec())),
                }
            }
            Record::End { digest: sha256 } => {
                if hasher.take().unwrap().finish() != sha256 {
                    return Err(qbackup_format::Error::new(
                        ErrorClass::MacFailure,
                        "file digest mismatch",
                    ));
                }
            }
            Record::Summary(_) => {}
            Record::Error { class, message } => {
                return Err(qbackup_format::Error::new(class, message))
            }
        }
    }
    Ok(seen)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// PROTO-2 … PROTO-8: what the encoder writes decodes to what it was given.
    #[test]
    fn round_trip(vms in stream_strategy(), others in others_strategy(), split in 0usize..4000) {
        let bytes = encode(&vms, &others, split);
        let seen = consume(&bytes).unwrap();
        prop_assert_eq!(&seen.manifest, &manifest_of(&vms, &others));
        // PROTO-14: one config per VM, in manifest order, as sent.
        let configs: Vec<_> = vms.iter().enumerate().map(|(i, v)| (i as u32, v.config.clone())).collect();
        prop_assert_eq!(&seen.configs, &configs);
        // PROTO-15: one vmend per VM, right after its files, as sent.
        let mut ends = Vec::new();
        let mut files = 0;
        for i in order(vms.len(), split) {
            files += vms[i].files.len();
            ends.push((i as u32, vms[i].end.clone(), files));
        }
        prop_assert_eq!(&seen.ends, &ends);
        let want: Vec<_> = order(vms.len(), split).into_iter().flat_map(|i| vms[i].files.iter()).collect();
        prop_assert_eq!(seen.files.len(), want.len());
        for ((b, runs), f) in seen.files.iter().zip(want) {
            prop_assert_eq!(&b.name, &f.name);
            prop_assert_eq!(&b.kind, &f.kind);
            prop_assert_eq!(b.size, f.size);
            prop_assert_eq!(b.mode, f.mode);
            prop_assert_eq!(runs, &f.runs);
        }
    }
}

/// PROTO-6, PROTO-13, LIM-28: the encoder splits runs into records of at most LIM-28 bytes.
#[test]
fn large_runs_are_split_into_bounded_records() {
    let size = 3 * (1 << 20) + 5;
    let vm = common::work_vm(&["private.img"]);
    let mut e = Encoder::new(Vec::new());
    e.hello().unwrap();
    e.manifest(&Manifest {
        vms: vec![vm],
        others: Vec::new(),
    })
    .unwrap();
    e.config(0, &VmConfig::default()).unwrap();
    e.begin(&private_img(size, size - 5)).unwrap();
    let data = vec![7u8; (size - 5) as usize];
    e.data(5, &data).unwrap();
    let sent = e.end().unwrap();
    e.vm_end(0, &VmEnd::default()).unwrap();
    e.summary().unwrap();
    let bytes = e.into_inner();
    let mut d = Decoder::new(&bytes[..]);
    let mut data_records = 0;
    let mut h = None;
    let mut logical = Vec::new();
    while let Some(r) = d.read_record().unwrap() {
        match r {
            Record::Begin(b) => h = Some(FileHasher::new(b.size)),
            Record::Data { offset, bytes } => {
                assert!(bytes.len() <= 1 << 20);
                h.as_mut().unwrap().data(offset, bytes).unwrap();
                logical.extend_from_slice(bytes);
                data_records += 1;
            }
            Record::End { digest } => {
                assert_eq!(digest, sent);
                // The logical SHA-256 (holes as zeros) is a different digest.
                let mut full = vec![0u8; 5];
                full.extend_from_slice(&logical);
                assert_eq!(
                    h.take().unwrap().finish(),
                    <[u8; 32]>::from(sha2::Sha256::digest(&full))
                );
                // (and of another length: the record digest is PROTO-7's XXH3-128).
                assert_eq!(sent.len(), qbackup_format::protocol::FILE_DIGEST_LEN);
            }
            _ => {}
        }
    }
    assert_eq!(data_records, 3);
}

/// PROTO-6: a gathering encoder writes contiguous pieces as full-size records and starts a
/// new record at a gap; the decoder reads back the same bytes at the same offsets, and
/// the file digest it checks follows the records actually sent (PROTO-7).
#[test]
fn gathering_encoder_fills_records_and_splits_at_gaps() {
    use qbackup_format::limits::MAX_PROTO_DATA_LEN;
    let piece: Vec<u8> = (0..64 << 10).map(|i: u32| (i % 251) as u8).collect();
    let size = 8u64 << 20;
    let mut e = Encoder::gathering(Vec::new());
    e.hello().unwrap();
    e.manifest(&Manifest {
        vms: vec![common::work_vm(&[])],
        others: Vec::new(),
    })
    .unwrap();
    e.config(0, &VmConfig::default()).unwrap();
    // 40 contiguous pieces (2.5 MiB) from 0, then 3 after a hole.
    let mut sent = Vec::new();
    for i in 0..40u64 {
        sent.push((i * piece.len() as u64, piece.clone()));
    }
    for i in 0..3u64 {
        sent.push(((6 << 20) + i * piece.len() as u64, piece.clone()));
    }
    let data_bytes: u64 = sent.iter().map(|(_, b)| b.len() as u64).sum();
    e.begin(&private_img(size, data_bytes)).unwrap();
    for (offset, bytes) in &sent {
        e.data(*offset, bytes).unwrap();
    }
    e.end().unwrap();
    e.vm_end(0, &VmEnd::default()).unwrap();
    e.summary().unwrap();
    let stream = e.into_inner();

    let mut d = Decoder::new(&stream[..]);
    let mut records = Vec::new();
    let mut got = Vec::new();
    while let Some(r) = d.read_record().unwrap() {
        if let Record::Data { offset, bytes } = r {
            records.push((offset, bytes.len()));
            got.push((offset, bytes.to_vec()));
        }
    }
    let full = MAX_PROTO_DATA_LEN;
    assert_eq!(
        records,
        [
            (0, full),
            (full as u64, full),
            (2 * full as u64, full / 2),
            (6 << 20, 3 * (64 << 10))
        ]
    );
    let flatten = |v: &[(u64, Vec<u8>)]| -> Vec<(u64, u8)> {
        v.iter()
            .flat_map(|(o, b)| b.iter().enumerate().map(move |(i, x)| (o + i as u64, *x)))
            .collect()
    };
    assert_eq!(flatten(&got), flatten(&sent));
}

/// VM 0's `private.img` of `size` bytes holding `data_bytes` of data.
fn private_img(size: u64, data_bytes: u64) -> Begin {
    Begin {
        vm: 0,
        name: "private.img".into(),
        kind: FileKind::Regular,
        mode: 0o600,
        size,
        data_bytes,
    }
}
