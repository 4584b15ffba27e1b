//! A deliberately malicious verifier child for the restore tests (SPEC.md RST-2 … RST-6),
//! run by `qbackup-pack restore --verifier-cmd 'evil-child SCENARIO'`. Valid records come
//! from the format crate's encoder; the attack is written as raw bytes after them.
//! Most scenarios first send one complete, valid file (`work/private.img`), so a test can
//! check that it — and only it — is left in DIR.
//!
//! Not part of the product: it lives in `examples/` so `cargo test` builds it.

use std::io::{Read, Write};

use qbackup_format::protocol::write::Encoder;
use qbackup_format::protocol::{Begin, FileKind, Layout, Manifest, ManifestVm};
use qbackup_format::qubes_xml::NetVm;
use qbackup_format::ErrorClass;

/// Content of the complete file every scenario may send first.
const GOOD: &[u8] = b"complete and intact";

fn manifest() -> Manifest {
    let vm = |name: &str, class: &str, layout| ManifestVm {
        name: name.into(),
        class: class.into(),
        label: Some("red".into()),
        template: None,
        netvm: NetVm::Default,
        layout,
        backup_size: 0,
        expected_files: Vec::new(),
    };
    Manifest {
        vms: vec![
            vm("work", "AppVM", Layout::Volumes),
            vm("dom0", "AdminVM", Layout::Dom0Home),
        ],
    }
}

fn begin(vm: u32, name: &str, size: u64, data: u64) -> Begin {
    Begin {
        vm,
        name: name.into(),
        kind: FileKind::Regular,
        mode: 0o644,
        size,
        data_bytes: data,
    }
}

/// A raw record: type, big-endian length, payload.
fn raw(out: &mut Vec<u8>, record_type: u8, payload: &[u8]) {
    out.push(record_type);
    out.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    out.extend_from_slice(payload);
}

/// A raw begin payload (PROTO-5 layout), for names the encoder would refuse.
fn raw_begin(vm: u32, name: &str, size: u64, data: u64) -> Vec<u8> {
    let mut p = vm.to_be_bytes().to_vec();
    p.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
    p.extend_from_slice(name.as_bytes());
    p.push(0);
    p.extend_from_slice(&0o644u32.to_be_bytes());
    p.extend_from_slice(&size.to_be_bytes());
    p.extend_from_slice(&data.to_be_bytes());
    p
}

fn raw_data(offset: u64, bytes: &[u8]) -> Vec<u8> {
    let mut p = offset.to_be_bytes().to_vec();
    p.extend_from_slice(bytes);
    p
}

