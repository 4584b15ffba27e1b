//! A deliberately malicious verifier child for the restore tests (SPEC.md RST-2 … RST-6),
//! run by `qbackup-pack restore --verifier-cmd 'evil-child SCENARIO'`. Valid records come
//! from the format crate's encoder; the attack is written as raw bytes after them.
//! Most scenarios first send one complete, valid file (`work/private.img`), so a test can
//! check that it — and only it — is left in DIR.
//!
//! Not part of the product: it lives in `examples/` so `cargo test` builds it.

use std::io::{Read, Write};

use qbackup_format::protocol::write::Encoder;
use qbackup_format::protocol::{
    Begin, Device, FileKind, Firewall, Layout, Manifest, ManifestVm, VmConfig, VmEnd,
};
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
        others: Vec::new(),
    }
}

/// Hello, the manifest and an empty config per VM (PROTO-14).
fn start(e: &mut Encoder<Vec<u8>>, m: &Manifest) {
    e.hello().unwrap();
    e.manifest(m).unwrap();
    for i in 0..m.vms.len() {
        e.config(u32::try_from(i).unwrap(), &VmConfig::default())
            .unwrap();
    }
}

/// A one-VM manifest for the restore into Qubes: AppVM `work` on the mock host's
/// template `fedora-42`, expecting `private.img`.
fn qubes_manifest(name: &str) -> Manifest {
    Manifest {
        vms: vec![ManifestVm {
            name: name.into(),
            class: "AppVM".into(),
            label: Some("red".into()),
            template: Some("fedora-42".into()),
            netvm: NetVm::Named("sys-firewall".into()),
            layout: Layout::Volumes,
            backup_size: 0,
            expected_files: vec!["private.img".into()],
        }],
        others: Vec::new(),
    }
}

fn put_str(p: &mut Vec<u8>, s: &str) {
    p.extend_from_slice(&u16::try_from(s.len()).unwrap().to_be_bytes());
    p.extend_from_slice(s.as_bytes());
}

/// A raw config payload (PROTO-14) with one property, feature, tag and device option of
/// the attacker's choosing (the encoder would refuse them).
fn raw_config(prop: (&str, &str), feature: (&str, &str), tag: &str, option: &str) -> Vec<u8> {
    let mut p = 0u32.to_be_bytes().to_vec();
    p.extend_from_slice(&1u16.to_be_bytes());
    put_str(&mut p, prop.0);
    p.push(1);
    put_str(&mut p, prop.1);
    p.extend_from_slice(&1u16.to_be_bytes());
    put_str(&mut p, feature.0);
    put_str(&mut p, feature.1);
    p.extend_from_slice(&1u16.to_be_bytes());
    put_str(&mut p, tag);
    p.extend_from_slice(&1u16.to_be_bytes());
    put_str(&mut p, "pci");
    put_str(&mut p, "dom0");
    put_str(&mut p, "00_1f.3");
    p.push(1);
    p.extend_from_slice(&1u16.to_be_bytes());
    put_str(&mut p, "permissive");
    put_str(&mut p, option);
    p
}

