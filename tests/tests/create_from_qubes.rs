//! `qbackup-pack create --from-qubes` (SPEC.md FQ-1 … FQ-5) in a round trip: a model host
//! served by the mock qubesd (`qbackup_tests::mock_qubesd`), whose volumes are files under a
//! test root standing in for the LVM device nodes and the file-reflink pool directory
//! (`QBACKUP_STORAGE_ROOT`), is backed up; the real `qbackup-verify verify` checks the
//! archive; `qbackup-pack restore --into-qubes --restore-devices` restores it into a
//! second, fresh mock host; and the second host's qubes must equal the first's: class,
//! label, template, netvm and every other explicitly set property, features (menu items
//! included), tags (less qubesd's `created-by-*` and the restore's own), firewall rules,
//! notes, device assignments and every saved volume byte for byte; dom0's home file for
//! file.
//!
//! The host has every kind the issue names: AppVMs (one running, one based on a template
//! in the backup), a StandaloneVM and a TemplateVM in the file-reflink pool, a DispVM
//! template and a named DispVM of it (no saved volume: `empty`), a NetVM with a PCI
//! device, and dom0's home; one LV is inactive and activated through `QBACKUP_LVM`. The
//! default selection (`include_in_backups`, `-x`) is what is backed up.
//!
//! Also here: the refusals of FQ-3 (a running qube on a `file` pool, a driver qbackup
//! cannot read) before anything is written.
//!
//! Requirements checked here: FQ-1 (default selection, `-x`), FQ-2 (every setting of the
//! host's qubes carried), FQ-3 (LV activation, the running-qube note, the refusals), FQ-4
//! (the files of each qube), FQ-5 (dom0's home), FW-5 (qubesd's rules through
//! firewall.xml), QAPI-5 (R4.3 and R4.2 read calls), QRS-3 (devices by Assign on R4.3 and by
//! a persistent Attach on R4.2).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qbackup_format::firewall::Rule;
use qbackup_tests::binaries::{packer_beside, verifier_beside};
use qbackup_tests::mock_qubesd::{
    Assignment, Driver, Host, MockQubesd, Pool, Release, VmClass, Volume,
};
use qbackup_tests::sha256_file;

const PASS: &str = "round trip";
/// The file-reflink pool of the model host.
const REFLINK_DIR: &str = "/var/lib/qubes-reflink";
/// The qubes the backup must hold, by default selection.
const BACKED_UP: [&str; 8] = [
    "work",
    "on-custom",
    "standalone",
    "tpl-custom",
    "dvm-web",
    "disp-web",
    "sys-vpn",
    "unused-net",
];
/// Excluded with `-x` (the host's own templates and service qubes, which the second host
/// has too).
const EXCLUDED: [&str; 5] = [
    "fedora-42",
    "debian-13",
    "sys-net",
    "sys-firewall",
    "default-dvm",
];

/// A path in this test's `target/<profile>/`, beside which the binaries are found.
fn anchor() -> String {
    let exe = std::env::current_exe().expect("current_exe");
    let profile = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps");
    profile
        .join("create-from-qubes-anchor")
        .display()
        .to_string()
}

fn packer() -> PathBuf {
    packer_beside(&anchor())
}

fn verifier() -> PathBuf {
    verifier_beside(&anchor())
}

/// Deterministic bytes for a volume (xorshift of the seed).
fn pattern(seed: &str, len: usize) -> Vec<u8> {
    let mut x = seed.bytes().fold(0x9e37_79b9_7f4a_7c15_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A sparse volume image of `size` bytes: data at the start and in the middle, holes
/// between (the packer's hole scan and the restore's import of zeros are both exercised).
fn write_image(path: &Path, seed: &str, size: u64) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&pattern(seed, 96 * 1024)).unwrap();
    f.set_len(size).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&pattern(&format!("{seed}/mid"), 8192), size / 2)
        .unwrap();
}

/// Where the packer will read `vm`'s `volume` under the test root.
fn image_path(root: &Path, host: &Host, vm: &str, volume: &str) -> PathBuf {
    let v: &Volume = &host.vms[vm].volumes[volume];
    match host.pools[&v.pool].driver {
        Driver::LvmThin => root.join("dev").join(&v.vid),
        _ => root
            .join(host.pools[&v.pool].location.trim_start_matches('/'))
            .join(format!("{}.img", v.vid)),
    }
}

