//! The privileged consumer of the verifier's stream (SPEC.md RST-2 … RST-4): every
//! record is decoded by the format crate's [`Decoder`] (bounded lengths, state machine,
//! digests recomputed, unknown records refused), and every name is re-validated here
//! before it is joined to DIR. Files go through the shared destination writer and are
//! committed only after their `end` record checked out.

use std::io::Read;
use std::ops::DerefMut;
use std::path::{Path, PathBuf};

use qbackup_destination::{link_stays_inside, Destination, TempFile};
use qbackup_format::archive::plan::DOM0_HOME;
use qbackup_format::limits::MAX_RESTORE_FILES;
use qbackup_format::paths::{validate_relative, DotComponents};
use qbackup_format::protocol::read::Decoder;
use qbackup_format::protocol::state::validate_file;
use qbackup_format::protocol::{Begin, FileKind, Layout, Manifest, Record, VmConfig, VmEnd};
use qbackup_format::qubes_xml::validate_vm_name;
use qbackup_format::{Error, ErrorClass, Result};

/// What a complete stream restored.
#[derive(Debug, Default)]
pub struct Restored {
    /// Regular files, directories and symlinks created.
    pub files: u64,
    /// File bytes written (holes excluded).
    pub bytes: u64,
    /// Skipped symlinks (EXT-4) and the like.
    pub notes: Vec<String>,
}

/// The file between its `begin` and `end` records.
enum Open {
    /// Not selected: the decoder still checks it, nothing is written.
    Skip,
    Regular {
        file: TempFile,
        size: u64,
        mode: u32,
    },
    Directory(PathBuf),
    Symlink {
        link: PathBuf,
        target: PathBuf,
    },
    /// A symlink EXT-4 refuses: reported, not created.
    SkippedLink,
}

/// What consumes the records of a stream, after the decoder checked them (PROTO-2 …
/// PROTO-15): files into a directory ([`DirSink`]) or VMs through the Admin API
/// (`restore::qubes`).
pub trait Sink {
    /// The manifest and every VM's settings arrived, before any file (PROTO-14).
    fn prepare(&mut self, m: &Manifest, configs: Vec<VmConfig>) -> Result<()>;
    /// A file opens (PROTO-5); its data and end follow.
    fn begin(&mut self, b: &Begin) -> Result<()>;
    fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<()>;
    /// The open file is complete: its digest matched (PROTO-7).
    fn end(&mut self) -> Result<()>;
    /// VM `vm` is complete (PROTO-15).
    fn vm_end(&mut self, vm: u32, end: VmEnd) -> Result<()>;
}

/// Decode a whole stream from `input` into `sink`, with at most `max_files` files
/// (LIM-39). Returns on the summary, or with the first violation, or with the error the
/// producer reported (its class, RST-6).
pub fn consume_into<R: Read, S: Sink>(input: R, sink: &mut S, max_files: u64) -> Result<()> {
    let mut decoder = Decoder::new(input);
    let mut files: u64 = 0;
    let mut manifest: Option<Manifest> = None;
    let mut configs: Vec<VmConfig> = Vec::new();
    loop {
        let record = decoder.read_record()?;
        match record {
            None => return Err(Error::truncated("protocol: stream ended without a summary")),
            Some(Record::Hello { .. }) => {}
            Some(Record::Manifest(m)) => {
                if m.vms.is_empty() {
                    sink.prepare(m, Vec::new())?;
                } else {
                    manifest = Some(m.clone());
                }
            }
            Some(Record::Config { config, .. }) => {
                // The decoder checked the order: one per manifest VM, in order.
                configs.push(config);
                if let Some(m) = manifest.as_ref().filter(|m| m.vms.len() == configs.len()) {
                    sink.prepare(m, std::mem::take(&mut configs))?;
                    manifest = None;
                }
            }
            Some(Record::Begin(b)) => {
                files = files
                    .checked_add(1)
                    .filter(|n| *n <= max_files)
                    .ok_or_else(|| {
                        Error::limit(format!("restore: more than LIM-39 ({max_files}) files"))
                    })?;
                sink.begin(&b)?;
            }
            Some(Record::Data { offset, bytes }) => sink.data(offset, bytes)?,
            Some(Record::End { .. }) => sink.end()?,
            Some(Record::VmEnd { vm, end }) => sink.vm_end(vm, end)?,
            Some(Record::Summary(_)) => {
                // PROTO-10: nothing may follow; the decoder checks the end of input.
                return match decoder.read_record()? {
                    None => Ok(()),
                    Some(_) => Err(Error::malformed("protocol: a record after the summary")),
                };
            }
            Some(Record::Error { class, message }) => {
                return Err(Error::new(
                    class,
                    // Checked by the decoder: ≤ LIM-31 bytes, no control characters.
                    format!("the verifier reported: {message}"),
                ));
            }
        }
    }
}

