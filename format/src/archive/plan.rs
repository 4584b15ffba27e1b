//! The backup plan: which files qubes.xml says the archive must hold, which VM each
//! archive file belongs to, and where each inner entry goes (SPEC.md ORD-7, VER-2,
//! VER-4, TAR-11, EXT-1).

use crate::error::{Error, Result};
use crate::header::Version;
use crate::inner_tar::{Entry, EntryKind};
use crate::limits::{MAX_FILE_SIZE, MAX_VM_AUX_FILE_LEN, MAX_VM_TEXT_FILE_LEN, VOLUME_SIZE_SLACK};
use crate::member_name::QUBES_XML;
use crate::paths::{escape, is_within, validate_relative, DotComponents};
use crate::qubes_xml::{Flavor, QubesXml, Vm};

/// The directory dom0's home is extracted to, and the archive prefix of its files.
pub const DOM0_HOME: &str = "dom0-home";

/// A VM whose data qubes.xml says is in the backup.
#[derive(Debug, Clone)]
pub struct PlannedVm {
    pub name: String,
    pub class: String,
    /// Archive path prefix without trailing slash (`vm3`, `appvms/work`, `dom0-home/user`).
    pub prefix: String,
    /// Declared `backup-size` (0: no limit, as upstream).
    pub declared_size: u64,
    /// Archive file paths that must be present (VER-2).
    pub expected_files: Vec<String>,
    /// Output directory relative to the extraction root (EXT-1).
    pub out_dir: String,
    /// Archive path prefix stripped from inner entry names to place them in `out_dir`.
    strip: String,
    /// `volume-config` sizes by volume name (core3; VER-4).
    volume_sizes: Vec<(String, u64)>,
}

/// How a backed-up file's inner tar is shaped (TAR-11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileShape {
    /// The first entry is named exactly the archive path. A directory there makes the file
    /// a directory file (`vm4/apps.templates`, `vm11/kernels`: further entries beneath
    /// it); a regular file or a symbolic link (`icon.png`) is the only entry.
    Rooted {
        /// A file the format defines (a volume image, `firewall.xml`, …): a single regular
        /// entry (EXT-4).
        regular_only: bool,
    },
    /// A directory tree (v3 template `vmN/.`, dom0 home) rooted at this path.
    Tree { root: String },
}

/// An archive file located in the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Archive path (`vm3/private.img`, `vm9/.`, `dom0-home/user`, `qubes.xml`).
    pub path: String,
    /// Index into [`BackupPlan::vms`]; `None` for qubes.xml.
    pub vm: Option<usize>,
    pub shape: FileShape,
    /// Output directory of the owning VM (EXT-1); empty for qubes.xml.
    out_dir: String,
    /// Archive prefix stripped from inner names to place them in `out_dir`.
    strip: String,
    /// Logical size bound of a volume image from its `volume-config` (VER-4).
    volume_size: Option<u64>,
    /// A dom0 home file: its entries are bounded by LIM-12 only.
    dom0: bool,
    /// The first entry of a [`FileShape::Rooted`] file was a directory (TAR-11).
    opened_dir: bool,
}

/// Where one inner entry goes, relative to the extraction root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The validated inner name, `.` components dropped.
    pub inner: String,
    /// `<out_dir>/<rest>`, e.g. `work/private.img`, `dom0-home/user/.bashrc`.
    pub output: String,
    /// Largest logical size this entry may have (VER-4): a volume image's `volume-config`
    /// size plus LIM-49, LIM-47 for the small files restore reads, LIM-48 for other
    /// files of a VM, LIM-12 for images and dom0 home.
    pub max_size: u64,
    /// The `volume-config` size of the volume image this entry is, when qubes.xml gives
    /// one: a different logical size is reported (VER-4).
    pub volume_size: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct BackupPlan {
    pub vms: Vec<PlannedVm>,
}