struct Source {
    _dir: tempfile::TempDir,
    root: PathBuf,
    home: PathBuf,
    pass: PathBuf,
    lvm: PathBuf,
    lvm_log: PathBuf,
    host: Host,
}

/// The model host (of `release`) and its files.
fn source_host(release: Release) -> Source {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let root = dir.path().join("root");
    let mut host = Host::typical();
    host.release = release;
    // R4.2 records a persistent attachment as auto-attach and has no notes API.
    let (mode, notes) = match release {
        Release::R4_3 => ("required", true),
        Release::R4_2 => ("auto-attach", false),
    };
    host.pools.insert(
        "reflink".into(),
        Pool {
            driver: Driver::FileReflink,
            location: REFLINK_DIR.into(),
            revisions_to_keep: 1,
        },
    );
    let set = |vm: &mut qbackup_tests::mock_qubesd::Vm, props: &[(&str, &str)]| {
        for (k, v) in props {
            vm.properties.insert((*k).into(), (*v).into());
        }
    };
    // In the reflink pool: a TemplateVM, an AppVM on it, a StandaloneVM.
    host.default_pool = "reflink".into();
    let tpl = host.add_vm("tpl-custom", VmClass::TemplateVM, None, "black");
    set(tpl, &[("memory", "600")]);
    tpl.features
        .insert("default-menu-items".into(), "xterm.desktop".into());
    let sa = host.add_vm("standalone", VmClass::StandaloneVM, None, "purple");
    set(
        sa,
        &[
            ("virt_mode", "hvm"),
            ("kernel", ""),
            ("qrexec_timeout", "120"),
        ],
    );
    if notes {
        sa.notes = "installed from an ISO".into();
    }
    host.default_pool = "vm-pool".into();
    host.add_vm("on-custom", VmClass::AppVM, Some("tpl-custom"), "yellow");
    // In LVM: a NetVM with a PCI device, a DispVM template and a named DispVM of it, a
    // running AppVM with everything set.
    let vpn = host.add_vm("sys-vpn", VmClass::AppVM, Some("fedora-42"), "green");
    set(
        vpn,
        &[
            ("provides_network", "True"),
            ("netvm", "sys-net"),
            ("autostart", "True"),
        ],
    );
    vpn.devices.push(Assignment {
        bus: "pci".into(),
        backend: "dom0".into(),
        port: "00_14.0".into(),
        device_id: "*".into(),
        mode: mode.into(),
        options: BTreeMap::from([("no-strict-reset".into(), "True".into())]),
    });
    vpn.firewall = vec![
        "action=accept dsthost=vpn.example.org proto=udp dstports=1194-1194".into(),
        "action=drop".into(),
    ];
    let unused = host.add_vm("unused-net", VmClass::AppVM, Some("fedora-42"), "gray");
    set(unused, &[("provides_network", "True"), ("netvm", "")]);
    let dvm = host.add_vm("dvm-web", VmClass::AppVM, Some("fedora-42"), "red");
    set(
        dvm,
        &[("template_for_dispvms", "True"), ("netvm", "sys-vpn")],
    );
    dvm.features.insert("appmenus-dispvm".into(), "1".into());
    host.add_vm("disp-web", VmClass::DispVM, Some("dvm-web"), "red");
    let work = host.add_vm("work", VmClass::AppVM, Some("fedora-42"), "blue");
    set(
        work,
        &[
            ("memory", "800"),
            ("maxmem", "4000"),
            ("vcpus", "2"),
            ("netvm", "sys-vpn"),
            ("default_dispvm", "dvm-web"),
        ],
    );
    work.features.insert(
        "menu-items".into(),
        "org.gnome.Nautilus.desktop firefox.desktop".into(),
    );
    work.features.insert("service.crond".into(), "1".into());
    work.features.insert("backup-content".into(), "1".into());
    work.tags.insert("project-x".into());
    work.firewall = vec![
        "action=accept specialtarget=dns".into(),
        "action=accept proto=icmp".into(),
        "action=accept expire=4102444800 proto=tcp dstports=22-22".into(),
        "action=accept dst4=192.168.0.0/24 proto=tcp dstports=443-443".into(),
        "action=drop comment=everything else".into(),
    ];
    if notes {
        work.notes = "For Your Eyes Only\n\tline two\n".into();
    }
    work.running = true;
    let scratch = host.add_vm("scratch", VmClass::AppVM, Some("fedora-42"), "orange");
    set(scratch, &[("include_in_backups", "False")]);

    // Images of every saved volume of the backed-up qubes, sized as qubesd reports them.
    for name in BACKED_UP {
        let vols: Vec<String> = host.vms[name]
            .volumes
            .iter()
            .filter(|(_, v)| v.save_on_stop)
            .map(|(n, _)| n.clone())
            .collect();
        for (i, vol) in vols.iter().enumerate() {
            let size = (3 + i as u64) << 20;
            host.vms
                .get_mut(name)
                .unwrap()
                .volumes
                .get_mut(vol)
                .unwrap()
                .size = size;
            write_image(
                &image_path(&root, &host, name, vol),
                &format!("{name}/{vol}"),
                size,
            );
        }
    }
    // dvm-web's private LV is inactive: its image waits in the "VG" until lvchange.
    let inactive = image_path(&root, &host, "dvm-web", "private");
    let store = dir.path().join("inactive-lvs");
    std::fs::create_dir(&store).unwrap();
    std::fs::rename(&inactive, store.join("qubes_dom0_vm-dvm-web-private")).unwrap();
    let lvm_log = dir.path().join("lvm.log");
    let lvm = dir.path().join("lvm");
    std::fs::write(
        &lvm,
        format!(
            "#!/bin/sh\n# A stand-in for lvm: `lvchange --activate=y -- VG/LV` moves the image in.\n\
             echo \"$*\" >> '{log}'\n\
             [ \"$1 $2 $3\" = 'lvchange --activate=y --' ] || exit 3\n\
             mv -- '{store}'/\"$(echo \"$4\" | tr / _)\" '{root}/dev/'\"$4\"\n",
            log = lvm_log.display(),
            store = store.display(),
            root = root.display(),
        ),
    )
    .unwrap();
    std::fs::set_permissions(&lvm, std::fs::Permissions::from_mode(0o755)).unwrap();

    let home = dir.path().join("home").join("user");
    std::fs::create_dir_all(home.join(".config/qubes")).unwrap();
    std::fs::write(home.join("notes.md"), "dom0 notes\n").unwrap();
    std::fs::write(home.join(".config/qubes/settings"), pattern("home", 5000)).unwrap();
    let pass = dir.path().join("pass");
    std::fs::write(&pass, PASS).unwrap();
    Source {
        root,
        home,
        pass,
        lvm,
        lvm_log,
        host,
        _dir: dir,
    }
}

