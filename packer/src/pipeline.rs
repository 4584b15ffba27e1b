//! The archive writer (SPEC.md WRT-1 … WRT-7).
//!
//! ```text
//! producer (this thread): source → inner tar → compressor → chunker ──members──▶ writer thread
//!                                                              │ key requests      ▲ keys
//!                                                              ▼                   │
//!                                                    KDF pool (all cores, lowest position first)
//! ```
//! A chunk's KDF starts as soon as the chunk is known to exist (every file's `.000` at
//! once, `.N+1` when `.N` fills), so KDFs run while data is read and compressed. Memory:
//! the chunk being filled, [`MEMBER_QUEUE`] queued chunks, the one being written, plus
//! the KDFs in flight; no temporary files. Written chunk buffers return to the producer
//! for reuse (see `Chunker::fresh`).

use std::fs::File;
use std::io::{self, Write};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};
use qbackup_format::crypto::hmac_file::Digest;
use qbackup_format::crypto::openssl_enc::Cipher;
use qbackup_format::crypto::scrypt_container::{Params, OVERHEAD};
use qbackup_format::limits::{MAX_CHUNK_INDEX, MAX_QUBES_XML_CHUNK_LEN};
use qbackup_format::member_name::{chunk_name, HEADER, HEADER_MAC, QUBES_XML};
use qbackup_format::qubes_xml::{self, BackupInfo, Vm};
use qbackup_format::writer::backup_size_bound;
use qbackup_format::writer::tar::{self, Meta};
use qbackup_format::writer::v3::{self, CbcEncryptor};
use qbackup_format::writer::v4::{self, sealing_buffer};
use qbackup_format::writer::{outer, padding, END_OF_ARCHIVE};
use qbackup_format::{Error, ErrorClass};
use zeroize::Zeroizing;

use crate::compress::{Encode, FileEncoder, Filter, ParallelEncoder, Pool};
use crate::kdf::{KdfPool, KeyResult};
use crate::plan::Plan;
use crate::progress::Progress;
use crate::source;
use crate::Failure;

/// Chunks queued between the producer and the writer.
const MEMBER_QUEUE: usize = 1;

/// Written members at least this large go back to the producer for reuse.
const RECYCLE_MIN: usize = 1 << 20;

/// Archive format version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    V3,
    V4,
}

/// How an archive is written.
pub struct Settings {
    pub format: Format,
    pub filter: Filter,
    pub level: u32,
    /// Bytes of stored stream per chunk (v4: plaintext; v3: ciphertext).
    pub chunk_size: usize,
    pub params: Params,
    pub kdf_threads: usize,
    /// Compression threads.
    pub compress_threads: usize,
    pub passphrase: Zeroizing<Vec<u8>>,
    pub backup_id: String,
    /// mtime of outer members.
    pub mtime: u64,
}

enum Member {
    Plain {
        name: String,
        data: Vec<u8>,
    },
    Sealed {
        name: String,
        data: Vec<u8>,
        key: Receiver<KeyResult>,
    },
    End,
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::new(ErrorClass::Io, format!("{what}: {e}"))
}

/// Why writing an archive stopped, by the side that stopped first.
#[derive(Debug)]
pub enum Stop {
    /// The producer stopped (a refused plan, a source file that cannot be read); the
    /// writer only saw it go.
    Producer(Failure),
    /// Writing the archive bytes to the output failed.
    Output(Error),
    /// The writer failed for another reason (a KDF, sealing, a member header).
    Writer(Error),
}

impl From<Stop> for Failure {
    fn from(s: Stop) -> Failure {
        match s {
            Stop::Producer(f) => f,
            Stop::Output(e) | Stop::Writer(e) => Failure::Error(e),
        }
    }
}

/// How the writer thread ended without an error of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ended {
    /// It wrote the end-of-archive marker.
    Complete,
    /// The producer closed the queue before `End`: it stopped for a reason of its own.
    ProducerStopped,
}

