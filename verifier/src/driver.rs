//! Drives the format crate over an archive stream: one pass, bounded memory, KDFs in
//! parallel (SPEC.md RES-1).
//!
//! ```text
//! main thread:  outer tar → sequencer → plan ──jobs──▶ workers (KDF + MAC + decrypt, N threads)
//!                               │                          │ results, one slot per chunk
//!                               └──── file messages ───────┴──▶ inner thread: decompress →
//!                                     (in archive order)          inner tar → Output
//! ```
//! At most `jobs + 3` chunk buffers exist at once (the file queue holds `jobs + 1`), and
//! KDF memory in flight is held under a budget, so memory does not grow with the archive.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read};
use std::sync::{Arc, Condvar, Mutex};

use crossbeam_channel::{bounded, Receiver, Sender};
use qbackup_format::archive::authenticate::{
    authenticate_header, authenticate_headerless_v2, backup_id_hint, chunk_digest, open_v4_chunk,
    verify_chunk_hmac, AuthenticatedArchive, Credentials,
};
use qbackup_format::archive::decode::{file_stream, v2_volume, ChunkReader};
use qbackup_format::archive::plan::{BackupPlan, FileSpec};
use qbackup_format::archive::sequencer::{Sequencer, Step};
use qbackup_format::crypto::hmac_file::Digest;
use qbackup_format::crypto::scrypt_container;
use qbackup_format::header::{Header, Version};
use qbackup_format::inner_tar::{
    DataSink, Entry, EntryKind, EntrySource, MultiVolumeReader, TarReader,
};
use qbackup_format::limits::{
    BACKUP_SIZE_SLACK, MAX_CHUNK_LEN, MAX_HEADER_LEN, MAX_HMAC_LEN, MAX_INNER_ENTRIES,
    MAX_QUBES_XML_CHUNK_LEN, MAX_QUBES_XML_LEN,
};
use qbackup_format::member_name::{chunk_name, MemberName, QUBES_XML};
use qbackup_format::outer_tar::OuterReader;
use qbackup_format::qubes_xml::{self, Flavor, NetVm, QubesXml};
use qbackup_format::{Error, ErrorClass, Result};

use crate::output::Output;
use crate::report::{ArchiveInfo, FileReport, Report, VmInfo, Warning};

/// What VER-4 makes of a VM whose data exceeds its declared backup-size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupSizeCheck {
    /// A warning with both figures (the default: upstream's figure is disk usage).
    Warn,
    /// A failure beyond LIM-27, checked while decoding (`--strict-backup-size`).
    Strict,
    /// Not compared (`--ignore-backup-size`), reported as a note.
    Ignore,
}

/// How a run is set up.
pub struct Settings {
    pub credentials: Credentials,
    /// Worker threads for KDF/MAC/decrypt.
    pub jobs: usize,
    /// Total scrypt memory that may be in use at once.
    pub kdf_budget: u64,
    /// Stop after qubes.xml (`list`).
    pub list_only: bool,
    /// VM names to process (None: all). `dom0` selects dom0's home.
    pub select: Option<Vec<String>>,
    /// What a VM's data beyond its declared backup-size is (VER-4).
    pub backup_size: BackupSizeCheck,
    /// Called with the count of archive bytes consumed so far.
    pub progress: Option<Box<dyn Fn(u64) + Send + Sync>>,
}

impl Settings {
    /// Defaults for library callers: two workers, a 1 GiB KDF budget, every VM, all checks.
    pub fn new(credentials: Credentials) -> Settings {
        Settings {
            credentials,
            jobs: 2,
            kdf_budget: 1 << 30,
            list_only: false,
            backup_size: BackupSizeCheck::Warn,
            select: None,
            progress: None,
        }
    }
}

/// Reader wrapper that reports progress.
struct Counting<R> {
    inner: R,
    count: u64,
    progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if let Some(p) = &self.progress {
            p(self.count);
        }
        Ok(n)
    }
}

