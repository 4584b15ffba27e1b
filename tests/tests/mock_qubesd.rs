//! The mock qubesd itself: framing, the modelled Admin API methods and their exceptions,
//! fault injection, and volume imports through the fake `admin.vm.volume.Import` script.

use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Output, Stdio};

use qbackup_tests::mock_qubesd::{
    Api, Host, ImportState, MockQubesd, Outcome, Release, Reply, VmClass, PRIVATE_IMG_SIZE,
};
use sha2::{Digest, Sha256};

/// A typical host plus an AppVM `work` (template fedora-42, label blue).
fn with_work() -> MockQubesd {
    let mut host = Host::typical();
    host.add_vm("work", VmClass::AppVM, Some("fedora-42"), "blue");
    MockQubesd::start(host)
}

/// Send raw bytes, half-close, return the raw reply.
fn raw(mock: &MockQubesd, request: &[u8]) -> Vec<u8> {
    let mut s = UnixStream::connect(mock.socket()).unwrap();
    // The mock may close early (request too long); what it sent back is what counts.
    let _ = s.write_all(request);
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut reply = Vec::new();
    let _ = s.read_to_end(&mut reply);
    reply
}

fn exception(reply: &Reply) -> (&str, &str) {
    match reply {
        Reply::Exception { ty, message } => (ty, message),
        other => panic!("expected an exception, got {other:?}"),
    }
}

fn get(mock: &MockQubesd, vm: &str, prop: &str) -> String {
    mock.call("admin.vm.property.Get", vm, prop, b"").text()
}

fn set(mock: &MockQubesd, vm: &str, prop: &str, value: &str) -> Reply {
    mock.call("admin.vm.property.Set", vm, prop, value.as_bytes())
}

