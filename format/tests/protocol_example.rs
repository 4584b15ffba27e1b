//! The worked example of SPEC.md §21 (PROTO-2), byte for byte.

use qbackup_format::protocol::read::Decoder;
use qbackup_format::protocol::write::Encoder;
use qbackup_format::protocol::{Begin, FileKind, Manifest, ManifestVm, Record, VmConfig, VmEnd};
use qbackup_format::qubes_xml::NetVm;
use sha2::{Digest, Sha256};

mod common;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The file digest of the example (PROTO-7), and the transcript of its summary (PROTO-8):
/// pinned, so that a change of either is a change of the example SPEC.md shows.
const FILE_DIGEST: &str = "9b98dd6bf116a9703baf20b60ed0fb82";
const TRANSCRIPT: &str = "bb58339487cae9b30130d929faab2cae081199f4fe4153c5c5e86229a848ba0c";

/// PROTO-2, PROTO-3, PROTO-5 … PROTO-8, PROTO-14, PROTO-15: the SPEC example, encoded and
/// decoded.
#[test]
fn documented_example() {
    let mut e = Encoder::new(Vec::new());
    e.hello().unwrap();
    e.manifest(&Manifest {
        vms: vec![ManifestVm {
            label: Some("red".into()),
            netvm: NetVm::Default,
            ..common::work_vm(&["private.img"])
        }],
        others: Vec::new(),
    })
    .unwrap();
    e.config(0, &VmConfig::default()).unwrap();
    e.begin(&Begin {
        vm: 0,
        name: "private.img".into(),
        kind: FileKind::Regular,
        mode: 0o644,
        size: 4 << 20,
        data_bytes: 3,
    })
    .unwrap();
    e.data(4096, b"abc").unwrap();
    let digest = e.end().unwrap();
    e.vm_end(0, &VmEnd::default()).unwrap();
    let summary = e.summary().unwrap();
    let s = e.into_inner();

    // PROTO-7: the file digest covers the announced sizes and each data record.
    let mut d = Vec::new();
    d.extend_from_slice(b"qbackup-file-v5\0");
    d.extend_from_slice(&(4u64 << 20).to_be_bytes());
    d.extend_from_slice(&3u64.to_be_bytes());
    d.extend_from_slice(&4096u64.to_be_bytes());
    d.extend_from_slice(&3u32.to_be_bytes());
    d.extend_from_slice(b"abc");
    assert_eq!(digest, xxhash_rust::xxh3::xxh3_128(&d).to_be_bytes());
    let mut want = String::new();
    want += "010000000a";
    want += &hex(b"QBKPSTRM");
    want += "0005";
    want += "020000003700000001";
    want += &format!(
        "0004{}0005{}010003{}000000",
        hex(b"work"),
        hex(b"AppVM"),
        hex(b"red")
    );
    want += &format!("000000000000000000000001000b{}", hex(b"private.img"));
    want += "00000000"; // no other VMs
    want += "080000000c"; // config of VM 0: no properties, features, tags or devices
    want += "00000000 0000 0000 0000 0000";
    want += &format!(
        "030000002600000000000b{}00000001a400000000004000000000000000000003",
        hex(b"private.img")
    );
    want += &format!("040000000b0000000000001000{}", hex(b"abc"));
    want += &format!("0500000010{}", hex(&digest));
    want += "0900000007"; // vmend of VM 0: no firewall, notes or menu items
    want += "00000000 00 00 00";
    want += "060000003c";
    want += "00000001";
    want += "0000000000000001";
    want += "0000000000400000";
    want += "0000000000000003";
    want += &hex(&summary.transcript);
    assert_eq!(hex(&s), want.replace(' ', ""));
    assert_eq!(hex(&digest), FILE_DIGEST);
    assert_eq!(hex(&summary.transcript), TRANSCRIPT);
    // The layout SPEC.md shows, one record a line (`--nocapture` prints it).
    let lines = spec_lines(&s);
    println!("{lines}");
    assert_eq!(lines.lines().count(), 8);

    // The transcript covers everything before the summary except data file bytes.
    let mut t = Sha256::new();
    let data_at = s.windows(5).position(|w| w == [4, 0, 0, 0, 11]).unwrap();
    t.update(&s[..data_at + 13]);
    t.update(&s[data_at + 16..s.len() - 65]);
    assert_eq!(<[u8; 32]>::from(t.finalize()), summary.transcript);

    let mut d = Decoder::new(&s[..]);
    let mut kinds = Vec::new();
    while let Some(r) = d.read_record().unwrap() {
        kinds.push(match r {
            Record::Hello { version } => format!("hello {version}"),
            Record::Manifest(m) => format!("manifest {} + {}", m.vms.len(), m.others.len()),
            Record::Config { vm, config } => {
                assert_eq!(config, VmConfig::default());
                format!("config {vm}")
            }
            Record::VmEnd { vm, end } => {
                assert_eq!(end, VmEnd::default());
                format!("vmend {vm}")
            }
            Record::Begin(b) => format!("begin {}", b.name),
            Record::Data { offset, bytes } => format!("data {offset} {}", bytes.len()),
            Record::End { .. } => "end".into(),
            Record::Summary(s) => format!("summary {}", s.files),
            Record::Error { .. } => "error".into(),
        });
    }
    assert_eq!(
        kinds,
        [
            "hello 5",
            "manifest 1 + 0",
            "config 0",
            "begin private.img",
            "data 4096 3",
            "end",
            "vmend 0",
            "summary 1"
        ]
    );
}

/// Each record as `type length payload` in hex (for SPEC.md).
fn spec_lines(s: &[u8]) -> String {
    let mut out = Vec::new();
    let mut at = 0;
    while at < s.len() {
        let len = u32::from_be_bytes(s[at + 1..at + 5].try_into().unwrap()) as usize;
        out.push(format!(
            "{} {}  {}",
            hex(&s[at..at + 1]),
            hex(&s[at + 1..at + 5]),
            hex(&s[at + 5..at + 5 + len])
        ));
        at += 5 + len;
    }
    out.join("\n")
}
