//! End-to-end tests of `qbackup-pack create`: archives are verified and extracted
//! byte-exact by the verifier library, and restored with the documented emergency
//! procedure using only the real tools (`tar -i`, `scrypt dec`, `openssl`, `gzip -d`, …).

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use qbackup_format::archive::authenticate::Credentials;
use qbackup_format::crypto::scrypt_container::KdfLimit;
use qbackup_verify::driver;
use qbackup_verify::extract::Extractor;
use qbackup_verify::output::VerifyOnly;

const PASS: &str = "test passphrase";
const PACK: &str = env!("CARGO_BIN_EXE_qbackup-pack");

/// Deterministic bytes (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| (self.next() >> 32) as u8).collect()
    }
    /// Compressible-ish bytes: text with random numbers.
    fn text(&mut self, n: usize) -> Vec<u8> {
        let mut v = Vec::with_capacity(n + 64);
        while v.len() < n {
            v.extend_from_slice(format!("line {} audit ok\n", self.next() % 1000).as_bytes());
        }
        v.truncate(n);
        v
    }
}

/// A sparse image of `size` bytes with data `runs` (offset, len).
fn sparse_image(path: &Path, size: u64, runs: &[(u64, usize)], rng: &mut Rng) {
    let f = fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    for &(off, len) in runs {
        use std::os::unix::fs::FileExt;
        f.write_all_at(&rng.bytes(len), off).unwrap();
    }
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Two VMs (a sparse multi-chunk image, a dense image, small files), a VM without
    /// files, and a dom0 home with nested directories, a long name and a symlink.
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture { dir };
        let mut rng = Rng(0x1234_5678_9abc_def1);
        sparse_image(
            &f.path("work-private.img"),
            8 << 20,
            &[(4096, 70_000), (1 << 20, 5000), (5 << 20, 300_000)],
            &mut rng,
        );
        fs::write(f.path("tpl-root.img"), rng.text(200_000)).unwrap();
        fs::write(f.path("tpl-private.img"), rng.bytes(3000)).unwrap();
        fs::write(f.path("firewall.xml"), b"<firewall policy=\"drop\"/>\n").unwrap();
        fs::write(f.path("notes.txt"), b"For Your Eyes Only\n").unwrap();
        let home = f.path("home/user");
        fs::create_dir_all(home.join("Documents/deep")).unwrap();
        fs::create_dir_all(home.join(".config")).unwrap();
        fs::write(home.join("Documents/some-file.txt"), b"some content").unwrap();
        fs::write(
            home.join("Documents/deep").join("n".repeat(120)),
            rng.text(3000),
        )
        .unwrap();
        fs::write(home.join(".bash_history"), b"ls\n").unwrap();
        symlink("Documents/some-file.txt", home.join("link")).unwrap();
        fs::write(f.path("pass"), format!("{PASS}\n")).unwrap();
        let plan = serde_json::json!({
            "vms": [
                {"name": "work", "class": "AppVM", "label": "blue", "qid": 3,
                 "template": "tpl", "netvm": "sys-firewall",
                 "volumes": [{"name": "private", "path": f.path("work-private.img")}],
                 "files": [{"name": "firewall.xml", "path": f.path("firewall.xml")},
                           {"name": "notes.txt", "path": f.path("notes.txt")}]},
                {"name": "tpl", "class": "TemplateVM", "label": "black", "netvm": null, "qid": 4,
                 "volumes": [{"name": "root", "path": f.path("tpl-root.img")},
                             {"name": "private", "path": f.path("tpl-private.img")}]},
                {"name": "nothing", "class": "StandaloneVM", "label": "red", "qid": 5}
            ],
            "dom0_home": home,
        });
        fs::write(f.path("plan.json"), plan.to_string()).unwrap();
        f
    }

    fn pack(&self, out: &str, extra: &[&str]) -> Output {
        Command::new(PACK)
            .args(["create", "--plan"])
            .arg(self.path("plan.json"))
            .arg("--passphrase-file")
            .arg(self.path("pass"))
            .arg("--out")
            .arg(self.path(out))
            .args(if extra.contains(&"--scrypt-log-n") {
                &["--no-progress"][..]
            } else {
                &["--scrypt-log-n", "10", "--no-progress"][..]
            })
            .args(extra)
            .output()
            .unwrap()
    }

    fn pack_ok(&self, out: &str, extra: &[&str]) -> PathBuf {
        let o = self.pack(out, extra);
        assert!(
            o.status.success(),
            "pack failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!self.path(&format!("{out}.partial")).exists());
        self.path(out)
    }
}