/// Run the rpc script `service` like dom0's qubesadmin does, feeding `stdin`.
fn run_script(mock: &MockQubesd, service: &str, vm: &str, volume: &str, stdin: &[u8]) -> Output {
    let mut child = Command::new(mock.rpc_dir().join(service))
        .arg(volume)
        .env("QREXEC_REMOTE_DOMAIN", "dom0")
        .env("QREXEC_REQUESTED_TARGET", vm)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    // The script may stop reading early (too much data); a broken pipe is expected then.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn import_with_size(mock: &MockQubesd, vm: &str, volume: &str, size: usize, data: &[u8]) -> Output {
    let stdin = [format!("{size}\n").as_bytes(), data].concat();
    run_script(mock, "admin.vm.volume.ImportWithSize", vm, volume, &stdin)
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// 3 MiB + 123 bytes: a zero MiB, patterned data, a zero MiB, a partial tail.
fn image() -> Vec<u8> {
    let mut data = vec![0u8; 1 << 20];
    data.extend((0..(1u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8 | 1));
    data.extend(vec![0u8; 1 << 20]);
    data.extend((0..123u32).map(|i| i as u8 ^ 0x5a));
    data
}

#[test]
fn framing_matches_qubesd() {
    let mock = MockQubesd::start(Host::typical());
    // Success: `0\0` + result.
    let reply = raw(&mock, b"admin.label.List+ dom0 name dom0\0");
    assert_eq!(
        reply,
        b"0\0red\norange\nyellow\ngreen\ngray\nblue\npurple\nblack\n".to_vec()
    );
    // `keyword adminvm` names dom0.
    let reply = raw(&mock, b"admin.pool.List+ dom0 keyword adminvm\0");
    assert_eq!(reply, b"0\0linux-kernel\nvarlibqubes\nvm-pool\n".to_vec());
    // Exceptions: type, empty traceback, message, each NUL-terminated.
    let reply = raw(&mock, b"admin.vm.List+ dom0 name nope\0");
    assert_eq!(
        reply,
        b"2\0QubesVMNotFoundError\0\0No such domain: 'nope'\0".to_vec()
    );
    let reply = raw(&mock, b"admin.vm.Frobnicate+ dom0 name dom0\0");
    assert_eq!(
        reply,
        b"2\0ProtocolError\0\0no such method: 'admin.vm.Frobnicate'\0".to_vec()
    );
    // Framing errors and over-long requests get no reply at all; so does the pre-R4.1
    // NUL-separated framing of qubesd-query-fast.
    assert!(raw(&mock, b"admin.vm.List+ dom0 name dom0").is_empty());
    assert!(raw(&mock, b"dom0\0admin.vm.List\0dom0\0\0").is_empty());
    assert!(raw(&mock, b"admin.vm.List+ dom0 uuid dom0\0").is_empty());
    let long = [
        b"admin.vm.notes.Set+ dom0 name sys-net\0".as_slice(),
        &[b'x'; 70000],
    ]
    .concat();
    assert!(raw(&mock, &long).is_empty());
    let calls = mock.calls();
    assert_eq!(calls.len(), 8);
    assert_eq!(calls[0].method, "admin.label.List");
    assert_eq!(
        (calls[1].dest.as_str(), calls[1].arg.as_str()),
        ("dom0", "")
    );
    assert!(
        matches!(&calls[2].outcome, Outcome::Exception { ty, .. } if ty == "QubesVMNotFoundError")
    );
    for call in &calls[4..] {
        assert!(matches!(&call.outcome, Outcome::Aborted(_)), "{call:?}");
        assert_eq!(call.method, "");
    }
    assert!(matches!(&calls[7].outcome, Outcome::Aborted(why) if why == "request too long"));
}

#[test]
fn generic_checks_in_qubesd_order() {
    let mock = with_work();
    // method, dest, arg, payload, exception type, message
    type Case = (
        &'static str,
        &'static str,
        &'static str,
        &'static [u8],
        &'static str,
        &'static str,
    );
    let cases: &[Case] = &[
        (
            "admin.vm.List",
            "dom0",
            "x",
            b"",
            "ProtocolError",
            "unexpected argument",
        ),
        (
            "admin.vm.List",
            "dom0",
            "",
            b"x",
            "ProtocolError",
            "unexpected payload",
        ),
        (
            "admin.vm.property.Get",
            "work",
            "",
            b"",
            "ProtocolError",
            "expected an argument",
        ),
        (
            "admin.vm.firewall.Set",
            "work",
            "",
            b"",
            "ProtocolError",
            "expected payload",
        ),
        (
            "admin.label.List",
            "work",
            "",
            b"",
            "ProtocolError",
            "expected destination to be AdminVM",
        ),
        (
            "admin.vm.firewall.Get",
            "dom0",
            "",
            b"",
            "ProtocolError",
            "expected destination to not be AdminVM",
        ),
        (
            "admin.vm.List",
            "none",
            "",
            b"",
            "QubesValueError",
            "VM name cannot be 'none' nor 'default'",
        ),
        (
            "admin.vm.List",
            "1vm",
            "",
            b"",
            "QubesValueError",
            "VM name cannot start with hyphen, underscore, dot or numbers",
        ),
        // The destination is decoded before the method is looked up.
        (
            "admin.vm.Nope",
            "ghost",
            "",
            b"",
            "QubesVMNotFoundError",
            "No such domain: 'ghost'",
        ),
        (
            "internal.vm.volume.ImportBegin",
            "work",
            "private",
            b"",
            "ProtocolError",
            "no such method: 'internal.vm.volume.ImportBegin'",
        ),
    ];
    for (method, dest, arg, payload, ty, message) in cases {
        let reply = mock.call(method, dest, arg, payload);
        assert_eq!(exception(&reply), (*ty, *message), "{method} {dest} {arg}");
    }
}

#[test]
fn vm_list_per_release() {
    let mock = with_work();
    let list = mock.call("admin.vm.List", "dom0", "", b"").text();
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 7);
    assert_eq!(
        lines[0],
        "debian-13 class=TemplateVM state=Halted uuid=00000000-0000-4000-8000-000000000002"
    );
    assert!(lines
        .contains(&"dom0 class=AdminVM state=Running uuid=00000000-0000-0000-0000-000000000000"));
    let work = mock.call("admin.vm.List", "work", "", b"").text();
    assert_eq!(
        work,
        "work class=AppVM state=Halted uuid=00000000-0000-4000-8000-000000000006\n"
    );
    // R4.3 takes `uuid:` destinations.
    let by_uuid = mock.call(
        "admin.vm.property.Get",
        "uuid:00000000-0000-4000-8000-000000000006",
        "label",
        b"",
    );
    assert_eq!(by_uuid.text(), "default=False type=label blue");
    let bad = mock.call("admin.vm.List", "uuid:00000000", "", b"");
    assert_eq!(exception(&bad).0, "QubesVMInvalidUUIDError");

    let mut host = Host::typical();
    host.release = Release::R4_2;
    let old = MockQubesd::start(host);
    let list = old.call("admin.vm.List", "sys-net", "", b"").text();
    assert_eq!(list, "sys-net class=AppVM state=Halted\n");
    let notes = old.call("admin.vm.notes.Get", "sys-net", "", b"");
    assert_eq!(exception(&notes).0, "ProtocolError");
}

#[test]
fn create_sets_up_a_qube_like_qubesd() {
    let mock = MockQubesd::start(Host::typical());
    let ok = mock.call(
        "admin.vm.Create.AppVM",
        "dom0",
        "fedora-42",
        b"name=work label=blue",
    );
    assert_eq!(ok, Reply::Ok(Vec::new()));
    let host = mock.host();
    let work = &host.vms["work"];
    assert_eq!(work.class, VmClass::AppVM);
    assert!(work.tags.contains("created-by-dom0"));
    assert_eq!(work.firewall, vec!["action=accept".to_string()]);
    assert_eq!(get(&mock, "work", "label"), "default=False type=label blue");
    assert_eq!(
        get(&mock, "work", "template"),
        "default=False type=vm fedora-42"
    );
    assert_eq!(
        get(&mock, "work", "netvm"),
        "default=True type=vm sys-firewall"
    );
    assert_eq!(get(&mock, "work", "memory"), "default=True type=int 400");
    assert_eq!(
        mock.call("admin.vm.volume.List", "work", "", b"").text(),
        "root\nprivate\nvolatile\nkernel\n"
    );
    let private = mock
        .call("admin.vm.volume.Info", "work", "private", b"")
        .text();
    assert_eq!(
        private,
        format!(
            "pool=vm-pool\nvid=qubes_dom0/vm-work-private\nsize={PRIVATE_IMG_SIZE}\nusage=0\n\
             rw=True\nsource=\npath=/dev/qubes_dom0/vm-work-private\nsave_on_stop=True\n\
             snap_on_start=False\nrevisions_to_keep=1\nephemeral=False\nis_outdated=False\n"
        )
    );
    let root = mock
        .call("admin.vm.volume.Info", "work", "root", b"")
        .text();
    assert!(
        root.contains("\nsource=qubes_dom0/vm-fedora-42-root\n"),
        "{root}"
    );
    assert!(root.contains("\nsnap_on_start=True\n") && root.contains("\nsave_on_stop=False\n"));
    let kernel = mock
        .call("admin.vm.volume.Info", "work", "kernel", b"")
        .text();
    assert!(
        kernel.starts_with("pool=linux-kernel\nvid=6.12.59-1.fc41\n"),
        "{kernel}"
    );
    let missing = mock.call("admin.vm.volume.Info", "work", "data", b"");
    assert_eq!(
        exception(&missing),
        ("PermissionDenied", "Argument not in 'work volumes'")
    );

    // A disposable's root comes from the TemplateVM, its private from the AppVM.
    let ok = mock.call(
        "admin.vm.Create.DispVM",
        "dom0",
        "",
        b"name=disp1 label=red",
    );
    assert_eq!(ok, Reply::Ok(Vec::new()));
    let host = mock.host();
    let disp = &host.vms["disp1"];
    assert_eq!(disp.properties["template"], "default-dvm");
    assert_eq!(
        disp.volumes["root"].source.as_deref(),
        Some("qubes_dom0/vm-fedora-42-root")
    );
    assert_eq!(
        disp.volumes["private"].source.as_deref(),
        Some("qubes_dom0/vm-default-dvm-private")
    );
    assert!(disp.volumes.values().all(|v| !v.save_on_stop));
    let standalone = mock.call(
        "admin.vm.Create.StandaloneVM",
        "dom0",
        "",
        b"name=sa label=red",
    );
    assert_eq!(standalone, Reply::Ok(Vec::new()));
    let host = mock.host();
    let sa = &host.vms["sa"];
    assert!(sa.volumes["root"].save_on_stop && sa.volumes["private"].save_on_stop);
    assert_eq!(sa.volumes["root"].source, None);
}

#[test]
fn create_in_pool() {
    let mock = MockQubesd::start(Host::typical());
    let ok = mock.call(
        "admin.vm.CreateInPool.AppVM",
        "dom0",
        "fedora-42",
        b"name=work label=blue pool=varlibqubes",
    );
    assert_eq!(ok, Reply::Ok(Vec::new()));
    let host = mock.host();
    let volumes = &host.vms["work"].volumes;
    assert_eq!(volumes["private"].pool, "varlibqubes");
    assert_eq!(volumes["private"].vid, "appvms/work/private");
    assert_eq!(
        volumes["private"].path,
        "/var/lib/qubes/appvms/work/private.img"
    );
    assert_eq!(volumes["volatile"].pool, "varlibqubes");
    // Snapshots stay with their origin; the kernel volume (read-only) stays put.
    assert_eq!(volumes["root"].pool, "vm-pool");
    assert_eq!(volumes["kernel"].pool, "linux-kernel");

    let ok = mock.call(
        "admin.vm.CreateInPool.TemplateVM",
        "dom0",
        "",
        b"name=tpl label=black pool:root=varlibqubes",
    );
    assert_eq!(ok, Reply::Ok(Vec::new()));
    let host = mock.host();
    assert_eq!(host.vms["tpl"].volumes["root"].vid, "vm-templates/tpl/root");
    assert_eq!(host.vms["tpl"].volumes["private"].pool, "vm-pool");

    let snapshot = mock.call(
        "admin.vm.CreateInPool.AppVM",
        "dom0",
        "fedora-42",
        b"name=w2 label=red pool:root=varlibqubes",
    );
    assert_eq!(exception(&snapshot).0, "QubesException");
    let unknown = mock.call(
        "admin.vm.CreateInPool.AppVM",
        "dom0",
        "",
        b"name=w3 label=red pool=nope",
    );
    assert_eq!(
        exception(&unknown),
        ("QubesException", "Unknown storage pool nope")
    );
    let not_in_pool = mock.call(
        "admin.vm.Create.AppVM",
        "dom0",
        "",
        b"name=w4 label=red pool=vm-pool",
    );
    assert_eq!(
        exception(&not_in_pool),
        (
            "ProtocolError",
            "Pool option specified but 'allow_pool' is False"
        )
    );
    let both = mock.call(
        "admin.vm.CreateInPool.AppVM",
        "dom0",
        "",
        b"name=w5 label=red pool=vm-pool pool:private=vm-pool",
    );
    assert_eq!(
        exception(&both),
        (
            "ProtocolError",
            "Conflicting options specified: 'pool=', 'pool:volume='"
        )
    );
    let names: Vec<String> = mock.host().vms.keys().cloned().collect();
    assert!(
        !names
            .iter()
            .any(|n| ["w2", "w3", "w4", "w5"].contains(&n.as_str())),
        "{names:?}"
    );
}

#[test]
fn create_refusals() {
    let mock = with_work();
    let create = |class: &str, arg: &str, payload: &str| {
        mock.call(
            &format!("admin.vm.Create.{class}"),
            "dom0",
            arg,
            payload.as_bytes(),
        )
    };
    let cases = [
        (
            create("AppVM", "", "name=work label=red"),
            "QubesVMAlreadyExistsError",
            "Qube already exists: work",
        ),
        (
            create("AppVM", "ghost", "name=x label=red"),
            "QubesVMNotFoundError",
            "No such domain: 'ghost'",
        ),
        // An unknown label is not stored, so qubesd reports it as missing.
        (
            create("AppVM", "", "name=x label=pink"),
            "ProtocolError",
            "Creation requested without key: label",
        ),
        (
            create("AppVM", "", "name=x label=3"),
            "QubesInvalidLabelError",
            "Label must not be a digit",
        ),
        (
            create("AppVM", "", "name=x"),
            "ProtocolError",
            "Creation requested without key: label",
        ),
        (
            create("AppVM", "", "name=x label=red name=y"),
            "ProtocolError",
            "Options must be unique",
        ),
        (
            create("AppVM", "", "name=x label=red color=1"),
            "ProtocolError",
            "Options does not match: name, label, pool, pool:",
        ),
        (
            create("AppVM", "", "name=Domain-0 label=red"),
            "QubesValueError",
            "VM name cannot be 'Domain-0'",
        ),
        (
            create("AppVM", "", "name=a-dm label=red"),
            "QubesValueError",
            "VM name cannot end with -dm",
        ),
        (
            create(
                "AppVM",
                "",
                "name=abcdefghijabcdefghijabcdefghijab label=red",
            ),
            "QubesValueError",
            "VM name must be shorter than 32 characters",
        ),
        (
            create("StandaloneVM", "fedora-42", "name=x label=red"),
            "ProtocolError",
            "StandaloneVM cannot be based on template",
        ),
        (
            create("AppVM", "work", "name=x label=red"),
            "QubesPropertyValueError",
            "wrong VM class: domains['work'] is of type AppVM and not TemplateVM",
        ),
        (
            create("DispVM", "work", "name=x label=red"),
            "QubesPropertyValueError",
            "template for disposable must have template_for_dispvms=True",
        ),
    ];
    for (reply, ty, message) in &cases {
        assert_eq!(exception(reply), (*ty, *message));
    }
    // A parameter without '=' is a ValueError: no reply.
    assert_eq!(create("AppVM", "", "name=x label"), Reply::Empty);
    assert_eq!(
        create("RemoteVM", "", "name=x label=red").exception(),
        Some("ProtocolError")
    );

    let bare = MockQubesd::start(Host::new());
    let none = bare.call("admin.vm.Create.AppVM", "dom0", "", b"name=x label=red");
    assert_eq!(
        exception(&none),
        (
            "QubesValueError",
            "Template for the qube not specified, nor default template set."
        )
    );
    assert_eq!(bare.host().vms.len(), 1);
    assert_eq!(mock.host().vms.len(), 7);
}

#[test]
fn properties() {
    let mock = with_work();
    assert_eq!(set(&mock, "work", "memory", "800"), Reply::Ok(Vec::new()));
    assert_eq!(get(&mock, "work", "memory"), "default=False type=int 800");
    assert_eq!(
        set(&mock, "work", "autostart", "yes"),
        Reply::Ok(Vec::new())
    );
    assert_eq!(
        get(&mock, "work", "autostart"),
        "default=False type=bool True"
    );
    assert_eq!(
        set(&mock, "work", "virt_mode", "HVM"),
        Reply::Ok(Vec::new())
    );
    assert_eq!(
        get(&mock, "work", "virt_mode"),
        "default=False type=str hvm"
    );
    assert_eq!(set(&mock, "work", "label", "purple"), Reply::Ok(Vec::new()));
    assert_eq!(set(&mock, "work", "netvm", ""), Reply::Ok(Vec::new()));
    assert_eq!(get(&mock, "work", "netvm"), "default=False type=vm ");
    let reset = mock.call("admin.vm.property.Reset", "work", "netvm", b"");
    assert_eq!(reset, Reply::Ok(Vec::new()));
    assert_eq!(
        get(&mock, "work", "netvm"),
        "default=True type=vm sys-firewall"
    );
    assert_eq!(
        set(&mock, "work", "default_dispvm", "default-dvm"),
        Reply::Ok(Vec::new())
    );
    assert_eq!(
        set(&mock, "work", "netvm", "sys-net"),
        Reply::Ok(Vec::new())
    );
    assert_eq!(get(&mock, "work", "name"), "default=False type=str work");
    assert_eq!(get(&mock, "work", "stubdom_mem"), "default=True type=int ");

    let refused = [
        (set(&mock, "work", "memory", "0"), "QubesPropertyValueError", "memory must be positive"),
        (set(&mock, "work", "memory", "lots"), "QubesValueError", "Failed to parse property value as int"),
        (set(&mock, "work", "debug", "maybe"), "QubesValueError", "Invalid literal for boolean property: 'maybe'"),
        (set(&mock, "work", "colour", "x"), "QubesNoSuchPropertyError", "Invalid property 'colour' of work"),
        (set(&mock, "dom0", "netvm", "sys-net"), "QubesNoSuchPropertyError", "Invalid property 'netvm' of dom0"),
        (set(&mock, "work", "label", "pink"), "QubesLabelNotFoundError", "Label does not exist: pink"),
        (set(&mock, "work", "netvm", "ghost"), "QubesPropertyValueError", "Can't set netvm to non-existing qube ghost"),
        (set(&mock, "work", "netvm", "fedora-42"), "QubesValueError", "The fedora-42 qube does not provide network"),
        (set(&mock, "sys-net", "netvm", "sys-firewall"), "QubesValueError", "Loops in network are unsupported"),
        (set(&mock, "work", "template", "debian-13x"), "QubesPropertyValueError", "Can't set template to non-existing qube debian-13x"),
        (set(&mock, "work", "template", ""), "QubesPropertyValueError", "Invalid value None for property 'template' of work"),
        (set(&mock, "work", "default_dispvm", "sys-net"), "QubesPropertyValueError", "Cannot set invalid property to qube 'work', default_dispvm 'sys-net' has template_for_dispvms set to False"),
        (set(&mock, "work", "kernel", "../x"), "QubesPropertyValueError", "Kernel name cannot contain '/'"),
        (set(&mock, "work", "updateable", "True"), "QubesPropertyValueError", "property 'updateable' on AppVM instance cannot be set"),
        (set(&mock, "sys-firewall", "provides_network", "False"), "QubesValueError", "The qube is still used by other qubes, change theirs 'netvm' first"),
        (set(&mock, "work", "kernelopts", "quiet\u{7f}"), "QubesValueError", "Invalid characters in property value"),
    ];
    for (reply, ty, message) in &refused {
        assert_eq!(exception(reply), (*ty, *message));
    }
    let template = mock.call("admin.vm.property.Reset", "work", "template", b"");
    assert_eq!(
        exception(&template).1,
        "Cannot unset template. You can set it to the current default (fedora-42) instead"
    );
    // Errors qubesd does not report: no reply.
    assert_eq!(set(&mock, "work", "mac", "00:16:3e:zz:00:01"), Reply::Empty);
    assert_eq!(set(&mock, "work", "name", "other"), Reply::Empty);

    let host = mock.host();
    let props = &host.vms["work"].properties;
    assert_eq!(props["memory"], "800");
    assert_eq!(props["label"], "purple");
    assert_eq!(props["netvm"], "sys-net");
    assert_eq!(props["template"], "fedora-42");
    assert!(!props.contains_key("mac") && !props.contains_key("kernel"));
    let list = mock.call("admin.vm.property.List", "dom0", "", b"").text();
    assert!(
        list.contains("default_dispvm\n") && !list.contains("netvm"),
        "{list}"
    );
}

#[test]
fn features_and_tags() {
    let mock = with_work();
    let call =
        |method: &str, arg: &str, payload: &str| mock.call(method, "work", arg, payload.as_bytes());
    assert_eq!(
        call(
            "admin.vm.feature.Set",
            "menu-items",
            "firefox.desktop xterm.desktop"
        ),
        Reply::Ok(Vec::new())
    );
    assert_eq!(
        call("admin.vm.feature.Set", "service.cups", ""),
        Reply::Ok(Vec::new())
    );
    assert_eq!(
        call("admin.vm.feature.Get", "menu-items", "").text(),
        "firefox.desktop xterm.desktop"
    );
    assert_eq!(
        call("admin.vm.feature.List", "", "").text(),
        "menu-items\nservice.cups\n"
    );
    assert_eq!(
        call("admin.vm.feature.Remove", "service.cups", ""),
        Reply::Ok(Vec::new())
    );
    let missing = call("admin.vm.feature.Get", "service.cups", "");
    assert_eq!(
        exception(&missing),
        (
            "QubesFeatureNotFoundError",
            "Feature not set for domain work: service.cups"
        )
    );
    assert_eq!(
        call("admin.vm.feature.Remove", "nope", "").exception(),
        Some("QubesFeatureNotFoundError")
    );
    assert_eq!(
        exception(&call("admin.vm.feature.Set", "a/b", "1")),
        ("ProtocolError", "feature name contains illegal characters")
    );
    // A space in the argument breaks the header's framing: no reply.
    assert_eq!(call("admin.vm.feature.Set", "a b", "1"), Reply::Empty);
    assert_eq!(
        exception(&call("admin.vm.feature.Set", "x", "tab\there")),
        ("ProtocolError", "x value contains illegal characters")
    );

    assert_eq!(
        call("admin.vm.tag.Set", "backup-restore-in-progress", ""),
        Reply::Ok(Vec::new())
    );
    assert_eq!(
        call("admin.vm.tag.Get", "backup-restore-in-progress", "").text(),
        "1"
    );
    assert_eq!(call("admin.vm.tag.Get", "other", "").text(), "0");
    assert_eq!(
        call("admin.vm.tag.List", "", "").text(),
        "backup-restore-in-progress\ncreated-by-dom0\n"
    );
    assert_eq!(
        call("admin.vm.tag.Remove", "backup-restore-in-progress", ""),
        Reply::Ok(Vec::new())
    );
    assert_eq!(
        exception(&call(
            "admin.vm.tag.Remove",
            "backup-restore-in-progress",
            ""
        )),
        (
            "QubesTagNotFoundError",
            "Tag not set for domain work: backup-restore-in-progress"
        )
    );
    assert_eq!(
        exception(&call("admin.vm.tag.Set", "a.b", "")),
        ("QubesInvalidTagError", "disallowed characters")
    );
    let host = mock.host();
    let work = &host.vms["work"];
    assert_eq!(work.features.len(), 1);
    assert_eq!(work.tags.iter().collect::<Vec<_>>(), ["created-by-dom0"]);
}

#[test]
fn firewall_and_notes() {
    let mock = with_work();
    assert_eq!(
        mock.call("admin.vm.firewall.Get", "work", "", b"").text(),
        "action=accept\n"
    );
    let rules = "action=accept proto=tcp dstports=443-443 dsthost=example.com\n\
                 action=accept specialtarget=dns\n\
                 action=drop comment=no more, thanks\n";
    assert_eq!(
        mock.call("admin.vm.firewall.Set", "work", "", rules.as_bytes()),
        Reply::Ok(Vec::new())
    );
    assert_eq!(
        mock.call("admin.vm.firewall.Get", "work", "", b"").text(),
        rules
    );
    // Bad rules are ValueErrors in qubesd: no reply, nothing changed.
    for bad in [
        "proto=tcp\n",
        "action=accept dstports=80\n",
        "action=accept proto=icmp icmptype=300\n",
        "action=maybe\n",
        "action=accept frob=1\n",
        "action=accept action=drop\n",
    ] {
        let reply = mock.call("admin.vm.firewall.Set", "work", "", bad.as_bytes());
        assert_eq!(reply, Reply::Empty, "{bad}");
    }
    assert_eq!(mock.host().vms["work"].firewall.len(), 3);

    let notes = "Übung\tmacht den Meister\nbell:\u{7}";
    assert_eq!(
        mock.call("admin.vm.notes.Set", "work", "", notes.as_bytes()),
        Reply::Ok(Vec::new())
    );
    assert_eq!(
        mock.call("admin.vm.notes.Get", "work", "", b"").text(),
        "Übung\tmacht den Meister\nbell:_"
    );
    assert_eq!(
        mock.call("admin.vm.notes.Set", "work", "", b"\xff")
            .exception(),
        Some("ProtocolError")
    );
}

#[test]
fn devices_r4_3() {
    let mock = with_work();
    let payload = b"device_id='8086:1234::p028000' port_id='00_14.0' devclass='pci' \
                    backend_domain='dom0' mode='required' _no-strict-reset='True'";
    let reply = mock.call(
        "admin.vm.device.pci.Assign",
        "sys-net",
        "dom0+00_14.0:8086:1234::p028000",
        payload,
    );
    assert_eq!(reply, Reply::Ok(Vec::new()));
    let again = mock.call(
        "admin.vm.device.pci.Assign",
        "sys-net",
        "dom0+00_14.0:8086:1234::p028000",
        payload,
    );
    assert_eq!(again.exception(), Some("DeviceAlreadyAssigned"));
    // Any device on a port: device id `*` (`_` in the argument).
    let usb = b"port_id='2-1' devclass='usb' backend_domain='sys-net' mode='auto-attach'";
    assert_eq!(
        mock.call("admin.vm.device.usb.Assign", "work", "sys-net+2-1+_", usb),
        Reply::Ok(Vec::new())
    );
    let wrong_port = mock.call("admin.vm.device.usb.Assign", "work", "sys-net+2-2", usb);
    assert_eq!(wrong_port.exception(), Some("ProtocolError"));
    let manual = b"port_id='2-3' devclass='usb' backend_domain='sys-net' mode='manual'";
    assert_eq!(
        mock.call("admin.vm.device.usb.Assign", "work", "sys-net+2-3", manual),
        Reply::Empty
    );
    let attach = mock.call("admin.vm.device.usb.Attach", "work", "sys-net+2-1", usb);
    assert_eq!(attach.exception(), Some("QubesVMNotRunningError"));
    let ghost = mock.call("admin.vm.device.usb.Assign", "work", "ghost+2-1", usb);
    assert_eq!(ghost, Reply::Empty);

    let host = mock.host();
    let net = &host.vms["sys-net"].devices;
    assert_eq!(net.len(), 1);
    assert_eq!(
        (net[0].backend.as_str(), net[0].port.as_str()),
        ("dom0", "00_14.0")
    );
    assert_eq!(net[0].device_id, "8086:1234::p028000");
    assert!(net[0].is_required());
    assert_eq!(net[0].options["no-strict-reset"], "True");
    let work = &host.vms["work"].devices;
    assert_eq!(work.len(), 1);
    assert_eq!(
        (work[0].device_id.as_str(), work[0].mode.as_str()),
        ("*", "auto-attach")
    );
    // A backend with devices assigned elsewhere cannot be removed.
    let remove = mock.call("admin.vm.Remove", "sys-net", "", b"");
    assert_eq!(exception(&remove).0, "QubesVMInUseError");
}

#[test]
fn devices_r4_2() {
    let mut host = Host::typical();
    host.release = Release::R4_2;
    let mock = MockQubesd::start(host);
    let assign = mock.call(
        "admin.vm.device.pci.Assign",
        "sys-net",
        "dom0+00_14.0",
        b"x='y'",
    );
    assert_eq!(
        exception(&assign),
        (
            "ProtocolError",
            "no such method: 'admin.vm.device.pci.Assign'"
        )
    );
    let ok = mock.call(
        "admin.vm.device.pci.Attach",
        "sys-net",
        "dom0+00_14.0",
        b"persistent=True no-strict-reset=True",
    );
    assert_eq!(ok, Reply::Ok(Vec::new()));
    let twice = mock.call(
        "admin.vm.device.pci.Attach",
        "sys-net",
        "dom0+00_14.0",
        b"persistent=True",
    );
    assert_eq!(twice.exception(), Some("DeviceAlreadyAttached"));
    let volatile = mock.call("admin.vm.device.pci.Attach", "sys-net", "dom0+00_1f.6", b"");
    assert_eq!(
        exception(&volatile),
        (
            "QubesVMNotRunningError",
            "VM not running, can only attach device with persistent flag"
        )
    );
    let bad = mock.call(
        "admin.vm.device.pci.Attach",
        "sys-net",
        "dom0+00_1f.6",
        b"persistent=True a=b=c",
    );
    assert_eq!(
        exception(&bad),
        ("ProtocolError", "Invalid chars in option value")
    );
    let devices = &mock.host().vms["sys-net"].devices;
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].options["no-strict-reset"], "True");
    assert_eq!(devices[0].port, "00_14.0");
}