impl BackupPlan {
    /// Build the plan from the authenticated qubes.xml (XML-3, VER-2).
    pub fn from_qubes_xml(xml: &QubesXml, version: Version) -> Result<BackupPlan> {
        let mut vms: Vec<PlannedVm> = Vec::new();
        for vm in &xml.vms {
            let Some(backup) = &vm.backup else { continue };
            let prefix = backup.path.trim_end_matches('/');
            let prefix = validate_relative(prefix.as_bytes(), DotComponents::Refuse)
                .map_err(|e| e.context(format!("backup path of VM {}", vm.name)))?;
            if prefix == QUBES_XML {
                return Err(Error::malformed(format!(
                    "VM {} claims qubes.xml as its data",
                    vm.name
                )));
            }
            let is_dom0 = vm.class == "AdminVM" || vm.qid == Some(0);
            if let Some(other) = vms
                .iter()
                .find(|o| is_within(&o.prefix, &prefix) || is_within(&prefix, &o.prefix))
            {
                return Err(Error::malformed(format!(
                    "backup paths of VMs {} and {} overlap",
                    other.name, vm.name
                )));
            }
            let (out_dir, strip) = if is_dom0 {
                // dom0-home/<user> is extracted as DIR/dom0-home/<user>/… (EXT-1).
                let parent = prefix.rsplit_once('/').map_or("", |(p, _)| p);
                if parent != DOM0_HOME {
                    return Err(Error::malformed(format!(
                        "dom0 backup path {prefix:?} is not under {DOM0_HOME}/"
                    )));
                }
                (DOM0_HOME.to_string(), DOM0_HOME.to_string())
            } else {
                (vm.name.clone(), prefix.clone())
            };
            vms.push(PlannedVm {
                expected_files: expected_files(vm, xml.flavor, version, &prefix, is_dom0),
                name: vm.name.clone(),
                class: vm.class.clone(),
                declared_size: backup.size,
                out_dir,
                strip,
                prefix,
                volume_sizes: vm.volume_sizes.clone(),
            });
        }
        Ok(BackupPlan { vms })
    }