/// The restore-into-Qubes scenarios: `qubes-*` (QRS-8).
fn qubes_scenario(scenario: &str) -> Option<(Vec<u8>, bool)> {
    let good_config = VmConfig {
        properties: vec![("memory".into(), Some("512".into()))],
        features: vec![("service.cups".into(), "1".into())],
        tags: vec!["personal".into()],
        devices: vec![Device {
            bus: "pci".into(),
            backend: "dom0".into(),
            port: "00_1f.3".into(),
            required: true,
            options: vec![("permissive".into(), "True".into())],
        }],
    };
    let good_end = VmEnd {
        firewall: if scenario == "qubes-fw-unreadable" {
            Firewall::Unreadable("firewall.xml: rule 1: invalid proto".into())
        } else {
            Firewall::Rules(vec![
                "action=accept dsthost=qubes-os.org".into(),
                "action=drop".into(),
            ])
        },
        notes: Some("restored notes\nline two".into()),
        menu_items: Some(vec!["firefox.desktop".into(), "xterm.desktop".into()]),
    };
    let private: Vec<u8> = (0..(3u32 << 20)).map(|i| (i % 251) as u8).collect();
    let mut e = Encoder::new(Vec::new());
    e.hello().unwrap();
    let name = if scenario == "qubes-host-name" {
        "sys-net"
    } else {
        "work"
    };
    e.manifest(&qubes_manifest(name)).unwrap();
    match scenario {
        "qubes-good"
        | "qubes-slow"
        | "qubes-die"
        | "qubes-host-name"
        | "qubes-size-lie"
        | "qubes-smuggle"
        | "qubes-fw-unreadable" => {
            e.config(0, &good_config).unwrap();
            // 3 MiB of data in an 8 MiB image: holes before and after.
            e.begin(&begin(0, "private.img", 8 << 20, private.len() as u64))
                .unwrap();
            let mut out = e.into_inner();
            for (i, piece) in private.chunks(1 << 20).enumerate() {
                if matches!(scenario, "qubes-slow" | "qubes-die") && i == 1 {
                    // Mid-import: the test interrupts the restore (slow), or the child
                    // dies by a signal (die).
                    let mut so = std::io::stdout().lock();
                    let _ = so.write_all(&out);
                    let _ = so.flush();
                    if scenario == "qubes-die" {
                        std::thread::sleep(std::time::Duration::from_millis(300));
                        // SAFETY: raising a signal on ourselves.
                        unsafe { libc::raise(libc::SIGKILL) };
                    }
                    loop {
                        std::thread::sleep(std::time::Duration::from_secs(3600));
                    }
                }
                let offset = (1u64 << 20) + (i as u64) * (1 << 20);
                if scenario == "qubes-size-lie" && i == 2 {
                    // More data than the begin record declared (PROTO-6).
                    raw(&mut out, 0x04, &raw_data(offset, piece));
                    raw(&mut out, 0x04, &raw_data(offset + (1 << 20), piece));
                    return Some((out, false));
                }
                raw(&mut out, 0x04, &raw_data(offset, piece));
            }
            // The valid tail is re-encoded so that the digests and transcript match.
            let mut e = Encoder::new(Vec::new());
            e.hello().unwrap();
            e.manifest(&qubes_manifest(name)).unwrap();
            e.config(0, &good_config).unwrap();
            e.begin(&begin(0, "private.img", 8 << 20, private.len() as u64))
                .unwrap();
            e.data(1 << 20, &private).unwrap();
            e.end().unwrap();
            if scenario == "qubes-smuggle" {
                let mut all = e.into_inner();
                // A vmend whose firewall line carries a second rule (FW-2).
                let mut p = 0u32.to_be_bytes().to_vec();
                p.push(1);
                p.extend_from_slice(&1u16.to_be_bytes());
                put_str(&mut p, "action=accept dsthost=a.example action=drop");
                p.extend_from_slice(&[0, 0]);
                raw(&mut all, 0x09, &p);
                return Some((all, false));
            }
            e.vm_end(0, &good_end).unwrap();
            e.summary().unwrap();
            Some((e.into_inner(), false))
        }
        "qubes-framing" => Some((
            with_raw_config(e, raw_config(("mem ory", "1"), ("ok", "1"), "ok", "True")),
            false,
        )),
        "qubes-long-name" => Some((
            with_raw_config(
                e,
                raw_config((&"m".repeat(65), "1"), ("ok", "1"), "ok", "True"),
            ),
            false,
        )),
        "qubes-created-by" => Some((
            with_raw_config(
                e,
                raw_config(("memory", "1"), ("ok", "1"), "created-by-sys-usb", "True"),
            ),
            false,
        )),
        "qubes-feature-ctrl" => Some((
            with_raw_config(
                e,
                raw_config(("memory", "1"), ("ok", "a\u{7}b"), "ok", "True"),
            ),
            false,
        )),
        "qubes-device-quote" => Some((
            with_raw_config(
                e,
                raw_config(("memory", "1"), ("ok", "1"), "ok", "True' required='True"),
            ),
            false,
        )),
        "qubes-template-loop" => {
            let mut e = Encoder::new(Vec::new());
            e.hello().unwrap();
            let dvm = |name: &str, t: &str| ManifestVm {
                name: name.into(),
                class: "DispVM".into(),
                label: Some("red".into()),
                template: Some(t.into()),
                netvm: NetVm::Default,
                layout: Layout::Volumes,
                backup_size: 0,
                expected_files: Vec::new(),
            };
            e.manifest(&Manifest {
                vms: vec![dvm("loop-a", "loop-b"), dvm("loop-b", "loop-a")],
                others: Vec::new(),
            })
            .unwrap();
            let tfd = VmConfig {
                properties: vec![("template_for_dispvms".into(), Some("True".into()))],
                ..VmConfig::default()
            };
            e.config(0, &tfd).unwrap();
            e.config(1, &tfd).unwrap();
            e.vm_end(0, &VmEnd::default()).unwrap();
            e.vm_end(1, &VmEnd::default()).unwrap();
            e.summary().unwrap();
            Some((e.into_inner(), false))
        }
        _ => None,
    }
}

