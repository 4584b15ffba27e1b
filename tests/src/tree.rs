//! Listing what a run left in a directory.

use std::fs;
use std::path::{Path, PathBuf};

/// Every entry under `dir` (directories too, each after its contents), not following links.
pub fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        if fs::symlink_metadata(&p).expect("stat").is_dir() {
            out.extend(entries(&p));
        }
        out.push(p);
    }
    out
}

/// Every non-directory path under `dir`, relative, sorted (none if `dir` is missing).
pub fn files(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd {
            let p = e.expect("entry").path();
            if fs::symlink_metadata(&p).expect("stat").is_dir() {
                walk(base, &p, out);
            } else {
                out.push(
                    p.strip_prefix(base)
                        .expect("under base")
                        .display()
                        .to_string(),
                );
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
