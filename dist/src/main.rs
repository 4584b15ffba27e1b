//! `qbackup-dist DIR [COMMAND...]`: the man pages and shell completions of `qbackup-verify`,
//! `qbackup-pack` and `qbackup-audit` (or only the COMMANDs named), generated from their clap
//! definitions (the only place the options are written), into
//!
//! ```text
//! DIR/man/man1/qbackup-verify.1, qbackup-verify-verify.1, …, qbackup-pack-restore.1
//! DIR/completions/bash/qbackup-verify           (bash-completion's completions/)
//! DIR/completions/zsh/_qbackup-verify           (site-functions/)
//! DIR/completions/fish/qbackup-verify.fish      (fish's vendor_completions.d/)
//! ```
//!
//! `dist/build.sh` runs it for the release binaries and the Debian package; the dom0 RPM,
//! which does not ship `qbackup-audit`, names `qbackup-verify qbackup-pack`.

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: qbackup-dist DIR [COMMAND...]");
        std::process::exit(2);
    };
    // A name that is not UTF-8 names no command: `select` refuses it.
    let names: Vec<String> = args.map(|a| a.to_string_lossy().into_owned()).collect();
    let cmds = match select(&names) {
        Ok(cmds) => cmds,
        Err(e) => {
            eprintln!("qbackup-dist: {e}");
            std::process::exit(2);
        }
    };
    match generate(Path::new(&dir), cmds) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
        }
        Err(e) => {
            eprintln!("qbackup-dist: {e}");
            std::process::exit(1);
        }
    }
}

/// The commands whose pages and completions are generated.
fn commands() -> [clap::Command; 3] {
    [
        qbackup_verify::cli::Cli::command(),
        qbackup_pack::cli::Cli::command(),
        qbackup_audit::cli::Cli::command(),
    ]
}

/// The commands named (all of them when none is), or the first unknown name.
fn select(names: &[String]) -> Result<Vec<clap::Command>, String> {
    let all = commands();
    if let Some(unknown) = names
        .iter()
        .find(|n| !all.iter().any(|c| c.get_name() == n.as_str()))
    {
        return Err(format!("no command {unknown:?}"));
    }
    Ok(all
        .into_iter()
        .filter(|c| names.is_empty() || names.iter().any(|n| n == c.get_name()))
        .collect())
}

/// Write everything for `cmds` under `dir`; returns the files written.
fn generate(dir: &Path, cmds: Vec<clap::Command>) -> std::io::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let man = dir.join("man/man1");
    std::fs::create_dir_all(&man)?;
    for cmd in cmds {
        let name = cmd.get_name().to_string();
        written.extend(man_pages(cmd.clone(), &name, &man)?);
        for (shell, sub) in [
            (Shell::Bash, "bash"),
            (Shell::Zsh, "zsh"),
            (Shell::Fish, "fish"),
        ] {
            let out = dir.join("completions").join(sub);
            std::fs::create_dir_all(&out)?;
            let mut c = cmd.clone();
            let mut path = clap_complete::generate_to(shell, &mut c, &name, &out)?;
            if shell == Shell::Bash {
                // bash-completion looks a command's file up by the command's name.
                let named = out.join(&name);
                std::fs::rename(&path, &named)?;
                path = named;
            }
            written.push(path);
        }
    }
    Ok(written)
}

/// `NAME.1` and one `NAME-SUB.1` per subcommand (as `git` does), each naming its version.
fn man_pages(mut cmd: clap::Command, name: &str, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    cmd.build();
    let mut out = Vec::new();
    let mut pages = vec![(name.to_string(), cmd.clone())];
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let full = format!("{name}-{}", sub.get_name());
        // clap names are `&'static str` (no `string` feature); this process is short-lived.
        let page_name: &'static str = Box::leak(full.clone().into_boxed_str());
        pages.push((
            full,
            sub.clone()
                .name(page_name)
                .version(qbackup_console::VERSION),
        ));
    }
    for (page, c) in pages {
        let path = dir.join(format!("{page}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(c).render(&mut buf)?;
        std::fs::write(&path, buf)?;
        out.push(path);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand has a page naming its options, and every shell's completion knows
    /// every subcommand and a subcommand's option: generated, not written twice.
    #[test]
    fn pages_and_completions_cover_every_subcommand() {
        let dir = tempfile::tempdir().unwrap();
        let files = generate(dir.path(), select(&[]).unwrap()).unwrap();
        let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
        for (bin, subs, option) in [
            (
                "qbackup-verify",
                &["verify", "list", "extract", "emit", "sandbox-check"][..],
                "progress-json",
            ),
            ("qbackup-pack", &["create", "restore"][..], "dry-run"),
            ("qbackup-audit", &["run", "report"][..], "max-duration"),
        ] {
            let top = read(&format!("man/man1/{bin}.1"));
            assert!(top.contains(qbackup_console::VERSION), "{bin}.1 version");
            for sub in subs {
                let page = read(&format!("man/man1/{bin}-{sub}.1"));
                assert!(page.contains(".TH"), "{bin}-{sub}.1");
            }
            let bash = read(&format!("completions/bash/{bin}"));
            let zsh = read(&format!("completions/zsh/_{bin}"));
            let fish = read(&format!("completions/fish/{bin}.fish"));
            for sub in subs {
                assert!(
                    bash.contains(sub) && zsh.contains(sub) && fish.contains(sub),
                    "{sub}"
                );
            }
            for text in [&bash, &zsh, &fish] {
                assert!(text.contains(option), "{bin}: {option}");
            }
        }
        assert!(read("man/man1/qbackup-verify-extract.1").contains("reserve"));
        assert!(read("man/man1/qbackup-audit-run.1").contains("ledger"));
        assert_eq!(files.len(), 3 + 5 + 2 + 2 + 3 * 3);
    }

    /// Naming commands generates theirs only (the dom0 RPM leaves `qbackup-audit` out).
    #[test]
    fn a_selection_generates_only_its_commands() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["qbackup-verify".to_string(), "qbackup-pack".to_string()];
        let files = generate(dir.path(), select(&names).unwrap()).unwrap();
        assert_eq!(files.len(), 2 + 5 + 2 + 2 * 3);
        assert!(files
            .iter()
            .all(|f| !f.to_string_lossy().contains("qbackup-audit")));
        let err = select(&["qbackup-audit".into(), "qbackup".into()]).unwrap_err();
        assert!(err.contains("\"qbackup\""), "{err}");
    }
}
