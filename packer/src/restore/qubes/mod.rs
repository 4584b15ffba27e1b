//! `qbackup-pack restore --into-qubes` (SPEC.md QRS-1 … QRS-8): the VMs of the verifier's
//! stream re-created through the Admin API. This process never parses the archive,
//! qubes.xml or firewall.xml: it acts on the checked records of the stream (manifest,
//! per-VM settings, files, per-VM end) and on qubesd's answers.
//!
//! Order (QRS-3): everything is planned and shown before any call that changes the host;
//! then every VM is created (templates first), tagged `backup-restore-in-progress` at once
//! (qubesd refuses to start it), given its properties, features, tags and devices, then
//! its network and DispVM references; its volume data is imported as the stream delivers
//! it; when its `vmend` arrives its firewall, notes and menu items are set and, if nothing
//! failed, the in-progress tag gives way to `restored-from-backup-at-DATE`. A VM that did
//! not get that far keeps the in-progress tag and the report says so.

pub mod plan;
pub mod report;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Mutex;

use qbackup_destination::Destination;
use qbackup_format::protocol::{Begin, FileKind, Firewall, Manifest, VmConfig, VmEnd};
use qbackup_format::{Error, ErrorClass, Result};

use crate::qubesd::import::Import;
use crate::qubesd::{CallError, Qubesd};
use crate::restore::consume::{DirSink, Sink};
use plan::{Action, Options, Plan, Reference};
use report::{Report, Status};

/// QRS-3: the tag that keeps a VM from starting until its restore is complete (qubesd's
/// `backup_restore` extension refuses to start VMs carrying it).
pub const IN_PROGRESS_TAG: &str = "backup-restore-in-progress";

/// VMs created and not yet complete, named when the restore is cancelled (RST-7).
pub static INCOMPLETE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Cancellation hook: which VMs keep the in-progress tag.
pub fn incomplete_hook() -> Option<String> {
    let list = INCOMPLETE.lock().unwrap_or_else(|p| p.into_inner());
    (!list.is_empty()).then(|| {
        format!(
            "VMs left incomplete, tagged {IN_PROGRESS_TAG}: {}",
            list.join(", ")
        )
    })
}

fn mark_incomplete(name: &str, incomplete: bool) {
    let mut list = INCOMPLETE.lock().unwrap_or_else(|p| p.into_inner());
    list.retain(|n| n != name);
    if incomplete {
        list.push(name.to_owned());
    }
}

/// Settings of a restore into Qubes beyond [`Options`].
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub options: Options,
    pub verify_only: bool,
    /// `--pool POOL`: every volume in this pool.
    pub pool: Option<String>,
    /// `--pool-for VOLUME=POOL`.
    pub pool_for: Vec<(String, String)>,
    pub restore_devices: bool,
    pub ignore_username_mismatch: bool,
    /// Act without asking (`--yes`).
    pub yes: bool,
    /// Where dom0's home is restored (a new `home-restore-<time>` inside it), and the local
    /// user it belongs to.
    pub home: Option<(PathBuf, String)>,
    /// `YYYY-MM-DD` for `restored-from-backup-at-…`, `YYYY-MM-DD-HHMMSS` for the home.
    pub date: String,
    pub time: String,
    /// Print the plan table and progress on stderr (not in JSON mode).
    pub quiet: bool,
}

/// The file being received.
enum Open {
    Ignore,
    Volume {
        vm: usize,
        volume: String,
        import: Import,
        size: u64,
    },
    Home,
}

/// Per manifest VM while restoring.
#[derive(Default)]
struct Live {
    /// Created on the host (its in-progress tag is set).
    created: bool,
    /// save_on_stop volumes of the new VM, and those imported.
    volumes: BTreeSet<String>,
    imported: BTreeSet<String>,
    failed: bool,
}