/// Run over `input`, feeding every selected file's entries to `output`.
pub fn run(input: impl Read, settings: Settings, output: &mut dyn Output) -> Report {
    let mut report = Report::default();
    let progress: Option<Arc<dyn Fn(u64) + Send + Sync>> = settings.progress.map(Arc::from);
    let mut outer = OuterReader::new(BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: input,
            count: 0,
            progress,
        },
    ));
    let credentials = Arc::new(settings.credentials);
    let result = Run {
        outer: &mut outer,
        credentials,
        jobs: settings.jobs.max(1),
        kdf_budget: settings.kdf_budget,
        list_only: settings.list_only,
        backup_size: settings.backup_size,
        select: settings.select,
        report: &mut report,
    }
    .go(output);
    if let Err(e) = result {
        report.fail(e, None, None);
    }
    report.bytes_read = outer.position();
    report
}

struct Run<'a, R: Read> {
    outer: &'a mut OuterReader<R>,
    credentials: Arc<Credentials>,
    jobs: usize,
    kdf_budget: u64,
    list_only: bool,
    backup_size: BackupSizeCheck,
    select: Option<Vec<String>>,
    report: &'a mut Report,
}

/// The member after the header MAC, read early (MAC-7): its name, its stored bytes, and
/// its plaintext as opened with the claimed backup-id.
struct Prefetched {
    name: Vec<u8>,
    data: Vec<u8>,
    opened: Option<(String, Result<Vec<u8>>)>,
}

/// A chunk's payload once authenticated (or why not).
type Slot = Receiver<Result<Vec<u8>>>;

enum FileMsg {
    Begin(Box<FileSpec>, Option<String>),
    Chunk(Slot, u64),
    End,
}

enum Job {
    V4 {
        name: String,
        data: Vec<u8>,
        done: Sender<Result<Vec<u8>>>,
    },
    Mac {
        digest: Digest,
        name: String,
        data: Vec<u8>,
        mac: Vec<u8>,
        done: Sender<Result<Vec<u8>>>,
    },
}

