//! Where a qube's volume data is, by storage pool driver (SPEC.md FQ-3), read as qubesd's
//! own backup exports it and never written:
//!
//! - `lvm_thin`: the committed LV `/dev/VG/vm-NAME-VOL` (the vid), activated first when
//!   its device node is missing. A running qube writes to `…-snap`, so the committed LV
//!   is its state when it last started.
//! - `file-reflink`: the clean `DIR/VID.img` (never `-dirty.img` or `-precache.img`),
//!   likewise the state at the last start.
//! - `file`: `DIR/VID.img`, which a running qube writes to: refused while it runs.
//!
//! A volume that a running qube writes in place (R4.3 `revisions_to_keep=-1`) is refused
//! as upstream refuses it. `QBACKUP_STORAGE_ROOT` (tests only) is prefixed to the device
//! and pool paths, and `QBACKUP_LVM` names the `lvm` program.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::qubesd::read::ListedVm;
use crate::qubesd::Qubesd;
use crate::Failure;

/// Prefixed to `/dev/…` and pool directories (tests stand files in for them).
pub const STORAGE_ROOT_ENV: &str = "QBACKUP_STORAGE_ROOT";
/// The `lvm` program that activates an inactive LV (default `lvm`).
pub const LVM_ENV: &str = "QBACKUP_LVM";

/// A volume's data source and, when it is not the live state, why.
pub struct Export {
    pub path: PathBuf,
    pub note: Option<String>,
}

/// The pools seen so far (`admin.pool.Info`), and the path overrides.
pub struct Storage {
    root: Option<PathBuf>,
    lvm: String,
    pools: BTreeMap<String, BTreeMap<String, String>>,
}

fn refuse(msg: String) -> Failure {
    Failure::Usage(msg)
}

/// FQ-3: a vid is relative path components of `[A-Za-z0-9_.+-]` (no `.` or `..`), so it
/// cannot leave its pool's directory or volume group.
fn check_vid(vid: &str) -> bool {
    !vid.is_empty()
        && vid.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'+' | b'-'))
        })
}

impl Storage {
    pub fn from_env() -> Storage {
        Storage {
            root: std::env::var_os(STORAGE_ROOT_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            lvm: std::env::var(LVM_ENV)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "lvm".into()),
            pools: BTreeMap::new(),
        }
    }

    /// An absolute dom0 path, under the test root when one is set.
    fn place(&self, abs: &Path) -> PathBuf {
        match &self.root {
            Some(r) => r.join(abs.strip_prefix("/").unwrap_or(abs)),
            None => abs.to_path_buf(),
        }
    }

    fn pool(&mut self, q: &Qubesd, name: &str) -> Result<&BTreeMap<String, String>, Failure> {
        if !self.pools.contains_key(name) {
            let info = q
                .pool_info(name)
                .map_err(|e| Failure::io(format!("admin.pool.Info {name}: {e}")))?;
            self.pools.insert(name.to_owned(), info);
        }
        Ok(&self.pools[name])
    }

    /// FQ-3: where to read `volume` of `vm`, given its `admin.vm.volume.Info`.
    pub fn export(
        &mut self,
        q: &Qubesd,
        vm: &ListedVm,
        volume: &str,
        info: &BTreeMap<String, String>,
    ) -> Result<Export, Failure> {
        let what = format!("VM {}: volume {volume}", vm.name);
        let field = |k: &str| {
            info.get(k)
                .ok_or_else(|| Failure::io(format!("{what}: admin.vm.volume.Info has no {k}")))
        };
        let pool_name = field("pool")?.clone();
        let vid = field("vid")?.clone();
        if !check_vid(&vid) {
            return Err(Failure::io(format!("{what}: unusable vid {vid:?}")));
        }
        let in_place = info.get("revisions_to_keep").map(String::as_str) == Some("-1");
        if vm.is_running() && in_place {
            return Err(refuse(format!(
                "{what}: {} is running and writes this volume in place \
                 (revisions_to_keep=-1); shut it down to back it up",
                vm.name
            )));
        }
        let at_start = vm.is_running().then(|| {
            format!(
                "{what}: {} is running; backed up as it was when it last started",
                vm.name
            )
        });
        let pool = self.pool(q, &pool_name)?.clone();
        let driver = pool.get("driver").map_or("", String::as_str);
        let dir = || {
            pool.get("dir_path")
                .filter(|d| d.starts_with('/'))
                .map(PathBuf::from)
                .ok_or_else(|| Failure::io(format!("pool {pool_name}: no absolute dir_path")))
        };
        match driver {
            "lvm_thin" => {
                let path = self.place(&Path::new("/dev").join(&vid));
                if !path.exists() {
                    self.activate(&vid, &what)?;
                }
                if !path.exists() {
                    return Err(Failure::io(format!(
                        "{what}: {} does not exist, even after activating {vid}",
                        path.display()
                    )));
                }
                Ok(Export {
                    path,
                    note: at_start,
                })
            }
            "file-reflink" => Ok(Export {
                path: self.place(&dir()?.join(format!("{vid}.img"))),
                note: at_start,
            }),
            "file" if vm.is_running() => Err(refuse(format!(
                "{what}: {} is running and pool {pool_name} (driver file) cannot export a \
                 running volume; shut it down first",
                vm.name
            ))),
            "file" => Ok(Export {
                path: self.place(&dir()?.join(format!("{vid}.img"))),
                note: None,
            }),
            other => Err(refuse(format!(
                "{what}: pool {pool_name} has driver {other:?}, which qbackup cannot read \
                 (lvm_thin, file-reflink, file)"
            ))),
        }
    }

    /// `lvm lvchange --activate=y -- VG/LV`, as qubesd's export does.
    fn activate(&self, vid: &str, what: &str) -> Result<(), Failure> {
        let status = Command::new(&self.lvm)
            .args(["lvchange", "--activate=y", "--", vid])
            .status()
            .map_err(|e| Failure::io(format!("{what}: running {} lvchange: {e}", self.lvm)))?;
        if !status.success() {
            return Err(Failure::io(format!(
                "{what}: {} lvchange --activate=y {vid} failed ({status})",
                self.lvm
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vids_stay_inside_their_pool() {
        for ok in [
            "qubes_dom0/vm-work-private",
            "appvms/work/private",
            "a+b/c.d",
        ] {
            assert!(check_vid(ok), "{ok}");
        }
        for bad in [
            "",
            "/dev/sda",
            "appvms/../x",
            "a//b",
            "a/./b",
            "a b",
            "vg/lv\n",
        ] {
            assert!(!check_vid(bad), "{bad:?}");
        }
    }
}