/// Write the archive laid out by [`prepare`] into `out`. Returns notes (skipped
/// entries).
pub fn write_archive(
    layout: Layout<'_>,
    settings: &Settings,
    out: Box<dyn Write + Send>,
    progress: Arc<Progress>,
) -> Result<Vec<String>, Stop> {
    let (tx, rx) = bounded::<Member>(MEMBER_QUEUE);
    // Unbounded, yet it never holds more buffers than were in flight at once: the
    // producer allocates only when it is empty.
    let (recycle_tx, recycle) = crossbeam_channel::unbounded::<Vec<u8>>();
    let wprog = progress.clone();
    let mtime = settings.mtime;
    let writer = std::thread::spawn(move || writer(rx, &recycle_tx, out, mtime, &wprog));
    let produced = produce(layout, settings, &tx, &recycle, &progress);
    drop(tx);
    let written = writer.join().unwrap_or_else(|_| {
        Err(Stop::Writer(Error::new(
            ErrorClass::Io,
            "writer thread panicked",
        )))
    });
    settle(produced, written)
}

/// The error that explains a failed run wins (issue 9 item 6). The two sides stop each
/// other: a failed writer makes the producer's next send fail ("archive writer
/// stopped"), and a failed producer closes the queue, which the writer sees as
/// [`Ended::ProducerStopped`]. So a writer error is the first cause whenever there is
/// one, and otherwise the producer's error is.
fn settle(
    produced: Result<Vec<String>, Failure>,
    written: Result<Ended, Stop>,
) -> Result<Vec<String>, Stop> {
    match (produced, written) {
        (Ok(notes), Ok(Ended::Complete)) => Ok(notes),
        (_, Err(stop)) => Err(stop),
        (Err(f), Ok(_)) => Err(Stop::Producer(f)),
        // The producer returns Ok only after sending `End`; kept as an error, not a panic.
        (Ok(_), Ok(Ended::ProducerStopped)) => Err(Stop::Writer(Error::new(
            ErrorClass::Io,
            "archive incomplete: the producer ended without the end-of-archive marker",
        ))),
    }
}

fn writer(
    rx: Receiver<Member>,
    recycle: &Sender<Vec<u8>>,
    mut out: Box<dyn Write + Send>,
    mtime: u64,
    progress: &Progress,
) -> Result<Ended, Stop> {
    let output = |e: io::Error| Stop::Output(io_err("writing the archive")(e));
    let mut put = |name: &str, data: &[u8]| -> Result<(), Stop> {
        let h = outer::member_header(name, data.len() as u64, mtime).map_err(Stop::Writer)?;
        out.write_all(&h)
            .and_then(|()| out.write_all(data))
            .and_then(|()| out.write_all(&[0u8; 512][..padding(data.len() as u64)]))
            .map_err(output)?;
        progress.wrote(512 + data.len() as u64 + padding(data.len() as u64) as u64);
        Ok(())
    };
    for m in rx {
        match m {
            Member::Plain { name, data } => {
                put(&name, &data)?;
                if data.capacity() >= RECYCLE_MIN {
                    let _ = recycle.send(data);
                }
            }
            Member::Sealed {
                name,
                mut data,
                key,
            } => {
                crate::trace(format_args!("writer waits key {name}"));
                let key = key
                    .recv()
                    .map_err(|_| Stop::Writer(Error::new(ErrorClass::Io, "KDF worker stopped")))?
                    .map_err(Stop::Writer)?;
                key.seal_in_place(&mut data).map_err(Stop::Writer)?;
                put(&name, &data)?;
                crate::trace(format_args!("writer wrote {name}"));
                if data.capacity() >= RECYCLE_MIN {
                    let _ = recycle.send(data);
                }
            }
            Member::End => {
                out.write_all(&END_OF_ARCHIVE)
                    .and_then(|()| out.flush())
                    .map_err(output)?;
                progress.wrote(END_OF_ARCHIVE.len() as u64);
                return Ok(Ended::Complete);
            }
        }
    }
    Ok(Ended::ProducerStopped)
}

