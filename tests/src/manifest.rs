//! Comparing an extraction or restore directory with the manifest `make-archive.sh` wrote
//! beside an archive (its expect JSON): every file byte-exact and sparse where the source
//! was, directories present, links recreated or reported, nothing else written.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::sha256_file;
use crate::tree::entries;

/// Where the output of one manifest entry lives under `dest`: `dest/VM/PATH`, the VM
/// directory itself for path `.`, and `dest/qubes.xml` for the `qubes.xml` entry.
pub fn output_path(dest: &Path, vm: &str, rel: &str) -> PathBuf {
    if vm == "qubes.xml" {
        dest.join("qubes.xml")
    } else if rel == "." {
        dest.join(vm)
    } else {
        dest.join(vm).join(rel)
    }
}

/// Assert that `dest` holds exactly what `expect["files"]` lists (`name` labels failures):
/// regular files of the listed size and SHA-256, without setuid/setgid/sticky bits, holes
/// kept for large sparse files (EXT-3); directories; symlinks recreated, or else
/// `reported(target)` (the run said it skipped that link); no other non-directory output and no `qbackup-partial` temporary. Without `qubes_xml`
/// the `qubes.xml` entry is not expected (protocol v2 does not carry it).
pub fn assert_matches_manifest(
    name: &str,
    expect: &Value,
    dest: &Path,
    qubes_xml: bool,
    reported: impl Fn(&str) -> bool,
) {
    let mut checked = 0;
    let mut seen = HashSet::new();
    for e in expect["files"].as_array().expect("files") {
        let vm = e["vm"].as_str().expect("vm");
        let rel = e["path"].as_str().expect("path");
        if vm == "qubes.xml" && !qubes_xml {
            continue;
        }
        let path = output_path(dest, vm, rel);
        seen.insert(path.clone());
        match e["type"].as_str() {
            Some("file") => {
                let meta = std::fs::symlink_metadata(&path)
                    .unwrap_or_else(|err| panic!("{name}: {} missing: {err}", path.display()));
                assert!(
                    meta.is_file(),
                    "{name}: {} is not a regular file",
                    path.display()
                );
                assert_eq!(
                    Some(meta.len()),
                    e["size"].as_u64(),
                    "{name}: size of {}",
                    path.display()
                );
                assert_eq!(
                    Some(sha256_file(&path).as_str()),
                    e["sha256"].as_str(),
                    "{name}: content of {}",
                    path.display()
                );
                assert_eq!(
                    meta.permissions().mode() & 0o7000,
                    0,
                    "no setuid/setgid/sticky"
                );
                if e["sparse"].as_bool() == Some(true) && meta.len() >= 1 << 20 {
                    // Holes stay holes.
                    assert!(
                        meta.blocks() * 512 < meta.len(),
                        "{name}: {} was written dense",
                        path.display()
                    );
                }
                checked += 1;
            }
            Some("dir") => assert!(
                path.is_dir(),
                "{name}: {} is not a directory",
                path.display()
            ),
            Some("symlink") => {
                let target = e["target"].as_str().expect("target");
                match std::fs::read_link(&path) {
                    Ok(t) => assert_eq!(t, Path::new(target), "{name}: link {}", path.display()),
                    Err(_) => assert!(
                        reported(target),
                        "{name}: link {} neither recreated nor reported",
                        path.display()
                    ),
                }
            }
            other => panic!("{name}: unknown manifest type {other:?}"),
        }
    }
    assert!(checked > 0, "{name}: manifest lists no files");
    // Nothing but the manifest's entries (and their parent directories) was written.
    for entry in entries(dest) {
        let meta = std::fs::symlink_metadata(&entry).expect("stat");
        if !meta.is_dir() {
            assert!(
                seen.contains(&entry),
                "{name}: unexpected output {}",
                entry.display()
            );
        }
        let file_name = entry
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        assert!(
            !file_name.contains("qbackup-partial"),
            "{name}: temporary left: {}",
            entry.display()
        );
    }
}