impl<R: Read> Run<'_, R> {
    fn next(&mut self) -> Result<Option<(Vec<u8>, u64)>> {
        Ok(self
            .outer
            .next_member()?
            .map(|m| (m.untrusted_name, m.size)))
    }

    fn read(&mut self, max: u64, what: &str) -> Result<Vec<u8>> {
        // Chunk buffers all get the capacity of the largest chunk (LIM-5; untouched pages
        // cost nothing), so a freed one is always the right size for the next and the
        // allocator's reuse cache never holds stale sizes (RES-1).
        let mut buf = if max == MAX_CHUNK_LEN {
            Vec::with_capacity(MAX_CHUNK_LEN as usize)
        } else {
            Vec::new()
        };
        self.outer.read_member(&mut buf, max, what)?;
        Ok(buf)
    }

    fn go(mut self, output: &mut dyn Output) -> Result<()> {
        // ORD-1: backup-header, backup-header.hmac; or ORD-8: header-less v2.
        let Some((first, _)) = self.next()? else {
            return Err(Error::truncated("the archive is empty"));
        };
        let mut pending_name = None;
        let mut prefetched: Option<Prefetched> = None;
        let header = match MemberName::parse(&first) {
            Ok(MemberName::Header) => {
                let header_bytes = self.read(MAX_HEADER_LEN, "backup-header")?;
                let Some((second, _)) = self.next()? else {
                    return Err(Error::truncated("archive ends after backup-header"));
                };
                if second != b"backup-header.hmac" {
                    return Err(Error::new(
                        ErrorClass::HeaderFailure,
                        format!(
                            "expected backup-header.hmac after backup-header, got {}",
                            qbackup_format::paths::escape(&second)
                        ),
                    ));
                }
                let mac = self.read(MAX_HMAC_LEN, "backup-header.hmac")?;
                let (auth, prefetch) = self.authenticate_with_prefetch(&header_bytes, &mac)?;
                prefetched = prefetch;
                let auth = auth?;
                let kdf = scrypt_container::parse_header(&mac)
                    .ok()
                    .map(|h| (h.params.log_n, h.params.r, h.params.p));
                self.report.archive = Some(archive_info(&auth.header, kdf));
                Some(auth.header)
            }
            Ok(MemberName::Chunk {
                ref path, index: 0, ..
            }) if path == QUBES_XML => {
                // ORD-8: header-less v2; its settings come from the authenticated qubes.xml.
                pending_name = Some(first);
                None
            }
            _ => {
                return Err(Error::new(
                    ErrorClass::HeaderFailure,
                    format!(
                        "archive does not start with backup-header (first member: {})",
                        qbackup_format::paths::escape(&first)
                    ),
                ))
            }
        };
        let mut sequencer = Sequencer::new(header.as_ref().map_or(Version::V2, |h| h.version));

        // ORD-2: qubes.xml, one chunk, authenticated and decoded before anything else.
        let (name, mut xml_chunk, speculative) = match (pending_name, prefetched) {
            (Some(n), _) => (n, self.read(MAX_QUBES_XML_CHUNK_LEN, "qubes.xml")?, None),
            (None, Some(p)) => (p.name, p.data, p.opened),
            (None, None) => match self.next()? {
                Some((n, _)) => (n, self.read(MAX_QUBES_XML_CHUNK_LEN, "qubes.xml")?, None),
                None => return Err(Error::truncated("archive ends before qubes.xml")),
            },
        };
        sequencer.on_member(&name)?;
        let xml_name = chunk_name(QUBES_XML, 0);
        let header = match header {
            Some(h) if h.version == Version::V4 => {
                let id = h.backup_id.as_deref().unwrap_or_default();
                match speculative {
                    // MAC-7: keys from the claimed id count only if it is the real one.
                    Some((hint, Ok(plain))) if hint == id => xml_chunk = plain,
                    _ => open_v4_chunk(id, &xml_name, &self.credentials, &mut xml_chunk)?,
                }
                h
            }
            header => {
                let Some((mac_name, _)) = self.next()? else {
                    return Err(Error::truncated("archive ends before qubes.xml.000.hmac"));
                };
                sequencer.on_member(&mac_name)?;
                let mac = self.read(MAX_HMAC_LEN, "qubes.xml.000.hmac")?;
                let header = match header {
                    Some(h) => h,
                    None => {
                        let h = authenticate_headerless_v2(&xml_chunk, &mac, &self.credentials)?;
                        self.report.archive = Some(archive_info(&h, None));
                        h
                    }
                };
                verify_chunk_hmac(
                    chunk_digest(&header)?,
                    &self.credentials,
                    &xml_name,
                    &xml_chunk,
                    &mac,
                )?;
                header
            }
        };
        let header = Arc::new(header);
        let xml_bytes = decode_qubes_xml(&header, &self.credentials, xml_chunk)?;
        let xml = qubes_xml::parse(&xml_bytes).map_err(|e| e.context("qubes.xml"))?;
        if !self.list_only {
            output.qubes_xml(&xml_bytes)?;
        }
        if let Some(a) = self.report.archive.as_mut() {
            a.qubes_xml_flavor = Some(match xml.flavor {
                Flavor::Core2 => "R2/R3 (core2)".into(),
                Flavor::Core3 => "R4 (core3)".into(),
            });
        }
        self.report.vms = vm_infos(&xml);
        self.report.notes.extend(xml.notes.iter().cloned());
        let mut plan = BackupPlan::from_qubes_xml(&xml, header.version)?;
        if let Some(select) = &self.select {
            for name in select {
                if !plan.vms.iter().any(|v| &v.name == name) && name != "dom0" {
                    return Err(Error::new(
                        ErrorClass::MissingData,
                        format!("VM {name:?} is not in this backup"),
                    ));
                }
            }
        }
        if self.list_only {
            return Ok(());
        }
        self.data_members(&header, &mut sequencer, &mut plan, output)
    }

    /// Authenticate the header; for a v4 archive, meanwhile read the next member (which
    /// ORD-2 says is qubes.xml) and open it on a second thread with the backup-id the
    /// header claims (MAC-7), so the two KDFs run in parallel.
    fn authenticate_with_prefetch(
        &mut self,
        header_bytes: &[u8],
        mac: &[u8],
    ) -> Result<(Result<AuthenticatedArchive>, Option<Prefetched>)> {
        let hint = if mac.starts_with(scrypt_container::MAGIC) && self.jobs > 1 {
            backup_id_hint(header_bytes)
        } else {
            None
        };
        let Some(hint) = hint else {
            return Ok((
                authenticate_header(header_bytes, mac, &self.credentials),
                None,
            ));
        };
        let Some((name, _)) = self.next()? else {
            return Ok((
                authenticate_header(header_bytes, mac, &self.credentials),
                None,
            ));
        };
        let data = self.read(MAX_QUBES_XML_CHUNK_LEN, "qubes.xml")?;
        let credentials = &self.credentials;
        // Both KDFs at once must fit the KDF memory budget (RES-1).
        let memory = |c: &[u8]| {
            scrypt_container::parse_header(c).map_or(u64::MAX, |h| h.params.memory_bytes())
        };
        let fits = memory(mac).saturating_add(memory(&data)) <= self.kdf_budget;
        let (auth, opened) = std::thread::scope(|scope| {
            let is_xml = name == format!("{}.enc", chunk_name(QUBES_XML, 0)).as_bytes();
            let speculative = (is_xml && fits).then(|| {
                let mut copy = data.clone();
                let hint = hint.clone();
                scope.spawn(move || {
                    open_v4_chunk(&hint, &chunk_name(QUBES_XML, 0), credentials, &mut copy)
                        .map(|()| copy)
                })
            });
            let auth = authenticate_header(header_bytes, mac, credentials);
            let opened = speculative.and_then(|h| h.join().ok()).map(|r| (hint, r));
            (auth, opened)
        });
        Ok((auth, Some(Prefetched { name, data, opened })))
    }

    /// ORD-3 … ORD-7 and VER-1 … VER-5: every member after qubes.xml.
    fn data_members(
        &mut self,
        header: &Arc<Header>,
        sequencer: &mut Sequencer,
        plan: &mut BackupPlan,
        output: &mut dyn Output,
    ) -> Result<()> {
        let (job_tx, job_rx) = bounded::<Job>(self.jobs);
        let (file_tx, file_rx) = bounded::<FileMsg>(self.jobs + 1);
        let budget = Arc::new(KdfBudget::new(self.kdf_budget));
        let digest = match header.version {
            Version::V4 => None,
            _ => Some(chunk_digest(header)?),
        };
        // VER-4: only the strict check bounds decoding by the declared sizes.
        let declared: HashMap<String, u64> = match self.backup_size {
            BackupSizeCheck::Strict => plan
                .vms
                .iter()
                .map(|v| (v.name.clone(), v.declared_size))
                .collect(),
            BackupSizeCheck::Warn => HashMap::new(),
            BackupSizeCheck::Ignore => {
                self.report.notes.push(
                    "each VM's data was not compared with its declared backup-size (VER-4)".into(),
                );
                HashMap::new()
            }
        };

        let outcome = std::thread::scope(|scope| {
            for _ in 0..self.jobs {
                let rx = job_rx.clone();
                let creds = Arc::clone(&self.credentials);
                let header = Arc::clone(header);
                let budget = Arc::clone(&budget);
                scope.spawn(move || worker(rx, &creds, &header, &budget));
            }
            drop(job_rx);
            let header_for_inner = Arc::clone(header);
            let creds = Arc::clone(&self.credentials);
            let inner = scope
                .spawn(move || inner_thread(file_rx, &header_for_inner, &creds, declared, output));

            let main = self.feed(header, digest, sequencer, plan, &job_tx, &file_tx);
            drop(job_tx);
            drop(file_tx);
            let files = inner.join().unwrap_or_else(|_| Vec::new());
            (main, files)
        });
        let (main, files) = outcome;
        // The reader's own failure comes first (ERR-1: in archive order); the file it
        // interrupted only reports that it was cut off, which adds nothing.
        if let Err(e) = &main {
            self.report.fail(e.clone(), None, None);
        }
        for f in &files {
            if let Some(e) = f
                .error
                .as_ref()
                .filter(|e| !e.message().contains(READING_STOPPED))
            {
                self.report.fail(e.clone(), f.vm.as_deref(), Some(&f.path));
            }
        }
        for f in &files {
            self.report.notes.extend(f.notes.iter().cloned());
        }
        self.report.files = files;
        if main.is_ok() {
            self.check_completeness(plan);
            if self.backup_size != BackupSizeCheck::Ignore {
                self.check_declared_sizes(plan);
            }
        }
        Ok(())
    }

    /// VER-4: backup-size is advisory; a VM holding more data than it declares is a
    /// warning with both figures.
    fn check_declared_sizes(&mut self, plan: &BackupPlan) {
        for vm in plan.vms.iter().filter(|v| v.declared_size > 0) {
            let data: u64 = self
                .report
                .files
                .iter()
                .filter(|f| f.vm.as_deref() == Some(&vm.name) && !f.skipped)
                .map(|f| f.data_bytes)
                .fold(0, u64::saturating_add);
            if data > vm.declared_size {
                self.report.warn(Warning {
                    vm: vm.name.clone(),
                    message: format!(
                        "VM {} holds {data} bytes of data, more than its declared backup-size {} (VER-4: advisory; --strict-backup-size makes it a failure)",
                        vm.name, vm.declared_size
                    ),
                    declared: vm.declared_size,
                    data,
                });
            }
        }
    }

    /// VER-2 and VER-3: every file qubes.xml implies is present and decoded.
    fn check_completeness(&mut self, plan: &BackupPlan) {
        for vm in &plan.vms {
            if !self.selected(&vm.name) {
                continue;
            }
            let present: Vec<String> = self
                .report
                .files
                .iter()
                .filter(|f| f.vm.as_deref() == Some(&vm.name))
                .map(|f| f.path.clone())
                .collect();
            if present.is_empty() {
                self.report.fail(
                    Error::new(
                        ErrorClass::MissingData,
                        format!("qubes.xml marks VM {} as backed up, but the archive holds none of its files", vm.name),
                    ),
                    Some(&vm.name),
                    None,
                );
                continue;
            }
            for want in &vm.expected_files {
                if !present.contains(want) {
                    self.report.fail(
                        Error::new(
                            ErrorClass::MissingData,
                            format!("VM {}: {want} is missing from the archive (VER-2)", vm.name),
                        ),
                        Some(&vm.name),
                        Some(want),
                    );
                }
            }
        }
    }

    fn selected(&self, vm: &str) -> bool {
        match &self.select {
            None => true,
            Some(list) => list
                .iter()
                .any(|s| s == vm || (s == "dom0" && vm == "dom0")),
        }
    }

    fn feed(
        &mut self,
        header: &Header,
        digest: Option<Digest>,
        sequencer: &mut Sequencer,
        plan: &mut BackupPlan,
        jobs: &Sender<Job>,
        files: &Sender<FileMsg>,
    ) -> Result<()> {
        let closed = || Error::new(ErrorClass::Io, "internal: pipeline stopped");
        let mut skipping = false;
        let mut in_file = false;
        let mut pending: Option<(String, Vec<u8>)> = None;
        let mut skipped_files: Vec<FileReport> = Vec::new();
        let mut current_vm: Option<usize> = None;
        let mut finished_vms: HashSet<usize> = HashSet::new();
        while let Some((name, size)) = self.next()? {
            match sequencer.on_member(&name)? {
                Step::Chunk { path, index } => {
                    if index == 0 {
                        if in_file {
                            files.send(FileMsg::End).map_err(|_| closed())?;
                            in_file = false;
                        }
                        let spec = plan.locate(&path)?;
                        // ORD-9: a VM's files are contiguous.
                        if spec.vm != current_vm {
                            if let Some(done) = current_vm {
                                finished_vms.insert(done);
                            }
                            if spec.vm.is_some_and(|v| finished_vms.contains(&v)) {
                                return Err(Error::order(format!(
                                    "{path} belongs to a VM whose files ended earlier in the archive (ORD-9)"
                                )));
                            }
                            current_vm = spec.vm;
                        }
                        let vm = spec.vm.map(|i| plan.vms[i].name.clone());
                        skipping = !vm.as_deref().is_some_and(|v| self.selected(v));
                        if skipping {
                            skipped_files.push(FileReport {
                                path: path.clone(),
                                vm,
                                skipped: true,
                                ..FileReport::default()
                            });
                        } else {
                            files
                                .send(FileMsg::Begin(Box::new(spec), vm))
                                .map_err(|_| closed())?;
                            in_file = true;
                        }
                    }
                    let chunk = chunk_name(&path, index);
                    if skipping {
                        if let Some(f) = skipped_files.last_mut() {
                            f.chunks += 1;
                            f.stored_bytes += size;
                        }
                        continue;
                    }
                    let data = self.read(MAX_CHUNK_LEN, &chunk)?;
                    if header.version == Version::V4 {
                        let (done, slot) = bounded(1);
                        jobs.send(Job::V4 {
                            name: chunk,
                            data,
                            done,
                        })
                        .map_err(|_| closed())?;
                        files
                            .send(FileMsg::Chunk(slot, size))
                            .map_err(|_| closed())?;
                    } else {
                        pending = Some((chunk, data));
                    }
                }
                Step::ChunkMac { .. } => {
                    if skipping {
                        continue;
                    }
                    let Some((chunk, data)) = pending.take() else {
                        return Err(Error::order("MAC member without its data chunk"));
                    };
                    let mac = self.read(MAX_HMAC_LEN, &format!("{chunk}.hmac"))?;
                    let (done, slot) = bounded(1);
                    let size = data.len() as u64 + mac.len() as u64;
                    jobs.send(Job::Mac {
                        digest: digest.ok_or_else(closed)?,
                        name: chunk,
                        data,
                        mac,
                        done,
                    })
                    .map_err(|_| closed())?;
                    files
                        .send(FileMsg::Chunk(slot, size))
                        .map_err(|_| closed())?;
                }
            }
        }
        sequencer.finish()?;
        if in_file {
            files.send(FileMsg::End).map_err(|_| closed())?;
        }
        self.report.files.extend(skipped_files);
        Ok(())
    }
}