#[test]
fn remove() {
    let mock = with_work();
    let cases = [
        ("dom0", "'dom0' cannot be removed"),
        (
            "fedora-42",
            "Domain is in use: 'fedora-42';  see 'journalctl -u qubesd -e' in dom0 for details",
        ),
        (
            "sys-firewall",
            "Domain is in use: 'sys-firewall';  see 'journalctl -u qubesd -e' in dom0 for details",
        ),
    ];
    for (vm, message) in cases {
        let reply = mock.call("admin.vm.Remove", vm, "", b"");
        assert_eq!(exception(&reply), ("QubesVMInUseError", message));
    }
    assert_eq!(
        mock.call("admin.vm.Remove", "work", "", b""),
        Reply::Ok(Vec::new())
    );
    assert!(!mock.host().vms.contains_key("work"));
    let again = mock.call("admin.vm.Remove", "work", "", b"");
    assert_eq!(exception(&again).0, "QubesVMNotFoundError");
    // The name is free again.
    let ok = mock.call("admin.vm.Create.AppVM", "dom0", "", b"name=work label=red");
    assert_eq!(ok, Reply::Ok(Vec::new()));
}

#[test]
fn fault_injection() {
    let mock = with_work();
    mock.fail(
        "admin.vm.property.Set",
        "work",
        Some("memory"),
        "QubesException",
        "boom",
    );
    mock.drop_connection("admin.vm.feature.Set", "work", None);
    let failed = set(&mock, "work", "memory", "800");
    assert_eq!(exception(&failed), ("QubesException", "boom"));
    assert_eq!(set(&mock, "work", "vcpus", "4"), Reply::Ok(Vec::new()));
    assert_eq!(
        set(&mock, "sys-net", "memory", "800"),
        Reply::Ok(Vec::new())
    );
    let dropped = mock.call("admin.vm.feature.Set", "work", "x", b"1");
    assert_eq!(dropped, Reply::Empty);
    let host = mock.host();
    assert!(!host.vms["work"].properties.contains_key("memory"));
    assert!(host.vms["work"].features.is_empty());
    assert_eq!(host.vms["work"].properties["vcpus"], "4");
    let calls = mock.calls();
    assert_eq!(
        calls[0].outcome,
        Outcome::Exception {
            ty: "QubesException".into(),
            message: "boom".into()
        }
    );
    assert_eq!(calls[0].payload, b"800");
    assert_eq!(calls[3].outcome, Outcome::Aborted("injected".into()));

    mock.clear_faults();
    assert_eq!(set(&mock, "work", "memory", "800"), Reply::Ok(Vec::new()));
    assert_eq!(
        mock.call("admin.vm.feature.Set", "work", "x", b"1"),
        Reply::Ok(Vec::new())
    );
}

