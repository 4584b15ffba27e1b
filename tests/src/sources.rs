//! The source trees and passphrase the interop archives are made from
//! (`tests/fixtures/make-sources.sh`, once per test process), and archives built from them
//! with the real tools (`tests/fixtures/make-archive.sh`, the expect JSON beside each).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use serde_json::Value;

use crate::{fixture_script, run_ok};

/// The passphrase of every fixture archive (the file holds it plus a newline).
pub const PASSPHRASE: &str = "correct horse!battery";

/// Source trees (`src/`) and a passphrase file (`pass`) in one temporary directory,
/// world-readable so that an unprivileged (`nobody`) child can read them too.
pub struct Sources {
    dir: tempfile::TempDir,
}

/// The process-wide [`Sources`], made on first use.
pub fn sources() -> &'static Sources {
    static F: OnceLock<Sources> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("chmod tempdir");
        run_ok(Command::new(fixture_script("make-sources.sh")).arg(dir.path().join("src")));
        std::fs::write(dir.path().join("pass"), format!("{PASSPHRASE}\n")).expect("passphrase");
        Sources { dir }
    })
}

impl Sources {
    /// The temporary directory holding everything (archives are written here too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The source trees.
    pub fn src(&self) -> PathBuf {
        self.dir.path().join("src")
    }

    /// The passphrase file.
    pub fn pass(&self) -> PathBuf {
        self.dir.path().join("pass")
    }
}

/// Build `NAME.bin` from [`sources`] with the real tools (`make-archive.sh ARGS`); returns
/// its path. Every call builds: give each archive its own name.
pub fn make_archive(name: &str, args: &[&str]) -> PathBuf {
    let f = sources();
    let out = f.dir().join(format!("{name}.bin"));
    run_ok(
        Command::new(fixture_script("make-archive.sh"))
            .args(args)
            .arg("--passphrase-file")
            .arg(f.pass())
            .arg(f.src())
            .arg(&out),
    );
    out
}

/// [`make_archive`], built once per name and process: calls may repeat a name, one builds
/// at a time (the script appends to its output).
pub fn make_archive_once(name: &str, args: &[&str]) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _one_at_a_time = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let out = sources().dir().join(format!("{name}.bin"));
    if out.exists() {
        out
    } else {
        make_archive(name, args)
    }
}

/// The expect JSON `make-archive.sh` wrote beside `archive` (`ARCHIVE.expect.json`).
pub fn expect_doc(archive: &Path) -> Value {
    let path = format!("{}.expect.json", archive.display());
    serde_json::from_slice(&std::fs::read(&path).expect("expect json")).expect("expect json parses")
}