/// Memory budget for KDFs in flight (RES-1).
struct KdfBudget {
    free: Mutex<u64>,
    total: u64,
    freed: Condvar,
}

impl KdfBudget {
    fn new(total: u64) -> Self {
        KdfBudget {
            free: Mutex::new(total),
            total,
            freed: Condvar::new(),
        }
    }
    /// Wait until `amount` (capped at the total, which a single KDF may use) is free.
    fn acquire(&self, amount: u64) -> u64 {
        let amount = amount.min(self.total);
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        while *free < amount {
            free = self.freed.wait(free).unwrap_or_else(|p| p.into_inner());
        }
        *free -= amount;
        amount
    }
    fn release(&self, amount: u64) {
        *self.free.lock().unwrap_or_else(|p| p.into_inner()) += amount;
        self.freed.notify_all();
    }
}

fn worker(jobs: Receiver<Job>, credentials: &Credentials, header: &Header, budget: &KdfBudget) {
    for job in jobs {
        match job {
            Job::V4 {
                name,
                mut data,
                done,
            } => {
                let cost =
                    scrypt_container::parse_header(&data).map_or(0, |h| h.params.memory_bytes());
                let held = budget.acquire(cost);
                let id = header.backup_id.as_deref().unwrap_or_default();
                let result = open_v4_chunk(id, &name, credentials, &mut data).map(|()| data);
                budget.release(held);
                let _ = done.send(result);
            }
            Job::Mac {
                digest,
                name,
                data,
                mac,
                done,
            } => {
                let result =
                    verify_chunk_hmac(digest, credentials, &name, &data, &mac).map(|()| data);
                let _ = done.send(result);
            }
        }
    }
}