/// The consumer of the stream for `--into-qubes`.
pub struct QubesSink {
    q: Qubesd,
    s: Settings,
    pub plan: Option<Plan>,
    pub report: Option<Report>,
    /// Manifest index → index in `plan.vms` (dom0 has none).
    by_manifest: BTreeMap<usize, usize>,
    live: Vec<Live>,
    open: Open,
    /// The manifest, for dom0's home writer.
    manifest: Option<Manifest>,
    home: Option<DirSink<'static, Box<Destination>>>,
    /// Set when the restore stops before acting (a broken plan, no confirmation).
    pub refused: Option<String>,
}

impl QubesSink {
    pub fn new(q: Qubesd, s: Settings) -> QubesSink {
        QubesSink {
            q,
            s,
            plan: None,
            report: None,
            by_manifest: BTreeMap::new(),
            live: Vec::new(),
            open: Open::Ignore,
            manifest: None,
            home: None,
            refused: None,
        }
    }

    /// The stream failed: an import in flight is ended short (qubesd discards it, the
    /// volume keeps what it had) and its VM reported.
    pub fn interrupt(&mut self) {
        if let Open::Volume {
            vm, volume, import, ..
        } = std::mem::replace(&mut self.open, Open::Ignore)
        {
            let how = match import.abort() {
                Ok(()) => "the volume keeps its previous content".to_owned(),
                Err(e) => e.to_string(),
            };
            self.fail(
                vm,
                format!("import of {volume} interrupted by the stream's failure: {how}"),
            );
        }
    }

    fn vm_report(&mut self, i: usize) -> Option<&mut report::VmReport> {
        self.report.as_mut().and_then(|r| r.vms.get_mut(i))
    }

    fn fail(&mut self, i: usize, what: String) {
        if let Some(l) = self.live.get_mut(i) {
            l.failed = true;
        }
        if !self.s.quiet {
            let name = self
                .plan
                .as_ref()
                .map(|p| p.vms[i].name.clone())
                .unwrap_or_default();
            crate::say!("qbackup-pack: {name}: {what}");
        }
        if let Some(r) = self.vm_report(i) {
            r.errors.push(what);
            if r.status != Status::NotStarted {
                r.status = Status::Failed;
            }
        }
    }

    fn note(&mut self, i: usize, what: String) {
        if let Some(r) = self.vm_report(i) {
            r.notes.push(what);
        }
    }

    /// One call on behalf of plan VM `i`; a refusal is recorded against it.
    fn call(&mut self, i: usize, dest: &str, method: &str, arg: &str, payload: &[u8]) -> bool {
        match self.q.call(dest, method, arg, payload) {
            Ok(_) => true,
            Err(e) => {
                let shown = if arg.is_empty() {
                    method.to_owned()
                } else {
                    format!("{method} {arg}")
                };
                self.fail(i, format!("{shown}: {e}"));
                false
            }
        }
    }

    /// The host as planning needs it (QRS-2): VMs and classes, and for the VMs the backup
    /// refers to, whether they provide network or are DispVM templates.
    fn host(
        &self,
        m: &Manifest,
        configs: &[VmConfig],
    ) -> std::result::Result<plan::Host, CallError> {
        let vms = self.q.vm_list()?;
        // An empty value is no default; a refusal (an older qubesd) likewise.
        let global = |name: &str| {
            self.q
                .global_property_get(name)
                .ok()
                .filter(|v| !v.is_empty())
        };
        let mut host = plan::Host {
            vms,
            default_template: global("default_template"),
            default_dispvm: global("default_dispvm"),
            ..plan::Host::default()
        };
        let mut nets = BTreeSet::new();
        let mut disps = BTreeSet::new();
        for (vm, c) in m.vms.iter().zip(configs) {
            if let qbackup_format::qubes_xml::NetVm::Named(n) = &vm.netvm {
                nets.insert(n.clone());
            }
            if vm.class == "DispVM" {
                if let Some(t) = &vm.template {
                    disps.insert(t.clone());
                }
            }
            for (k, v) in &c.properties {
                if k == "default_dispvm" {
                    if let Some(v) = v.as_ref().filter(|v| !v.is_empty()) {
                        disps.insert(v.clone());
                    }
                }
            }
        }
        for n in nets.into_iter().filter(|n| host.vms.contains_key(n)) {
            if truthy(&self.q.property_get(&n, "provides_network")?) {
                host.netvms.insert(n);
            }
        }
        for n in disps.into_iter().filter(|n| host.vms.contains_key(n)) {
            if truthy(&self.q.property_get(&n, "template_for_dispvms")?) {
                host.dispvm_templates.insert(n);
            }
        }
        Ok(host)
    }