#[test]
fn import_with_size_exact() {
    let mock = with_work();
    let data = image();
    let out = import_with_size(&mock, "work", "private", data.len(), &data);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, b"0\0");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let imports = mock.imports();
    assert_eq!(imports.len(), 1);
    let import = &imports[0];
    assert_eq!(
        (import.vm.as_str(), import.volume.as_str()),
        ("work", "private")
    );
    assert_eq!(import.size, data.len() as u64);
    assert_eq!(import.state, ImportState::Succeeded);
    assert_eq!(import.sha256.as_deref(), Some(sha256_hex(&data).as_str()));
    let file = mock.volume_file("work", "private").expect("imported data");
    assert_eq!(std::fs::read(&file).unwrap(), data);
    // The zero MiBs were skipped, not written.
    assert!(std::fs::metadata(&file).unwrap().blocks() * 512 < data.len() as u64 - (1 << 20));
    assert_eq!(
        mock.host().vms["work"].volumes["private"].size,
        data.len() as u64
    );
    let info = mock
        .call("admin.vm.volume.Info", "work", "private", b"")
        .text();
    assert!(info.contains(&format!("\nsize={}\n", data.len())), "{info}");

    let calls = mock.calls();
    let internal: Vec<_> = calls.iter().filter(|c| c.api == Api::Internal).collect();
    assert_eq!(internal.len(), 2);
    assert_eq!(internal[0].method, "internal.vm.volume.ImportBegin");
    assert_eq!(
        (internal[0].src.as_str(), internal[0].dest.as_str()),
        ("dom0", "work")
    );
    assert_eq!(internal[0].payload, data.len().to_string().into_bytes());
    assert_eq!(internal[1].method, "internal.vm.volume.ImportEnd");
    assert_eq!(internal[1].payload, b"ok");

    // A second import replaces the data and may shrink the volume.
    let out = import_with_size(&mock, "work", "private", 5, b"hello");
    assert_eq!(out.stdout, b"0\0");
    assert_eq!(std::fs::read(&file).unwrap(), b"hello");
    assert_eq!(mock.host().vms["work"].volumes["private"].size, 5);
}