fn settings() -> driver::Settings {
    driver::Settings::new(Credentials::new(
        PASS.as_bytes().to_vec(),
        KdfLimit::default(),
    ))
}

/// Verify with the verifier library and extract; compare every file byte for byte.
fn verify_and_compare(f: &Fixture, archive: &Path) {
    let r = driver::run(
        fs::File::open(archive).unwrap(),
        settings(),
        &mut VerifyOnly,
    );
    assert!(r.ok(), "verify: {:?}", r.findings);
    let to = f.path(&format!(
        "x-{}",
        archive.file_name().unwrap().to_string_lossy()
    ));
    let mut ex = Extractor::open(&to).unwrap();
    let r = driver::run(fs::File::open(archive).unwrap(), settings(), &mut ex);
    assert!(r.ok(), "extract: {:?}", r.findings);
    let same = |a: &str, b: PathBuf| {
        assert_eq!(
            fs::read(f.path(a)).unwrap(),
            fs::read(&b).unwrap(),
            "{a} vs {}",
            b.display()
        );
    };
    same("work-private.img", to.join("work/private.img"));
    same("firewall.xml", to.join("work/firewall.xml"));
    same("notes.txt", to.join("work/notes.txt"));
    same("tpl-root.img", to.join("tpl/root.img"));
    same("tpl-private.img", to.join("tpl/private.img"));
    assert_eq!(fs::metadata(to.join("nothing/empty")).unwrap().len(), 0);
    let home = to.join("dom0-home/user");
    same(
        "home/user/Documents/some-file.txt",
        home.join("Documents/some-file.txt"),
    );
    let long = format!("home/user/Documents/deep/{}", "n".repeat(120));
    same(&long, home.join("Documents/deep").join("n".repeat(120)));
    assert_eq!(
        fs::read_link(home.join("link")).unwrap(),
        Path::new("Documents/some-file.txt")
    );
}

/// Outer member names and sizes, in order (GNU tar's listing).
fn members(archive: &Path) -> Vec<(String, u64)> {
    let o = Command::new("tar")
        .args(["-i", "-tvf"])
        .arg(archive)
        .output()
        .unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            (parts[5].to_string(), parts[2].parse().unwrap())
        })
        .collect()
}

fn sh(script: &str, dir: &Path) {
    let o = Command::new("bash")
        .args(["-c", &format!("set -euo pipefail\n{script}")])
        .current_dir(dir)
        .env("PASS", PASS)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "script failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        String::from_utf8_lossy(&o.stdout)
    );
}

/// The qubes-doc v4 emergency procedure, per file, with `$DEC` as the decompressor.
const EMERGENCY_V4: &str = r#"
tar -i -xf "$ARCHIVE"
echo "backup-header!$PASS" | scrypt dec -P backup-header.hmac backup-header.verified
diff -q backup-header backup-header.verified
grep -q '^version=4$' backup-header
BID=$(sed -n 's/^backup-id=//p' backup-header)
echo "$BID!qubes.xml.000!$PASS" | scrypt dec -P qubes.xml.000.enc | $DEC | tar -x
grep -q 'backup-path">vm3/<' qubes.xml
for f in vm3/private.img vm3/firewall.xml vm3/notes.txt vm4/root.img vm4/private.img vm5/empty dom0-home/user; do
  find "$(dirname $f)" -name "$(basename $f).*.enc" | sort -V | while read f_enc; do
    echo "$BID!${f_enc%.enc}!$PASS" | scrypt dec -P "$f_enc" || exit 1
  done | $DEC | tar -x
done
"#;

fn emergency_v4(f: &Fixture, archive: &Path, dec: &str) {
    let work = f.path(&format!(
        "em-{}",
        archive.file_name().unwrap().to_string_lossy()
    ));
    fs::create_dir(&work).unwrap();
    sh(
        &format!("ARCHIVE={} DEC={dec:?}\n{EMERGENCY_V4}", archive.display()),
        &work,
    );
    compare_restored(f, &work);
}

