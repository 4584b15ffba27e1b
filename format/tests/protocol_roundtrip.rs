//! PROTO-*: streams the encoder writes decode to the same records (proptest), and the
//! digest a consumer computes with [`RecordDigest`] agrees with the encoder's and the
//! decoder's own check (PROTO-7).

use proptest::prelude::*;
use qbackup_format::protocol::read::Decoder;
use qbackup_format::protocol::write::Encoder;
use qbackup_format::protocol::{
    Begin, FileHasher, FileKind, Layout, Manifest, ManifestVm, Record, RecordDigest,
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
    files: Vec<TestFile>,
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
    (0u8..3, 0usize..5, any::<bool>(), 0u8..3, 0usize..3).prop_flat_map(
        move |(l, n, lab, net, exp)| {
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
            let files: Vec<_> = (0..n).map(|k| file_strategy(layout, k)).collect();
            files.prop_map(move |files| TestVm {
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
        },
    )
}

fn stream_strategy() -> impl Strategy<Value = Vec<TestVm>> {
    (0usize..4).prop_flat_map(|n| (0..n).map(vm_strategy).collect::<Vec<_>>())
}

/// The order VMs are sent in: manifest order, or reversed for odd `split` (PROTO-4
/// allows any order as long as each VM's files are contiguous).
fn order(n: usize, split: usize) -> Vec<usize> {
    if split % 2 == 1 {
        (0..n).rev().collect()
    } else {
        (0..n).collect()
    }
}

/// Encodes `vms`, splitting each run at `split` to exercise record boundaries.
fn encode(vms: &[TestVm], split: usize) -> Vec<u8> {
    let mut e = Encoder::new(Vec::new());
    e.hello().unwrap();
    e.manifest(&Manifest {
        vms: vms.iter().map(|v| v.vm.clone()).collect(),
    })
    .unwrap();
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
    }
    e.summary().unwrap();
    e.into_inner()
}

type Runs = Vec<(u64, Vec<u8>)>;

/// What a consumer sees, with its own digest check too (PROTO-7).
#[derive(Debug, PartialEq)]
struct Seen {
    manifest: Manifest,
    files: Vec<(Begin, Runs)>,
}

fn consume(bytes: &[u8]) -> qbackup_format::Result<Seen> {
    let mut d = Decoder::new(bytes);
    let mut seen = Seen {
        manifest: Manifest::default(),
        files: Vec::new(),
    };
    let mut hasher = None;
    while let Some(r) = d.read_record()? {
        match r {
            Record::Hello { version } => assert_eq!(version, qbackup_format::protocol::VERSION),
            Record::Manifest(m) => seen.manifest = m.clone(),
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
            Record::End { sha256 } => {
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
    fn round_trip(vms in stream_strategy(), split in 0usize..4000) {
        let bytes = encode(&vms, split);
        let seen = consume(&bytes).unwrap();
        prop_assert_eq!(&seen.manifest.vms, &vms.iter().map(|v| v.vm.clone()).collect::<Vec<_>>());
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
    e.manifest(&Manifest { vms: vec![vm] }).unwrap();
    e.begin(&Begin {
        vm: 0,
        name: "private.img".into(),
        kind: FileKind::Regular,
        mode: 0o600,
        size,
        data_bytes: size - 5,
    })
    .unwrap();
    let data = vec![7u8; (size - 5) as usize];
    e.data(5, &data).unwrap();
    let sent = e.end().unwrap();
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
            Record::End { sha256 } => {
                assert_eq!(sha256, sent);
                // The logical SHA-256 (holes as zeros) is a different digest.
                let mut full = vec![0u8; 5];
                full.extend_from_slice(&logical);
                assert_eq!(
                    h.take().unwrap().finish(),
                    <[u8; 32]>::from(sha2::Sha256::digest(&full))
                );
                assert_ne!(sent, <[u8; 32]>::from(sha2::Sha256::digest(&full)));
            }
            _ => {}
        }
    }
    assert_eq!(data_records, 3);
}
