//! Test helper for verifier/tests/sandbox_*.rs: applies the sandbox policy of a command,
//! then attempts one action and reports whether the kernel allowed it.
//!
//! `sandbox-probe MODE [--dest DIR] [--given FILE] [--extra-dir DIR2] ACTION [ARG]`
//! MODE: verify | list | emit | extract. ACTION: open PATH | create PATH | open-at REL |
//! create-at REL | socket | unix-socket | exec PATH | read-given | threads | status |
//! sigint-cleanup | run-verify PASS | run-extract PASS | check | none
//! (open-at, create-at: relative to `--dest` opened before the sandbox, as the destination
//! writer holds it; run-*: the real driver over the `--given` archive, extracting to
//! `--dest`; status: /proc/self/status after the sandbox; sigint-cleanup: a SIGINT
//! handler's watcher thread removes a temporary beneath `--dest` and exits 130; check:
//! `sandbox-check` for MODE without applying anything here; `--extra-dir`: keep another
//! directory open across the sandbox).
//! A kernel without Landlock or namespaces is simulated by running the probe under
//! `simulate-kernel` (SBX-9, SBX-10).
//! Exit: 0 the action succeeded, 1 it was refused (errno printed), 2 the sandbox could not
//! be applied (error printed), 3 usage.

use std::io::Read;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;

use qbackup_format::archive::authenticate::Credentials;
use qbackup_format::crypto::scrypt_container::KdfLimit;
use qbackup_verify::extract::Extractor;
use qbackup_verify::output::VerifyOnly;
use qbackup_verify::sandbox::{apply, output_is_regular_file, policy, request, Mode};

fn usage() -> ! {
    eprintln!(
        "usage: sandbox-probe verify|list|emit|extract [--dest DIR] [--given FILE] ACTION [ARG]"
    );
    std::process::exit(3)
}