    /// Locate an archive file (ORD-7). Files outside every VM's backup path are strays.
    /// A `dom0-home/<user>` file with no dom0 entry in qubes.xml (R2 wrote none) is
    /// accepted as dom0 home with no declared size.
    pub fn locate(&mut self, path: &str) -> Result<FileSpec> {
        if path == QUBES_XML {
            return Ok(FileSpec {
                path: path.into(),
                vm: None,
                shape: FileShape::Rooted { regular_only: true },
                out_dir: String::new(),
                strip: String::new(),
                volume_size: None,
                dom0: false,
                opened_dir: false,
            });
        }
        let found = self.vms.iter().position(|vm| is_within(path, &vm.prefix));
        let vm = match found {
            Some(i) => i,
            None => match path.split_once('/') {
                Some((DOM0_HOME, user))
                    if !user.contains('/') && !self.vms.iter().any(|v| v.out_dir == DOM0_HOME) =>
                {
                    self.vms.push(PlannedVm {
                        name: "dom0".into(),
                        class: "AdminVM".into(),
                        prefix: path.into(),
                        declared_size: 0,
                        expected_files: vec![path.into()],
                        out_dir: DOM0_HOME.into(),
                        strip: DOM0_HOME.into(),
                        volume_sizes: Vec::new(),
                    });
                    self.vms.len() - 1
                }
                _ => {
                    return Err(Error::order(format!(
                        "archive file {path} belongs to no VM in qubes.xml (ORD-7)"
                    )))
                }
            },
        };
        let planned = &self.vms[vm];
        let is_dom0 = planned.out_dir == DOM0_HOME;
        let rel = path
            .strip_prefix(planned.prefix.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or_default();
        let shape = if path == planned.prefix {
            FileShape::Tree { root: path.into() }
        } else if let Some(dir) = path.strip_suffix("/.") {
            FileShape::Tree { root: dir.into() }
        } else {
            FileShape::Rooted {
                regular_only: regular_only(rel),
            }
        };
        let volume_size = rel.strip_suffix(".img").and_then(|v| {
            planned
                .volume_sizes
                .iter()
                .find(|(name, _)| name == v)
                .map(|(_, size)| *size)
        });
        Ok(FileSpec {
            path: path.into(),
            vm: Some(vm),
            shape,
            out_dir: planned.out_dir.clone(),
            strip: planned.strip.clone(),
            volume_size,
            dom0: is_dom0,
            opened_dir: false,
        })
    }
}

/// The small text files of a VM's directory that a restore reads (`firewall.xml`, menu
/// lists, `notes.txt`): single regular files (TAR-11) of at most LIM-47 bytes (VER-4).
pub const VM_TEXT_FILES: [&str; 5] = [
    "firewall.xml",
    "notes.txt",
    "whitelisted-appmenus.list",
    "vm-whitelisted-appmenus.list",
    "netvm-whitelisted-appmenus.list",
];

/// TAR-11, PROTO-5: a file directly in a VM's directory that the format defines — a
/// volume image (`NAME.img`), one of [`VM_TEXT_FILES`], or `empty` — must be one regular
/// file; anything else (`apps.templates/`, `kernels/`, an `icon.png` link) may also be a
/// directory tree or a symbolic link, as upstream archives whatever the directory holds.
pub fn regular_only(rel: &str) -> bool {
    !rel.contains('/') && (rel.ends_with(".img") || rel == "empty" || VM_TEXT_FILES.contains(&rel))
}

impl FileSpec {
    /// Map an untrusted inner entry of this file to its place (TAR-11, EXT-1) and bound
    /// its size (VER-4). `ordinal` counts the entries of this file so far (0 for the
    /// first); entries must be placed in order.
    pub fn place(&mut self, entry: &Entry, ordinal: u64) -> Result<Placement> {
        let inner = validate_relative(&entry.path, DotComponents::Drop)
            .map_err(|e| e.context(format!("inner entry of {}", self.path)))?;
        let mismatch = || {
            Error::malformed(format!(
                "{} holds inner entry {}, which does not belong to it (TAR-11)",
                self.path,
                escape(&entry.path)
            ))
        };
        // TAR-11: a name outside PATH is unsafe-path; a misplaced one inside is malformed.
        let root = match &self.shape {
            FileShape::Rooted { .. } => self.path.as_str(),
            FileShape::Tree { root } => root.as_str(),
        };
        if !is_within(&inner, root) {
            return Err(Error::unsafe_path(format!(
                "{} holds inner entry {}, which lies outside it (TAR-11)",
                self.path,
                escape(&entry.path)
            )));
        }
        let mut volume_size = None;
        if let FileShape::Rooted { regular_only } = self.shape {
            let first = ordinal == 0;
            if first != (inner == self.path) || (!first && !self.opened_dir) {
                return Err(mismatch());
            }
            if first {
                let fits = match entry.kind {
                    EntryKind::Regular => true,
                    EntryKind::Directory | EntryKind::Symlink { .. } => !regular_only,
                    EntryKind::HardLink { .. } | EntryKind::Other(_) => false,
                };
                if !fits {
                    return Err(Error::unsafe_path(format!(
                        "{} must be {}, but the backup holds a {} (EXT-4)",
                        self.path,
                        if regular_only {
                            "a regular file"
                        } else {
                            "a regular file, a directory or a symbolic link"
                        },
                        kind_name(&entry.kind)
                    )));
                }
                self.opened_dir = entry.kind == EntryKind::Directory;
                volume_size = self.volume_size;
            }
        }
        let output = if self.vm.is_none() {
            inner.clone()
        } else if inner == self.strip {
            self.out_dir.clone()
        } else {
            let rest = inner
                .strip_prefix(&self.strip)
                .and_then(|r| r.strip_prefix('/'))
                .ok_or_else(mismatch)?;
            format!("{}/{rest}", self.out_dir)
        };
        let max_size = match volume_size {
            Some(v) => v.saturating_add(VOLUME_SIZE_SLACK).min(MAX_FILE_SIZE),
            None => self.size_bound(&output),
        };
        Ok(Placement {
            inner,
            output,
            max_size,
            volume_size,
        })
    }

