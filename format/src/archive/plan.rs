//! The backup plan: which files qubes.xml says the archive must hold, which VM each
//! archive file belongs to, and where each inner entry goes (SPEC.md ORD-7, VER-2,
//! VER-4, TAR-11, EXT-1).

use crate::error::{Error, Result};
use crate::header::Version;
use crate::inner_tar::{Entry, EntryKind};
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
}

/// How a backed-up file's inner tar is shaped (TAR-11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileShape {
    /// One regular file whose inner name is exactly the archive path.
    Single,
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
}

/// Where one inner entry goes, relative to the extraction root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The validated inner name, `.` components dropped.
    pub inner: String,
    /// `<out_dir>/<rest>`, e.g. `work/private.img`, `dom0-home/user/.bashrc`.
    pub output: String,
    /// True when this entry is the file the format defines (a volume image, firewall.xml):
    /// it must be a regular file (EXT-4).
    pub must_be_regular: bool,
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
                shape: FileShape::Single,
                out_dir: String::new(),
                strip: String::new(),
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
        let shape = if path == planned.prefix {
            FileShape::Tree { root: path.into() }
        } else if let Some(dir) = path.strip_suffix("/.") {
            FileShape::Tree { root: dir.into() }
        } else {
            FileShape::Single
        };
        Ok(FileSpec {
            path: path.into(),
            vm: Some(vm),
            shape,
            out_dir: planned.out_dir.clone(),
            strip: planned.strip.clone(),
        })
    }
}

impl FileSpec {
    /// Map an untrusted inner entry of this file to its place (TAR-11, EXT-1).
    /// `ordinal` counts the entries of this file so far (0 for the first).
    pub fn place(&self, entry: &Entry, ordinal: u64) -> Result<Placement> {
        let file = self;
        let inner = validate_relative(&entry.path, DotComponents::Drop)
            .map_err(|e| e.context(format!("inner entry of {}", file.path)))?;
        let mismatch = || {
            Error::malformed(format!(
                "{} holds inner entry {}, which does not belong to it (TAR-11)",
                file.path,
                escape(&entry.path)
            ))
        };
        // TAR-11: a name outside PATH is unsafe-path; a misplaced one inside is malformed.
        let outside = || {
            Error::unsafe_path(format!(
                "{} holds inner entry {}, which lies outside it (TAR-11)",
                file.path,
                escape(&entry.path)
            ))
        };
        let must_be_regular = match &file.shape {
            FileShape::Single => {
                if !is_within(&inner, &file.path) {
                    return Err(outside());
                }
                if inner != file.path || ordinal != 0 {
                    return Err(mismatch());
                }
                true
            }
            FileShape::Tree { root } => {
                if !is_within(&inner, root) {
                    return Err(outside());
                }
                false
            }
        };
        if must_be_regular && !matches!(entry.kind, EntryKind::Regular) {
            return Err(Error::unsafe_path(format!(
                "{} must be a regular file, but the backup holds a link or special file (EXT-4)",
                file.path
            )));
        }
        let output = if file.vm.is_none() {
            inner.clone()
        } else if inner == file.strip {
            file.out_dir.clone()
        } else {
            let rest = inner
                .strip_prefix(&file.strip)
                .and_then(|r| r.strip_prefix('/'))
                .ok_or_else(mismatch)?;
            format!("{}/{rest}", file.out_dir)
        };
        Ok(Placement {
            inner,
            output,
            must_be_regular,
        })
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
        }
    }

    /// TAR-11: names outside PATH are unsafe-path, misplaced names inside it malformed.
    #[test]
    fn entries_outside_their_file_are_unsafe() {
        let single = spec("vm3/private.img", FileShape::Single);
        let class = |s: &FileSpec, name: &str, kind: EntryKind, ordinal: u64| {
            s.place(&entry(name, kind), ordinal).unwrap_err().class()
        };
        let p = single
            .place(&entry("vm3/private.img", EntryKind::Regular), 0)
            .unwrap();
        assert_eq!(p.output, "work/private.img");
        for other in ["vm3/root.img", "vm4/private.img", "vm3/private.imgx"] {
            assert_eq!(
                class(&single, other, EntryKind::Regular, 0),
                ErrorClass::UnsafePath,
                "{other}"
            );
        }
        assert_eq!(
            class(&single, "vm3/private.img", EntryKind::Regular, 1),
            ErrorClass::Malformed
        );
        assert_eq!(
            class(&single, "vm3/private.img/x", EntryKind::Regular, 0),
            ErrorClass::Malformed
        );
        let tree = spec("vm3/.", FileShape::Tree { root: "vm3".into() });
        assert!(tree
            .place(&entry("vm3/./apps/x", EntryKind::Regular), 3)
            .is_ok());
        assert_eq!(
            class(&tree, "vm4/apps/", EntryKind::Directory, 1),
            ErrorClass::UnsafePath
        );
    }
}