fn compare_restored(f: &Fixture, work: &Path) {
    let same = |a: &str, b: &str| {
        assert_eq!(
            fs::read(f.path(a)).unwrap(),
            fs::read(work.join(b)).unwrap(),
            "{a}"
        );
    };
    same("work-private.img", "vm3/private.img");
    same("firewall.xml", "vm3/firewall.xml");
    same("notes.txt", "vm3/notes.txt");
    same("tpl-root.img", "vm4/root.img");
    same("tpl-private.img", "vm4/private.img");
    same(
        "home/user/Documents/some-file.txt",
        "dom0-home/user/Documents/some-file.txt",
    );
    assert_eq!(fs::metadata(work.join("vm5/empty")).unwrap().len(), 0);
    // Restored sparse: GNU tar recreated the holes.
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(work.join("vm3/private.img")).unwrap();
    assert!(
        m.blocks() * 512 < m.len() / 2,
        "restored image is not sparse"
    );
}

/// WRT-1: every filter's archive is verified by the verifier and restored by the upstream
/// emergency procedure (the real tools).
#[test]
fn v4_every_filter_verifies_and_restores_with_the_tools() {
    let f = Fixture::new();
    for (filter, dec) in [
        ("gzip", "gzip -d"),
        ("bzip2", "bzip2 -d"),
        ("xz", "xz -d"),
        ("zstd", "zstd -d"),
        ("none", "cat"),
    ] {
        let out = format!("v4-{filter}.bin");
        let a = f.pack_ok(&out, &["--compression", filter, "--chunk-size", "65536"]);
        verify_and_compare(&f, &a);
        emergency_v4(&f, &a, dec);
        let names: Vec<String> = members(&a).into_iter().map(|m| m.0).collect();
        assert_eq!(
            names[..3],
            ["backup-header", "backup-header.hmac", "qubes.xml.000.enc"]
        );
        assert!(
            names.contains(&"vm3/private.img.001.enc".to_string()),
            "{filter}: multi-chunk"
        );
        assert_eq!(names.last().unwrap(), "dom0-home/user.000.enc");
    }
}

/// A format 3 plan as R3 had them: an AppVM (R3 firewall, notes.txt that v3 leaves
/// out), a TemplateVM, a StandaloneVM, dom0 home.
fn v3_plan(f: &Fixture) -> PathBuf {
    fs::write(
        f.path("firewall-r3.xml"),
        b"<QubesFirewallRules dns=\"allow\" icmp=\"allow\" policy=\"deny\">\n\
          <rule address=\"192.168.0.0\" netmask=\"24\" proto=\"tcp\"/>\n</QubesFirewallRules>\n",
    )
    .unwrap();
    let plan = serde_json::json!({
        "vms": [
            {"name": "work", "class": "AppVM", "label": "blue", "qid": 3,
             "template": "tpl", "netvm": "sys-firewall",
             "volumes": [{"name": "private", "path": f.path("work-private.img")}],
             "files": [{"name": "firewall.xml", "path": f.path("firewall-r3.xml")},
                       {"name": "notes.txt", "path": f.path("notes.txt")}]},
            {"name": "tpl", "class": "TemplateVM", "label": "black", "netvm": null, "qid": 4,
             "volumes": [{"name": "root", "path": f.path("tpl-root.img")},
                         {"name": "private", "path": f.path("tpl-private.img")}]},
            {"name": "sa", "class": "StandaloneVM", "label": "red", "qid": 5,
             "volumes": [{"name": "private", "path": f.path("tpl-private.img")},
                         {"name": "root", "path": f.path("work-private.img")}]}
        ],
        "dom0_home": f.path("home/user"),
    });
    let p = f.path("plan3.json");
    fs::write(&p, plan.to_string()).unwrap();
    p
}

