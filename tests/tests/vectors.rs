//! Conformance vectors: every `tests/vectors/NAME.bin` with its `NAME.json` expectation
//! (schema: `tests/vectors/README.md`) is run through the `qbackup-verify` binary of this
//! build: `verify --json` must end with the expected class and exit code, `extract` must
//! write exactly the expected files (or, on failure, what may be committed before it), and
//! `list` must show the expected version and VMs. A second test checks that every
//! requirement ID of SPEC.md is exercised by a vector or cited by a test.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use qbackup_tests::repo_root;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// Error classes and their exit codes, as SPEC.md ERR-3 lists them.
const CLASSES: [(&str, i32); 11] = [
    ("wrong-passphrase", 10),
    ("header-failure", 11),
    ("mac-failure", 12),
    ("order-failure", 13),
    ("missing-data", 14),
    ("limit-exceeded", 15),
    ("unsafe-path", 16),
    ("malformed", 17),
    ("truncated", 18),
    ("unsupported", 19),
    ("io", 20),
];

fn exit_code(outcome: &str) -> Option<i32> {
    if outcome == "ok" {
        return Some(0);
    }
    CLASSES.iter().find(|(c, _)| *c == outcome).map(|&(_, n)| n)
}

fn vectors_dir() -> PathBuf {
    repo_root().join("tests/vectors")
}