fn outcome(what: &str, r: std::io::Result<()>) -> ! {
    match r {
        Ok(()) => {
            println!("allowed: {what}");
            std::process::exit(0)
        }
        Err(e) => {
            println!(
                "refused: {what}: {e} (errno {})",
                e.raw_os_error().unwrap_or(0)
            );
            std::process::exit(1)
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| usage());
    let mut dest = None;
    let mut given = None;
    let mut extra_dir = None;
    let mut rest = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dest" => dest = args.next().map(PathBuf::from),
            "--given" => given = args.next().map(PathBuf::from),
            "--extra-dir" => extra_dir = args.next().map(PathBuf::from),
            _ => rest.push(a),
        }
    }
    let mode = match (mode.as_str(), &dest) {
        ("verify", _) => Mode::Verify,
        ("list", _) => Mode::List,
        ("emit", _) => Mode::Emit,
        ("extract", Some(d)) => Mode::Extract { dest: d.clone() },
        _ => usage(),
    };
    // Resources opened before the sandbox, as main.rs does with the archive.
    let mut given_file = given.map(|p| std::fs::File::open(p).expect("open --given"));
    // Another directory left open (SBX-10: refused without Landlock).
    let _extra = extra_dir.map(|d| std::fs::File::open(d).expect("open --extra-dir"));
    // DIR as the destination writer holds it: a directory descriptor opened before.
    let dest_dir = dest
        .as_ref()
        .map(|d| std::fs::File::open(d).expect("open --dest"));
    let mut extractor = match (&dest, rest.first().map(String::as_str)) {
        (Some(d), Some("run-extract")) => Some(Extractor::open(d).expect("open --dest")),
        _ => None,
    };
    // Read after the sandbox through a descriptor opened before it (Landlock refuses a
    // new open of /proc/self/status).
    let mut status = std::fs::File::open("/proc/self/status").expect("open /proc/self/status");
    let mut req = request(mode, 64 << 20, 2).expect("sandbox request");
    req.output_is_regular_file = output_is_regular_file();
    if rest.first().map(String::as_str) == Some("check") {
        let report = qbackup_verify::sandbox::check(&req);
        print!("{}", report.render());
        std::process::exit(if report.ok { 0 } else { 1 });
    }
    match apply(&policy(&req)) {
        Ok(enforced) => eprintln!("{}", enforced.summary()),
        Err(e) => {
            println!("sandbox failed: {e}");
            std::process::exit(2)
        }
    }
    let action = rest.first().map(String::as_str).unwrap_or("none");
    let arg = rest.get(1).cloned().unwrap_or_default();
    match action {
        "none" => outcome("nothing", Ok(())),
        "open" => outcome(&format!("open {arg}"), std::fs::File::open(&arg).map(drop)),
        "create" => outcome(&format!("create {arg}"), std::fs::write(&arg, b"x")),
        "open-at" | "create-at" => {
            let dir = dest_dir.as_ref().unwrap_or_else(|| usage());
            let name = std::ffi::CString::new(arg.clone()).unwrap_or_else(|_| usage());
            let flags = if action == "open-at" {
                libc::O_RDONLY
            } else {
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC
            };
            // SAFETY: openat on an open directory with a NUL-terminated name.
            let fd = unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    flags | libc::O_CLOEXEC,
                    0o600,
                )
            };
            let r = if fd < 0 {
                Err(std::io::Error::last_os_error())
            } else if action == "create-at" {
                // SAFETY: `fd` was just opened for writing; the buffer is valid.
                match unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) } {
                    1 => Ok(()),
                    _ => Err(std::io::Error::last_os_error()),
                }
            } else {
                Ok(())
            };
            outcome(&format!("{action} {arg}"), r)
        }
        "socket" => {
            // SAFETY: plain syscall.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            let r = if fd >= 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            };
            outcome("socket", r)
        }
        "unix-socket" => {
            // SAFETY: plain syscall.
            let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
            let r = if fd >= 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            };
            outcome("unix socket", r)
        }
        "exec" => outcome(
            &format!("exec {arg}"),
            std::process::Command::new(&arg).status().map(drop),
        ),
        "read-given" => {
            let mut s = String::new();
            let r = given_file
                .as_mut()
                .map_or(Err(std::io::Error::other("no --given")), |f| {
                    f.read_to_string(&mut s).map(drop)
                });
            outcome("read the file opened before the sandbox", r)
        }
        "run-verify" | "run-extract" => {
            // The real driver over the archive opened before the sandbox.
            let input = given_file.take().unwrap_or_else(|| usage());
            let settings = qbackup_verify::driver::Settings {
                kdf_budget: 64 << 20,
                ..qbackup_verify::driver::Settings::new(Credentials::new(
                    arg.into_bytes(),
                    KdfLimit::default(),
                ))
            };
            let report = match (&extractor, action) {
                (Some(_), "run-extract") => {
                    let out = extractor.as_mut().unwrap_or_else(|| usage());
                    qbackup_verify::driver::run(input, settings, out)
                }
                _ => qbackup_verify::driver::run(input, settings, &mut VerifyOnly),
            };
            let r = match report.first_class() {
                None => Ok(()),
                Some(c) => Err(std::io::Error::other(format!(
                    "{c}: {}",
                    report.human("verify", false)
                ))),
            };
            outcome(action, r)
        }
        "status" => {
            let mut s = String::new();
            let r = std::io::Seek::rewind(&mut status).and_then(|()| status.read_to_string(&mut s));
            print!("{s}");
            outcome("read /proc/self/status", r.map(drop))
        }
        "sigint-cleanup" => sigint_cleanup(dest_dir.unwrap_or_else(|| usage())),
        "threads" => {
            let handles: Vec<_> = (0..4)
                .map(|i| {
                    std::thread::spawn(move || {
                        let v = vec![i as u8; 8 << 20];
                        v.iter().map(|b| u64::from(*b)).sum::<u64>()
                    })
                })
                .collect();
            let sum: u64 = handles.into_iter().map(|h| h.join().unwrap_or(0)).sum();
            outcome(&format!("threads (sum {sum})"), Ok(()))
        }
        _ => usage(),
    }
}

static SIGNALLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    SIGNALLED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// What extract's cancellation does (SBX-4): a handler sets a flag, a watcher thread
/// started after the sandbox removes the temporaries and exits 130 — through DIR's
/// descriptor, as the destination writer does.
fn sigint_cleanup(dest: std::fs::File) -> ! {
    let root = cap_std::fs::Dir::from_std_file(dest);
    let tmp_dir = std::path::Path::new(".qbackup-partial-dir");
    let tmp = tmp_dir.join(".x.qbackup-partial-1");
    let made = root
        .create_dir(tmp_dir)
        .and_then(|()| root.write(&tmp, b"partial"));
    if let Err(e) = made {
        outcome("create temporaries", Err(e))
    }
    // SAFETY: the handler only stores to an atomic; sigaction gets a zeroed, filled struct.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigint as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        if libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut()) != 0 {
            outcome("sigaction", Err(std::io::Error::last_os_error()))
        }
    }
    let watcher = std::thread::spawn(move || loop {
        if SIGNALLED.load(std::sync::atomic::Ordering::SeqCst) {
            let r = root
                .remove_file(&tmp)
                .and_then(|()| root.remove_dir(tmp_dir));
            match r {
                Ok(()) => {
                    println!("cancelled; removed temporaries");
                    std::process::exit(130)
                }
                Err(e) => outcome("remove temporaries", Err(e)),
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    });
    // SAFETY: raise signals this thread (tgkill on our own pid).
    if unsafe { libc::raise(libc::SIGINT) } != 0 {
        outcome("raise", Err(std::io::Error::last_os_error()))
    }
    let _ = watcher.join();
    outcome(
        "watcher ended",
        Err(std::io::Error::other("without exiting")),
    )
}