/// One file of the archive, in order.
struct ArchiveFile<'p> {
    path: String,
    vm: String,
    what: What<'p>,
}

enum What<'p> {
    Xml(Vec<u8>),
    Source(&'p crate::plan::Source),
    /// An R3 template directory `vm<qid>/.` holding these files (WRT-6).
    Dir(Vec<&'p crate::plan::Source>),
    Home(&'p std::path::Path, &'p str),
}

/// Classes format 3 can describe (core2 has no DispVM).
const R3_CLASSES: [&str; 4] = ["AdminVM", "AppVM", "StandaloneVM", "TemplateVM"];

/// WRT-6: what a format 3 archive can hold of `vp`, as R3.2 wrote it. R3 VMs always
/// had `private.img` (and `root.img` when updateable), which upstream's core2 restore
/// and VER-2 expect; R3 had no qube notes (upstream's core2 restore cannot take them),
/// so `notes.txt` is left out with a note.
fn v3_files<'p>(
    vp: &'p crate::plan::VmPlan,
    notes: &mut Vec<String>,
) -> Result<Vec<&'p crate::plan::Source>, Failure> {
    let vm = &vp.vm;
    if !R3_CLASSES.contains(&vm.class.as_str()) {
        return Err(Failure::Usage(format!(
            "VM {}: format 3 cannot hold a {} (R3 had none)",
            vm.name, vm.class
        )));
    }
    let needs_root = vm.class != "AppVM";
    for (vol, needed) in [("private.img", true), ("root.img", needs_root)] {
        if needed && !vp.files.iter().any(|f| f.name == vol) {
            return Err(Failure::Usage(format!(
                "VM {}: format 3 needs its {vol} (a {} in R3 always had one)",
                vm.name, vm.class
            )));
        }
    }
    for f in &vp.files {
        if let crate::plan::Data::Bytes(_) = f.data {
            return Err(Failure::Usage(format!(
                "VM {}: format 3 cannot hold the {} made from qubesd's settings",
                vm.name, f.name
            )));
        }
        if let (true, Some(p)) = (f.name == "firewall.xml", f.path()) {
            // Upstream reads a v3 firewall.xml with its R3 parser only.
            let mut head = Vec::new();
            File::open(p)
                .and_then(|h| io::Read::read_to_end(&mut io::Read::take(h, 4096), &mut head))
                .map_err(|e| Failure::Usage(format!("VM {}: {}: {e}", vm.name, p.display())))?;
            if !head.windows(19).any(|w| w == b"<QubesFirewallRules") {
                return Err(Failure::Usage(format!(
                    "VM {}: {} is not an R3 firewall (<QubesFirewallRules>), which is what \
                     upstream reads from a format 3 backup",
                    vm.name,
                    p.display()
                )));
            }
        }
    }
    Ok(vp
        .files
        .iter()
        .filter(|f| {
            let keep = f.name != "notes.txt";
            if !keep {
                notes.push(format!(
                    "VM {}: notes.txt left out (format 3 has no qube notes)",
                    vm.name
                ));
            }
            keep
        })
        .collect())
}

/// The archive's files in order, with qubes.xml already written (XML-3), the total of
/// the source sizes (WRT-5), and notes about what was left out.
pub struct Layout<'p> {
    files: Vec<ArchiveFile<'p>>,
    total: u64,
    notes: Vec<String>,
}