fn main() {
    let scenario = std::env::args().nth(1).unwrap_or_default();
    // Drain the archive like a real verifier would (and so the pump never blocks).
    std::thread::spawn(|| {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
    });
    let mut e = Encoder::new(Vec::new());
    e.hello().unwrap();
    e.manifest(&manifest()).unwrap();
    e.begin(&begin(0, "private.img", 1 << 20, GOOD.len() as u64))
        .unwrap();
    e.data(4096, GOOD).unwrap();
    e.end().unwrap();
    let mut out = e.into_inner();
    let mut exit = 0;
    let mut tail_forever = false;
    let mut silent = false;
    match scenario.as_str() {
        "good" | "exit-nonzero" | "linger" => {
            let mut e2 = Encoder::new(Vec::new());
            // Re-encode the whole stream with a second file so the summary is valid.
            e2.hello().unwrap();
            e2.manifest(&manifest()).unwrap();
            e2.begin(&begin(0, "private.img", 1 << 20, GOOD.len() as u64))
                .unwrap();
            e2.data(4096, GOOD).unwrap();
            e2.end().unwrap();
            e2.begin(&begin(1, "user/.bashrc", 5, 5)).unwrap();
            e2.data(0, b"alias").unwrap();
            e2.end().unwrap();
            e2.begin(&Begin {
                vm: 1,
                name: "user/link".into(),
                kind: FileKind::Symlink {
                    target: ".bashrc".into(),
                },
                mode: 0o777,
                size: 0,
                data_bytes: 0,
            })
            .unwrap();
            e2.end().unwrap();
            e2.begin(&Begin {
                vm: 1,
                name: "user/escape".into(),
                kind: FileKind::Symlink {
                    target: "../../../etc/passwd".into(),
                },
                mode: 0o777,
                size: 0,
                data_bytes: 0,
            })
            .unwrap();
            e2.end().unwrap();
            e2.summary().unwrap();
            out = e2.into_inner();
            if scenario == "exit-nonzero" {
                exit = 3;
            }
            silent = scenario == "linger";
        }
        "through-link" => {
            // A link that stays inside (EXT-4), then a file written through it (EXT-5).
            let mut e = Encoder::new(Vec::new());
            e.hello().unwrap();
            e.manifest(&manifest()).unwrap();
            e.begin(&begin(0, "private.img", 1 << 20, GOOD.len() as u64))
                .unwrap();
            e.data(4096, GOOD).unwrap();
            e.end().unwrap();
            e.begin(&Begin {
                vm: 1,
                name: "user/x".into(),
                kind: FileKind::Symlink { target: ".".into() },
                mode: 0o777,
                size: 0,
                data_bytes: 0,
            })
            .unwrap();
            e.end().unwrap();
            e.begin(&begin(1, "user/x/y", 1, 1)).unwrap();
            e.data(0, b"y").unwrap();
            e.end().unwrap();
            e.summary().unwrap();
            out = e.into_inner();
        }
        "traversal" => raw(&mut out, 0x03, &raw_begin(1, "user/../../../etc/x", 1, 1)),
        "traversal-volume" => raw(&mut out, 0x03, &raw_begin(0, "../root.img", 1, 1)),
        "beyond-size" => {
            raw(&mut out, 0x03, &raw_begin(0, "root.img", 10, 10));
            raw(&mut out, 0x04, &raw_data(0, &[7u8; 20]));
        }
        "lying-hash" => {
            raw(&mut out, 0x03, &raw_begin(0, "root.img", 4, 4));
            raw(&mut out, 0x04, &raw_data(0, b"evil"));
            raw(&mut out, 0x05, &[0u8; 32]);
        }
        "endless" => {
            raw(&mut out, 0x03, &raw_begin(0, "root.img", 4 << 20, 4 << 20));
            tail_forever = true;
        }
        "garbage" => out = b"this is not a protocol stream at all\n".repeat(100),
        "early-eof" => {
            raw(&mut out, 0x03, &raw_begin(0, "root.img", 100, 100));
            raw(&mut out, 0x04, &raw_data(0, &[1u8; 100]));
            out.truncate(out.len() - 40);
        }
        "silence" => {
            raw(&mut out, 0x03, &raw_begin(0, "root.img", 100, 100));
            raw(&mut out, 0x04, &raw_data(0, &[1u8; 50]));
            silent = true;
        }
        "unknown-record" => raw(&mut out, 0x42, b"surprise"),
        "duplicate" => {
            raw(
                &mut out,
                0x03,
                &raw_begin(0, "private.img", 1 << 20, GOOD.len() as u64),
            );
            raw(&mut out, 0x04, &raw_data(4096, GOOD));
        }
        "error-mid-file" => {
            let mut e = Encoder::new(Vec::new());
            e.hello().unwrap();
            e.manifest(&manifest()).unwrap();
            e.begin(&begin(0, "private.img", 1 << 20, GOOD.len() as u64))
                .unwrap();
            e.data(4096, GOOD).unwrap();
            e.end().unwrap();
            e.begin(&begin(0, "root.img", 100, 100)).unwrap();
            e.data(0, &[1u8; 50]).unwrap();
            e.error(
                ErrorClass::MacFailure,
                "chunk vm3/root.img.012 failed its MAC",
            )
            .unwrap();
            out = e.into_inner();
            exit = 12;
        }
        other => {
            eprintln!("evil-child: unknown scenario {other:?}");
            std::process::exit(2);
        }
    }
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(&out)
        .and_then(|()| stdout.flush())
        .is_err()
    {
        std::process::exit(exit);
    }
    if tail_forever {
        let chunk = [9u8; 1 << 20];
        let mut offset = 0u64;
        loop {
            let mut rec = Vec::new();
            raw(&mut rec, 0x04, &raw_data(offset, &chunk));
            if stdout.write_all(&rec).is_err() {
                std::process::exit(0);
            }
            offset += chunk.len() as u64;
        }
    }
    if silent {
        drop(stdout);
        // Keep stdout open and say nothing; the restore's time-out must end this.
        let mut never = [0u8; 1];
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
            let _ = std::io::empty().read(&mut never);
        }
    }
    std::process::exit(exit);
}