/// WRT-6: `--format 3` writes what R3.2 wrote — a core2 qubes.xml with `backup_path`
/// `vm<qid>` (no slash), a template as its whole directory `vm<qid>/.` (chunks
/// `vm4/..NNN`) after the other VMs, no notes.txt — and it verifies, extracts and
/// restores with the documented openssl procedure.
#[test]
fn v3_is_shaped_like_r3_and_restores_with_openssl() {
    let f = Fixture::new();
    let plan = v3_plan(&f);
    let out = f.path("v3.bin");
    let o = Command::new(PACK)
        .args([
            "create",
            "--format",
            "3",
            "--chunk-size",
            "65536",
            "--no-progress",
        ])
        .arg("--plan")
        .arg(&plan)
        .arg("--passphrase-file")
        .arg(f.path("pass"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "pack failed: {stderr}");
    assert!(stderr.contains("VM work: notes.txt left out"), "{stderr}");

    // Verifier: verify, extract, compare (the template's files come out of vm4/.).
    let r = driver::run(fs::File::open(&out).unwrap(), settings(), &mut VerifyOnly);
    assert!(r.ok(), "verify: {:?}", r.findings);
    let to = f.path("x-v3");
    let mut ex = Extractor::open(&to).unwrap();
    let r = driver::run(fs::File::open(&out).unwrap(), settings(), &mut ex);
    assert!(r.ok(), "extract: {:?}", r.findings);
    let same = |a: &str, b: &Path| {
        assert_eq!(fs::read(f.path(a)).unwrap(), fs::read(b).unwrap(), "{a}");
    };
    same("work-private.img", &to.join("work/private.img"));
    same("firewall-r3.xml", &to.join("work/firewall.xml"));
    same("tpl-root.img", &to.join("tpl/root.img"));
    same("tpl-private.img", &to.join("tpl/private.img"));
    same("tpl-private.img", &to.join("sa/private.img"));
    same("work-private.img", &to.join("sa/root.img"));
    assert!(!to.join("work/notes.txt").exists());
    same(
        "home/user/Documents/some-file.txt",
        &to.join("dom0-home/user/Documents/some-file.txt"),
    );

    // Emergency procedure (qubes-doc v3): check HMACs, concatenate, decrypt, untar.
    let work = f.path("em-v3");
    fs::create_dir(&work).unwrap();
    sh(
        &format!(
            r#"ARCHIVE={}
tar -i -xf "$ARCHIVE"
check() {{ [ "$(openssl dgst -sha512 -hmac "$PASS" < "$1" | cut -d' ' -f2)" = "$(cut -d' ' -f2 < "$1.hmac")" ]; }}
check backup-header
grep -q '^version=3$' backup-header
for f in qubes.xml vm3/private.img vm3/firewall.xml vm4/. vm5/private.img vm5/root.img dom0-home/user; do
  for c in $(find "$(dirname $f)" -maxdepth 1 -name "$(basename $f).*[0-9]" | sort -V); do check "$c"; done
  find "$(dirname $f)" -maxdepth 1 -name "$(basename $f).*[0-9]" | sort -V | xargs cat \
    | openssl enc -d -md MD5 -pass pass:"$PASS" -aes-256-cbc 2>/dev/null | gzip -d | tar -x
done
"#,
            out.display()
        ),
        &work,
    );
    let xml = fs::read_to_string(work.join("qubes.xml")).unwrap();
    for needle in [
        "<QubesVmCollection ",
        "<QubesAppVm qid=\"3\" name=\"work\" label=\"blue\" template_qid=\"4\"",
        "backup_path=\"vm3\"",
        "<QubesTemplateVm qid=\"4\" name=\"tpl\"",
        "<QubesAppVm qid=\"5\" name=\"sa\" label=\"red\" template_qid=\"none\"",
        "backup_path=\"dom0-home/user\"",
        "name=\"sys-firewall\"",
    ] {
        assert!(xml.contains(needle), "{needle} missing in\n{xml}");
    }
    let restored = |a: &str, b: &str| {
        assert_eq!(
            fs::read(f.path(a)).unwrap(),
            fs::read(work.join(b)).unwrap(),
            "{a}"
        );
    };
    restored("work-private.img", "vm3/private.img");
    restored("tpl-root.img", "vm4/root.img");
    restored("tpl-private.img", "vm4/private.img");
    restored("work-private.img", "vm5/root.img");

    let names: Vec<String> = members(&out).into_iter().map(|m| m.0).collect();
    let pos = |n: &str| {
        names
            .iter()
            .position(|x| x == n)
            .unwrap_or_else(|| panic!("{n}: {names:?}"))
    };
    assert_eq!(
        names[..4],
        [
            "backup-header",
            "backup-header.hmac",
            "qubes.xml.000",
            "qubes.xml.000.hmac"
        ]
    );
    // R3.2 order: other VMs by name (sa, work), then templates, then dom0 home.
    assert!(pos("vm5/private.img.000") < pos("vm3/private.img.000"));
    assert!(pos("vm3/private.img.001.hmac") < pos("vm4/..000"));
    assert_eq!(pos("vm4/..000") + 1, pos("vm4/..000.hmac"));
    assert!(pos("vm4/..000.hmac") < pos("dom0-home/user.000"));
    assert!(!names.iter().any(|n| n.contains("notes.txt")));
}

/// WRT-6: what R3 cannot hold is refused before anything is written.
#[test]
fn v3_refuses_what_r3_cannot_hold() {
    let f = Fixture::new();
    // The standard plan: StandaloneVM "nothing" has no private.img.
    let o = f.pack("v3-bad.bin", &["--format", "3"]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("VM nothing: format 3 needs its private.img"),
        "{e}"
    );
    assert!(!f.path("v3-bad.bin").exists() && !f.path("v3-bad.bin.partial").exists());
    let good = fs::read_to_string(v3_plan(&f)).unwrap();
    for (from, to, message) in [
        ("firewall-r3.xml", "firewall.xml", "is not an R3 firewall"),
        (
            r#""class":"StandaloneVM""#,
            r#""class":"DispVM""#,
            "format 3 cannot hold a DispVM",
        ),
    ] {
        assert!(good.contains(from));
        fs::write(f.path("plan3.json"), good.replace(from, to)).unwrap();
        let o = Command::new(PACK)
            .args(["create", "--format", "3", "--no-progress", "--plan"])
            .arg(f.path("plan3.json"))
            .arg("--passphrase-file")
            .arg(f.path("pass"))
            .arg("--out")
            .arg(f.path("v3-bad.bin"))
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(message), "{e}");
        assert!(!f.path("v3-bad.bin").exists());
    }
}

