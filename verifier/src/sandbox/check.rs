//! `sandbox-check`: what this kernel can enforce, the policy a command would get, which
//! mechanism confines path access (SBX-9), and trials that apply the `verify` and the
//! `extract` policy in forked children and prove what they refuse (SBX-8).

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use super::apply::{apply, landlock_abi, ENABLE_LANDLOCK};
use super::policy::{policy, FsConfinement, Identity, Mode, Policy, SandboxRequest};

/// The outcome of [`check`]: printable lines and whether the sandbox works here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub lines: Vec<String>,
    /// Every command can run confined.
    pub ok: bool,
    /// `extract` can run confined (the others may even when it cannot).
    pub extract_ok: bool,
}

impl CheckReport {
    pub fn render(&self) -> String {
        let mut s = self.lines.join("\n");
        s.push('\n');
        s.push_str(match (self.ok, self.extract_ok) {
            (true, _) => "OK: the sandbox can be enforced on this system\n",
            (false, false) => "FAIL: the sandbox cannot be enforced here for every command; those it cannot confine refuse to run (exit 21) unless --no-sandbox is given\n",
            (false, true) => "FAIL: the sandbox cannot be enforced here; commands will refuse to run unless --no-sandbox is given\n",
        });
        s
    }
}

fn seccomp_available() -> bool {
    // SAFETY: PR_GET_SECCOMP only reads the calling thread's mode; EINVAL without seccomp.
    unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) >= 0 }
}