/// What one archive file reads, for `create --dry-run` (`estimate.rs`).
pub enum Reads<'a> {
    /// Bytes made in memory (qubes.xml).
    Inline(usize),
    /// Volumes and small files.
    Sources(Vec<&'a crate::plan::Data>),
    /// dom0's home directory, whole.
    Tree(&'a std::path::Path),
}

impl<'p> Layout<'p> {
    /// The archive files in order: (archive path, VM, what it reads).
    pub fn planned(&self) -> Vec<(&str, &str, Reads<'_>)> {
        self.files
            .iter()
            .map(|f| {
                let reads = match &f.what {
                    What::Xml(x) => Reads::Inline(x.len()),
                    What::Source(s) => Reads::Sources(vec![&s.data]),
                    What::Dir(v) => Reads::Sources(v.iter().map(|s| &s.data).collect()),
                    What::Home(home, _) => Reads::Tree(home),
                };
                (f.path.as_str(), f.vm.as_str(), reads)
            })
            .collect()
    }
}

/// Lay out the archive for `plan` before its first byte is written: everything the
/// writers can refuse (a class format 3 cannot hold, a qubes.xml the writer refuses such
/// as two VMs with one qid, WRT-6, XML-3) is found here, so a refused plan creates no
/// `FILE.partial` and writes nothing to stdout. A refusal is a plan error (exit 2); a
/// source that cannot be measured is an I/O error naming it.
pub fn prepare(plan: &Plan, format: Format) -> Result<Layout<'_>, Failure> {
    // qubes.xml with the backup features (XML-3); sizes bound the stored bytes (WRT-5).
    let v3 = format == Format::V3;
    let mut plan_notes = plan.notes.clone();
    let mut files: Vec<ArchiveFile<'_>> = Vec::new();
    let mut total = 0u64;
    let mut xml_vms: Vec<Vm> = Vec::new();
    let mut dom0 = plan.others.iter().find(|v| v.class == "AdminVM").cloned();
    if let Some((home, user)) = &plan.dom0_home {
        let (bytes, entries) = source::tree_size(home)
            .map_err(io_err(home.display()))
            .map_err(Failure::Error)?;
        let size = backup_size_bound(bytes, entries);
        total = total.saturating_add(bytes);
        if let Some(d) = dom0.as_mut() {
            d.backup = Some(BackupInfo {
                path: format!("dom0-home/{user}"),
                size,
            });
        }
    }
    xml_vms.extend(dom0);
    let mut order: Vec<&crate::plan::VmPlan> = plan.vms.iter().collect();
    if v3 {
        // R3.2's order: the other VMs by name, then the templates by name (WRT-6).
        order.sort_by(|a, b| {
            (a.vm.class == "TemplateVM", &a.vm.name).cmp(&(b.vm.class == "TemplateVM", &b.vm.name))
        });
    }
    for vp in order {
        let qid = vp.vm.qid.unwrap_or_default();
        let kept: Vec<&crate::plan::Source> = if v3 {
            v3_files(vp, &mut plan_notes)?
        } else {
            vp.files.iter().collect()
        };
        let (mut bytes, mut entries) = (0u64, 0u64);
        for f in &kept {
            let logical = match &f.data {
                crate::plan::Data::Empty => 0,
                crate::plan::Data::Bytes(b) => b.len() as u64,
                crate::plan::Data::File(p) => source::logical_size(p)
                    .map_err(io_err(p.display()))
                    .map_err(Failure::Error)?,
            };
            bytes = bytes.saturating_add(logical);
            entries += 1;
        }
        if v3 && vp.vm.class == "TemplateVM" {
            // R3.2 stored a template as its whole directory, `vm<qid>/.` (WRT-6).
            entries += 1;
            files.push(ArchiveFile {
                path: format!("vm{qid}/."),
                vm: vp.vm.name.clone(),
                what: What::Dir(kept),
            });
        } else {
            for f in kept {
                files.push(ArchiveFile {
                    path: format!("vm{qid}/{}", f.name),
                    vm: vp.vm.name.clone(),
                    what: What::Source(f),
                });
            }
        }
        let size = backup_size_bound(bytes, entries);
        total = total.saturating_add(bytes);
        let mut vm = vp.vm.clone();
        vm.backup = Some(BackupInfo {
            // R3 paths have no trailing slash, R4 paths have one (XML-1, XML-3).
            path: if v3 {
                format!("vm{qid}")
            } else {
                format!("vm{qid}/")
            },
            size,
        });
        xml_vms.push(vm);
    }
    xml_vms.extend(
        plan.others
            .iter()
            .filter(|v| v.class != "AdminVM" && (!v3 || R3_CLASSES.contains(&v.class.as_str())))
            .cloned(),
    );
    if let Some((home, user)) = &plan.dom0_home {
        files.push(ArchiveFile {
            path: format!("dom0-home/{user}"),
            vm: "dom0".into(),
            what: What::Home(home, user),
        });
    }
    let mut xml = Vec::new();
    let written = if v3 {
        qubes_xml::write_r3(&xml_vms, &mut xml)
    } else {
        qubes_xml::write_r4(&xml_vms, &[], &mut xml)
    };
    // What the writer refuses is in the plan (or the --qubes-dir qubes.xml): exit 2.
    written.map_err(|e| Failure::Usage(e.message().to_owned()))?;
    files.insert(
        0,
        ArchiveFile {
            path: QUBES_XML.into(),
            vm: String::new(),
            what: What::Xml(xml),
        },
    );
    Ok(Layout {
        files,
        total,
        notes: plan_notes,
    })
}