#[test]
fn exact_multiple_gets_an_empty_final_chunk() {
    let dir = tempfile::tempdir().unwrap();
    // Uncompressed inner tar of a 2048-byte dense file: 512 + 2048 + 1024 = 7 · 512.
    fs::write(dir.path().join("img"), vec![7u8; 2048]).unwrap();
    fs::write(dir.path().join("pass"), PASS).unwrap();
    let plan = serde_json::json!({"vms": [{"name": "a", "class": "AppVM", "label": "red",
        "volumes": [{"name": "private", "path": dir.path().join("img")}]}]});
    fs::write(dir.path().join("plan.json"), plan.to_string()).unwrap();
    let out = dir.path().join("a.bin");
    let o = Command::new(PACK)
        .args([
            "create",
            "--compression",
            "none",
            "--chunk-size",
            "512",
            "--scrypt-log-n",
            "10",
        ])
        .arg("--plan")
        .arg(dir.path().join("plan.json"))
        .arg("--passphrase-file")
        .arg(dir.path().join("pass"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let m = members(&out);
    let chunks: Vec<&(String, u64)> = m.iter().filter(|x| x.0.starts_with("vm1/")).collect();
    assert_eq!(chunks.len(), 8);
    assert!(chunks[..7].iter().all(|c| c.1 == 512 + 128));
    assert_eq!(chunks[7], &("vm1/private.img.007.enc".to_string(), 128));
    let r = driver::run(fs::File::open(&out).unwrap(), settings(), &mut VerifyOnly);
    assert!(r.ok(), "{:?}", r.findings);
}

#[test]
fn stdout_stream_and_verify_flag() {
    let f = Fixture::new();
    let verifier = verifier_binary();
    // --verify with the real verifier: succeeds.
    f.pack_ok(
        "v.bin",
        &["--verify", "--verifier", verifier.to_str().unwrap()],
    );
    // A verifier that rejects (exits 1 without reading): no output remains.
    let o = f.pack("bad.bin", &["--verify", "--verifier", "/bin/false"]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!f.path("bad.bin").exists() && !f.path("bad.bin.partial").exists());
    // `-`: the archive goes to stdout.
    let o = Command::new(PACK)
        .args(["create", "--plan"])
        .arg(f.path("plan.json"))
        .arg("--passphrase-file")
        .arg(f.path("pass"))
        .args(["--out", "-", "--scrypt-log-n", "10", "--progress-json"])
        .output()
        .unwrap();
    assert!(o.status.success());
    let r = driver::run(&o.stdout[..], settings(), &mut VerifyOnly);
    assert!(r.ok(), "{:?}", r.findings);
    let stderr = String::from_utf8(o.stderr).unwrap();
    let events: Vec<serde_json::Value> = stderr
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let (done, progress) = events.split_last().expect("progress lines");
    assert_eq!(done["event"], "done");
    let last = progress.last().expect("a progress line");
    assert_eq!(last["event"], "progress");
    assert_eq!(last["done_bytes"], last["total_bytes"]);
    assert_eq!(last["written_bytes"], done["written_bytes"]);
    assert_eq!(done["written_bytes"], o.stdout.len());
}

/// target/<profile>/qbackup-verify, built if missing.
fn verifier_binary() -> PathBuf {
    qbackup_tests::binaries::verifier_beside(PACK)
}

#[test]
fn cancel_removes_the_partial_file() {
    let f = Fixture::new();
    let out = f.path("c.bin");
    // A slow KDF (logN 17, one thread) keeps the run busy for seconds.
    let child = Command::new(PACK)
        .args(["create", "--plan"])
        .arg(f.path("plan.json"))
        .arg("--passphrase-file")
        .arg(f.path("pass"))
        .arg("--out")
        .arg(&out)
        .args([
            "--scrypt-log-n",
            "17",
            "--jobs",
            "1",
            "--no-progress",
            "--chunk-size",
            "4096",
        ])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let partial = f.path("c.bin.partial");
    for _ in 0..200 {
        if partial.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(partial.exists());
    std::thread::sleep(std::time::Duration::from_millis(300));
    qbackup_tests::signals::kill(&child, libc::SIGINT);
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130));
    assert!(String::from_utf8_lossy(&o.stderr).contains("removed"));
    assert!(!partial.exists() && !out.exists());
}

#[test]
fn disk_full_leaves_nothing() {
    let f = Fixture::new();
    let out = f.path("full.bin");
    let o = Command::new("prlimit")
        .arg("--fsize=100000")
        .arg(PACK)
        .args(["create", "--plan"])
        .arg(f.path("plan.json"))
        .arg("--passphrase-file")
        .arg(f.path("pass"))
        .arg("--out")
        .arg(&out)
        .args([
            "--scrypt-log-n",
            "10",
            "--no-progress",
            "--compression",
            "none",
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(20),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!out.exists() && !f.path("full.bin.partial").exists());
}

#[test]
fn plan_errors_are_clear() {
    let f = Fixture::new();
    let cases = [
        (
            serde_json::json!({"vms": [{"name": "1bad", "class": "AppVM", "label": "red"}]}),
            "invalid VM name",
        ),
        (
            serde_json::json!({"vms": [{"name": "a", "class": "AppVM", "label": "red"},
                                     {"name": "a", "class": "AppVM", "label": "red"}]}),
            "duplicate VM name",
        ),
        (
            serde_json::json!({"vms": [{"name": "a", "class": "AppVM", "label": "red",
            "volumes": [{"name": "private", "path": "/nonexistent/x.img"}]}]}),
            "/nonexistent/x.img",
        ),
        (
            serde_json::json!({"vms": [{"name": "a", "class": "AppVM", "label": "red",
            "files": [{"name": "evil.sh", "path": "/etc/hostname"}]}]}),
            "is not one of",
        ),
        (
            serde_json::json!({"vms": [{"name": "a", "class": "AppVM", "label": "red", "colour": 1}]}),
            "unknown field",
        ),
        (serde_json::json!({"vms": []}), "nothing to back up"),
    ];
    for (plan, msg) in cases {
        fs::write(f.path("plan.json"), plan.to_string()).unwrap();
        let o = f.pack("never.bin", &[]);
        assert_eq!(o.status.code(), Some(2));
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains(msg), "{msg:?} not in {e:?}");
        assert!(!f.path("never.bin").exists() && !f.path("never.bin.partial").exists());
    }
}

#[test]
fn qubes_dir_mode() {
    use qbackup_format::qubes_xml::{write_r4, Vm};
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let vm = |qid: u32, name: &str, class: &str| Vm {
        qid: Some(qid),
        name: name.into(),
        class: class.into(),
        label: Some("green".into()),
        ..Vm::dom0()
    };
    let vms = vec![
        vm(0, "dom0", "AdminVM"),
        vm(7, "tpl", "TemplateVM"),
        Vm {
            template: Some("tpl".into()),
            ..vm(9, "work", "AppVM")
        },
        vm(11, "absent", "AppVM"),
    ];
    let mut xml = Vec::new();
    write_r4(&vms, &[], &mut xml).unwrap();
    fs::write(d.join("qubes.xml"), xml).unwrap();
    fs::create_dir_all(d.join("appvms/work")).unwrap();
    fs::create_dir_all(d.join("vm-templates/tpl")).unwrap();
    let mut rng = Rng(99);
    sparse_image(
        &d.join("appvms/work/private.img"),
        3 << 20,
        &[(1 << 20, 4096)],
        &mut rng,
    );
    fs::write(d.join("appvms/work/firewall.xml"), b"<firewall/>").unwrap();
    fs::write(d.join("vm-templates/tpl/root.img"), rng.bytes(10_000)).unwrap();
    fs::write(d.join("vm-templates/tpl/private.img"), rng.bytes(1000)).unwrap();
    let run = |out: &str, vms: &[&str]| {
        Command::new(PACK)
            .args(["create", "--qubes-dir"])
            .arg(d)
            .arg("--out")
            .arg(d.join(out))
            .args(["--scrypt-log-n", "10", "--no-progress"])
            .args(vms)
            .env("QBACKUP_PASSPHRASE", PASS)
            .output()
            .unwrap()
    };
    let o = run("all.bin", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names: Vec<String> = members(&d.join("all.bin"))
        .into_iter()
        .map(|m| m.0)
        .collect();
    assert_eq!(
        names[3..],
        [
            "vm7/private.img.000.enc",
            "vm7/root.img.000.enc",
            "vm9/private.img.000.enc",
            "vm9/firewall.xml.000.enc"
        ]
    );
    let to = d.join("x");
    let r = driver::run(
        fs::File::open(d.join("all.bin")).unwrap(),
        settings(),
        &mut Extractor::open(&to).unwrap(),
    );
    assert!(r.ok(), "{:?}", r.findings);
    assert_eq!(
        fs::read(to.join("work/private.img")).unwrap(),
        fs::read(d.join("appvms/work/private.img")).unwrap()
    );
    // Selecting one VM; an unknown VM and a VM without its image are errors.
    let o = run("one.bin", &["work"]);
    assert!(o.status.success());
    assert_eq!(members(&d.join("one.bin")).len(), 5);
    assert_eq!(run("e.bin", &["nosuch"]).status.code(), Some(2));
    assert_eq!(run("e.bin", &["absent"]).status.code(), Some(2));
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]
        /// Random file sets with random holes and sizes round-trip through the packer and
        /// the verifier's extractor.
        #[test]
        fn random_files_round_trip(
            files in proptest::collection::vec(
                (0u64..300_000, proptest::collection::vec((0u64..300_000, 1usize..20_000), 0..6)),
                1..4),
            chunk in 2000usize..50_000,
            seed in any::<u64>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut rng = Rng(seed | 1);
            let mut vols = Vec::new();
            for (i, (size, runs)) in files.iter().enumerate() {
                let p = dir.path().join(format!("v{i}.img"));
                let runs: Vec<(u64, usize)> = runs
                    .iter()
                    .map(|&(o, l)| (o.min(*size), l.min((*size - o.min(*size)) as usize)))
                    .collect();
                sparse_image(&p, *size, &runs, &mut rng);
                vols.push(serde_json::json!({"name": format!("v{i}"), "path": p}));
            }
            let plan = serde_json::json!({"vms": [{"name": "p", "class": "AppVM", "label": "red", "volumes": vols}]});
            fs::write(dir.path().join("plan.json"), plan.to_string()).unwrap();
            let out = dir.path().join("a.bin");
            let o = Command::new(PACK)
                .args(["create", "--scrypt-log-n", "10", "--no-progress", "--chunk-size", &chunk.to_string()])
                .arg("--plan").arg(dir.path().join("plan.json"))
                .arg("--out").arg(&out)
                .env("QBACKUP_PASSPHRASE", PASS)
                .output()
                .unwrap();
            prop_assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            let to = dir.path().join("x");
            let r = driver::run(fs::File::open(&out).unwrap(), settings(), &mut Extractor::open(&to).unwrap());
            prop_assert!(r.ok(), "{:?}", r.findings);
            for i in 0..files.len() {
                prop_assert_eq!(
                    fs::read(dir.path().join(format!("v{i}.img"))).unwrap(),
                    fs::read(to.join(format!("p/v{i}.img"))).unwrap()
                );
            }
        }
    }
}