#[test]
fn import_short_and_long_streams_fail() {
    let mock = with_work();
    let data = image();
    let short = import_with_size(&mock, "work", "private", data.len(), &data[..500_000]);
    assert!(short.status.success(), "{short:?}");
    let reason = format!(
        "not enough data (copied 500000 bytes, expected {} bytes)",
        data.len()
    );
    assert_eq!(
        Reply::parse(&short.stdout),
        Reply::Exception {
            ty: "QubesException".into(),
            message: format!("Data import failed: {reason}")
        }
    );
    let long = import_with_size(&mock, "work", "private", 1000, &data[..1010]);
    assert_eq!(
        exception(&Reply::parse(&long.stdout)),
        (
            "QubesException",
            "Data import failed: too much data (expected 1000 bytes)"
        )
    );
    let imports = mock.imports();
    assert_eq!(imports.len(), 2);
    assert_eq!(imports[0].state, ImportState::Failed(reason));
    assert_eq!(
        imports[1].state,
        ImportState::Failed("too much data (expected 1000 bytes)".into())
    );
    assert!(imports.iter().all(|i| i.sha256.is_none()));
    // The volume is untouched.
    assert_eq!(mock.volume_file("work", "private"), None);
    assert_eq!(
        mock.host().vms["work"].volumes["private"].size,
        PRIVATE_IMG_SIZE
    );
    let ends: Vec<_> = mock
        .calls()
        .into_iter()
        .filter(|c| c.method == "internal.vm.volume.ImportEnd")
        .map(|c| c.payload)
        .collect();
    assert_eq!(ends.len(), 2);
    assert!(ends.iter().all(|p| p.starts_with(b"fail\n")));
}