fn create(src: &Source, mock: &MockQubesd, out: &Path, extra: &[&str]) -> Output {
    let mut cmd = Command::new(packer());
    cmd.args([
        "create",
        "--from-qubes",
        "--scrypt-log-n",
        "10",
        "--no-progress",
    ])
    .arg("--passphrase-file")
    .arg(&src.pass)
    .arg("--dom0-home")
    .arg(&src.home)
    .arg("--out")
    .arg(out)
    .args(extra)
    .env("QBACKUP_STORAGE_ROOT", &src.root)
    .env("QBACKUP_LVM", &src.lvm)
    .env_remove("QBACKUP_PASSPHRASE");
    for (k, v) in mock.env() {
        cmd.env(k, v);
    }
    cmd.output().expect("spawning qbackup-pack create")
}

fn excluded_args() -> Vec<&'static str> {
    EXCLUDED.iter().flat_map(|n| ["-x", n]).collect()
}

fn tags_of(vm: &qbackup_tests::mock_qubesd::Vm) -> BTreeSet<String> {
    vm.tags
        .iter()
        .filter(|t| !t.starts_with("created-by-") && !t.starts_with("restored-from-backup-at-"))
        .cloned()
        .collect()
}

fn rules(lines: &[String], parse: fn(&str) -> qbackup_format::Result<Rule>) -> Vec<Rule> {
    lines
        .iter()
        .map(|l| parse(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn files_under(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, sha256_file(&p));
            }
        }
    }
    out
}