    /// QRS-5: show the plan and ask, unless `--yes`.
    fn confirm(&self, plan: &Plan) -> bool {
        if !self.s.quiet {
            eprint!("{}", report::table(plan));
        }
        if self.s.yes || self.s.verify_only {
            return true;
        }
        use std::io::{BufRead, Write};
        let Ok(tty) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")
        else {
            return false;
        };
        let mut w = &tty;
        let _ = w.write_all(b"Restore these VMs? [y/N] ");
        let mut line = String::new();
        let _ = std::io::BufReader::new(&tty).read_line(&mut line);
        matches!(line.trim(), "y" | "Y" | "yes")
    }

    /// QRS-3: create, tag and configure every planned VM, then wire references, then find
    /// the volumes that take data.
    fn create_all(&mut self) {
        let Some(plan) = self.plan.clone() else {
            return;
        };
        for &i in &plan.order {
            let v = &plan.vms[i];
            if let Some(r) = self.vm_report(i) {
                r.status = Status::Incomplete;
            }
            let method = if self.s.pool.is_some() || !self.s.pool_for.is_empty() {
                format!("admin.vm.CreateInPool.{}", v.class)
            } else {
                format!("admin.vm.Create.{}", v.class)
            };
            let template = v.template.clone().unwrap_or_default();
            let mut pools = String::new();
            if let Some(p) = &self.s.pool {
                pools.push_str(&format!(" pool={p}"));
            }
            for (vol, p) in &self.s.pool_for {
                pools.push_str(&format!(" pool:{vol}={p}"));
            }
            let payload = |label: &str| format!("name={} label={label}{pools}", v.name);
            let mut created = self
                .q
                .call("dom0", &method, &template, payload(&v.label).as_bytes());
            if let Err(CallError::Refused { kind, message }) = &created {
                // qubesd says so with QubesLabelNotFoundError, or (R4.2+) with a
                // ProtocolError about the label key.
                let label_missing = kind == "QubesLabelNotFoundError"
                    || (kind == "ProtocolError" && message.contains("label"));
                if label_missing && v.label != "red" {
                    self.note(
                        i,
                        format!("label {} is not on this host: red instead", v.label),
                    );
                    created = self
                        .q
                        .call("dom0", &method, &template, payload("red").as_bytes());
                }
            }
            if let Err(e) = created {
                self.fail(i, format!("{method}: {e}"));
                continue;
            }
            if !self.call(i, &v.name, "admin.vm.tag.Set", IN_PROGRESS_TAG, b"") {
                // Never leave a VM that could start before its data is in.
                if self.call(i, "dom0", "admin.vm.Remove", "", b"") {
                    self.note(
                        i,
                        "removed again: it could not be tagged as incomplete".into(),
                    );
                }
                let _ = self.q.call(&v.name, "admin.vm.Remove", "", b"");
                continue;
            }
            self.live[i].created = true;
            mark_incomplete(&v.name, true);
            if let Some(value) = v.template_for_dispvms() {
                let value = value.to_owned();
                self.call(
                    i,
                    &v.name,
                    "admin.vm.property.Set",
                    "template_for_dispvms",
                    value.as_bytes(),
                );
            }
        }
        for (i, v) in plan.vms.iter().enumerate() {
            if !self.live[i].created {
                continue;
            }
            for (k, value) in &v.config.properties {
                if matches!(k.as_str(), "template_for_dispvms" | "default_dispvm") {
                    continue;
                }
                let payload = value.clone().unwrap_or_default();
                self.call(i, &v.name, "admin.vm.property.Set", k, payload.as_bytes());
            }
            for (k, value) in &v.config.features {
                self.call(i, &v.name, "admin.vm.feature.Set", k, value.as_bytes());
            }
            for t in &v.config.tags {
                self.call(i, &v.name, "admin.vm.tag.Set", t, b"");
            }
            for d in &v.config.devices {
                let what = format!("{}:{}:{}", d.bus, d.backend, d.port);
                if !self.s.restore_devices {
                    self.note(i, format!("device {what} not assigned (--restore-devices)"));
                    continue;
                }
                let backend = plan
                    .vms
                    .iter()
                    .find(|o| o.backup_name == d.backend && o.action == Action::Create)
                    .map_or(d.backend.clone(), |o| o.name.clone());
                let mode = if d.required {
                    "required"
                } else {
                    "auto-attach"
                };
                let mut payload = format!(
                    "device_id='*' port_id='{}' devclass='{}' backend_domain='{backend}' \
                     mode='{mode}' frontend_domain='{}'",
                    d.port, d.bus, v.name
                );
                for (k, val) in &d.options {
                    payload.push_str(&format!(" _{k}='{val}'"));
                }
                let method = format!("admin.vm.device.{}.Assign", d.bus);
                let arg = format!("{backend}+{}+_", d.port);
                match self.q.call(&v.name, &method, &arg, payload.as_bytes()) {
                    Ok(_) => {}
                    // QRS-3: R4.1/R4.2 have no Assign; a persistent Attach assigns there.
                    Err(e) if e.is_no_such_method() => {
                        let mut legacy = String::new();
                        for (k, val) in &d.options {
                            legacy.push_str(&format!("{k}={val} "));
                        }
                        legacy.push_str("persistent=True");
                        let method = format!("admin.vm.device.{}.Attach", d.bus);
                        let arg = format!("{backend}+{}", d.port);
                        self.call(i, &v.name, &method, &arg, legacy.as_bytes());
                    }
                    Err(e) => self.fail(i, format!("{method} {arg}: {e}")),
                }
            }
        }
        for (i, v) in plan.vms.iter().enumerate() {
            if !self.live[i].created {
                continue;
            }
            for (prop, r) in [("netvm", &v.netvm), ("default_dispvm", &v.default_dispvm)] {
                let value = match r {
                    Reference::Default => continue,
                    Reference::None => "",
                    Reference::Named(n) => n.as_str(),
                };
                self.call(i, &v.name, "admin.vm.property.Set", prop, value.as_bytes());
            }
            match self.q.list(&v.name, "admin.vm.volume.List") {
                Ok(vols) => {
                    for vol in vols {
                        match self.q.volume_info(&v.name, &vol) {
                            Ok(info) if info.get("save_on_stop").is_some_and(|s| truthy(s)) => {
                                self.live[i].volumes.insert(vol);
                            }
                            Ok(_) => {}
                            Err(e) => self.fail(i, format!("admin.vm.volume.Info {vol}: {e}")),
                        }
                    }
                }
                Err(e) => self.fail(i, format!("admin.vm.volume.List: {e}")),
            }
        }
    }