/// Consume a whole stream from `input`, writing the selected VMs (`None`: all; `dom0`
/// selects dom0's home) under `dest` (RST-1). Temporaries of an unfinished file are
/// removed when this returns.
pub fn consume<R: Read>(
    input: R,
    dest: &mut Destination,
    select: Option<&[String]>,
) -> Result<Restored> {
    consume_bounded(input, dest, select, MAX_RESTORE_FILES)
}

/// [`consume`] with at most `max_files` files (LIM-39; smaller in tests).
fn consume_bounded<R: Read>(
    input: R,
    dest: &mut Destination,
    select: Option<&[String]>,
    max_files: u64,
) -> Result<Restored> {
    let mut sink: DirSink<'_> = DirSink::new(dest, select);
    consume_into(input, &mut sink, max_files)?;
    Ok(sink.out)
}

/// Files of the selected VMs under a destination directory (RST-1 … RST-4); `D` is the
/// destination, borrowed or owned (`Box<Destination>`).
pub struct DirSink<'a, D: DerefMut<Target = Destination> = &'a mut Destination> {
    dest: D,
    select: Option<&'a [String]>,
    /// Per manifest VM: its output directory if selected, and its layout.
    dirs: Vec<(Option<PathBuf>, Layout)>,
    open: Option<Open>,
    pub out: Restored,
}

impl<'a, D: DerefMut<Target = Destination>> DirSink<'a, D> {
    /// Writes under `dest` the VMs of `select` (`None`: every VM whose files it is given).
    pub fn new(dest: D, select: Option<&'a [String]>) -> DirSink<'a, D> {
        DirSink {
            dest,
            select,
            dirs: Vec::new(),
            open: None,
            out: Restored::default(),
        }
    }
}

impl<D: DerefMut<Target = Destination>> Sink for DirSink<'_, D> {
    fn prepare(&mut self, m: &Manifest, _: Vec<VmConfig>) -> Result<()> {
        self.dirs = output_dirs(m, self.select)?;
        Ok(())
    }

    fn begin(&mut self, b: &Begin) -> Result<()> {
        self.open = Some(begin(&mut self.dest, &self.dirs, b, &mut self.out.notes)?);
        Ok(())
    }

    fn data(&mut self, offset: u64, bytes: &[u8]) -> Result<()> {
        if let Some(Open::Regular { file, .. }) = self.open.as_mut() {
            file.write_at(offset, bytes)?;
            self.out.bytes = self.out.bytes.saturating_add(bytes.len() as u64);
        }
        Ok(())
    }

    fn end(&mut self) -> Result<()> {
        // The decoder compared the digest with its own (PROTO-7): commit (RST-4).
        let created = match self.open.take() {
            Some(Open::Regular {
                mut file,
                size,
                mode,
            }) => {
                file.finish(size, mode)?;
                self.dest.commit(vec![file])?;
                true
            }
            Some(Open::Directory(path)) => {
                self.dest.create_dir_all(&path)?;
                true
            }
            Some(Open::Symlink { link, target }) => {
                self.dest.symlink(&link, &target)?;
                true
            }
            Some(Open::Skip | Open::SkippedLink) | None => false,
        };
        self.out.files = self.out.files.saturating_add(u64::from(created));
        Ok(())
    }

    fn vm_end(&mut self, _: u32, _: VmEnd) -> Result<()> {
        Ok(())
    }
}

/// RST-2: output directories of the manifest's VMs, re-validated; two VMs with the same
/// output directory (a VM named `dom0-home`) → `unsafe-path` (EXT-1); a selected VM
/// missing from the stream → `missing-data`.
fn output_dirs(m: &Manifest, select: Option<&[String]>) -> Result<Vec<(Option<PathBuf>, Layout)>> {
    let mut dirs = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for vm in &m.vms {
        validate_vm_name(&vm.name)?;
        let dir = match vm.layout {
            Layout::Dom0Home => DOM0_HOME,
            Layout::Volumes | Layout::TemplateDir => vm.name.as_str(),
        };
        if !seen.insert(dir.to_string()) {
            return Err(Error::unsafe_path(format!(
                "restore: two VMs would be written to {dir}/ (EXT-1)"
            )));
        }
        let selected = select.is_none_or(|s| s.contains(&vm.name));
        dirs.push((selected.then(|| PathBuf::from(dir)), vm.layout));
    }
    for name in select.unwrap_or(&[]) {
        if !m.vms.iter().any(|v| v.name == *name) {
            return Err(Error::new(
                ErrorClass::MissingData,
                format!("VM {name:?} is not in this backup"),
            ));
        }
    }
    Ok(dirs)
}

