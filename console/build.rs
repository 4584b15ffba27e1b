//! Stamps the git revision into `qbackup_console::VERSION` (`--version`). From a source
//! tarball without `.git` (the RPM build), `$QBACKUP_GIT_REV` names it instead.

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=QBACKUP_GIT_REV");
    let given = std::env::var("QBACKUP_GIT_REV")
        .ok()
        .filter(|s| !s.is_empty());
    let rev = given.or_else(|| {
        let rev = git(&["rev-parse", "--short=12", "HEAD"])?;
        // Rebuild when HEAD moves: HEAD itself, the branch it names, packed refs.
        let mut watch = vec!["HEAD".to_string(), "packed-refs".to_string()];
        if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watch.push(r);
        }
        for w in watch {
            if let Some(p) = git(&["rev-parse", "--git-path", &w]) {
                let p = PathBuf::from(p);
                let p = if p.is_absolute() {
                    p
                } else {
                    std::env::current_dir().map(|d| d.join(&p)).unwrap_or(p)
                };
                if p.exists() {
                    println!("cargo:rerun-if-changed={}", p.display());
                }
            }
        }
        Some(rev)
    });
    println!(
        "cargo:rustc-env=QBACKUP_GIT_REV={}",
        rev.as_deref().unwrap_or("unknown")
    );
}
