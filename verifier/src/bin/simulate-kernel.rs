//! Test helper: run a program on what looks like a kernel without some features, by
//! making their system calls fail as such a kernel fails them (SPEC.md SBX-9, SBX-10).
//!
//! `simulate-kernel FEATURE[,FEATURE…] PROGRAM [ARGS…]` installs a seccomp filter (after
//! `PR_SET_NO_NEW_PRIVS`) that fails only the listed calls, then execs PROGRAM; the filter
//! is inherited by everything PROGRAM runs and cannot be removed. FEATURE:
//! - `no-landlock`: `landlock_create_ruleset`, `landlock_add_rule`,
//!   `landlock_restrict_self` fail with ENOSYS (a kernel built without Landlock);
//! - `landlock-disabled`: the same calls fail with EOPNOTSUPP (built in but not enabled by
//!   `lsm=`, as Qubes OS kernels: QubesOS/qubes-issues#9931);
//! - `no-namespaces`: `unshare` fails with EPERM (namespaces disabled or not permitted);
//! - `no-seccomp`: `seccomp` fails with ENOSYS (install it last: nothing after it could
//!   install a filter).
//!
//! Exit 125 on a usage or setup error; otherwise whatever PROGRAM exits with.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule};

fn die(msg: &str) -> ! {
    eprintln!("simulate-kernel: {msg}");
    eprintln!(
        "usage: simulate-kernel no-landlock|landlock-disabled|no-namespaces|no-seccomp[,…] PROGRAM [ARGS…]"
    );
    std::process::exit(125)
}

/// Fail `syscalls` with `errno`, allow everything else.
fn fail_with(syscalls: &[i64], errno: i32) {
    let rules: BTreeMap<i64, Vec<SeccompRule>> =
        syscalls.iter().map(|&nr| (nr, Vec::new())).collect();
    let arch = std::env::consts::ARCH
        .try_into()
        .unwrap_or_else(|_| die("no seccomp support for this architecture"));
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        arch,
    )
    .unwrap_or_else(|e| die(&format!("filter: {e}")));
    let prog: BpfProgram = filter
        .try_into()
        .unwrap_or_else(|e| die(&format!("compiling the filter: {e}")));
    if let Err(e) = seccompiler::apply_filter(&prog) {
        die(&format!("installing the filter: {e}"))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let features = args.next().unwrap_or_else(|| die("no FEATURE"));
    let program = args.next().unwrap_or_else(|| die("no PROGRAM"));
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        die(&format!(
            "PR_SET_NO_NEW_PRIVS: {}",
            std::io::Error::last_os_error()
        ))
    }
    let landlock = [
        libc::SYS_landlock_create_ruleset,
        libc::SYS_landlock_add_rule,
        libc::SYS_landlock_restrict_self,
    ];
    let mut no_seccomp = false;
    for f in features.split(',') {
        match f {
            "no-landlock" => fail_with(&landlock, libc::ENOSYS),
            "landlock-disabled" => fail_with(&landlock, libc::EOPNOTSUPP),
            "no-namespaces" => fail_with(&[libc::SYS_unshare], libc::EPERM),
            "no-seccomp" => no_seccomp = true,
            _ => die(&format!("unknown FEATURE {f:?}")),
        }
    }
    if no_seccomp {
        fail_with(&[libc::SYS_seccomp], libc::ENOSYS);
    }
    let err = std::process::Command::new(&program).args(args).exec();
    die(&format!("exec {program}: {err}"))
}