/// The `qbackup-verify` binary of the profile this test was built in, or
/// `$QBACKUP_VERIFY_BIN`. `cargo test --workspace --release` (CI) builds it for the verifier's
/// own tests; after `cargo test -p qbackup-tests` alone, build it first.
fn verifier_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("QBACKUP_VERIFY_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/vectors-HASH -> target/<profile>/qbackup-verify
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps")
        .join("qbackup-verify");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --release -p qbackup-verify` (or the whole workspace \
         test, which builds it) first, or set QBACKUP_VERIFY_BIN",
        bin.display()
    );
    bin
}

/// Every path below `dir` (files, links and directories), depth first.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd {
        let p = e.expect("dir entry").path();
        let is_dir = std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir());
        if is_dir {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---- expectation files -------------------------------------------------------------------

/// One vector, as its expectation file describes it.
#[derive(Debug)]
struct Vector {
    name: String,
    archive: PathBuf,
    passphrase: String,
    /// Outcome of `verify`: `ok` or a class name.
    expect: String,
    /// Outcome of `extract` (defaults to `expect`).
    extract_expect: String,
    requirements: Vec<String>,
    args: Vec<String>,
    /// `ok`: every regular file `extract` writes (path under the destination -> SHA-256).
    files: BTreeMap<String, String>,
    /// `ok`: every symbolic link `extract` recreates (path -> target).
    symlinks: BTreeMap<String, String>,
    /// Failure: files extraction commits before the failure (must be there).
    committed: BTreeMap<String, String>,
    /// Failure: files that may or may not be committed: those after the failure point (a
    /// reader may continue, ERR-1) and, when the outer layer fails, those still in flight.
    may_commit: BTreeMap<String, String>,
    /// `ok`: `list` facts: format version and included VM names (sorted).
    list: Option<(u64, Vec<String>)>,
    /// `list.notes`: for each expected note, words that one note of the listing contains.
    list_notes: Vec<Vec<String>>,
}

const KEYS: [&str; 12] = [
    "passphrase",
    "expect",
    "extract_expect",
    "comment",
    "requirements",
    "args",
    "files",
    "symlinks",
    "committed",
    "may_commit",
    "list",
    "note",
];

fn string_map(
    doc: &Map<String, Value>,
    key: &str,
    hex: bool,
) -> Result<BTreeMap<String, String>, String> {
    let Some(v) = doc.get(key) else {
        return Ok(BTreeMap::new());
    };
    let obj = v.as_object().ok_or(format!("`{key}` is not an object"))?;
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        let s = v.as_str().ok_or(format!("`{key}.{k}` is not a string"))?;
        if hex && (s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit())) {
            return Err(format!("`{key}.{k}` is not a SHA-256 hex digest"));
        }
        if k.is_empty() || k.starts_with('/') || k.split('/').any(|c| c == ".." || c == ".") {
            return Err(format!("`{key}` path {k:?} is not a plain relative path"));
        }
        out.insert(k.clone(), s.to_string());
    }
    Ok(out)
}

/// Parse and check one expectation file; an unreadable or incomplete one is an error.
fn load(json: &Path) -> Result<Vector, String> {
    let name = json
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or("bad file name")?
        .to_string();
    let archive = json.with_extension("bin");
    if !archive.is_file() {
        return Err(format!("{} has no archive {name}.bin", json.display()));
    }
    let text = std::fs::read(json).map_err(|e| format!("reading: {e}"))?;
    let v: Value = serde_json::from_slice(&text).map_err(|e| format!("not JSON: {e}"))?;
    let doc = v.as_object().ok_or("not a JSON object")?;
    for k in doc.keys() {
        if !KEYS.contains(&k.as_str()) {
            return Err(format!("unknown key `{k}`"));
        }
    }
    let string = |k: &str| -> Result<String, String> {
        doc.get(k)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or(format!("missing string `{k}`"))
    };
    let passphrase = string("passphrase")?;
    if passphrase.is_empty() || passphrase.contains(['\0', '\r', '\n']) {
        return Err("passphrase must be 1+ bytes without NUL, CR, LF (PASS-1)".into());
    }
    let expect = string("expect")?;
    if exit_code(&expect).is_none() {
        return Err(format!("`expect` {expect:?} is neither ok nor a class"));
    }
    let extract_expect = match doc.get("extract_expect") {
        None => expect.clone(),
        Some(_) => string("extract_expect")?,
    };
    if exit_code(&extract_expect).is_none() {
        return Err(format!(
            "`extract_expect` {extract_expect:?} is neither ok nor a class"
        ));
    }
    if string("comment")?.trim().len() < 10 {
        return Err("`comment` must say what is special and why".into());
    }
    let strings = |k: &str| -> Result<Vec<String>, String> {
        match doc.get(k) {
            None => Ok(Vec::new()),
            Some(v) => v
                .as_array()
                .ok_or(format!("`{k}` is not an array"))?
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or(format!("`{k}` holds a non-string"))
                })
                .collect(),
        }
    };
    let requirements = strings("requirements")?;
    if requirements.is_empty() {
        return Err("`requirements` is missing or empty".into());
    }
    let args = strings("args")?;
    let files = string_map(doc, "files", true)?;
    let symlinks = string_map(doc, "symlinks", false)?;
    let committed = string_map(doc, "committed", true)?;
    let may_commit = string_map(doc, "may_commit", true)?;
    if extract_expect == "ok" {
        if !files.contains_key("qubes.xml") {
            return Err("an `ok` extraction must list `files`, qubes.xml included".into());
        }
        if doc.contains_key("committed") || doc.contains_key("may_commit") {
            return Err("`committed`/`may_commit` belong to failures".into());
        }
    } else {
        if !doc.contains_key("committed") || !doc.contains_key("may_commit") {
            return Err("a failure must list `committed` and `may_commit` (maybe empty)".into());
        }
        if doc.contains_key("files") || doc.contains_key("symlinks") {
            return Err("`files`/`symlinks` belong to successful extractions".into());
        }
    }
    let list = match doc.get("list") {
        None => None,
        Some(l) => {
            let version = l["version"].as_u64().ok_or("`list.version` missing")?;
            let vms = l["vms"]
                .as_array()
                .ok_or("`list.vms` missing")?
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or("`list.vms` holds a non-string")
                })
                .collect::<Result<Vec<_>, _>>()?;
            Some((version, vms))
        }
    };
    let list_notes = match doc.get("list").and_then(|l| l.get("notes")) {
        None => Vec::new(),
        Some(n) => n
            .as_array()
            .ok_or("`list.notes` is not an array")?
            .iter()
            .map(|words| {
                words
                    .as_array()
                    .filter(|w| !w.is_empty())
                    .ok_or("`list.notes` holds something other than a list of words")?
                    .iter()
                    .map(|w| {
                        w.as_str()
                            .map(str::to_string)
                            .ok_or("`list.notes` holds a non-string")
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?,
    };
    Ok(Vector {
        name,
        archive,
        passphrase,
        expect,
        extract_expect,
        requirements,
        args,
        files,
        symlinks,
        committed,
        may_commit,
        list,
        list_notes,
    })
}

/// All vectors; panics naming every unreadable or incomplete expectation file and every
/// archive without one.
fn load_all() -> Vec<Vector> {
    let mut vectors = Vec::new();
    let mut errors = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(vectors_dir())
        .expect("tests/vectors")
        .map(|e| e.expect("entry").path())
        .collect();
    paths.sort();
    for p in &paths {
        match p.extension().and_then(|e| e.to_str()) {
            Some("json") => match load(p) {
                Ok(v) => vectors.push(v),
                Err(e) => errors.push(format!("{}: {e}", p.display())),
            },
            Some("bin") if !p.with_extension("json").is_file() => {
                errors.push(format!("{}: no expectation file", p.display()))
            }
            _ => {}
        }
    }
    assert!(errors.is_empty(), "bad vectors:\n{}", errors.join("\n"));
    assert!(vectors.len() >= 60, "only {} vectors", vectors.len());
    vectors
}

// ---- running one vector ------------------------------------------------------------------

/// Run the verifier; returns (exit code, JSON document).
fn run(bin: &Path, v: &Vector, pass: &Path, cmd: &[&str]) -> Result<(i32, Value), String> {
    let out = Command::new(bin)
        .args(cmd)
        .args(["--json", "--no-progress", "--passphrase-file"])
        .arg(pass)
        .args(&v.args)
        .arg(&v.archive)
        .output()
        .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
    let doc = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{}: no JSON on stdout ({e}); stderr: {}",
            cmd[0],
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    Ok((out.status.code().unwrap_or(-1), doc))
}

/// Check exit code, `ok` and `error.class` against the expected outcome.
fn check_outcome(what: &str, want: &str, code: i32, doc: &Value) -> Result<(), String> {
    let got = if code == 0 {
        "ok".to_string()
    } else {
        doc["error"]["class"].as_str().unwrap_or("?").to_string()
    };
    let msg = doc["error"]["message"].as_str().unwrap_or("");
    if got != want {
        return Err(format!(
            "{what}: want {want}, got {got} (exit {code}) {msg}"
        ));
    }
    if Some(code) != exit_code(want) {
        return Err(format!("{what}: class {want} but exit code {code}"));
    }
    if doc["ok"].as_bool() != Some(want == "ok") {
        return Err(format!("{what}: JSON `ok` is {} for {want}", doc["ok"]));
    }
    Ok(())
}

fn check_vector(bin: &Path, v: &Vector) -> Result<(), String> {
    let tmp = tempfile::tempdir().map_err(|e| e.to_string())?;
    let pass = tmp.path().join("passphrase");
    std::fs::write(&pass, format!("{}\n", v.passphrase)).map_err(|e| e.to_string())?;

    let (code, doc) = run(bin, v, &pass, &["verify"])?;
    check_outcome("verify", &v.expect, code, &doc)?;

    if let Some((version, vms)) = &v.list {
        let (code, doc) = run(bin, v, &pass, &["list"])?;
        check_outcome("list", "ok", code, &doc)?;
        if doc["archive"]["version"].as_u64() != Some(*version) {
            return Err(format!(
                "list: version {} != {version}",
                doc["archive"]["version"]
            ));
        }
        let mut got: Vec<String> = doc["vms"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|vm| vm["included"].as_bool() == Some(true))
                    .filter_map(|vm| vm["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        got.sort();
        if &got != vms {
            return Err(format!("list: included VMs {got:?} != {vms:?}"));
        }
        let notes: Vec<&str> = doc["notes"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        for words in &v.list_notes {
            if !notes
                .iter()
                .any(|n| words.iter().all(|w| n.contains(w.as_str())))
            {
                return Err(format!("list: no note mentions {words:?} in {notes:?}"));
            }
        }
    }

    let dest = tmp.path().join("out");
    let dest_str = dest.to_str().ok_or("temp path is not UTF-8")?;
    let (code, doc) = run(bin, v, &pass, &["extract", "--to", dest_str])?;
    check_outcome("extract", &v.extract_expect, code, &doc)?;
    check_tree(v, &dest)
}

/// Compare what `extract` left under `dest` with the expectation.
fn check_tree(v: &Vector, dest: &Path) -> Result<(), String> {
    let ok = v.extract_expect == "ok";
    let mut seen = BTreeSet::new();
    for p in walk(dest) {
        let rel = p
            .strip_prefix(dest)
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned();
        if rel.contains("qbackup-partial") {
            return Err(format!("extract: temporary left behind: {rel}"));
        }
        let meta = std::fs::symlink_metadata(&p).map_err(|e| e.to_string())?;
        if meta.is_dir() {
            continue;
        }
        if meta.file_type().is_symlink() {
            let target = std::fs::read_link(&p).map_err(|e| e.to_string())?;
            match v.symlinks.get(&rel) {
                Some(t) if Path::new(t) == target => {}
                _ => {
                    return Err(format!(
                        "extract: unexpected symlink {rel} -> {}",
                        target.display()
                    ))
                }
            }
        } else {
            let want = if ok {
                v.files.get(&rel)
            } else {
                v.committed.get(&rel).or_else(|| v.may_commit.get(&rel))
            };
            let Some(want) = want else {
                return Err(format!("extract: unexpected output {rel}"));
            };
            let got = sha256_hex(&std::fs::read(&p).map_err(|e| e.to_string())?);
            if &got != want {
                return Err(format!("extract: {rel} has SHA-256 {got}, want {want}"));
            }
        }
        seen.insert(rel);
    }
    let required: Vec<&String> = if ok {
        v.files.keys().chain(v.symlinks.keys()).collect()
    } else {
        v.committed.keys().collect()
    };
    let missing: Vec<&&String> = required.iter().filter(|k| !seen.contains(**k)).collect();
    if !missing.is_empty() {
        return Err(format!("extract: missing {missing:?}"));
    }
    Ok(())
}

#[test]
fn conformance_vectors() {
    let bin = verifier_bin();
    let vectors = load_all();
    let next = Mutex::new(0usize);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = {
                    let mut n = next.lock().expect("lock");
                    *n += 1;
                    *n - 1
                };
                let Some(v) = vectors.get(i) else { break };
                if let Err(e) = check_vector(&bin, v) {
                    failures
                        .lock()
                        .expect("lock")
                        .push(format!("{}: {e}", v.name));
                }
            });
        }
    });
    let failures = failures.into_inner().expect("lock");
    assert!(
        failures.is_empty(),
        "{} of {} vectors failed:\n{}",
        failures.len(),
        vectors.len(),
        failures.join("\n")
    );
}

// ---- requirement coverage ----------------------------------------------------------------

/// `XXX-N` tokens in `text` (not part of a longer token).
fn ids_in(text: &str) -> BTreeSet<String> {
    let b = text.as_bytes();
    let mut out = BTreeSet::new();
    let mut i = 0;
    while i < b.len() {
        let starts = b[i].is_ascii_uppercase()
            && (i == 0
                || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'-' || b[i - 1] == b'_'));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < b.len() && (b[j].is_ascii_uppercase() || b[j].is_ascii_digit()) {
            j += 1;
        }
        let dash = j;
        if dash < b.len() && b[dash] == b'-' {
            let mut k = dash + 1;
            while k < b.len() && b[k].is_ascii_digit() {
                k += 1;
            }
            let ends = k == b.len() || !(b[k].is_ascii_alphanumeric() || b[k] == b'_');
            if k > dash + 1 && ends {
                out.insert(text[i..k].to_string());
            }
            i = k.max(i + 1);
        } else {
            i = j.max(i + 1);
        }
    }
    out
}

/// The requirement IDs SPEC.md defines: bold `**XXX-N**` and the first cell of LIM table rows.
fn spec_ids() -> BTreeSet<String> {
    let spec = std::fs::read_to_string(repo_root().join("SPEC.md")).expect("SPEC.md");
    let mut ids = BTreeSet::new();
    for part in spec.split("**").skip(1).step_by(2) {
        let found = ids_in(part);
        if found.len() == 1 && found.iter().next().map(String::as_str) == Some(part) {
            ids.insert(part.to_string());
        }
    }
    for line in spec.lines() {
        if let Some(cell) = line.strip_prefix("| ").and_then(|l| l.split(" |").next()) {
            if cell.starts_with("LIM-") && ids_in(cell).len() == 1 && ids_in(cell).contains(cell) {
                ids.insert(cell.to_string());
            }
        }
    }
    ids
}

/// Rust test sources: every `.rs` under a `tests/` directory of a crate, every `tests.rs` or
/// file a `#[cfg(test)] mod x;` names, and in other source files each `#[cfg(test)]` item
/// (a test module's body: to its matching brace, or to the end of the file).
fn cited_ids() -> BTreeSet<String> {
    let root = repo_root();
    let skip = |p: &Path| {
        p.components().any(|c| {
            matches!(
                c.as_os_str().to_str(),
                Some("target" | ".git" | "vectors" | "corpus")
            )
        })
    };
    let sources: Vec<PathBuf> = walk(&root)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .filter(|p| !skip(p.strip_prefix(&root).unwrap_or(p)))
        .collect();
    let mut test_files: BTreeSet<PathBuf> = BTreeSet::new();
    let mut ids = BTreeSet::new();
    for p in &sources {
        let rel = p.strip_prefix(&root).unwrap_or(p);
        let text = std::fs::read_to_string(p).unwrap_or_default();
        if in_crate_tests_dir(&root, rel) || p.ends_with("tests.rs") {
            test_files.insert(p.clone());
            continue;
        }
        for (at, _) in text.match_indices("#[cfg(test)]") {
            let tail = &text[at..];
            ids.extend(ids_in(cfg_test_item(tail)));
            // `#[cfg(test)] mod x;` -> x.rs / x/mod.rs beside this module.
            let Some(m) = tail
                .lines()
                .skip(1)
                .find(|l| !l.trim().is_empty())
                .and_then(|l| l.trim().strip_prefix("mod "))
                .and_then(|l| l.strip_suffix(';'))
            else {
                continue;
            };
            let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
            let dir = p.parent().unwrap_or(&root);
            let base = if matches!(stem, "mod" | "lib" | "main") {
                dir.to_path_buf()
            } else {
                dir.join(stem)
            };
            test_files.insert(base.join(format!("{m}.rs")));
            test_files.insert(base.join(m).join("mod.rs"));
        }
    }
    for p in test_files {
        if let Ok(text) = std::fs::read_to_string(&p) {
            ids.extend(ids_in(&text));
        }
    }
    ids
}

/// The item a `#[cfg(test)]` at the start of `tail` applies to: up to the brace that closes
/// its first `{` (braces counted naively; unbalanced means to the end), or up to the first
/// `;` when that comes first (`mod x;`, `use …;`).
fn cfg_test_item(tail: &str) -> &str {
    let mut depth = 0usize;
    for (i, c) in tail.char_indices() {
        match c {
            ';' if depth == 0 => return &tail[..i],
            '{' => depth += 1,
            '}' if depth == 1 => return &tail[..=i],
            '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    tail
}

/// `rel` lies in a `tests/` directory directly inside a crate (a directory whose
/// Cargo.toml has a `[package]`), e.g. `verifier/tests/interop.rs` but not `tests/src/lib.rs`.
fn in_crate_tests_dir(root: &Path, rel: &Path) -> bool {
    let comps: Vec<_> = rel.components().collect();
    (0..comps.len().saturating_sub(1)).any(|i| {
        comps[i].as_os_str() == "tests" && {
            let crate_dir: PathBuf = comps[..i].iter().collect();
            std::fs::read_to_string(root.join(crate_dir).join("Cargo.toml"))
                .is_ok_and(|t| t.lines().any(|l| l.trim() == "[package]"))
        }
    })
}

#[test]
fn every_requirement_is_covered() {
    let spec = spec_ids();
    assert!(
        spec.len() > 100,
        "parsed only {} IDs from SPEC.md",
        spec.len()
    );
    let vectors = load_all();
    let mut by_vectors = BTreeSet::new();
    let mut unknown = Vec::new();
    for v in &vectors {
        for r in &v.requirements {
            if !spec.contains(r) {
                unknown.push(format!("{}: {r}", v.name));
            }
            by_vectors.insert(r.clone());
        }
    }
    assert!(
        unknown.is_empty(),
        "vectors cite IDs SPEC.md does not define: {unknown:?}"
    );
    let cited = cited_ids();
    let uncovered: Vec<&String> = spec
        .iter()
        .filter(|id| !by_vectors.contains(*id) && !cited.contains(*id))
        .collect();
    assert!(
        uncovered.is_empty(),
        "SPEC.md requirements no vector lists and no test cites: {uncovered:?}"
    );
}

#[test]
fn id_scanner_finds_whole_tokens_only() {
    let ids = ids_in("LIM-12, (TAR-9) xLIM-3 LIM-4a V4-5 ORD- **HDR-3** A-B-7 a_OUT-1");
    let want: BTreeSet<String> = ["LIM-12", "TAR-9", "V4-5", "HDR-3"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(ids, want);
    let root = repo_root();
    assert!(in_crate_tests_dir(
        &root,
        Path::new("verifier/tests/interop.rs")
    ));
    assert!(in_crate_tests_dir(
        &root,
        Path::new("tests/tests/vectors.rs")
    ));
    assert!(!in_crate_tests_dir(&root, Path::new("tests/src/lib.rs")));
    assert!(!in_crate_tests_dir(
        &root,
        Path::new("format/src/header.rs")
    ));
    let src = "#[cfg(test)]\nmod tests { fn a() { /* HDR-1 */ } }\n/// LIM-2\nfn b() {}";
    assert_eq!(ids_in(cfg_test_item(src)).len(), 1);
    assert_eq!(
        cfg_test_item("#[cfg(test)]\nuse x::y; // LIM-3\n"),
        "#[cfg(test)]\nuse x::y"
    );
}
