//! Shared helpers for the integration and conformance tests: generating archives with the
//! real tools (through the committed scripts in `tests/fixtures/`), taking archives apart
//! into members and putting them back together (to make tampered copies), and running
//! the binaries.

pub mod binaries;
pub mod fault_proxy;
pub mod manifest;
pub mod mock_qubesd;
pub mod seaweed;
pub mod signals;
pub mod slurm;
pub mod sources;
pub mod tree;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use qbackup_format::outer_tar::OuterReader;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repo")
        .to_path_buf()
}

/// A fixture script by name, e.g. `make-archive.sh`.
pub fn fixture_script(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// Run a command, panicking with its output if it fails.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// One outer member: name and bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub data: Vec<u8>,
}

/// Split an archive into its members (with the format crate's own outer reader).
pub fn members(archive: &[u8]) -> Vec<Member> {
    let mut r = OuterReader::new(archive);
    let mut out = Vec::new();
    while let Some(m) = r.next_member().expect("test archive must be well-formed") {
        let mut data = Vec::new();
        r.read_member(&mut data, u64::MAX, "test")
            .expect("member data");
        out.push(Member {
            name: String::from_utf8(m.untrusted_name).expect("ASCII member name"),
            data,
        });
    }
    out
}

/// A POSIX ustar header block for a regular member (names up to 100 bytes, or split into
/// prefix/name like `tar --posix`).
pub fn ustar_header(name: &str, size: u64, typeflag: u8) -> [u8; 512] {
    let mut b = [0u8; 512];
    let (prefix, base) = if name.len() > 100 {
        let cut = name[..name.len().min(156)]
            .rfind('/')
            .expect("splittable long name");
        (&name[..cut], &name[cut + 1..])
    } else {
        ("", name)
    };
    b[..base.len()].copy_from_slice(base.as_bytes());
    b[100..108].copy_from_slice(b"0000644\0");
    b[108..116].copy_from_slice(b"0000000\0");
    b[116..124].copy_from_slice(b"0000000\0");
    b[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    b[136..148].copy_from_slice(b"00000000000\0");
    b[156] = typeflag;
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    b[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
    b[148..156].fill(b' ');
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
    b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    b
}

/// Put members back together as concatenated tar archives (each ending in two zero blocks).
pub fn build(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in members {
        out.extend_from_slice(&ustar_header(&m.name, m.data.len() as u64, b'0'));
        out.extend_from_slice(&m.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out.extend_from_slice(&[0u8; 1024]);
    }
    out
}

/// Index of the member named `name`.
pub fn find(members: &[Member], name: &str) -> usize {
    members
        .iter()
        .position(|m| m.name == name)
        .unwrap_or_else(|| panic!("no member {name}"))
}

/// Hex SHA-256 of a file's contents.
pub fn sha256_file(path: &Path) -> String {
    let out = run_ok(Command::new("sha256sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}
