//! Interoperability of `qbackup_format::crypto` with the real tools: `openssl dgst`,
//! `openssl enc` (SPEC.md MAC-4..6, V3-1..V3-6) and Tarsnap `scrypt` 1.3.1 (V4-1..V4-5).
//! Tests may run processes and touch files; the library may not (GEN-1).
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use qbackup_format::crypto::hmac_file::{hmac, parse_hmac_file, verify_mac, Digest};
use qbackup_format::crypto::openssl_enc::{encrypt, CbcDecryptReader, CbcDecryptor, Cipher};
use qbackup_format::crypto::scrypt_container::{
    check_cost, derive_keys, open, open_in_place, parse_header, seal, KdfLimit, Params,
};
use qbackup_format::ErrorClass;

/// Run `cmd` with `stdin`, return stdout; panic with stderr on failure.
fn run(cmd: &mut Command, stdin: &[u8]) -> Vec<u8> {
    let out = run_status(cmd, stdin);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn run_status(cmd: &mut Command, stdin: &[u8]) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut sin = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = sin.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn pseudo_random(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

struct TempFile(PathBuf);
impl TempFile {
    fn new(tag: &str) -> TempFile {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        TempFile(
            std::env::temp_dir().join(format!("qbackup-crypto-{}-{n}-{tag}", std::process::id())),
        )
    }
}
impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------- openssl dgst (MAC-4..6)

#[test]
fn openssl_dgst_hmac_lines_parse_and_verify() {
    let data = pseudo_random(100_000, 1);
    for (opt, d) in [
        ("-sha512", Digest::Sha512),
        ("-SHA512", Digest::Sha512),
        ("-sha256", Digest::Sha256),
        ("-sha1", Digest::Sha1),
        ("-sha384", Digest::Sha384),
        ("-sha224", Digest::Sha224),
        ("-md5", Digest::Md5),
        ("-sha512-256", Digest::Sha512_256),
        ("-sha512-224", Digest::Sha512_224),
    ] {
        let line = run(
            Command::new("openssl").args(["dgst", opt, "-hmac", "a passphrase"]),
            &data,
        );
        let mac = parse_hmac_file(&line).unwrap_or_else(|e| panic!("{opt}: {e}: {line:?}"));
        assert!(verify_mac(&mac, &hmac(d, b"a passphrase", &data)), "{opt}");
        assert!(!verify_mac(&mac, &hmac(d, b"a passphrasf", &data)), "{opt}");
        let mut other = data.clone();
        other[500] ^= 1;
        assert!(
            !verify_mac(&mac, &hmac(d, b"a passphrase", &other)),
            "{opt}"
        );
    }
}

#[test]
fn openssl_dgst_file_name_label_parses() {
    let f = TempFile::new("dgst");
    std::fs::write(&f.0, b"chunk bytes").unwrap();
    let line = run(
        Command::new("openssl")
            .args(["dgst", "-sha512", "-hmac", "pw"])
            .arg(&f.0),
        b"",
    );
    assert!(line.starts_with(b"HMAC-SHA2-512("), "{line:?}");
    let mac = parse_hmac_file(&line).unwrap();
    assert!(verify_mac(
        &mac,
        &hmac(Digest::Sha512, b"pw", b"chunk bytes")
    ));
}

// ---------------------------------------------------------------- openssl enc (V3-*)

fn openssl_encrypt(cipher: &str, pass: &str, pt: &[u8]) -> Vec<u8> {
    run(
        Command::new("openssl").args([
            "enc",
            "-e",
            &format!("-{cipher}"),
            "-md",
            "MD5",
            "-pass",
            &format!("pass:{pass}"),
        ]),
        pt,
    )
}

fn decrypt_split(cipher: Cipher, pass: &[u8], ct: &[u8], chunk: usize) -> Vec<u8> {
    let hdr: [u8; 16] = ct[..16].try_into().unwrap();
    let mut d = CbcDecryptor::new(cipher, pass, &hdr).unwrap();
    let mut out = Vec::new();
    for c in ct[16..].chunks(chunk.max(1)) {
        d.update(c, &mut out);
    }
    d.finish(&mut out).unwrap();
    out
}

#[test]
fn openssl_enc_output_decrypts() {
    for (name, cipher) in [
        ("aes-256-cbc", Cipher::Aes256Cbc),
        ("aes-192-cbc", Cipher::Aes192Cbc),
        ("aes-128-cbc", Cipher::Aes128Cbc),
    ] {
        for len in [0usize, 1, 15, 16, 17, 4096, 1 << 20] {
            let pt = pseudo_random(len, len as u32);
            let ct = openssl_encrypt(name, "s3cret pass", &pt);
            assert_eq!(&ct[..8], b"Salted__");
            for chunk in [1, 7, 16, 17, 4093, 65536, usize::MAX] {
                if len > 4096 && chunk < 16 {
                    continue; // byte-at-a-time over 1 MiB is slow and adds nothing
                }
                assert_eq!(
                    decrypt_split(cipher, b"s3cret pass", &ct, chunk),
                    pt,
                    "{name} len {len} chunk {chunk}"
                );
            }
            let mut got = Vec::new();
            std::io::Read::read_to_end(
                &mut CbcDecryptReader::new(&ct[..], cipher, b"s3cret pass"),
                &mut got,
            )
            .unwrap();
            assert_eq!(got, pt);
        }
    }
}

#[test]
fn our_encrypt_matches_openssl_byte_for_byte_and_decrypts_there() {
    for len in [0usize, 15, 16, 17, 100_000] {
        let pt = pseudo_random(len, 7);
        let salt = [0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04];
        let ours = encrypt(Cipher::Aes256Cbc, b"pw", salt, &pt);
        let theirs = run(
            Command::new("openssl").args([
                "enc",
                "-e",
                "-aes-256-cbc",
                "-md",
                "MD5",
                "-pass",
                "pass:pw",
                "-S",
                "deadbeef01020304",
            ]),
            &pt,
        );
        // OpenSSL 3 leaves out the `Salted__` header when the salt is given with `-S`
        // (1.x wrote it); the ciphertext after it is the same.
        assert_eq!(&ours[..8], b"Salted__");
        assert_eq!(&ours[8..16], &salt);
        let theirs_body = theirs.strip_prefix(&ours[..16]).unwrap_or(&theirs);
        assert_eq!(&ours[16..], theirs_body, "len {len}");
        let back = run(
            Command::new("openssl").args([
                "enc",
                "-d",
                "-aes-256-cbc",
                "-md",
                "MD5",
                "-pass",
                "pass:pw",
            ]),
            &ours,
        );
        assert_eq!(back, pt);
    }
}

#[test]
fn openssl_enc_errors_classified() {
    let ct = openssl_encrypt("aes-256-cbc", "pw", &pseudo_random(1000, 3));
    let hdr: [u8; 16] = ct[..16].try_into().unwrap();
    let finish = |body: &[u8]| {
        let mut d = CbcDecryptor::new(Cipher::Aes256Cbc, b"pw", &hdr).unwrap();
        let mut out = Vec::new();
        d.update(body, &mut out);
        d.finish(&mut out).map(|_| out)
    };
    // V3-1: a ciphertext length that is not a multiple of 16 is malformed.
    assert_eq!(
        finish(&ct[16..ct.len() - 5]).unwrap_err().class(),
        ErrorClass::Malformed
    );
    let mut bad = ct[16..].to_vec();
    let n = bad.len();
    bad[n - 1] ^= 0x55; // corrupts the padding of the last block
    assert_eq!(finish(&bad).unwrap_err().class(), ErrorClass::Malformed);
}

// ---------------------------------------------------------------- scrypt (V4-*)

fn scrypt_enc(pass: &str, pt: &[u8], log_n: u8) -> Vec<u8> {
    let input = TempFile::new("pt");
    let output = TempFile::new("ct");
    std::fs::write(&input.0, pt).unwrap();
    run(
        Command::new("scrypt")
            .args([
                "enc",
                "-P",
                "--logN",
                &log_n.to_string(),
                "-r",
                "8",
                "-p",
                "1",
            ])
            .arg(&input.0)
            .arg(&output.0),
        format!("{pass}\n").as_bytes(),
    );
    std::fs::read(&output.0).unwrap()
}

fn scrypt_dec(pass: &str, ct: &[u8]) -> std::process::Output {
    let input = TempFile::new("ct");
    std::fs::write(&input.0, ct).unwrap();
    run_status(
        Command::new("scrypt").args(["dec", "-P"]).arg(&input.0),
        format!("{pass}\n").as_bytes(),
    )
}

fn our_open(pass: &[u8], c: &[u8]) -> qbackup_format::Result<Vec<u8>> {
    let h = parse_header(c)?;
    check_cost(&h.params, &KdfLimit::default())?;
    let k = derive_keys(pass, &h)?;
    open(&k, c)
}

#[test]
fn scrypt_enc_output_opens() {
    for len in [0usize, 1, 100_000] {
        let pt = pseudo_random(len, 11);
        let c = scrypt_enc("20230405T123455-1234!vm1/private.img.000!pw", &pt, 10);
        assert_eq!(c.len(), len + 128);
        let h = parse_header(&c).unwrap();
        assert_eq!(
            h.params,
            Params {
                log_n: 10,
                r: 8,
                p: 1
            }
        );
        let k = derive_keys(b"20230405T123455-1234!vm1/private.img.000!pw", &h).unwrap();
        assert_eq!(open(&k, &c).unwrap(), pt);
        let mut v = c.clone();
        open_in_place(&k, &mut v).unwrap();
        assert_eq!(v, pt);
    }
}

#[test]
fn our_seal_decrypts_with_scrypt_dec() {
    for len in [0usize, 17, 100_000] {
        let pt = pseudo_random(len, 13);
        let c = seal(
            b"backup-header!pw",
            Params {
                log_n: 10,
                r: 8,
                p: 1,
            },
            [0x42; 32],
            &pt,
        )
        .unwrap();
        let out = scrypt_dec("backup-header!pw", &c);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.stdout, pt);
        // And scrypt refuses a wrong passphrase for our container.
        assert!(!scrypt_dec("backup-header!px", &c).status.success());
    }
}

#[test]
fn scrypt_container_tampering_by_region() {
    let pt = pseudo_random(1000, 17);
    let c = scrypt_enc("pw", &pt, 10);
    let n = c.len();
    let regions: &[(&str, usize, ErrorClass)] = &[
        ("magic", 0, ErrorClass::Malformed),
        ("version", 6, ErrorClass::Unsupported),
        ("logN", 7, ErrorClass::Malformed),
        ("r", 11, ErrorClass::Malformed),
        ("p", 15, ErrorClass::Malformed),
        ("salt", 16, ErrorClass::Malformed),
        ("salt end", 47, ErrorClass::Malformed),
        ("checksum", 48, ErrorClass::Malformed),
        ("checksum end", 63, ErrorClass::Malformed),
        ("header MAC", 64, ErrorClass::WrongPassphrase),
        ("header MAC end", 95, ErrorClass::WrongPassphrase),
        ("data", 96, ErrorClass::MacFailure),
        ("data end", n - 33, ErrorClass::MacFailure),
        ("final MAC", n - 32, ErrorClass::MacFailure),
        ("final MAC end", n - 1, ErrorClass::MacFailure),
    ];
    for &(what, i, class) in regions {
        let mut t = c.clone();
        t[i] ^= 0x01;
        assert_eq!(our_open(b"pw", &t).unwrap_err().class(), class, "{what}");
        // The real tool refuses it too.
        assert!(!scrypt_dec("pw", &t).status.success(), "{what}");
    }
    assert_eq!(
        our_open(b"wrong", &c).unwrap_err().class(),
        ErrorClass::WrongPassphrase
    );
    assert_eq!(
        our_open(b"pw", &c[..n - 1]).unwrap_err().class(),
        ErrorClass::MacFailure
    );
    // V4-1: a container shorter than 128 bytes is malformed.
    assert_eq!(
        our_open(b"pw", &c[..127]).unwrap_err().class(),
        ErrorClass::Malformed
    );
    assert_eq!(our_open(b"pw", &c).unwrap(), pt);
}

#[test]
fn scrypt_cost_above_limit_is_refused_before_kdf() {
    let c = scrypt_enc("pw", b"x", 12);
    let h = parse_header(&c).unwrap();
    let tight = KdfLimit {
        max_memory: (1 << 12) * 8 * 128 - 1,
        max_work: u64::MAX,
    };
    let e = check_cost(&h.params, &tight).unwrap_err();
    assert_eq!(e.class(), ErrorClass::LimitExceeded);
    assert!(e.message().contains("--max-kdf-memory"));
    let tight_work = KdfLimit {
        max_memory: u64::MAX,
        max_work: (1 << 12) * 8 - 1,
    };
    assert_eq!(
        check_cost(&h.params, &tight_work).unwrap_err().class(),
        ErrorClass::LimitExceeded
    );
    assert!(check_cost(&h.params, &KdfLimit::default()).is_ok());
}

/// (user+sys of this process, user+sys of waited-for children), in seconds, from
/// /proc/self/stat (clock ticks of 1/100 s): CPU time is fair on a loaded machine.
fn cpu_times() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<f64> = after.split(' ').map(|x| x.parse().unwrap_or(0.0)).collect();
    // Fields 14..17 of stat(5), counted from field 3 here.
    ((f[11] + f[12]) / 100.0, (f[13] + f[14]) / 100.0)
}

/// Speed of RustCrypto scrypt against `scrypt dec` at logN 20, r 8, p 1 (1 GiB), wall and
/// CPU (user+sys) seconds.
/// `cargo test -p qbackup-format --test crypto_interop -- --ignored --nocapture kdf_speed`
#[test]
#[ignore]
fn kdf_speed() {
    let c = scrypt_enc("pw", b"payload", 20);
    let h = parse_header(&c).unwrap();
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for _ in 0..3 {
        let (cpu0, _) = cpu_times();
        let t = std::time::Instant::now();
        let k = derive_keys(b"pw", &h).unwrap();
        let wall = t.elapsed().as_secs_f64();
        ours.push((wall, cpu_times().0 - cpu0));
        assert_eq!(open(&k, &c).unwrap(), b"payload");
        let (_, child0) = cpu_times();
        let t = std::time::Instant::now();
        assert!(scrypt_dec("pw", &c).status.success());
        let wall = t.elapsed().as_secs_f64();
        theirs.push((wall, cpu_times().1 - child0));
    }
    println!("(wall s, cpu s) RustCrypto derive_keys: {ours:?}; scrypt dec: {theirs:?}");
}