/// Describe `p` (one line per decision).
pub fn describe(p: &Policy) -> Vec<String> {
    let mut l = vec![format!("command: {:?}", p.mode)];
    l.push(match p.identity {
        Identity::Switch(ids) => format!(
            "identity: drop from root to uid {} gid {}, no supplementary groups, no capabilities (bounding set empty)",
            ids.uid, ids.gid
        ),
        Identity::RootWithoutCapabilities => "identity: stay uid 0 with no capabilities at all (bounding set empty, securebits locked), no supplementary groups".to_string(),
        Identity::Keep => "identity: unchanged (not root), all capabilities dropped".to_string(),
    });
    l.push(format!("no_new_privs: {}", p.no_new_privs));
    l.push(format!("confinement: {}", p.fs.confinement.name()));
    l.push(fs_line(p));
    l.push(format!(
        "seccomp: {} syscalls allowed, all others EPERM: {}",
        p.syscalls.len(),
        p.syscalls
            .iter()
            .map(|s| s.name)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    for r in &p.rlimits {
        l.push(format!("rlimit: {} = {}", r.name, r.value));
    }
    l
}

/// What the filesystem part of `p` means, in one line.
fn fs_line(p: &Policy) -> String {
    match (p.fs.confinement, &p.fs.write_beneath) {
        (FsConfinement::Landlock { .. }, Some(d)) => format!(
            "landlock: no filesystem access except read/write beneath {}",
            d.display()
        ),
        (FsConfinement::Landlock { .. }, None) => {
            "landlock: no filesystem access at all".to_string()
        }
        (FsConfinement::MountNamespace { .. }, Some(d)) => format!(
            "filesystem: Landlock unavailable; a private mount namespace whose root is {} \
             (nothing outside it exists for the process; mounts and namespaces refused by seccomp)",
            d.display()
        ),
        _ => "filesystem: Landlock unavailable; seccomp refuses every syscall that opens, \
              creates, renames or removes a path (only descriptors opened before remain)"
            .to_string(),
    }
}

/// Probe the kernel, describe the policy for `req` (a `verify` request) and for
/// `extract`, and try both in forked children. Call while single-threaded.
pub fn check(req: &SandboxRequest) -> CheckReport {
    let p = policy(req);
    let abi = landlock_abi();
    let seccomp = seccomp_available();
    let mut lines = vec![
        format!(
            "kernel landlock ABI: {}",
            if abi > 0 {
                abi.to_string()
            } else {
                "unavailable".to_string()
            }
        ),
        format!(
            "kernel seccomp filters: {}",
            if seccomp { "available" } else { "unavailable" }
        ),
        format!("running as uid {}", req.euid),
    ];
    lines.extend(describe(&p));
    let trial = trial(req);
    lines.push(format!(
        "trial in a child process: {}",
        trial.as_ref().map_or_else(|e| e.clone(), |s| s.clone())
    ));
    let extract_ok = check_extract(req, &mut lines);
    if abi <= 0 {
        lines.push(format!("landlock unavailable: {ENABLE_LANDLOCK}"));
    }
    CheckReport {
        ok: seccomp && trial.is_ok() && extract_ok,
        extract_ok,
        lines,
    }
}

/// Run `f` in a forked child and return its exit status (`f`'s value, or what killed it).
fn in_child(f: impl FnOnce() -> i32) -> Result<i32, String> {
    // SAFETY: the caller is single-threaded; the child only makes syscalls and _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        let code = f();
        // SAFETY: leave the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
    }
    if libc::WIFEXITED(status) {
        Ok(libc::WEXITSTATUS(status))
    } else {
        Err(format!("child ended with status {status:#x}"))
    }
}

/// In a sandboxed child: 0 when a socket and an exec are refused, else 4 or 5.
fn socket_and_exec_refused() -> i32 {
    // SAFETY: raw syscalls in the child.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
    let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
    // SAFETY: valid NULL-terminated argv/envp.
    let exec = unsafe { libc::execve(argv[0], argv.as_ptr(), [std::ptr::null()].as_ptr()) };
    if sock >= 0 {
        4
    } else if exec >= 0 {
        5
    } else {
        0
    }
}

/// True when this process can still open an existing file or create one by path.
fn path_opens() -> bool {
    // SAFETY: raw syscalls in the child; descriptors are closed if they were opened.
    unsafe {
        let read = libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        let create = libc::openat(
            libc::AT_FDCWD,
            c"/tmp/qbackup-sandbox-check-must-fail".as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o600,
        );
        for fd in [read, create] {
            if fd >= 0 {
                libc::close(fd);
            }
        }
        if create >= 0 {
            libc::unlink(c"/tmp/qbackup-sandbox-check-must-fail".as_ptr());
        }
        read >= 0 || create >= 0
    }
}

fn c_path(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap_or_default()
}

/// `extract`'s policy on this machine (for a temporary DIR) and a trial of it; appends
/// the lines, returns whether extract can run confined.
fn check_extract(req: &SandboxRequest, lines: &mut Vec<String>) -> bool {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let base = std::env::temp_dir().join(format!(
        "qbackup-sandbox-check-{}-{nanos}",
        std::process::id()
    ));
    // Removed afterwards only if this process created it (never a name someone else put
    // in the temporary directory first).
    let result = match std::fs::DirBuilder::new().mode(0o700).create(&base) {
        Ok(()) => {
            let r = extract_trial(req, &base, lines);
            let _ = std::fs::remove_dir_all(&base);
            r
        }
        Err(e) => Err(format!("could not create {}: {e}", base.display())),
    };
    lines.push(format!(
        "extract trial in a child process: {}",
        result.as_ref().map_or_else(|e| e.clone(), |s| s.clone())
    ));
    result.is_ok()
}

fn extract_trial(
    req: &SandboxRequest,
    base: &Path,
    lines: &mut Vec<String>,
) -> Result<String, String> {
    let dest = base.join("dir");
    let outside = base.join("outside");
    let made = std::fs::create_dir(&dest)
        .and_then(|()| std::fs::write(&outside, b"x"))
        .and_then(|()| std::fs::metadata(&dest));
    let meta = made.map_err(|e| format!("could not create {}: {e}", base.display()))?;
    let mut r = req.clone();
    r.mode = Mode::Extract { dest: dest.clone() };
    r.dest_owner = Some((meta.uid(), meta.gid()));
    r.output_is_regular_file = false;
    let p = policy(&r);
    lines.push(format!("extract confinement: {}", p.fs.confinement.name()));
    lines.push(format!(
        "extract {}",
        fs_line(&p).replace(&*dest.to_string_lossy(), "DIR")
    ));
    let code = in_child(|| extract_child(&r, &dest, base))?;
    let inside = dest.join("inside");
    if base.join("created").exists() {
        return Err("applied, but a file was created outside DIR".to_string());
    }
    match code {
        0 if inside.exists() => Ok("applied; wrote inside DIR; nothing outside DIR could be \
                                    opened or created; socket and exec refused"
            .to_string()),
        0 => Err("applied, but the file written inside DIR did not appear there".to_string()),
        7 => Err("applied, but nothing could be written inside DIR".to_string()),
        8 => Err("applied, but a path outside DIR could still be opened or created".to_string()),
        c => Err(trial_failure(c)),
    }
}

/// What a trial child's exit code means, for the codes both trials share.
fn trial_failure(code: i32) -> String {
    match code {
        3 => "applying the policy failed".to_string(),
        4 => "applied, but a socket could still be created".to_string(),
        5 => "applied, but exec still worked".to_string(),
        c => format!("child exited with {c}"),
    }
}

/// The child of [`extract_trial`]: open DIR as `extract` does, apply, then write inside
/// and try to reach `base` (DIR's parent) by absolute path and through `..`.
fn extract_child(req: &SandboxRequest, dest: &Path, base: &Path) -> i32 {
    let d = c_path(dest);
    // SAFETY: open of a NUL-terminated path.
    let dirfd = unsafe {
        libc::open(
            d.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    let mut req = req.clone();
    // SAFETY: no preconditions.
    req.pid = unsafe { libc::getpid() } as u32;
    if dirfd < 0 {
        return 3;
    }
    if let Err(e) = apply(&policy(&req)) {
        eprintln!("sandbox-check extract trial: {e}");
        return 3;
    }
    let create = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC;
    // SAFETY: openat on the open DIR with a constant name.
    if unsafe { libc::openat(dirfd, c"inside".as_ptr(), create, 0o600) } < 0 {
        return 7;
    }
    let outside = c_path(&base.join("outside"));
    let new_outside = c_path(&base.join("created"));
    // SAFETY: opens of NUL-terminated paths; each must fail.
    let reached = unsafe {
        libc::open(outside.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) >= 0
            || libc::openat(
                dirfd,
                c"../outside".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            ) >= 0
            || libc::open(new_outside.as_ptr(), create, 0o600) >= 0
    };
    if reached {
        return 8;
    }
    // Refused (Landlock) or, in a namespace rooted at DIR, created as DIR/created: the
    // parent checks that nothing appeared beside DIR.
    // SAFETY: as above.
    unsafe { libc::openat(dirfd, c"../created".as_ptr(), create, 0o600) };
    socket_and_exec_refused()
}

/// Fork; the child applies the policy (for its own pid), then must have left root (when
/// the policy says so) and must fail to create a socket and to exec.
fn trial(req: &SandboxRequest) -> Result<String, String> {
    let code = in_child(|| {
        let mut req = req.clone();
        // SAFETY: no preconditions.
        req.pid = unsafe { libc::getpid() } as u32;
        let p = policy(&req);
        match apply(&p) {
            Err(e) => {
                eprintln!("sandbox-check trial: {e}");
                3
            }
            // SAFETY: identity query.
            Ok(_)
                if matches!(p.identity, Identity::Switch(_)) && unsafe { libc::geteuid() } == 0 =>
            {
                6
            }
            // SBX-4, SBX-9: `verify` may open no path at all (without Landlock, seccomp
            // alone refuses it).
            Ok(_) if path_opens() => 7,
            Ok(_) => socket_and_exec_refused(),
        }
    })?;
    match code {
        0 => Ok("applied; opening a path, socket and exec refused".to_string()),
        6 => Err("applied, but still running as root".to_string()),
        7 => Err("applied, but a path could still be opened".to_string()),
        c => Err(trial_failure(c)),
    }
}