/// The stream so far, then a raw config record.
fn with_raw_config(e: Encoder<Vec<u8>>, payload: Vec<u8>) -> Vec<u8> {
    let mut out = e.into_inner();
    raw(&mut out, 0x08, &payload);
    out
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
    if let Some((out, _)) = qubes_scenario(&scenario) {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(&out).and_then(|()| stdout.flush());
        std::process::exit(0);
    }
    let mut e = Encoder::new(Vec::new());
    start(&mut e, &manifest());
    e.begin(&begin(0, "private.img", 1 << 20, GOOD.len() as u64))
        .unwrap();
    e.data(4096, GOOD).unwrap();
    e.end().unwrap();
    let mut out = e.into_inner();
    // The same, with the first VM closed (for attacks on the second VM's files).
    let closed = || {
        let mut e = Encoder::new(Vec::new());
        start(&mut e, &manifest());
        e.begin(&begin(0, "private.img", 1 << 20, GOOD.len() as u64))
            .unwrap();
        e.data(4096, GOOD).unwrap();
        e.end().unwrap();
        e.vm_end(0, &VmEnd::default()).unwrap();
        e.into_inner()
    };
    let mut exit = 0;
    let mut tail_forever = false;
    let mut silent = false;
    match scenario.as_str() {
        "good" | "exit-nonzero" | "linger" => {
            let mut e2 = Encoder::new(Vec::new());
            // Re-encode the whole stream with a second file so the summary is valid.
            start(&mut e2, &manifest());
            e2.begin(&begin(0, "private.img", 1 << 20, GOOD.len() as u64))
                .unwrap();
            e2.data(4096, GOOD).unwrap();
            e2.end().unwrap();
            e2.vm_end(0, &VmEnd::default()).unwrap();
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
            e2.vm_end(1, &VmEnd::default()).unwrap();
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
            start(&mut e, &manifest());
            e.begin(&begin(0, "private.img", 1 << 20, GOOD.len() as u64))
                .unwrap();
            e.data(4096, GOOD).unwrap();
            e.end().unwrap();
            e.vm_end(0, &VmEnd::default()).unwrap();
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
            e.vm_end(1, &VmEnd::default()).unwrap();
            e.summary().unwrap();
            out = e.into_inner();
        }
        "traversal" => {
            out = closed();
            raw(&mut out, 0x03, &raw_begin(1, "user/../../../etc/x", 1, 1))
        }
        "traversal-volume" => raw(&mut out, 0x03, &raw_begin(0, "../root.img", 1, 1)),
        "beyond-size" => {
            raw(&mut out, 0x03, &raw_begin(0, "root.img", 10, 10));
            raw(&mut out, 0x04, &raw_data(0, &[7u8; 20]));
        }
        "lying-hash" => {
            raw(&mut out, 0x03, &raw_begin(0, "root.img", 4, 4));
            raw(&mut out, 0x04, &raw_data(0, b"evil"));
            raw(&mut out, 0x05, &[0u8; 16]);
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
            start(&mut e, &manifest());
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
