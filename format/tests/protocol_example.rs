//! The worked example of docs/PROTOCOL.md, byte for byte.

use qbackup_format::protocol::write::Encoder;
use qbackup_format::protocol::{Begin, FileKind, Layout, Manifest, ManifestFile, ManifestVm};
use qbackup_format::qubes_xml::NetVm;
use sha2::{Digest, Sha256};

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn documented_example() {
    let mut e = Encoder::new(Vec::new());
    e.hello().unwrap();
    e.manifest(&Manifest {
        vms: vec![ManifestVm {
            name: "work".into(),
            class: "AppVM".into(),
            label: Some("red".into()),
            template: None,
            netvm: NetVm::Default,
            layout: Layout::Volumes,
            files: vec![ManifestFile {
                name: "private.img".into(),
                size: 4 << 20,
                data_bytes: 3,
            }],
        }],
    })
    .unwrap();
    e.begin(&Begin {
        vm: 0,
        name: "private.img".into(),
        kind: FileKind::Regular,
        mode: 0o644,
        size: 4 << 20,
    })
    .unwrap();
    e.data(4096, b"abc").unwrap();
    let digest = e.end().unwrap();
    e.summary().unwrap();
    let s = e.into_inner();

    let mut logical = vec![0u8; 4 << 20];
    logical[4096..4099].copy_from_slice(b"abc");
    assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&logical)));

    let mut want = String::new();
    want += "010000000a";
    want += &hex(b"QBKPSTRM");
    want += "0001";
    want += "020000003b00000001";
    want += &format!(
        "0004{}0005{}010003{}000000",
        hex(b"work"),
        hex(b"AppVM"),
        hex(b"red")
    );
    want += &format!(
        "00000001000b{}00000000004000000000000000000003",
        hex(b"private.img")
    );
    want += &format!(
        "030000001e00000000000b{}00000001a40000000000400000",
        hex(b"private.img")
    );
    want += &format!("040000000b0000000000001000{}", hex(b"abc"));
    want += &format!("0500000020{}", hex(&digest));
    want += "060000003c";
    want += "00000001";
    want += "0000000000000001";
    want += "0000000000400000";
    want += "0000000000000003";
    let got = hex(&s);
    assert_eq!(&got[..want.len()], want);
    assert_eq!(got.len(), want.len() + 64);
}
