//! `sandbox-check`: what this kernel can enforce, the policy a command would get, and a
//! trial that applies it in a forked child and proves a socket and an exec are refused.

use super::apply::{apply, landlock_abi};
use super::policy::{policy, Identity, Policy, SandboxRequest};

/// The outcome of [`check`]: printable lines and whether the sandbox works here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub lines: Vec<String>,
    pub ok: bool,
}

impl CheckReport {
    pub fn render(&self) -> String {
        let mut s = self.lines.join("\n");
        s.push('\n');
        s.push_str(if self.ok {
            "OK: the sandbox can be enforced on this system\n"
        } else {
            "FAIL: the sandbox cannot be enforced here; commands will refuse to run unless --no-sandbox is given\n"
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
    l.push(match &p.fs.write_beneath {
        Some(d) => format!(
            "landlock: no filesystem access except read/write beneath {}",
            d.display()
        ),
        None => "landlock: no filesystem access at all".to_string(),
    });
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

/// Probe the kernel, describe the policy for `req`, and try it in a forked child.
/// Call while single-threaded.
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
    CheckReport {
        ok: abi > 0 && seccomp && trial.is_ok(),
        lines,
    }
}

/// Fork; the child applies the policy (for its own pid), then must have left root (when
/// the policy says so) and must fail to create a socket and to exec.
fn trial(req: &SandboxRequest) -> Result<String, String> {
    // SAFETY: the caller is single-threaded; the child only makes syscalls and _exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        let mut req = req.clone();
        // SAFETY: no preconditions.
        req.pid = unsafe { libc::getpid() } as u32;
        let p = policy(&req);
        let code = match apply(&p) {
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
            Ok(_) => {
                // SAFETY: raw syscalls in the child.
                let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
                // SAFETY: valid NULL-terminated argv/envp.
                let exec =
                    unsafe { libc::execve(argv[0], argv.as_ptr(), [std::ptr::null()].as_ptr()) };
                if sock >= 0 {
                    4
                } else if exec >= 0 {
                    5
                } else {
                    0
                }
            }
        };
        // SAFETY: leave the child without running the parent's destructors.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
        return Err(format!("waitpid: {}", std::io::Error::last_os_error()));
    }
    match (libc::WIFEXITED(status), libc::WEXITSTATUS(status)) {
        (true, 0) => Ok("applied; socket and exec refused".to_string()),
        (true, 3) => Err("applying the policy failed".to_string()),
        (true, 4) => Err("applied, but a socket could still be created".to_string()),
        (true, 5) => Err("applied, but exec still worked".to_string()),
        (true, 6) => Err("applied, but still running as root".to_string()),
        _ => Err(format!("child ended with status {status:#x}")),
    }
}