fn produce(
    layout: Layout<'_>,
    s: &Settings,
    tx: &Sender<Member>,
    recycle: &Receiver<Vec<u8>>,
    progress: &Progress,
) -> Result<Vec<String>, Failure> {
    let Layout {
        files,
        total,
        notes: mut plan_notes,
    } = layout;
    progress.set_total(total);

    let pool = match s.format {
        Format::V4 => Some(KdfPool::new(
            &s.passphrase,
            &s.backup_id,
            s.params,
            s.kdf_threads,
        )),
        Format::V3 => None,
    };
    let cpool = Pool::new(s.compress_threads);
    let send = |m: Member| {
        tx.send(m)
            .map_err(|_| Failure::Error(Error::new(ErrorClass::Io, "archive writer stopped")))
    };

    // Header and its MAC.
    let filter_name = s.filter.header_name();
    match (&pool, s.format) {
        (Some(pool), _) => {
            let header = v4::header_text(filter_name, &s.backup_id).map_err(Failure::Error)?;
            let key = pool.request(0, None);
            // Keys of every file's first chunk, in archive order (V4-2).
            let mut firsts: Vec<Option<Receiver<KeyResult>>> = files
                .iter()
                .enumerate()
                .map(|(i, f)| Some(pool.request(priority(i, 0), Some(chunk_name(&f.path, 0)))))
                .collect();
            let mut mac = sealing_buffer(header.len());
            mac.extend_from_slice(&header);
            send(Member::Plain {
                name: HEADER.into(),
                data: header,
            })?;
            send(Member::Sealed {
                name: HEADER_MAC.into(),
                data: mac,
                key,
            })?;
            let mut notes = std::mem::take(&mut plan_notes);
            for (i, f) in files.iter().enumerate() {
                let first = firsts.get_mut(i).and_then(Option::take);
                let chunker = Chunker::new(f, i, s, (tx, recycle), Tail::V4 { pool, next: first });
                notes.extend(file_stream(f, s, chunker, &cpool, progress)?);
            }
            send(Member::End)?;
            Ok(notes)
        }
        (None, _) => {
            let digest = Digest::Sha512;
            let header = v3::header_text(filter_name, digest, Cipher::Aes256Cbc);
            let mac = v3::hmac_member(digest, &s.passphrase, &header);
            send(Member::Plain {
                name: HEADER.into(),
                data: header,
            })?;
            send(Member::Plain {
                name: HEADER_MAC.into(),
                data: mac,
            })?;
            let mut notes = std::mem::take(&mut plan_notes);
            for (i, f) in files.iter().enumerate() {
                let mut salt = [0u8; 8];
                getrandom::fill(&mut salt).map_err(|e| {
                    Failure::Error(Error::new(ErrorClass::Io, format!("no random salt: {e}")))
                })?;
                let enc = CbcEncryptor::new(Cipher::Aes256Cbc, &s.passphrase, salt);
                let chunker = Chunker::new(
                    f,
                    i,
                    s,
                    (tx, recycle),
                    Tail::V3 {
                        enc: Some(Box::new(enc)),
                        digest,
                    },
                );
                notes.extend(file_stream(f, s, chunker, &cpool, progress)?);
            }
            send(Member::End)?;
            Ok(notes)
        }
    }
}

