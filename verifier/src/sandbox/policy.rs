//! The sandbox policy as data, produced by a pure function of the command being run.

use std::path::PathBuf;

use qbackup_format::limits::{MAX_CHUNK_LEN, MAX_FILE_SIZE};

use super::syscalls::{self, SyscallRule};

/// The unprivileged identity a root process drops to (`nobody`/`nogroup`).
pub const NOBODY: u32 = 65534;

/// Address space allowed besides KDF memory and chunk buffers: code, libraries, decoder
/// state (xz/zstd windows), qubes.xml, report.
const AS_BASE: u64 = 1 << 30;
/// Address space per thread besides its chunk buffer: a glibc malloc arena reserves up to
/// 64 MiB (twice that when it grows a second heap) plus the thread's stack.
const AS_PER_THREAD: u64 = (128 + 8) << 20;
/// Largest output file when stdout or stderr is redirected to a regular file (a report, a
/// log, an emitted stream saved for later); otherwise no regular file may grow at all.
const REPORT_FILE_MAX: u64 = 1 << 30;
/// File descriptors: verify/list/emit need none beyond those open before the sandbox.
const NOFILE_STREAM: u64 = 32;
/// Extract holds a few directories and one output file per worker.
const NOFILE_EXTRACT: u64 = 256;

/// Which command runs inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Verify,
    List,
    /// Stream verified data to the privileged restore on stdout (PROTO).
    Emit,
    /// Write beneath `dest` (already created by the caller).
    Extract {
        dest: PathBuf,
    },
}

/// What the policy depends on; the caller fills it from the command line and the
/// process state before applying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRequest {
    pub mode: Mode,
    /// `geteuid()` of the process.
    pub euid: u32,
    /// `getpid()` of the process: the only target `tgkill` may signal (abort).
    pub pid: u32,
    /// Owner (uid, gid) of the extract destination and whether it is empty (extract only).
    pub dest_owner: Option<(u32, u32, bool)>,
    /// Total scrypt memory the driver may use at once (its `kdf_budget`).
    pub kdf_memory_budget: u64,
    /// KDF/MAC worker threads.
    pub jobs: usize,
    /// Whether stdout or stderr is a regular file (a report redirected with `>`).
    pub output_is_regular_file: bool,
}

/// Identity to switch to (all of real, effective and saved ids; no supplementary groups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// One resource limit (soft = hard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub name: &'static str,
    pub resource: libc::__rlimit_resource_t,
    pub value: u64,
}

/// Filesystem access under Landlock: nothing at all, except write access beneath the
/// extraction destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsPolicy {
    /// Read/write/create/remove beneath this directory (never execute, never devices,
    /// FIFOs or sockets).
    pub write_beneath: Option<PathBuf>,
    /// Lowest Landlock ABI that must be available (1: filesystem access control).
    pub min_abi: i32,
}

/// Everything [`super::apply`] does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub rlimits: Vec<Rlimit>,
    /// `fchown` the (empty) extraction destination to this identity before dropping, so
    /// the dropped process can write it.
    pub chown_dest: Option<Ids>,
    /// Switch to this identity (only when started as root).
    pub drop_to: Option<Ids>,
    /// `PR_SET_NO_NEW_PRIVS` (always: seccomp and Landlock need it without privileges).
    pub no_new_privs: bool,
    pub fs: FsPolicy,
    /// Allowed syscalls; everything else fails with `EPERM`.
    pub syscalls: Vec<SyscallRule>,
}

/// Address space for a run: KDF memory + one chunk buffer per thread in flight + base.
pub fn address_space_limit(kdf_memory_budget: u64, jobs: usize) -> u64 {
    // The driver keeps at most jobs + 3 chunk buffers; threads: jobs workers, the
    // inner-stream thread and main.
    let jobs = jobs.max(1) as u64;
    let buffers = jobs.saturating_add(3).saturating_mul(MAX_CHUNK_LEN);
    let threads = jobs.saturating_add(2).saturating_mul(AS_PER_THREAD);
    AS_BASE
        .saturating_add(kdf_memory_budget)
        .saturating_add(buffers)
        .saturating_add(threads)
}