#[test]
fn import_refusals() {
    let mock = with_work();
    // Not save_on_stop: ImportBegin fails, the reply is printed, exit 1.
    let root = import_with_size(&mock, "work", "root", 4, b"data");
    assert_eq!(root.status.code(), Some(1));
    assert_eq!(
        exception(&Reply::parse(&root.stdout)),
        (
            "StoragePoolException",
            "Can not import into save_on_stop=False volume qubes_dom0/vm-work-root"
        )
    );
    let ghost = import_with_size(&mock, "ghost", "private", 4, b"data");
    assert_eq!(
        exception(&Reply::parse(&ghost.stdout)).0,
        "QubesVMNotFoundError"
    );
    let volume = import_with_size(&mock, "work", "data", 4, b"data");
    assert_eq!(
        exception(&Reply::parse(&volume.stdout)),
        ("ProtocolError", "Argument not in work volumes")
    );
    let size = run_script(
        &mock,
        "admin.vm.volume.ImportWithSize",
        "work",
        "private",
        b"012\ndata",
    );
    assert_eq!(
        exception(&Reply::parse(&size.stdout)),
        (
            "ProtocolError",
            "Size of new data contains spurious leading zeros"
        )
    );
    // qubesd-query's own checks of the size line: usage error, exit 2, nothing on stdout.
    for (stdin, message) in [
        (b"12".as_slice(), "End of input without a newline"),
        (b"1\x002\n", "Invalid byte 0 in input"),
        (
            b"1234567890123456789012\n",
            "No newline found in first 21 bytes",
        ),
    ] {
        let out = run_script(
            &mock,
            "admin.vm.volume.ImportWithSize",
            "work",
            "private",
            stdin,
        );
        assert_eq!(out.status.code(), Some(2));
        assert!(out.stdout.is_empty());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.ends_with(&format!("qubesd-query: error: {message}\n")),
            "{stderr}"
        );
    }
    assert!(mock.imports().is_empty());
    // An injected ImportBegin failure reaches the caller the same way.
    mock.fail(
        "internal.vm.volume.ImportBegin",
        "work",
        Some("private"),
        "QubesVMNotHaltedError",
        "Domain is not powered off: 'work'",
    );
    let halted = import_with_size(&mock, "work", "private", 4, b"data");
    assert_eq!(halted.status.code(), Some(1));
    assert_eq!(
        exception(&Reply::parse(&halted.stdout)).0,
        "QubesVMNotHaltedError"
    );
    assert!(mock.imports().is_empty());
}