/// FQ-1 … FQ-5, QRS: create from an R4.3 host, verify, restore into a second host, and
/// compare the hosts.
#[test]
fn backup_of_a_qubes_host_restores_to_an_equal_host() {
    round_trip(Release::R4_3);
}

/// As above on R4.2's Admin API: devices from `admin.vm.device.BUS.List` (persistent
/// lines only), no notes API.
#[test]
fn backup_of_an_r42_host_restores_to_an_equal_host() {
    round_trip(Release::R4_2);
}

fn round_trip(release: Release) {
    let src = source_host(release);
    let first = MockQubesd::start(src.host.clone());
    let work_dir = tempfile::tempdir().unwrap();
    let archive = work_dir.path().join("host.qbackup");
    let out = create(&src, &first, &archive, &excluded_args());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "create failed: {stderr}");
    assert!(
        stderr.contains(
            "VM work: volume private: work is running; backed up as it was when it last started"
        ),
        "the running qube is reported: {stderr}"
    );
    // The inactive LV was activated, once, and nothing else was.
    let log = std::fs::read_to_string(&src.lvm_log).unwrap();
    assert_eq!(
        log,
        "lvchange --activate=y -- qubes_dom0/vm-dvm-web-private\n"
    );
    // Only reads reached qubesd.
    assert!(first.calls().iter().all(|c| c.method.contains(".List")
        || c.method.contains(".Get")
        || c.method.contains(".Info")
        || c.method.ends_with(".Assigned")));

    // The real verifier accepts it.
    let v = Command::new(verifier())
        .args(["verify", "--json", "--passphrase-file"])
        .arg(&src.pass)
        .arg(&archive)
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "verify: {}{}",
        String::from_utf8_lossy(&v.stdout),
        String::from_utf8_lossy(&v.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&v.stdout).unwrap();
    let mut included = BTreeMap::new();
    for vm in report["vms"].as_array().expect("vms") {
        if vm["included"] == true {
            let files: Vec<String> = vm["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| {
                    let path = f["path"].as_str().unwrap();
                    path.split_once('/')
                        .map_or(path, |(_, name)| name)
                        .to_owned()
                })
                .collect();
            included.insert(vm["name"].as_str().unwrap().to_owned(), files);
        }
    }
    let want: BTreeSet<&str> = BACKED_UP.iter().copied().chain(["dom0"]).collect();
    assert_eq!(
        included.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        want,
        "the default selection less -x and include_in_backups=False"
    );
    // FQ-4: saved volumes in qubesd's order, firewall.xml only where the rules are not
    // the default, notes.txt where there are notes, `empty` for a qube with neither.
    let (work_files, standalone_files) = match release {
        Release::R4_3 => (
            &["private.img", "firewall.xml", "notes.txt"][..],
            &["root.img", "private.img", "notes.txt"][..],
        ),
        Release::R4_2 => (
            &["private.img", "firewall.xml"][..],
            &["root.img", "private.img"][..],
        ),
    };
    for (name, files) in [
        ("work", work_files),
        ("standalone", standalone_files),
        ("tpl-custom", &["root.img", "private.img"]),
        ("sys-vpn", &["private.img", "firewall.xml"]),
        ("unused-net", &["private.img"]),
        ("disp-web", &["empty"]),
        ("dom0", &["user"]),
    ] {
        assert_eq!(included[name], files, "{name}: archive files");
    }

    // Restore into a fresh host.
    let mut fresh = Host::typical();
    fresh.release = release;
    let second = MockQubesd::start(fresh);
    let home2 = work_dir.path().join("home2");
    std::fs::create_dir(&home2).unwrap();
    let mut cmd = Command::new(packer());
    cmd.args(["restore", "--into-qubes"])
        .arg(&archive)
        .arg("-p")
        .arg(&src.pass)
        .args(["--yes", "--json", "--restore-devices", "--home-dir"])
        .arg(&home2)
        .env("USER", "user")
        .env_remove("SUDO_USER")
        .env_remove("QBACKUP_PASSPHRASE");
    for (k, v) in second.env() {
        cmd.env(k, v);
    }
    let r = cmd.output().unwrap();
    assert!(
        r.status.success(),
        "restore: {}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );

    let (a, b) = (src.host.clone(), second.host());
    for name in BACKED_UP {
        let (x, y) = (
            &a.vms[name],
            b.vms.get(name).unwrap_or_else(|| panic!("{name} restored")),
        );
        assert_eq!(x.class, y.class, "{name}: class");
        assert_eq!(x.properties, y.properties, "{name}: properties");
        assert_eq!(
            x.features
                .iter()
                .filter(|(k, _)| !k.starts_with("backup-"))
                .collect::<Vec<_>>(),
            y.features.iter().collect::<Vec<_>>(),
            "{name}: features"
        );
        assert_eq!(tags_of(x), tags_of(y), "{name}: tags");
        assert_eq!(
            rules(&x.firewall, Rule::parse_qubesd_line),
            rules(&y.firewall, Rule::parse_line),
            "{name}: firewall"
        );
        assert_eq!(x.notes, y.notes, "{name}: notes");
        let devices = |v: &qbackup_tests::mock_qubesd::Vm| {
            v.devices
                .iter()
                .map(|d| {
                    (
                        d.bus.clone(),
                        d.backend.clone(),
                        d.port.clone(),
                        d.mode.clone(),
                        d.options.clone(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(devices(x), devices(y), "{name}: devices");
        for (vol, v) in &x.volumes {
            if !v.save_on_stop {
                continue;
            }
            let restored = second
                .volume_file(name, vol)
                .unwrap_or_else(|| panic!("{name}:{vol} imported"));
            let original = image_path(&src.root, &a, name, vol);
            assert_eq!(
                sha256_file(&original),
                sha256_file(&restored),
                "{name}:{vol} bytes"
            );
        }
    }
    // dom0's home, file for file.
    let restored_home = std::fs::read_dir(&home2)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("home-restore-")
        })
        .expect("home-restore-* directory")
        .join("dom0-home/user");
    assert_eq!(files_under(&src.home), files_under(&restored_home));
}

/// FQ-3: what cannot be read as qubesd's backup reads it is refused before the output
/// exists: a running qube on a `file` pool, a pool driver qbackup cannot read, a name
/// not on the host.
#[test]
fn unreadable_pools_and_running_file_volumes_are_refused() {
    let src = source_host(Release::R4_3);
    let work_dir = tempfile::tempdir().unwrap();
    for (case, change, vm, want) in [
        (
            "running on file",
            (|h: &mut Host| {
                let v = h.add_vm("legacy", VmClass::StandaloneVM, None, "red");
                v.running = true;
                for vol in v.volumes.values_mut() {
                    vol.pool = "varlibqubes".into();
                }
            }) as fn(&mut Host),
            "legacy",
            "cannot export a running volume",
        ),
        (
            "unknown driver",
            |h: &mut Host| {
                h.pools.insert(
                    "remote".into(),
                    Pool {
                        driver: Driver::LinuxKernel,
                        location: "/srv".into(),
                        revisions_to_keep: 0,
                    },
                );
                let v = h.add_vm("odd", VmClass::StandaloneVM, None, "red");
                for vol in v.volumes.values_mut() {
                    vol.pool = "remote".into();
                }
            },
            "odd",
            "which qbackup cannot read",
        ),
        (
            "no such qube",
            |_: &mut Host| {},
            "nonexistent",
            "no qube named",
        ),
    ] {
        let mut host = src.host.clone();
        change(&mut host);
        let mock = MockQubesd::start(host);
        let archive = work_dir.path().join(format!("{case}.bin"));
        let out = create(&src, &mock, &archive, &[vm]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{case}: {stderr}");
        assert!(stderr.contains(want), "{case}: {stderr}");
        assert!(!archive.exists(), "{case}: no archive");
        assert!(!work_dir.path().join(format!("{case}.bin.partial")).exists());
    }
}