/// Why a file's chunks stopped coming when the reader failed (reported by the reader).
const READING_STOPPED: &str = "archive reading stopped inside this file";

/// The chunks of one file, as the inner thread pulls them.
struct FileChunks<'a> {
    rx: &'a Receiver<FileMsg>,
    ended: bool,
    chunks: u32,
    stored: u64,
}

impl FileChunks<'_> {
    fn next(&mut self) -> Option<Result<Vec<u8>>> {
        if self.ended {
            return None;
        }
        match self.rx.recv() {
            Ok(FileMsg::Chunk(slot, size)) => {
                self.chunks += 1;
                self.stored += size;
                Some(slot.recv().unwrap_or_else(|_| {
                    Err(Error::new(ErrorClass::Io, "internal: worker stopped"))
                }))
            }
            Ok(FileMsg::End) => {
                self.ended = true;
                None
            }
            Ok(FileMsg::Begin(..)) => {
                self.ended = true;
                Some(Err(Error::new(
                    ErrorClass::Io,
                    "internal: file message out of order",
                )))
            }
            Err(_) => {
                // The reader stopped (it reports why); this file is incomplete.
                self.ended = true;
                Some(Err(Error::truncated(
                    "archive reading stopped inside this file",
                )))
            }
        }
    }

    /// Consume what is left of this file (after an error), so the next file starts clean.
    fn drain(&mut self) {
        while self.next().is_some() {}
    }
}