#[test]
fn import_without_size_keeps_the_volume_size() {
    let mut host = Host::typical();
    host.add_vm("work", VmClass::AppVM, Some("fedora-42"), "blue");
    host.vms
        .get_mut("work")
        .unwrap()
        .volumes
        .get_mut("private")
        .unwrap()
        .size = 8192;
    let mock = MockQubesd::start(host);
    let data: Vec<u8> = (0..8192u32).map(|i| (i % 251) as u8).collect();
    let out = run_script(&mock, "admin.vm.volume.Import", "work", "private", &data);
    assert_eq!(out.stdout, b"0\0", "{out:?}");
    assert_eq!(
        std::fs::read(mock.volume_file("work", "private").unwrap()).unwrap(),
        data
    );
    let begin = mock
        .calls()
        .into_iter()
        .find(|c| c.method == "internal.vm.volume.ImportBegin")
        .unwrap();
    assert!(begin.payload.is_empty());
    assert_eq!(mock.imports()[0].size, 8192);
}

#[test]
fn killed_import_stays_incomplete() {
    let mock = with_work();
    let mut child = Command::new(mock.rpc_dir().join("admin.vm.volume.ImportWithSize"))
        .arg("private")
        .env("QREXEC_REMOTE_DOMAIN", "dom0")
        .env("QREXEC_REQUESTED_TARGET", "work")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"1000000\n").unwrap();
    stdin.write_all(&[7u8; 1000]).unwrap();
    // Wait until the script has begun the import, then kill it with stdin still open.
    let begun = (0..500).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(10));
        !mock.imports().is_empty()
    });
    assert!(begun);
    child.kill().unwrap();
    child.wait().unwrap();
    drop(stdin);

    let imports = mock.imports();
    assert_eq!(imports.len(), 1);
    assert_eq!(imports[0].state, ImportState::InProgress);
    assert_eq!(mock.volume_file("work", "private"), None);
    // As on lvm_thin, the leftover import blocks the next one.
    let next = import_with_size(&mock, "work", "private", 4, b"data");
    assert_eq!(
        exception(&Reply::parse(&next.stdout)),
        (
            "StoragePoolException",
            "Import operation in progress on qubes_dom0/vm-work-private"
        )
    );
    assert_eq!(mock.imports().len(), 1);
}