/// KDF priority: archive position (file ordinal, chunk index); the header is 0.
fn priority(file: usize, index: u32) -> u64 {
    ((file as u64 + 1) << 24) | u64::from(index)
}

/// Stream one file: inner tar → compressor → chunker.
fn file_stream(
    f: &ArchiveFile<'_>,
    s: &Settings,
    chunker: Chunker<'_>,
    pool: &Pool,
    progress: &Progress,
) -> Result<Vec<String>, Failure> {
    progress.set_vm(&f.vm);
    // `vm3/private.img` → `private.img`; dom0's home and qubes.xml as they are.
    progress.set_file(f.path.split_once('/').map_or(&f.path[..], |(_, rest)| rest));
    let ctx = |e: io::Error| -> Failure {
        // A classified error from the chunker (writer gone) keeps its class.
        Failure::Error(Error::from_read(e, &f.path).reclass(ErrorClass::Io))
    };
    let mut enc = match s.filter {
        Filter::None => FileEncoder::Plain(chunker),
        f => FileEncoder::Parallel(ParallelEncoder::new(pool, f, s.level, chunker)),
    };
    let mut notes = Vec::new();
    match &f.what {
        What::Xml(xml) => {
            enc.write_all(
                &tar::regular(QUBES_XML, xml.len() as u64, &Meta::FILE).map_err(Failure::Error)?,
            )
            .and_then(|()| enc.write_all(xml))
            .and_then(|()| enc.write_all(&[0u8; 512][..padding(xml.len() as u64)]))
            .and_then(|()| enc.write_all(&END_OF_ARCHIVE))
            .map_err(ctx)?;
        }
        What::Source(src) => match &src.data {
            crate::plan::Data::Empty => {
                source::write_file_tar(&f.path, None, &mut enc, progress).map_err(ctx)?
            }
            crate::plan::Data::Bytes(b) => {
                source::write_bytes_tar(&f.path, b, s.mtime, &mut enc, progress).map_err(ctx)?
            }
            crate::plan::Data::File(p) => {
                let (file, layout): (File, source::Layout) =
                    source::open(p, progress).map_err(|e| {
                        Failure::Error(Error::new(ErrorClass::Io, format!("{}: {e}", p.display())))
                    })?;
                source::write_file_tar(&f.path, Some((&file, &layout)), &mut enc, progress)
                    .map_err(|e| {
                        Failure::Error(Error::new(ErrorClass::Io, format!("{}: {e}", p.display())))
                    })?;
            }
        },
        What::Dir(srcs) => {
            let mut opened = Vec::with_capacity(srcs.len());
            for src in srcs {
                opened.push(match src.path() {
                    Some(p) => Some(source::open(p, progress).map_err(|e| {
                        Failure::Error(Error::new(ErrorClass::Io, format!("{}: {e}", p.display())))
                    })?),
                    None => None,
                });
            }
            let entries: Vec<(&str, Option<(&File, &source::Layout)>)> = srcs
                .iter()
                .zip(&opened)
                .map(|(src, o)| (src.name.as_str(), o.as_ref().map(|(f, l)| (f, l))))
                .collect();
            source::write_dir_tar(&f.path, &entries, s.mtime, &mut enc, progress).map_err(|e| {
                Failure::Error(Error::new(ErrorClass::Io, format!("{}: {e}", f.path)))
            })?;
        }
        What::Home(home, user) => {
            notes = source::write_home_tar(home, user, &mut enc, progress).map_err(|e| {
                Failure::Error(Error::new(
                    ErrorClass::Io,
                    format!("{}: {e}", home.display()),
                ))
            })?;
        }
    }
    let chunker = enc.finish().map_err(ctx)?;
    let chunks = chunker.finish().map_err(ctx)?;
    if f.path == QUBES_XML && chunks != 1 {
        return Err(Failure::Error(Error::limit(format!(
            "qubes.xml does not fit one chunk of at most {MAX_QUBES_XML_CHUNK_LEN} bytes (ORD-2)"
        ))));
    }
    Ok(notes)
}