    /// QRS-6: dom0's home goes to a new directory; the backup's user must be the local
    /// one unless `--ignore-username-mismatch`.
    fn home_begin(&mut self, b: &Begin) -> Result<Open> {
        let Some((home, user)) = self.s.home.clone() else {
            return Ok(Open::Ignore);
        };
        let backup_user = b.name.split('/').next().unwrap_or_default().to_owned();
        if backup_user != user && !self.s.ignore_username_mismatch {
            if let Some(r) = self.report.as_mut() {
                if r.dom0_home.is_none() {
                    r.dom0_home = Some(format!(
                        "failed: the backup's user is {backup_user}, this host's {user} \
                         (--ignore-username-mismatch)"
                    ));
                }
            }
            return Ok(Open::Ignore);
        }
        if self.home.is_none() {
            let dir = home.join(format!("home-restore-{}", self.s.time));
            std::fs::create_dir(&dir).map_err(|e| {
                Error::new(ErrorClass::Io, format!("creating {}: {e}", dir.display()))
            })?;
            let dest = Destination::open(&dir)?;
            if let Some(r) = self.report.as_mut() {
                r.dom0_home = Some(format!("restored to {}", dir.join("dom0-home").display()));
            }
            let mut sink = DirSink::new(Box::new(dest), None);
            if let Some(m) = &self.manifest {
                sink.prepare(m, Vec::new())?;
            }
            self.home = Some(sink);
        }
        match self.home.as_mut() {
            Some(sink) => {
                sink.begin(b)?;
                Ok(Open::Home)
            }
            None => Ok(Open::Ignore),
        }
    }
}