/// Regression: the KDF pool was dropped when the producer finished, cancelling the KDFs
/// the writer was still waiting for ("KDF worker stopped").
#[test]
fn kdfs_outlive_the_producer() {
    let f = Fixture::new();
    let a = f.pack_ok("slow.bin", &["--scrypt-log-n", "15", "--jobs", "1"]);
    let r = driver::run(fs::File::open(&a).unwrap(), settings(), &mut VerifyOnly);
    assert!(r.ok(), "{:?}", r.findings);
}

/// Files larger than one compression block are compressed in parallel as concatenated
/// members/streams/frames; the tools and the verifier read them as one stream.
#[test]
fn multi_block_compression_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(7);
    let mut data = rng.text(8 << 20);
    data.extend(rng.bytes(1 << 20));
    let img = dir.path().join("img");
    fs::write(&img, &data).unwrap();
    let plan = serde_json::json!({"vms": [{"name": "big", "class": "AppVM", "label": "red", "qid": 2,
        "volumes": [{"name": "private", "path": img}]}]});
    fs::write(dir.path().join("plan.json"), plan.to_string()).unwrap();
    for (filter, dec) in [
        ("gzip", "gzip -d"),
        ("xz", "xz -d"),
        ("zstd", "zstd -d"),
        ("bzip2", "bzip2 -d"),
    ] {
        let out = dir.path().join(format!("{filter}.bin"));
        let o = Command::new(PACK)
            .args([
                "create",
                "--scrypt-log-n",
                "10",
                "--no-progress",
                "--compression",
                filter,
            ])
            .arg("--plan")
            .arg(dir.path().join("plan.json"))
            .arg("--out")
            .arg(&out)
            .env("QBACKUP_PASSPHRASE", PASS)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let to = dir.path().join(format!("x-{filter}"));
        let r = driver::run(
            fs::File::open(&out).unwrap(),
            settings(),
            &mut Extractor::open(&to).unwrap(),
        );
        assert!(r.ok(), "{filter}: {:?}", r.findings);
        assert!(
            fs::read(to.join("big/private.img")).unwrap() == data,
            "{filter}"
        );
        let work = dir.path().join(format!("em-{filter}"));
        fs::create_dir(&work).unwrap();
        sh(
            &format!(
                r#"tar -i -xf {}
BID=$(sed -n 's/^backup-id=//p' backup-header)
echo "$BID!vm2/private.img.000!$PASS" | scrypt dec -P vm2/private.img.000.enc | {dec} | tar -x"#,
                out.display()
            ),
            &work,
        );
        assert!(
            fs::read(work.join("vm2/private.img")).unwrap() == data,
            "{filter} (tools)"
        );
    }
}