enum Tail<'a> {
    V4 {
        pool: &'a KdfPool,
        next: Option<Receiver<KeyResult>>,
    },
    V3 {
        enc: Option<Box<CbcEncryptor>>,
        digest: Digest,
    },
}

/// Splits one file's stored stream into chunks and hands them to the writer (WRT-3).
struct Chunker<'a> {
    path: String,
    ordinal: usize,
    index: u32,
    buf: Vec<u8>,
    /// Bytes reserved at the start of `buf` for the scrypt prefix (v4).
    reserve: usize,
    chunk_size: usize,
    tx: &'a Sender<Member>,
    /// Written chunk buffers coming back from the writer.
    recycle: &'a Receiver<Vec<u8>>,
    tail: Tail<'a>,
    passphrase: &'a [u8],
    scratch: Vec<u8>,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "archive writer stopped")
}

impl<'a> Chunker<'a> {
    fn new(
        f: &ArchiveFile<'_>,
        ordinal: usize,
        s: &'a Settings,
        (tx, recycle): (&'a Sender<Member>, &'a Receiver<Vec<u8>>),
        tail: Tail<'a>,
    ) -> Chunker<'a> {
        let reserve = match tail {
            Tail::V4 { .. } => qbackup_format::crypto::scrypt_container::HEADER_LEN,
            Tail::V3 { .. } => 0,
        };
        let mut c = Chunker {
            path: f.path.clone(),
            ordinal,
            index: 0,
            buf: Vec::new(),
            reserve,
            // qubes.xml is exactly one chunk whatever the chunk size (ORD-2, LIM-3).
            chunk_size: if f.path == QUBES_XML {
                (MAX_QUBES_XML_CHUNK_LEN as usize) - OVERHEAD
            } else {
                s.chunk_size.max(1)
            },
            tx,
            recycle,
            tail,
            passphrase: &s.passphrase,
            scratch: Vec::new(),
        };
        c.buf = c.fresh();
        c
    }

    /// An empty chunk buffer with room for a whole chunk: a written one if the writer
    /// returned one, else a new one. Allocating the whole chunk at once (the pages are
    /// touched only as it fills) and reusing buffers means no chunk buffer is grown or
    /// freed while the archive is written, so the allocator keeps its cached mappings
    /// for the scrypt arrays instead of unmapping and faulting in 2 GiB per KDF.
    fn fresh(&self) -> Vec<u8> {
        let need = self.chunk_size.saturating_add(OVERHEAD);
        while let Ok(mut v) = self.recycle.try_recv() {
            if v.capacity() >= need {
                v.clear();
                v.resize(self.reserve, 0);
                return v;
            }
        }
        match self.tail {
            Tail::V4 { .. } => sealing_buffer(self.chunk_size),
            Tail::V3 { .. } => Vec::with_capacity(need),
        }
    }

    fn push(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let room = self.chunk_size - (self.buf.len() - self.reserve);
            let take = room.min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() - self.reserve == self.chunk_size {
                self.emit(true)?;
            }
        }
        Ok(())
    }

    /// Hand the current chunk to the writer; `more` says another chunk follows.
    fn emit(&mut self, more: bool) -> io::Result<()> {
        if self.index > MAX_CHUNK_INDEX {
            return Err(io::Error::other(format!(
                "{}: more than {MAX_CHUNK_INDEX} chunks (LIM-6)",
                self.path
            )));
        }
        let name = chunk_name(&self.path, self.index);
        crate::trace(format_args!("chunk filled {name}"));
        let data = std::mem::take(&mut self.buf);
        match &mut self.tail {
            Tail::V4 { pool, next } => {
                let key = match next.take() {
                    Some(k) => k,
                    None => pool.request(priority(self.ordinal, self.index), Some(name.clone())),
                };
                if more {
                    // The next chunk exists (possibly empty, WRT-3): start its KDF now.
                    let n = chunk_name(&self.path, self.index + 1);
                    *next = Some(pool.request(priority(self.ordinal, self.index + 1), Some(n)));
                }
                self.tx
                    .send(Member::Sealed {
                        name: format!("{name}.enc"),
                        data,
                        key,
                    })
                    .map_err(|_| gone())?;
            }
            Tail::V3 { digest, .. } => {
                let mac = v3::hmac_member(*digest, self.passphrase, &data);
                self.tx
                    .send(Member::Plain {
                        name: name.clone(),
                        data,
                    })
                    .map_err(|_| gone())?;
                self.tx
                    .send(Member::Plain {
                        name: format!("{name}.hmac"),
                        data: mac,
                    })
                    .map_err(|_| gone())?;
            }
        }
        self.index += 1;
        if more {
            self.buf = self.fresh();
        }
        Ok(())
    }

    /// End the file: flush the cipher, emit the last (possibly empty) chunk. Returns the
    /// number of chunks.
    fn finish(mut self) -> io::Result<u32> {
        if let Tail::V3 { enc, .. } = &mut self.tail {
            if let Some(e) = enc.take() {
                let mut out = std::mem::take(&mut self.scratch);
                out.clear();
                e.finish(&mut out);
                self.push(&out)?;
            }
        }
        self.emit(false)?;
        Ok(self.index)
    }
}