    /// VER-4: LIM-12 for dom0 home and images (`*.img`, `kernels/modules.img` too),
    /// LIM-47 for the text files restore reads, LIM-48 for anything else of a VM.
    fn size_bound(&self, output: &str) -> u64 {
        let rel = output
            .strip_prefix(self.out_dir.as_str())
            .and_then(|r| r.strip_prefix('/'))
            .unwrap_or(output);
        if self.dom0 || self.vm.is_none() || rel.ends_with(".img") {
            MAX_FILE_SIZE
        } else if VM_TEXT_FILES.contains(&rel) {
            MAX_VM_TEXT_FILE_LEN
        } else {
            MAX_VM_AUX_FILE_LEN
        }
    }
}

fn kind_name(kind: &EntryKind) -> &'static str {
    match kind {
        EntryKind::Regular => "regular file",
        EntryKind::Directory => "directory",
        EntryKind::Symlink { .. } => "symbolic link",
        EntryKind::HardLink { .. } => "hard link",
        EntryKind::Other(_) => "special file",
    }
}

/// VER-2: the files a VM's entry in qubes.xml implies.
fn expected_files(
    vm: &Vm,
    flavor: Flavor,
    version: Version,
    prefix: &str,
    is_dom0: bool,
) -> Vec<String> {
    if is_dom0 {
        return vec![prefix.to_string()];
    }
    let img = |v: &str| format!("{prefix}/{v}.img");
    match (flavor, &vm.volumes_saved) {
        (Flavor::Core3, Some(volumes)) if !volumes.is_empty() => {
            volumes.iter().map(|v| img(v)).collect()
        }
        // A VM with no saved volume has some file (upstream writes `empty`); nothing to name.
        (Flavor::Core3, Some(_)) => Vec::new(),
        _ => match vm.class.as_str() {
            "TemplateVM" if version < Version::V4 => vec![format!("{prefix}/.")],
            "TemplateVM" | "StandaloneVM" => vec![img("private"), img("root")],
            "AppVM" | "DispVM" => vec![img("private")],
            _ => Vec::new(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorClass;

    fn entry(path: &str, kind: EntryKind) -> Entry {
        Entry {
            path: path.as_bytes().to_vec(),
            kind,
            size: 0,
            stored: 0,
            sparse: None,
            mode: 0o644,
            mtime: None,
            uid: 0,
            gid: 0,
        }
    }

    fn spec(path: &str, shape: FileShape) -> FileSpec {
        FileSpec {
            path: path.into(),
            vm: Some(0),
            shape,
            out_dir: "work".into(),
            strip: "vm3".into(),
            volume_size: None,
            dom0: false,
            opened_dir: false,
        }
    }

    fn rooted(path: &str) -> FileSpec {
        let regular_only = regular_only(path.strip_prefix("vm3/").unwrap());
        spec(path, FileShape::Rooted { regular_only })
    }

    fn class(s: &mut FileSpec, name: &str, kind: EntryKind, ordinal: u64) -> ErrorClass {
        s.place(&entry(name, kind), ordinal).unwrap_err().class()
    }

    fn link(target: &str) -> EntryKind {
        EntryKind::Symlink {
            target: target.as_bytes().to_vec(),
        }
    }

    /// TAR-11: names outside PATH are unsafe-path, misplaced names inside it malformed.
    #[test]
    fn entries_outside_their_file_are_unsafe() {
        let mut single = rooted("vm3/private.img");
        let p = single
            .place(&entry("vm3/private.img", EntryKind::Regular), 0)
            .unwrap();
        assert_eq!(p.output, "work/private.img");
        for other in ["vm3/root.img", "vm4/private.img", "vm3/private.imgx"] {
            assert_eq!(
                class(&mut rooted("vm3/private.img"), other, EntryKind::Regular, 0),
                ErrorClass::UnsafePath,
                "{other}"
            );
        }
        assert_eq!(
            class(&mut single, "vm3/private.img", EntryKind::Regular, 1),
            ErrorClass::Malformed
        );
        assert_eq!(
            class(
                &mut rooted("vm3/private.img"),
                "vm3/private.img/x",
                EntryKind::Regular,
                0
            ),
            ErrorClass::Malformed
        );
        let mut tree = spec("vm3/.", FileShape::Tree { root: "vm3".into() });
        assert!(tree
            .place(&entry("vm3/./apps/x", EntryKind::Regular), 3)
            .is_ok());
        assert_eq!(
            class(&mut tree, "vm4/apps/", EntryKind::Directory, 1),
            ErrorClass::UnsafePath
        );
    }

    /// TAR-11, EXT-4: what a VM directory holds besides images — `apps.templates/` and
    /// `kernels/` trees, an `icon.png` link — is archived as it is; the files the format
    /// defines stay single regular files.
    #[test]
    fn vm_directory_entries_may_be_trees_and_links() {
        let mut dir = rooted("vm3/apps.templates");
        let top = dir
            .place(&entry("vm3/apps.templates/", EntryKind::Directory), 0)
            .unwrap();
        assert_eq!(top.output, "work/apps.templates");
        let file = dir
            .place(
                &entry("vm3/apps.templates/x.desktop", EntryKind::Regular),
                1,
            )
            .unwrap();
        assert_eq!(file.output, "work/apps.templates/x.desktop");
        assert_eq!(file.max_size, MAX_VM_AUX_FILE_LEN);
        assert_eq!(
            class(&mut dir, "vm3/apps.templates", EntryKind::Directory, 2),
            ErrorClass::Malformed
        );
        assert_eq!(
            class(&mut dir, "vm3/apps", EntryKind::Regular, 2),
            ErrorClass::UnsafePath
        );
        let mut kernels = rooted("vm3/kernels");
        kernels
            .place(&entry("vm3/kernels", EntryKind::Directory), 0)
            .unwrap();
        let modules = kernels
            .place(&entry("vm3/kernels/modules.img", EntryKind::Regular), 1)
            .unwrap();
        assert_eq!(modules.max_size, MAX_FILE_SIZE);

        let mut icon = rooted("vm3/icon.png");
        icon.place(
            &entry("vm3/icon.png", link("/usr/share/icons/green.png")),
            0,
        )
        .unwrap();
        // A link or a regular file is the only entry.
        assert_eq!(
            class(&mut icon, "vm3/icon.png/x", EntryKind::Regular, 1),
            ErrorClass::Malformed
        );
        for (name, kind) in [
            ("vm3/private.img", EntryKind::Directory),
            ("vm3/private.img", link("x")),
            ("vm3/firewall.xml", link("/etc/shadow")),
            ("vm3/empty", EntryKind::Directory),
            ("vm3/icon.png", EntryKind::Other(b'6')),
            (
                "vm3/icon.png",
                EntryKind::HardLink {
                    target: b"vm3/x".to_vec(),
                },
            ),
        ] {
            assert_eq!(
                class(&mut rooted(name), name, kind, 0),
                ErrorClass::UnsafePath,
                "{name}"
            );
        }
    }

    /// VER-4: a volume image is bounded by its volume-config size plus LIM-49; the small
    /// files restore reads by LIM-47.
    #[test]
    fn entry_sizes_are_bounded_by_kind() {
        let mut img = rooted("vm3/private.img");
        img.volume_size = Some(2 << 30);
        let p = img
            .place(&entry("vm3/private.img", EntryKind::Regular), 0)
            .unwrap();
        assert_eq!(p.max_size, (2 << 30) + VOLUME_SIZE_SLACK);
        assert_eq!(p.volume_size, Some(2 << 30));
        let p = rooted("vm3/root.img")
            .place(&entry("vm3/root.img", EntryKind::Regular), 0)
            .unwrap();
        assert_eq!(p.max_size, MAX_FILE_SIZE);
        let p = rooted("vm3/firewall.xml")
            .place(&entry("vm3/firewall.xml", EntryKind::Regular), 0)
            .unwrap();
        assert_eq!(p.max_size, MAX_VM_TEXT_FILE_LEN);
    }
}
