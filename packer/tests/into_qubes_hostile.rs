//! `qbackup-pack restore --into-qubes` against a deliberately malicious verifier child
//! (`examples/evil-child.rs qubes-*`) and the mock qubesd (SPEC.md QRS-8): every attack on
//! the settings a restore applies is refused with no Admin API call made on its behalf,
//! and an interrupted restore (SIGINT, the child killed, a failing import) leaves every VM
//! it created tagged as incomplete and says which. The restore reads qubesd and the
//! import script from the mock's environment (QAPI-4) and never parses the archive itself
//! (DEV-25); VMs carry the in-progress tag until complete (DEV-26), failures set the exit
//! code (DEV-27), settings outside CFG-1 are never sent (DEV-28), devices only on request
//! (DEV-29), a broken plan stops before acting (DEV-31).

use std::fs;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use qbackup_tests::binaries::evil_child_beside;
use qbackup_tests::mock_qubesd::{Host, ImportState, MockQubesd};

const PACK: &str = env!("CARGO_BIN_EXE_qbackup-pack");
const IN_PROGRESS: &str = "backup-restore-in-progress";
// ERR-3 exit codes.
const LIMIT_EXCEEDED: i32 = 15;
const MALFORMED: i32 = 17;
const TRUNCATED: i32 = 18;

struct Case {
    dir: tempfile::TempDir,
    mock: MockQubesd,
}