/// The policy for `req`. Pure: no system calls, so it is unit-tested as data.
pub fn policy(req: &SandboxRequest) -> Policy {
    let extract_dest = match &req.mode {
        Mode::Extract { dest } => Some(dest.clone()),
        _ => None,
    };
    let as_root = req.euid == 0;
    let nobody = Ids {
        uid: NOBODY,
        gid: NOBODY,
    };
    // Root drops to an unprivileged identity. For extract that identity must be able to
    // write the destination: its owner if that is not root, else nobody after chowning
    // the destination (only when it is empty: a fresh directory made for the restore).
    let (drop_to, chown_dest) = match (as_root, &extract_dest, req.dest_owner) {
        (false, _, _) => (None, None),
        (true, Some(_), Some((uid, gid, _))) if uid != 0 => (Some(Ids { uid, gid }), None),
        (true, Some(_), Some((_, _, true))) => (Some(nobody), Some(nobody)),
        // Root-owned, non-empty destination: drop anyway; writing will fail with EACCES
        // rather than run as root (apply reports it).
        (true, _, _) => (Some(nobody), None),
    };
    let fsize = match (&req.mode, req.output_is_regular_file) {
        (Mode::Extract { .. }, _) => MAX_FILE_SIZE,
        (_, true) => REPORT_FILE_MAX,
        (_, false) => 0,
    };
    let nofile = if extract_dest.is_some() {
        NOFILE_EXTRACT
    } else {
        NOFILE_STREAM
    };
    let rlimits = vec![
        Rlimit {
            name: "RLIMIT_AS",
            resource: libc::RLIMIT_AS,
            value: address_space_limit(req.kdf_memory_budget, req.jobs),
        },
        Rlimit {
            name: "RLIMIT_FSIZE",
            resource: libc::RLIMIT_FSIZE,
            value: fsize,
        },
        Rlimit {
            name: "RLIMIT_NOFILE",
            resource: libc::RLIMIT_NOFILE,
            value: nofile,
        },
        Rlimit {
            name: "RLIMIT_CORE",
            resource: libc::RLIMIT_CORE,
            value: 0,
        },
    ];
    Policy {
        mode: req.mode.clone(),
        rlimits,
        chown_dest,
        drop_to,
        no_new_privs: true,
        fs: FsPolicy {
            write_beneath: extract_dest.clone(),
            min_abi: 1,
        },
        syscalls: syscalls::allowlist(extract_dest.is_some(), req.pid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(mode: Mode, euid: u32) -> SandboxRequest {
        SandboxRequest {
            mode,
            euid,
            pid: 4242,
            dest_owner: None,
            kdf_memory_budget: 4 << 30,
            jobs: 4,
            output_is_regular_file: false,
        }
    }

    fn limit(p: &Policy, name: &str) -> u64 {
        p.rlimits.iter().find(|r| r.name == name).unwrap().value
    }

    fn allows(p: &Policy, name: &str) -> bool {
        p.syscalls.iter().any(|s| s.name == name)
    }

    #[test]
    fn emit_and_verify_get_no_filesystem_and_no_file_writes() {
        for mode in [Mode::Emit, Mode::Verify, Mode::List] {
            let p = policy(&req(mode.clone(), 1000));
            assert_eq!(p.fs.write_beneath, None);
            assert_eq!(p.drop_to, None);
            assert!(p.no_new_privs);
            assert_eq!(limit(&p, "RLIMIT_FSIZE"), 0, "{mode:?}");
            assert_eq!(limit(&p, "RLIMIT_CORE"), 0);
            assert!(limit(&p, "RLIMIT_NOFILE") <= 64);
            for s in [
                "openat", "open", "openat2", "mkdirat", "unlinkat", "renameat",
            ] {
                assert!(!allows(&p, s), "{s} allowed for {mode:?}");
            }
        }
    }

    #[test]
    fn dangerous_syscalls_are_never_allowed() {
        let dest = Mode::Extract {
            dest: "/tmp/x".into(),
        };
        for p in [policy(&req(Mode::Emit, 0)), policy(&req(dest, 0))] {
            for s in [
                "socket",
                "connect",
                "bind",
                "execve",
                "execveat",
                "ptrace",
                "mount",
                "umount2",
                "pivot_root",
                "chroot",
                "setns",
                "unshare",
                "bpf",
                "prctl",
                "seccomp",
                "setuid",
                "kill",
                "process_vm_writev",
                "io_uring_setup",
                "perf_event_open",
                "keyctl",
                "userfaultfd",
            ] {
                assert!(!allows(&p, s), "{s} allowed");
            }
            for s in [
                "read",
                "write",
                "mmap",
                "futex",
                "clone3",
                "exit_group",
                "getrandom",
            ] {
                assert!(allows(&p, s), "{s} not allowed");
            }
        }
    }

    #[test]
    fn extract_writes_beneath_its_destination_only() {
        let p = policy(&req(
            Mode::Extract {
                dest: "/restore".into(),
            },
            1000,
        ));
        assert_eq!(p.fs.write_beneath, Some(PathBuf::from("/restore")));
        assert_eq!(limit(&p, "RLIMIT_FSIZE"), MAX_FILE_SIZE);
        for s in [
            "openat",
            "mkdirat",
            "renameat",
            "unlinkat",
            "ftruncate",
            "fchmod",
        ] {
            assert!(allows(&p, s), "{s} not allowed for extract");
        }
    }

    #[test]
    fn root_drops_privileges() {
        let p = policy(&req(Mode::Emit, 0));
        assert_eq!(
            p.drop_to,
            Some(Ids {
                uid: NOBODY,
                gid: NOBODY
            })
        );
        assert_eq!(p.chown_dest, None);
        let mut r = req(
            Mode::Extract {
                dest: "/restore".into(),
            },
            0,
        );
        r.dest_owner = Some((1000, 1000, false));
        assert_eq!(
            policy(&r).drop_to,
            Some(Ids {
                uid: 1000,
                gid: 1000
            })
        );
        r.dest_owner = Some((0, 0, true));
        let p = policy(&r);
        assert_eq!(p.drop_to, p.chown_dest);
        assert_eq!(p.drop_to.map(|i| i.uid), Some(NOBODY));
        r.dest_owner = Some((0, 0, false));
        assert_eq!(policy(&r).chown_dest, None);
    }

    #[test]
    fn address_space_covers_kdf_and_buffers() {
        let p = policy(&req(Mode::Verify, 1000));
        let as_ = limit(&p, "RLIMIT_AS");
        assert!(as_ >= (4 << 30) + 7 * MAX_CHUNK_LEN);
        assert!(as_ < (4u64 << 30) + (4 << 30));
        assert_eq!(address_space_limit(u64::MAX, usize::MAX), u64::MAX);
    }

    #[test]
    fn redirected_report_may_be_written() {
        let mut r = req(Mode::Verify, 1000);
        r.output_is_regular_file = true;
        assert_eq!(limit(&policy(&r), "RLIMIT_FSIZE"), REPORT_FILE_MAX);
        // stderr redirected to a log must not kill emit with SIGXFSZ either.
        let mut r = req(Mode::Emit, 1000);
        r.output_is_regular_file = true;
        assert_eq!(limit(&policy(&r), "RLIMIT_FSIZE"), REPORT_FILE_MAX);
    }
}