fn inner_thread(
    rx: Receiver<FileMsg>,
    header: &Header,
    credentials: &Credentials,
    declared: HashMap<String, u64>,
    output: &mut dyn Output,
) -> Vec<FileReport> {
    let mut reports = Vec::new();
    let mut data_per_vm: HashMap<String, u64> = HashMap::new();
    while let Ok(msg) = rx.recv() {
        let FileMsg::Begin(mut spec, vm) = msg else {
            continue;
        };
        let mut chunks = FileChunks {
            rx: &rx,
            ended: false,
            chunks: 0,
            stored: 0,
        };
        let mut report = FileReport {
            path: spec.path.clone(),
            vm: vm.clone(),
            ..FileReport::default()
        };
        let vm_name = vm.clone().unwrap_or_default();
        let limit = declared.get(&vm_name).copied().unwrap_or(0);
        let used = data_per_vm.entry(vm_name.clone()).or_insert(0);
        let begun = output.begin_file(&spec);
        let mut ctx = FileCtx {
            spec: &mut spec,
            report: &mut report,
            vm_data: used,
            vm_limit: limit,
            vm_name: &vm_name,
        };
        let result =
            begun.and_then(|()| decode_file(header, credentials, &mut chunks, &mut ctx, output));
        let result = result.map_err(|e| e.context(&spec.path));
        chunks.drain();
        report.chunks = chunks.chunks;
        report.stored_bytes = chunks.stored;
        let committed = output.end_file(&spec, result.is_ok());
        report.error = result.and(committed).err();
        reports.push(report);
    }
    reports
}

