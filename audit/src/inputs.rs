//! The archives to audit (SPEC.md AUD-2): files, directories (recursive), globs, `--list`
//! files, and `s3://bucket/prefix` URLs, each archive with its current version.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::location::{Candidate, Location, Version};
use crate::s3::{S3Url, Storage};

/// What to look at, as given on the command line.
#[derive(Debug, Default)]
pub struct Inputs {
    pub operands: Vec<String>,
    /// Files with one operand per line (`#` comments and blank lines skipped).
    pub lists: Vec<PathBuf>,
    /// Only archives whose file name (the last `/` component) matches this glob.
    pub include: Option<glob::Pattern>,
}

/// Every archive the inputs name, once each, in location order. `storage` is made on
/// first use by an `s3://` operand.
pub fn enumerate(
    inputs: &Inputs,
    storage: &mut Option<Arc<Storage>>,
) -> Result<Vec<Candidate>, String> {
    let mut operands = inputs.operands.clone();
    for list in &inputs.lists {
        let text =
            std::fs::read_to_string(list).map_err(|e| format!("--list {}: {e}", list.display()))?;
        operands.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    let mut found = BTreeMap::new();
    for op in &operands {
        if let Some(url) = S3Url::parse(op) {
            if storage.is_none() {
                *storage = Some(Storage::new()?);
            }
            let s = storage.as_ref().ok_or("no S3 client")?;
            for o in s.list(&url)? {
                let c = Candidate {
                    location: Location::S3 {
                        bucket: url.bucket.clone(),
                        key: o.key,
                    },
                    version: Version::S3 {
                        etag: o.etag,
                        size: o.size,
                    },
                };
                found.insert(c.location.clone(), c);
            }
        } else if op.starts_with("s3:") {
            return Err(format!("{op:?}: expected s3://bucket[/prefix]"));
        } else if Path::new(op).exists() {
            add_path(Path::new(op), true, &mut found)?;
        } else if op.contains(['*', '?', '[']) {
            let matches = glob::glob(op).map_err(|e| format!("{op:?}: {e}"))?;
            for m in matches {
                let p = m.map_err(|e| format!("{op:?}: {e}"))?;
                add_path(&p, true, &mut found)?;
            }
        } else {
            return Err(format!("{op}: no such file or directory"));
        }
    }
    Ok(found
        .into_values()
        .filter(|c| included(inputs.include.as_ref(), &c.location))
        .collect())
}

fn included(include: Option<&glob::Pattern>, location: &Location) -> bool {
    let Some(pat) = include else { return true };
    let name = location.to_string();
    let base = name.rsplit('/').next().unwrap_or(&name);
    pat.matches(base)
}

/// A file (`named`: given by the user, so a symbolic link is followed) or a directory,
/// walked without following links.
fn add_path(
    path: &Path,
    named: bool,
    found: &mut BTreeMap<Location, Candidate>,
) -> Result<(), String> {
    let md = if named {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    }
    .map_err(|e| format!("{}: {e}", path.display()))?;
    if md.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        entries.sort();
        for e in entries {
            add_path(&e, false, found)?;
        }
    } else if md.is_file() {
        let abs = std::fs::canonicalize(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let c = Candidate {
            location: Location::File(abs),
            version: file_version(&md),
        };
        found.insert(c.location.clone(), c);
    }
    Ok(())
}

/// A file's version: device, inode, size and modification time (AUD-2).
pub fn file_version(md: &std::fs::Metadata) -> Version {
    Version::File {
        dev: md.dev(),
        ino: md.ino(),
        size: md.size(),
        mtime_ns: md
            .mtime()
            .saturating_mul(1_000_000_000)
            .saturating_add(md.mtime_nsec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_directories_globs_and_lists_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        for f in ["a/one.bin", "a/b/two.bin", "a/b/notes.txt", "three.bin"] {
            std::fs::write(d.join(f), f).unwrap();
        }
        std::os::unix::fs::symlink(d.join("three.bin"), d.join("a/link.bin")).unwrap();
        let list = d.join("list");
        std::fs::write(
            &list,
            format!("# mine\n{}\n\n", d.join("three.bin").display()),
        )
        .unwrap();
        let inputs = Inputs {
            operands: vec![
                d.join("a").display().to_string(),
                d.join("a/*.bin").display().to_string(),
            ],
            lists: vec![list],
            include: Some(glob::Pattern::new("*.bin").unwrap()),
        };
        let got: Vec<String> = enumerate(&inputs, &mut None)
            .unwrap()
            .iter()
            .map(|c| c.location.to_string())
            .collect();
        let root = std::fs::canonicalize(d).unwrap();
        let want: Vec<String> = ["a/b/two.bin", "a/one.bin", "three.bin"]
            .iter()
            .map(|f| root.join(f).display().to_string())
            .collect();
        // The link inside a walked directory is not followed; the glob names it, and it
        // resolves to three.bin, listed once.
        assert_eq!(got, want);
        let missing = Inputs {
            operands: vec![d.join("nope").display().to_string()],
            ..Inputs::default()
        };
        assert!(enumerate(&missing, &mut None)
            .unwrap_err()
            .contains("no such"));
    }
}