fn truthy(s: &str) -> bool {
    matches!(
        s.trim().to_ascii_lowercase().as_str(),
        "true" | "1" | "yes" | "on"
    )
}

impl Sink for QubesSink {
    fn prepare(&mut self, m: &Manifest, configs: Vec<VmConfig>) -> Result<()> {
        let host = if self.s.verify_only {
            plan::Host::default()
        } else {
            self.host(m, &configs)
                .map_err(|e| Error::new(ErrorClass::Io, format!("reading the host: {e}")))?
        };
        let mut options = self.s.options.clone();
        if self.s.verify_only {
            options.skip_conflicting = false;
            options.rename_conflicting = false;
        }
        let mut plan = plan::plan(m, &configs, &host, &options);
        if self.s.verify_only {
            // Verification does not depend on the host: every selected VM is verified.
            for v in &mut plan.vms {
                if matches!(v.action, Action::Broken(_)) {
                    v.action = Action::Create;
                }
            }
        }
        self.manifest = Some(m.clone());
        self.by_manifest = plan
            .vms
            .iter()
            .enumerate()
            .map(|(i, v)| (v.index, i))
            .collect();
        self.live = plan.vms.iter().map(|_| Live::default()).collect();
        self.report = Some(Report::from_plan(&plan));
        let broken: Vec<String> = plan
            .broken()
            .iter()
            .map(|v| {
                format!(
                    "{}: {}",
                    v.backup_name,
                    match &v.action {
                        Action::Broken(w) => w.as_str(),
                        _ => "",
                    }
                )
            })
            .collect();
        let go = self.confirm(&plan);
        self.plan = Some(plan);
        if !broken.is_empty() && !self.s.verify_only {
            self.refused = Some(format!(
                "nothing restored: {} (install what is missing, or --skip-broken, \
                 --ignore-missing)",
                broken.join("; ")
            ));
            return Err(Error::new(ErrorClass::Io, "restore refused before acting"));
        }
        if !go {
            self.refused = Some("nothing restored: not confirmed (--yes)".into());
            return Err(Error::new(ErrorClass::Io, "restore not confirmed"));
        }
        if !self.s.verify_only {
            self.create_all();
        }
        Ok(())
    }

    fn begin(&mut self, b: &Begin) -> Result<()> {
        let vm = usize::try_from(b.vm).unwrap_or(usize::MAX);
        if self.plan.as_ref().and_then(|p| p.dom0) == Some(vm) && !self.s.verify_only {
            self.open = self.home_begin(b)?;
            return Ok(());
        }
        self.open = Open::Ignore;
        let Some(&i) = self.by_manifest.get(&vm) else {
            return Ok(());
        };
        let volume = b
            .name
            .strip_suffix(".img")
            .filter(|v| !v.contains('/') && b.kind == FileKind::Regular);
        let Some(volume) = volume else { return Ok(()) };
        if !self.live[i].created || !self.live[i].volumes.contains(volume) || self.live[i].failed {
            return Ok(());
        }
        let name = self
            .plan
            .as_ref()
            .map(|p| p.vms[i].name.clone())
            .unwrap_or_default();
        match self.q.import_with_size(&name, volume, b.size) {
            Ok(import) => {
                self.open = Open::Volume {
                    vm: i,
                    volume: volume.to_owned(),
                    import,
                    size: b.size,
                }
            }
            Err(e) => self.fail(i, format!("importing {volume}: {e}")),
        }
        Ok(())
    }

    fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        match &mut self.open {
            Open::Volume {
                vm, volume, import, ..
            } => {
                if let Err(e) = import.write_at(offset, bytes) {
                    let (vm, volume) = (*vm, volume.clone());
                    self.open = Open::Ignore;
                    self.fail(vm, format!("importing {volume}: {e}"));
                }
            }
            Open::Home => {
                if let Some(h) = self.home.as_mut() {
                    h.data(offset, bytes)?;
                }
            }
            Open::Ignore => {}
        }
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        match std::mem::replace(&mut self.open, Open::Ignore) {
            Open::Volume {
                vm,
                volume,
                import,
                size,
            } => match import.finish() {
                Ok(()) => {
                    self.live[vm].imported.insert(volume.clone());
                    if let Some(r) = self.vm_report(vm) {
                        r.volumes.push((volume, size));
                    }
                }
                Err(e) => self.fail(vm, format!("importing {volume}: {e}")),
            },
            Open::Home => {
                if let Some(h) = self.home.as_mut() {
                    h.end()?;
                }
            }
            Open::Ignore => {}
        }
        Ok(())
    }

    fn vm_end(&mut self, vm: u32, end: VmEnd) -> Result<()> {
        let vm = usize::try_from(vm).unwrap_or(usize::MAX);
        let Some(&i) = self.by_manifest.get(&vm) else {
            return Ok(());
        };
        if self.s.verify_only {
            if let Some(r) = self.vm_report(i) {
                if r.status == Status::NotStarted {
                    r.status = Status::Verified;
                }
            }
            return Ok(());
        }
        if !self.live[i].created {
            return Ok(());
        }
        let name = self
            .plan
            .as_ref()
            .map(|p| p.vms[i].name.clone())
            .unwrap_or_default();
        match &end.firewall {
            Firewall::Absent => {}
            Firewall::Rules(lines) => {
                // No rules is "drop everything"; qubesd refuses an empty payload.
                let payload: String = if lines.is_empty() {
                    "action=drop\n".to_owned()
                } else {
                    lines.iter().map(|l| format!("{l}\n")).collect()
                };
                self.call(i, &name, "admin.vm.firewall.Set", "", payload.as_bytes());
            }
            Firewall::Unreadable(why) => {
                // Fail closed: the backup had a firewall this restore cannot reproduce.
                self.call(i, &name, "admin.vm.firewall.Set", "", b"action=drop\n");
                self.fail(
                    i,
                    format!(
                        "firewall.xml could not be converted ({why}): the VM's network is \
                     blocked (action=drop) until its firewall is set by hand"
                    ),
                );
            }
        }
        if let Some(notes) = &end.notes {
            self.call(i, &name, "admin.vm.notes.Set", "", notes.as_bytes());
        }
        if let Some(items) = &end.menu_items {
            let value = items.join(" ");
            self.call(
                i,
                &name,
                "admin.vm.feature.Set",
                "menu-items",
                value.as_bytes(),
            );
        }
        let missing: Vec<String> = self.live[i]
            .volumes
            .difference(&self.live[i].imported)
            .cloned()
            .collect();
        for v in missing {
            self.note(i, format!("volume {v}: not in the backup, left as created"));
        }
        if !self.live[i].failed {
            let tag = format!("restored-from-backup-at-{}", self.s.date);
            if self.call(i, &name, "admin.vm.tag.Set", &tag, b"")
                && self.call(i, &name, "admin.vm.tag.Remove", IN_PROGRESS_TAG, b"")
            {
                mark_incomplete(&name, false);
                if let Some(r) = self.vm_report(i) {
                    r.status = Status::Restored;
                }
            }
        }
        if self.live[i].failed {
            if let Some(r) = self.vm_report(i) {
                r.status = Status::Failed;
                r.reason = Some(format!("kept tagged {IN_PROGRESS_TAG}"));
            }
        }
        Ok(())
    }
}