impl Case {
    fn new() -> Case {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join("pass"), "unused by the child\n").expect("pass");
        fs::write(dir.path().join("archive"), b"archive bytes for the child").expect("archive");
        Case {
            dir,
            mock: MockQubesd::start(Host::typical()),
        }
    }

    fn command(&self, scenario: &str, extra: &[&str]) -> Command {
        let mut c = Command::new(PACK);
        c.arg("restore")
            .arg(self.dir.path().join("archive"))
            .arg("--into-qubes")
            .arg("--yes")
            .arg("--json")
            .arg("--home-dir")
            .arg(self.dir.path())
            .arg("-p")
            .arg(self.dir.path().join("pass"))
            .arg("--verifier-cmd")
            .arg(format!(
                "exec {} {scenario}",
                evil_child_beside(PACK).display()
            ))
            .args(extra)
            .envs(self.mock.env());
        c
    }

    fn run(&self, scenario: &str, extra: &[&str]) -> Output {
        self.command(scenario, extra)
            .output()
            .expect("run qbackup-pack")
    }

    /// Calls that change the host (everything but reads).
    fn changes(&self) -> Vec<String> {
        self.mock
            .calls()
            .into_iter()
            .filter(|c| {
                !c.method.ends_with(".List")
                    && !c.method.ends_with(".Get")
                    && !c.method.ends_with(".Info")
                    && !c.method.starts_with("internal.")
            })
            .map(|c| format!("{} {} {}", c.dest, c.method, c.arg))
            .collect()
    }

    fn tags(&self, vm: &str) -> Vec<String> {
        self.mock
            .host()
            .vms
            .get(vm)
            .map(|v| v.tags.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn report(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("report is not JSON ({e}): {}", stderr(o)))
}

/// QRS-3: a valid stream restores the VM with its settings, its data byte for byte and
/// the tags that say it is complete; devices only with --restore-devices.
#[test]
fn a_good_stream_restores_completely() {
    let c = Case::new();
    let o = c.run("qubes-good", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r = report(&o);
    assert_eq!(r["complete"], true);
    assert_eq!(r["vms"][0]["status"], "restored");
    let host = c.mock.host();
    let work = host.vms.get("work").expect("work created");
    assert_eq!(
        work.properties.get("memory").map(String::as_str),
        Some("512")
    );
    assert_eq!(
        work.properties.get("netvm").map(String::as_str),
        Some("sys-firewall")
    );
    assert_eq!(
        work.features.get("service.cups").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        work.features.get("menu-items").map(String::as_str),
        Some("firefox.desktop xterm.desktop")
    );
    assert!(work.tags.contains("personal"));
    assert!(!work.tags.contains(IN_PROGRESS));
    assert!(work
        .tags
        .iter()
        .any(|t| t.starts_with("restored-from-backup-at-")));
    assert_eq!(
        work.firewall,
        ["action=accept dsthost=qubes-os.org", "action=drop"]
    );
    assert_eq!(work.notes, "restored notes\nline two");
    assert!(work.devices.is_empty(), "devices need --restore-devices");
    assert!(r["vms"][0]["notes"]
        .to_string()
        .contains("--restore-devices"));
    let file = c.mock.volume_file("work", "private").expect("imported");
    let data = fs::read(file).expect("volume");
    assert_eq!(data.len(), 8 << 20);
    assert!(data[..1 << 20].iter().all(|&b| b == 0));
    for (i, b) in data[1 << 20..4 << 20].iter().enumerate() {
        assert_eq!(*b, (i % 251) as u8);
    }
    assert!(data[4 << 20..].iter().all(|&b| b == 0));

    let c = Case::new();
    let o = c.run("qubes-good", &["--restore-devices"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let host = c.mock.host();
    let devices = &host.vms["work"].devices;
    assert_eq!(devices.len(), 1);
    assert_eq!(
        (devices[0].bus.as_str(), devices[0].port.as_str()),
        ("pci", "00_1f.3")
    );
}

/// QRS-8, CFG-1: settings with framing characters, over-long names, qubesd's own tags,
/// control bytes or quotes are refused by the decoder before anything is created.
#[test]
fn hostile_settings_make_no_call() {
    for (scenario, class) in [
        ("qubes-framing", MALFORMED),
        ("qubes-long-name", LIMIT_EXCEEDED),
        ("qubes-created-by", MALFORMED),
        ("qubes-feature-ctrl", MALFORMED),
        ("qubes-device-quote", MALFORMED),
    ] {
        let c = Case::new();
        let o = c.run(scenario, &[]);
        assert_eq!(o.status.code(), Some(class), "{scenario}: {}", stderr(&o));
        assert!(c.changes().is_empty(), "{scenario}: {:?}", c.changes());
        assert!(!c.mock.host().vms.contains_key("work"));
    }
}

/// QRS-2: a VM named like a host VM, and a template loop, stop the restore before it
/// acts (exit 2), naming the reason; renaming restores the first under a new name.
#[test]
fn conflicts_and_loops_are_refused_before_acting() {
    let c = Case::new();
    let o = c.run("qubes-host-name", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("exists on the host"), "{}", stderr(&o));
    assert!(c.changes().is_empty(), "{:?}", c.changes());

    let c = Case::new();
    let o = c.run("qubes-host-name", &["--rename-conflicting"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(report(&o)["vms"][0]["name"], "sys-net-1");
    assert!(c.mock.host().vms.contains_key("sys-net-1"));

    let c = Case::new();
    let o = c.run("qubes-template-loop", &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("loop"), "{}", stderr(&o));
    assert!(c.changes().is_empty(), "{:?}", c.changes());
}

/// DEV-30, QRS-6: a firewall the verifier could not convert blocks the VM's network
/// (`action=drop`) and fails the VM, which keeps its in-progress tag.
#[test]
fn an_unreadable_firewall_blocks_the_network() {
    let c = Case::new();
    let o = c.run("qubes-fw-unreadable", &[]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let r = report(&o);
    assert_eq!(r["vms"][0]["status"], "failed", "{r}");
    assert!(r["vms"][0]["errors"].to_string().contains("blocked"), "{r}");
    assert_eq!(c.mock.host().vms["work"].firewall, ["action=drop"]);
    assert!(c.tags("work").contains(&IN_PROGRESS.to_owned()));
}

/// DEV-32, QRS-3: `--pool` creates the VM with admin.vm.CreateInPool and `pool=`.
#[test]
fn pool_choice_uses_create_in_pool() {
    let c = Case::new();
    let o = c.run("qubes-good", &["--pool", "varlibqubes"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let create = c
        .mock
        .calls()
        .into_iter()
        .find(|x| x.method.starts_with("admin.vm.CreateInPool."))
        .expect("a CreateInPool call");
    assert_eq!(create.method, "admin.vm.CreateInPool.AppVM");
    assert_eq!(create.payload, b"name=work label=red pool=varlibqubes");
}

/// QRS-8: a firewall line smuggling a second rule is refused; the VM, already created,
/// keeps the in-progress tag, no firewall call is made, and the report names it.
#[test]
fn a_smuggled_firewall_rule_is_refused() {
    let c = Case::new();
    let o = c.run("qubes-smuggle", &[]);
    assert_eq!(o.status.code(), Some(MALFORMED), "{}", stderr(&o));
    assert!(!c.changes().iter().any(|x| x.contains("firewall.Set")));
    assert!(c.tags("work").contains(&IN_PROGRESS.to_owned()));
    assert_eq!(report(&o)["vms"][0]["status"], "incomplete");
}

/// QRS-8, QAPI-3: data beyond what the begin record declared stops the stream inside the
/// import, which then fails: the volume keeps what it had and the VM stays incomplete.
#[test]
fn a_lying_size_fails_the_import() {
    let c = Case::new();
    let o = c.run("qubes-size-lie", &[]);
    assert_ne!(o.status.code(), Some(0), "{}", stderr(&o));
    let imports = c.mock.imports();
    assert!(
        imports
            .iter()
            .all(|i| !matches!(i.state, ImportState::Succeeded)),
        "{imports:?}"
    );
    assert!(c.tags("work").contains(&IN_PROGRESS.to_owned()));
    let r = report(&o);
    assert_eq!(r["vms"][0]["status"], "failed", "{r}");
    assert!(
        r["vms"][0]["errors"].to_string().contains("interrupted"),
        "{r}"
    );
}

/// QAPI-3: qubesd refusing the import is reported; the VM stays incomplete; exit 3.
#[test]
fn a_refused_import_leaves_the_vm_incomplete() {
    let c = Case::new();
    c.mock.fail(
        "internal.vm.volume.ImportBegin",
        "work",
        Some("private"),
        "QubesException",
        "pool full",
    );
    let o = c.run("qubes-good", &[]);
    assert_eq!(o.status.code(), Some(3), "{}", stderr(&o));
    let r = report(&o);
    assert_eq!(r["complete"], false);
    assert_eq!(r["vms"][0]["status"], "failed");
    assert!(
        r["vms"][0]["errors"].to_string().contains("pool full"),
        "{r}"
    );
    assert!(c.tags("work").contains(&IN_PROGRESS.to_owned()));
}

fn wait_for_import(c: &Case, child: &mut Child) {
    let start = Instant::now();
    while !c
        .mock
        .calls()
        .iter()
        .any(|x| x.method == "internal.vm.volume.ImportBegin")
    {
        assert!(child.try_wait().unwrap().is_none(), "restore ended early");
        assert!(start.elapsed() < Duration::from_secs(60), "no import began");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
}

/// RST-7, QRS-8: SIGINT in the middle of an import: exit 130, the import fails (the
/// volume is untouched), the VM keeps its in-progress tag, and stderr names it.
#[test]
fn sigint_mid_import_names_the_incomplete_vm() {
    let c = Case::new();
    let mut child = c
        .command("qubes-slow", &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    wait_for_import(&c, &mut child);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("tagged {IN_PROGRESS}: work")),
        "{}",
        stderr(&o)
    );
    assert!(c.tags("work").contains(&IN_PROGRESS.to_owned()));
    assert!(c
        .mock
        .imports()
        .iter()
        .all(|i| !matches!(i.state, ImportState::Succeeded)));
}

/// RST-6, QRS-8: the child killed mid-import: the stream is truncated, the import fails,
/// the VM stays incomplete and the report says so.
#[test]
fn a_killed_child_leaves_the_vm_incomplete() {
    let c = Case::new();
    let o = c.run("qubes-die", &[]);
    assert_eq!(o.status.code(), Some(TRUNCATED), "{}", stderr(&o));
    let r = report(&o);
    assert!(
        r["stream_error"]
            .as_str()
            .unwrap_or("")
            .contains("signal 9"),
        "{r}"
    );
    assert_eq!(r["vms"][0]["status"], "failed");
    assert!(
        r["vms"][0]["errors"].to_string().contains("interrupted"),
        "{r}"
    );
    assert!(c.tags("work").contains(&IN_PROGRESS.to_owned()));
    assert!(c
        .mock
        .imports()
        .iter()
        .all(|i| !matches!(i.state, ImportState::Succeeded)));
}

/// QRS-5: without --yes and without a terminal, nothing is done.
#[test]
fn no_confirmation_no_action() {
    let c = Case::new();
    let mut cmd = Command::new(PACK);
    cmd.arg("restore")
        .arg(c.dir.path().join("archive"))
        .arg("--into-qubes")
        .arg("-p")
        .arg(c.dir.path().join("pass"))
        .arg("--verifier-cmd")
        .arg(format!(
            "exec {} qubes-good",
            evil_child_beside(PACK).display()
        ))
        .envs(c.mock.env())
        .stdin(Stdio::null());
    // setsid: no controlling terminal, so /dev/tty cannot be opened.
    let o = Command::new("setsid")
        .arg("--wait")
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .envs(c.mock.env())
        .stdin(Stdio::null())
        .output()
        .expect("setsid");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("not confirmed"), "{}", stderr(&o));
    assert!(c.changes().is_empty());
}