/// RST-2, RST-3: open one file: name re-validated for its layout, joined under its VM's
/// directory and validated again as a whole (NAME-3), never an existing name (EXT-2).
fn begin(
    dest: &mut Destination,
    dirs: &[(Option<PathBuf>, Layout)],
    b: &Begin,
    notes: &mut Vec<String>,
) -> Result<Open> {
    let index = usize::try_from(b.vm).unwrap_or(usize::MAX);
    let Some((dir, layout)) = dirs.get(index) else {
        return Err(Error::malformed(format!(
            "protocol: begin for VM index {} outside the manifest",
            b.vm
        )));
    };
    let Some(dir) = dir else {
        return Ok(Open::Skip);
    };
    validate_file(*layout, &b.name, &b.kind)?;
    let joined = format!("{}/{}", dir.display(), b.name);
    let path = PathBuf::from(validate_relative(joined.as_bytes(), DotComponents::Refuse)?);
    if !path.starts_with(dir) || path == *dir {
        return Err(Error::unsafe_path(format!(
            "restore: {joined:?} is not inside {}",
            dir.display()
        )));
    }
    Ok(match &b.kind {
        FileKind::Regular => {
            dest.refuse_existing(&path)?;
            Open::Regular {
                file: dest.create(&path)?,
                size: b.size,
                mode: b.mode,
            }
        }
        FileKind::Directory => Open::Directory(path),
        FileKind::Symlink { target } => {
            let t = Path::new(target);
            if link_stays_inside(&path, t, dir) {
                Open::Symlink {
                    link: path,
                    target: t.to_path_buf(),
                }
            } else {
                notes.push(format!(
                    "skipped symlink {} -> {} (absolute or leaving its directory; EXT-4)",
                    path.display(),
                    qbackup_format::paths::escape(target.as_bytes())
                ));
                Open::SkippedLink
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use qbackup_format::protocol::write::Encoder;
    use qbackup_format::protocol::ManifestVm;
    use qbackup_format::qubes_xml::NetVm;

    fn vm(name: &str, class: &str, layout: Layout) -> ManifestVm {
        ManifestVm {
            name: name.into(),
            class: class.into(),
            label: None,
            template: None,
            netvm: NetVm::Default,
            layout,
            backup_size: 0,
            expected_files: Vec::new(),
        }
    }

    fn file(e: &mut Encoder<Vec<u8>>, vm: u32, name: &str, data: &[u8]) {
        e.begin(&Begin {
            vm,
            name: name.into(),
            kind: FileKind::Regular,
            mode: 0o600,
            size: data.len() as u64,
            data_bytes: data.len() as u64,
        })
        .unwrap();
        e.data(0, data).unwrap();
        e.end().unwrap();
    }

    /// RST-2, LIM-39: the consumer bounds the files it creates itself; what came before
    /// the bound stays, complete.
    #[test]
    fn file_count_is_bounded() {
        let mut e = Encoder::new(Vec::new());
        e.hello().unwrap();
        e.manifest(&Manifest {
            vms: vec![vm("work", "AppVM", Layout::Volumes)],
            others: Vec::new(),
        })
        .unwrap();
        e.config(0, &VmConfig::default()).unwrap();
        file(&mut e, 0, "private.img", b"one");
        file(&mut e, 0, "root.img", b"two");
        e.vm_end(0, &VmEnd::default()).unwrap();
        e.summary().unwrap();
        let stream = e.into_inner();

        let tmp = tempfile::tempdir().unwrap();
        let mut dest = Destination::open(tmp.path()).unwrap();
        let err = consume_bounded(&stream[..], &mut dest, None, 1).unwrap_err();
        assert_eq!(err.class(), ErrorClass::LimitExceeded);
        assert_eq!(
            std::fs::read(tmp.path().join("work/private.img")).unwrap(),
            b"one"
        );
        assert!(!tmp.path().join("work/root.img").exists());

        let tmp = tempfile::tempdir().unwrap();
        let mut dest = Destination::open(tmp.path()).unwrap();
        let done = consume_bounded(&stream[..], &mut dest, None, 2).unwrap();
        assert_eq!(done.files, 2);
        assert_eq!(
            std::fs::read(tmp.path().join("work/root.img")).unwrap(),
            b"two"
        );
    }

    /// RST-1, EXT-1: a VM named `dom0-home` would share dom0's output directory.
    #[test]
    fn output_directories_do_not_collide() {
        let m = Manifest {
            vms: vec![
                vm("dom0", "AdminVM", Layout::Dom0Home),
                vm("dom0-home", "AppVM", Layout::Volumes),
            ],
            others: Vec::new(),
        };
        let err = output_dirs(&m, None).unwrap_err();
        assert_eq!(err.class(), ErrorClass::UnsafePath);
        let ok = Manifest {
            vms: vec![
                vm("dom0", "AdminVM", Layout::Dom0Home),
                vm("work", "AppVM", Layout::Volumes),
            ],
            others: Vec::new(),
        };
        let dirs = output_dirs(&ok, Some(&["work".to_string()])).unwrap();
        assert_eq!(dirs[0].0, None);
        assert_eq!(dirs[1].0.as_deref(), Some(Path::new("work")));
    }
}