impl Write for Chunker<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Tail::V3 { enc: Some(e), .. } = &mut self.tail {
            let mut out = std::mem::take(&mut self.scratch);
            out.clear();
            e.update(data, &mut out);
            self.push(&out)?;
            self.scratch = out;
        } else {
            self.push(data)?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(msg: &str) -> Error {
        Error::new(ErrorClass::Io, msg)
    }

    fn message(r: Result<Vec<String>, Stop>) -> String {
        match r {
            Ok(n) => panic!("accepted: {n:?}"),
            Err(s) => Failure::from(s).to_string(),
        }
    }

    /// Issue 9 item 6: the producer's own error wins over the writer's view of it.
    #[test]
    fn a_producer_error_wins_over_the_writer_seeing_it_stop() {
        let refused = Err(Failure::Usage("qubes.xml writer: duplicate qid 10".into()));
        let r = settle(refused, Ok(Ended::ProducerStopped));
        assert!(matches!(r, Err(Stop::Producer(Failure::Usage(_)))));
        assert_eq!(message(r), "qubes.xml writer: duplicate qid 10");
        let vanished = Err(Failure::Error(io("/v/late.img: No such file")));
        let r = settle(vanished, Ok(Ended::ProducerStopped));
        assert!(message(r).starts_with("/v/late.img: No such file"));
    }

    #[test]
    fn a_writer_error_wins_over_the_producer_seeing_it_stop() {
        let stopped = || Err(Failure::Error(io("archive writer stopped")));
        let r = settle(
            stopped(),
            Err(Stop::Output(io("writing the archive: EPIPE"))),
        );
        assert!(matches!(r, Err(Stop::Output(_))));
        let r = settle(stopped(), Err(Stop::Writer(io("KDF worker stopped"))));
        assert!(message(r).starts_with("KDF worker stopped"));
    }

    #[test]
    fn only_a_complete_run_is_ok() {
        let r = settle(Ok(vec!["n".into()]), Ok(Ended::Complete));
        assert_eq!(r.unwrap(), ["n"]);
        let r = settle(Ok(Vec::new()), Ok(Ended::ProducerStopped));
        assert!(message(r).contains("without the end-of-archive marker"));
    }
}