struct FileCtx<'a> {
    spec: &'a mut FileSpec,
    report: &'a mut FileReport,
    vm_data: &'a mut u64,
    vm_limit: u64,
    vm_name: &'a str,
}

fn decode_file(
    header: &Header,
    credentials: &Credentials,
    chunks: &mut FileChunks<'_>,
    ctx: &mut FileCtx<'_>,
    output: &mut dyn Output,
) -> Result<()> {
    if header.version == Version::V2 {
        let volumes = std::iter::from_fn(|| {
            chunks.next().map(|r| -> Box<dyn Read + Send> {
                match r.and_then(|v| v2_volume(header, credentials, v)) {
                    Ok(volume) => volume,
                    Err(e) => Box::new(FailingReader(Some(e))),
                }
            })
        });
        let mut tar = MultiVolumeReader::new(volumes)?;
        walk(ctx, &mut tar, output)?;
        return tar.finish();
    }
    let payload = ChunkReader::new(|| chunks.next());
    let stream = file_stream(header, credentials, payload)?;
    walk(ctx, &mut TarReader::new(stream), output)
}

/// Every entry of one file's inner tar, to its end (VER-1, VER-3).
fn walk(ctx: &mut FileCtx<'_>, tar: &mut dyn EntrySource, output: &mut dyn Output) -> Result<()> {
    let mut ordinal = 0;
    while let Some(entry) = tar.next_entry()? {
        handle_entry(ctx, &entry, ordinal, output, &mut |sink| {
            tar.read_data(sink)
        })?;
        ordinal += 1;
    }
    finish_file(ordinal)
}

fn finish_file(entries: u64) -> Result<()> {
    if entries == 0 {
        return Err(Error::new(
            ErrorClass::MissingData,
            "inner tar holds no entry",
        ));
    }
    Ok(())
}

/// A Read that fails with a classified error (to carry a chunk error into the tar reader).
struct FailingReader(Option<Error>);

impl Read for FailingReader {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(self
            .0
            .take()
            .unwrap_or_else(|| Error::new(ErrorClass::Io, "chunk failed"))
            .into_io())
    }
}