/// Thread CPU time (user + system) in seconds.
fn thread_cpu() -> f64 {
    // SAFETY: getrusage only fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

/// Hand-run measurement (CMP-1 probe): CPU of gzip level 6 as one member per block
/// (before) and of `gzip_block` (after) on 64 MiB of the benchmark image's random part
/// and 64 MiB of its text part. Image: `$QBACKUP_BENCH_IMAGE`, default
/// `bench/out/pack-src-1024m/private.img` (made by `bench/pack-bench.py`).
/// `cargo test --release -p qbackup-pack --test pack gzip_cpu -- --ignored --nocapture`
#[test]
#[ignore]
fn gzip_cpu_on_the_bench_image() {
    use std::io::{Read, Seek, SeekFrom, Write};
    let img = std::env::var_os("QBACKUP_BENCH_IMAGE").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/out/pack-src-1024m/private.img"),
        PathBuf::from,
    );
    let mut f = fs::File::open(&img).unwrap();
    // make_image: random data from 16 MiB, text after 16 + 614 + 64 MiB.
    for (kind, offset) in [("random", 100u64), ("text", 800)] {
        let mut data = vec![0u8; 64 << 20];
        f.seek(SeekFrom::Start(offset << 20)).unwrap();
        f.read_exact(&mut data).unwrap();
        let t = thread_cpu();
        let mut before = 0;
        for block in data.chunks(qbackup_pack::compress::BLOCK) {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(block).unwrap();
            before += e.finish().unwrap().len();
        }
        let cpu_before = thread_cpu() - t;
        let t = thread_cpu();
        let mut after = 0;
        for block in data.chunks(qbackup_pack::compress::BLOCK) {
            after += qbackup_pack::compress::gzip_block(block, 6).unwrap().len();
        }
        let cpu_after = thread_cpu() - t;
        println!(
            "{kind}: level 6 {cpu_before:.2} s CPU, ratio {:.4}; probe+gzip_block {cpu_after:.2} s CPU, ratio {:.4}",
            before as f64 / data.len() as f64,
            after as f64 / data.len() as f64
        );
        assert!(
            after <= before + before / 1000,
            "{kind}: {after} vs {before}"
        );
        if kind == "random" {
            assert!(cpu_after * 4.0 < cpu_before, "{cpu_after} vs {cpu_before}");
        }
    }
}