fn handle_entry(
    ctx: &mut FileCtx<'_>,
    entry: &Entry,
    ordinal: u64,
    output: &mut dyn Output,
    read_data: &mut dyn FnMut(&mut dyn DataSink) -> Result<()>,
) -> Result<()> {
    if ordinal >= MAX_INNER_ENTRIES {
        return Err(Error::limit(format!(
            "more than LIM-13 ({MAX_INNER_ENTRIES}) inner entries"
        )));
    }
    let placement = ctx.spec.place(entry, ordinal)?;
    // VER-4: the entry's logical size is bounded by what it is, before any data.
    if entry.size > placement.max_size {
        return Err(Error::limit(format!(
            "{} claims {} bytes, more than the {} bytes an entry of its kind may have (VER-4)",
            placement.inner, entry.size, placement.max_size
        )));
    }
    if let Some(v) = placement.volume_size.filter(|v| *v != entry.size) {
        ctx.report.notes.push(format!(
            "{} is {} bytes, its volume-config says {v} (VER-4)",
            placement.inner, entry.size
        ));
    }
    ctx.report.entries += 1;
    ctx.report.size = ctx.report.size.saturating_add(entry.size);
    // VER-4 with --strict-backup-size: refuse data beyond the VM's declared backup-size
    // while decoding, so a decompression bomb stops at the declared size.
    let stored = entry.stored;
    *ctx.vm_data = ctx.vm_data.saturating_add(stored);
    ctx.report.data_bytes = ctx.report.data_bytes.saturating_add(stored);
    if ctx.vm_limit > 0 && *ctx.vm_data > ctx.vm_limit.saturating_add(BACKUP_SIZE_SLACK) {
        return Err(Error::limit(format!(
            "VM {} holds {} bytes of data, more than its declared backup-size {} allows (VER-4, LIM-27, --strict-backup-size)",
            ctx.vm_name, ctx.vm_data, ctx.vm_limit
        )));
    }
    output.entry(&placement, entry, read_data)
}

fn decode_qubes_xml(header: &Header, credentials: &Credentials, chunk: Vec<u8>) -> Result<Vec<u8>> {
    if header.version == Version::V2 {
        let volume = v2_volume(header, credentials, chunk)?;
        let mut tar = MultiVolumeReader::new(std::iter::once(volume))?;
        let bytes = read_qubes_xml(&mut tar)?;
        tar.finish()?;
        return Ok(bytes);
    }
    let stream = file_stream(header, credentials, std::io::Cursor::new(chunk))?;
    read_qubes_xml(&mut TarReader::new(stream)).map_err(|e| e.context("qubes.xml"))
}

/// The single `qubes.xml` entry of its chunk (ORD-2, TAR-11), bounded by LIM-4.
fn read_qubes_xml(tar: &mut dyn EntrySource) -> Result<Vec<u8>> {
    let entry = tar
        .next_entry()?
        .ok_or_else(|| Error::new(ErrorClass::MissingData, "qubes.xml chunk holds no file"))?;
    if entry.path != QUBES_XML.as_bytes() || entry.kind != EntryKind::Regular {
        return Err(Error::malformed(format!(
            "qubes.xml chunk holds {} instead (TAR-11)",
            qbackup_format::paths::escape(&entry.path)
        )));
    }
    if entry.size > MAX_QUBES_XML_LEN {
        return Err(Error::limit("qubes.xml exceeds LIM-4"));
    }
    // entry.size <= LIM-4, so this allocation is bounded.
    let mut bytes = vec![0u8; entry.size as usize];
    tar.read_data(&mut |offset: u64, b: &[u8]| {
        let start = usize::try_from(offset).map_err(|_| Error::limit("qubes.xml offset"))?;
        let end = start.checked_add(b.len()).filter(|&e| e <= bytes.len());
        let end = end.ok_or_else(|| Error::malformed("qubes.xml data beyond its size"))?;
        bytes[start..end].copy_from_slice(b);
        Ok(())
    })?;
    if tar.next_entry()?.is_some() {
        return Err(Error::malformed("qubes.xml chunk holds more than one file"));
    }
    Ok(bytes)
}

fn archive_info(h: &Header, kdf: Option<(u8, u32, u32)>) -> ArchiveInfo {
    ArchiveInfo {
        header: h.clone(),
        kdf,
        qubes_xml_flavor: None,
    }
}

fn vm_infos(xml: &QubesXml) -> Vec<VmInfo> {
    xml.vms
        .iter()
        .map(|vm| VmInfo {
            name: vm.name.clone(),
            class: vm.class.clone(),
            label: vm.label.clone(),
            template: vm.template.clone(),
            netvm: match &vm.netvm {
                NetVm::Default => "(default)".into(),
                NetVm::None => "-".into(),
                NetVm::Named(n) => n.clone(),
            },
            backup_path: vm.backup.as_ref().map(|b| b.path.clone()),
            backup_size: vm.backup.as_ref().map_or(0, |b| b.size),
            included: vm.backup.is_some(),
        })
        .collect()
}
