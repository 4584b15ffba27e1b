//! The sandbox policy as data, produced by a pure function of the command being run
//! (SBX-1).

use std::path::PathBuf;

use qbackup_format::limits::{
    MAX_CHUNK_LEN, MAX_FILE_SIZE, SANDBOX_AS_BASE, SANDBOX_AS_PER_THREAD, SANDBOX_MAX_OPEN_FILES,
    SANDBOX_REPORT_FILE_MAX,
};

use super::syscalls::{self, SyscallRule};

/// The unprivileged identity a root process drops to (`nobody`/`nogroup`).
pub const NOBODY: u32 = 65534;

/// Freed large mappings `qbackup-bigalloc` keeps for reuse (its `CACHE_BYTES`): they stay
/// in the address space after the KDF or chunk buffer that used them is gone (SBX-5).
pub const ALLOCATOR_CACHE: u64 = 4 << 30;

/// Which command runs inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Verify,
    List,
    /// Stream verified data to the privileged restore on stdout (PROTO): stdin in,
    /// stdout out, no filesystem at all.
    Emit,
    /// Write beneath `dest` (already created and opened by the caller).
    Extract {
        dest: PathBuf,
    },
}

/// What the policy depends on; [`super::request`] fills it from the command and the
/// process state before applying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRequest {
    pub mode: Mode,
    /// `geteuid()` of the process.
    pub euid: u32,
    /// `getpid()` of the process: the only target `tgkill` may signal (abort, raise).
    pub pid: u32,
    /// Owner (uid, gid) of the extract destination (extract only).
    pub dest_owner: Option<(u32, u32)>,
    /// Total scrypt memory the driver may use at once (its `kdf_budget`).
    pub kdf_memory_budget: u64,
    /// KDF/MAC worker threads.
    pub jobs: usize,
    /// Whether stdout or stderr is a regular file (a report redirected with `>`).
    pub output_is_regular_file: bool,
    /// The kernel's Landlock ABI version (≤ 0: Landlock is not available; SBX-9).
    pub landlock_abi: i32,
}

/// A uid/gid pair (all of real, effective and saved ids are set to it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// What happens to the process's identity (SBX-3). In every case all capabilities are
/// dropped (permitted, effective, inheritable, ambient; the bounding set too when started
/// as root) and supplementary groups are cleared when started as root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Identity {
    /// Not started as root: the identity stays.
    Keep,
    /// Started as root: become this unprivileged identity.
    Switch(Ids),
    /// Started as root, extracting into a root-owned destination: stay uid/gid 0 with no
    /// capabilities, so uid 0 has only an owner's rights; Landlock (or the mount namespace,
    /// SBX-10) confines every path access to the destination and seccomp refuses
    /// everything else uid 0 could use.
    RootWithoutCapabilities,
}

/// One resource limit (soft = hard).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub name: &'static str,
    pub resource: libc::__rlimit_resource_t,
    pub value: u64,
}

/// How path access is confined (SBX-2, SBX-9): the strongest mechanism this kernel offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsConfinement {
    /// Landlock (preferred whenever the kernel has it): no filesystem right at all, or
    /// read/write beneath DIR for `extract`.
    Landlock { abi: i32 },
    /// No Landlock; `verify`, `list`, `emit`: seccomp allows no syscall that opens, creates,
    /// renames or removes a path (SBX-4), so the process reaches only the descriptors it
    /// opened before the sandbox.
    NoPathSyscalls,
    /// No Landlock; `extract`: a new mount namespace (inside a new user namespace when not
    /// started as root) whose root is DIR, the old root detached, every directory
    /// descriptor but DIR's refused (SBX-10). Mounting and namespaces are refused by
    /// seccomp afterwards.
    MountNamespace { user_namespace: bool },
}

impl FsConfinement {
    /// The mechanism's name, as `sandbox-check` and the run's note print it.
    pub fn name(&self) -> String {
        match self {
            FsConfinement::Landlock { abi } => format!("landlock ABI {abi}"),
            FsConfinement::NoPathSyscalls => "seccomp only (no path syscalls)".to_string(),
            FsConfinement::MountNamespace {
                user_namespace: true,
            } => "mount namespace confined to DIR (in a user namespace)".to_string(),
            FsConfinement::MountNamespace {
                user_namespace: false,
            } => "mount namespace confined to DIR".to_string(),
        }
    }
}

/// Filesystem access: nothing at all, except read/write access beneath the extraction
/// destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsPolicy {
    /// Read/write/create/remove beneath this directory (never execute, never devices,
    /// FIFOs or sockets).
    pub write_beneath: Option<PathBuf>,
    /// Lowest Landlock ABI that counts as Landlock (1: filesystem access control).
    pub min_abi: i32,
    /// The mechanism that enforces it.
    pub confinement: FsConfinement,
}

/// Everything [`super::apply`] does, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    pub rlimits: Vec<Rlimit>,
    pub identity: Identity,
    /// Whether the process started as root (then the capability bounding set and the
    /// supplementary groups are cleared too, and securebits are locked).
    pub started_as_root: bool,
    /// `PR_SET_NO_NEW_PRIVS` (always: seccomp and Landlock need it without privileges).
    pub no_new_privs: bool,
    pub fs: FsPolicy,
    /// Allowed syscalls; everything else fails with `EPERM`.
    pub syscalls: Vec<SyscallRule>,
}

/// `RLIMIT_AS` for a run (SBX-5): the KDF budget (the driver keeps the KDFs in flight
/// within it, RES-1) + the allocator's cache of freed mappings + `jobs + 4` chunk buffers
/// (the driver's `jobs + 3` and a copy for the qubes.xml prefetch) + per-thread arenas and
/// stacks for `jobs + 3` threads (workers, inner stream, prefetch, main) + LIM-41.
pub fn address_space_limit(kdf_memory_budget: u64, jobs: usize) -> u64 {
    let jobs = jobs.max(1) as u64;
    let buffers = jobs.saturating_add(4).saturating_mul(MAX_CHUNK_LEN);
    let threads = jobs.saturating_add(3).saturating_mul(SANDBOX_AS_PER_THREAD);
    SANDBOX_AS_BASE
        .saturating_add(kdf_memory_budget)
        .saturating_add(ALLOCATOR_CACHE)
        .saturating_add(buffers)
        .saturating_add(threads)
}

/// The identity decision of SBX-3 (see [`Identity`]).
fn identity(req: &SandboxRequest) -> Identity {
    let nobody = Ids {
        uid: NOBODY,
        gid: NOBODY,
    };
    match (req.euid, &req.mode, req.dest_owner) {
        (1.., _, _) => Identity::Keep,
        // The destination's owner may already replace anything in it: writing as that
        // owner grants nothing new, and the files get the directory's owner.
        (0, Mode::Extract { .. }, Some((uid @ 1.., gid))) => Identity::Switch(Ids { uid, gid }),
        (0, Mode::Extract { .. }, _) => Identity::RootWithoutCapabilities,
        (0, _, _) => Identity::Switch(nobody),
    }
}

/// Landlock ABI 1 has filesystem access control, all the sandbox needs of it (SBX-2).
pub const LANDLOCK_MIN_ABI: i32 = 1;

/// The policy for `req`. Pure: no system calls, so it is unit-tested as data (SBX-1).
pub fn policy(req: &SandboxRequest) -> Policy {
    let extract_dest = match &req.mode {
        Mode::Extract { dest } => Some(dest.clone()),
        _ => None,
    };
    let fsize = match (&req.mode, req.output_is_regular_file) {
        (Mode::Extract { .. }, _) => MAX_FILE_SIZE,
        (_, true) => SANDBOX_REPORT_FILE_MAX,
        (_, false) => 0,
    };
    let confinement = match (req.landlock_abi >= LANDLOCK_MIN_ABI, &extract_dest) {
        (true, _) => FsConfinement::Landlock {
            abi: req.landlock_abi,
        },
        (false, None) => FsConfinement::NoPathSyscalls,
        (false, Some(_)) => FsConfinement::MountNamespace {
            user_namespace: req.euid != 0,
        },
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
            value: SANDBOX_MAX_OPEN_FILES,
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
        identity: identity(req),
        started_as_root: req.euid == 0,
        no_new_privs: true,
        fs: FsPolicy {
            write_beneath: extract_dest.clone(),
            min_abi: LANDLOCK_MIN_ABI,
            confinement,
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
            landlock_abi: 7,
        }
    }

    fn extract(euid: u32, owner: (u32, u32)) -> SandboxRequest {
        let mut r = req(
            Mode::Extract {
                dest: "/restore".into(),
            },
            euid,
        );
        r.dest_owner = Some(owner);
        r
    }

    fn limit(p: &Policy, name: &str) -> u64 {
        p.rlimits.iter().find(|r| r.name == name).unwrap().value
    }

    fn allows(p: &Policy, name: &str) -> bool {
        p.syscalls.iter().any(|s| s.name == name)
    }

    /// SBX-2, SBX-6, LIM-44: no filesystem, no path syscalls, no file growth for the
    /// streaming commands.
    #[test]
    fn emit_and_verify_get_no_filesystem_and_no_file_writes() {
        for mode in [Mode::Emit, Mode::Verify, Mode::List] {
            let p = policy(&req(mode.clone(), 1000));
            assert_eq!(p.fs.write_beneath, None);
            assert_eq!(p.identity, Identity::Keep);
            assert!(p.no_new_privs);
            assert_eq!(limit(&p, "RLIMIT_FSIZE"), 0, "{mode:?}");
            assert_eq!(limit(&p, "RLIMIT_CORE"), 0);
            assert_eq!(limit(&p, "RLIMIT_NOFILE"), SANDBOX_MAX_OPEN_FILES);
            for s in [
                "openat", "open", "openat2", "mkdirat", "unlinkat", "renameat", "unlink",
            ] {
                assert!(!allows(&p, s), "{s} allowed for {mode:?}");
            }
        }
    }

    /// SBX-4: no sockets, no exec, no privilege or namespace syscalls, in any mode.
    #[test]
    fn dangerous_syscalls_are_never_allowed() {
        for p in [policy(&req(Mode::Emit, 0)), policy(&extract(0, (0, 0)))] {
            for s in [
                "socket",
                "socketpair",
                "connect",
                "bind",
                "execve",
                "execveat",
                "fork",
                "vfork",
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
                "setresuid",
                "capset",
                "setrlimit",
                "kill",
                "process_vm_writev",
                "io_uring_setup",
                "perf_event_open",
                "keyctl",
                "userfaultfd",
                "fchown",
                "chown",
                "mknodat",
            ] {
                assert!(!allows(&p, s), "{s} allowed");
            }
            for s in [
                "read",
                "write",
                "mmap",
                "madvise",
                "futex",
                "clone3",
                "exit_group",
                "getrandom",
                "rt_sigaction",
                "sigaltstack",
                "statx",
                "fstat",
                "ioctl",
            ] {
                assert!(allows(&p, s), "{s} not allowed");
            }
        }
    }

    /// SBX-2, SBX-4, SBX-6: extract gets the path syscalls (Landlock or the namespace
    /// confines them to DIR)
    /// and may write files as large as LIM-12.
    #[test]
    fn extract_writes_beneath_its_destination_only() {
        let p = policy(&extract(1000, (1000, 1000)));
        assert_eq!(p.fs.write_beneath, Some(PathBuf::from("/restore")));
        assert_eq!(limit(&p, "RLIMIT_FSIZE"), MAX_FILE_SIZE);
        for s in [
            "openat",
            "mkdirat",
            "renameat2",
            "unlinkat",
            "symlinkat",
            "ftruncate",
            "fchmod",
        ] {
            assert!(allows(&p, s), "{s} not allowed for extract");
        }
        #[cfg(target_arch = "x86_64")]
        for s in ["renameat", "unlink", "rmdir", "mkdir"] {
            assert!(allows(&p, s), "{s} not allowed for extract");
        }
    }

    /// SBX-1, SBX-3: who the process becomes, decided as data.
    #[test]
    fn identity_decisions() {
        let nobody = Identity::Switch(Ids {
            uid: NOBODY,
            gid: NOBODY,
        });
        for mode in [Mode::Emit, Mode::Verify, Mode::List] {
            let p = policy(&req(mode, 0));
            assert_eq!(p.identity, nobody);
            assert!(p.started_as_root);
        }
        // Root into a root-owned destination: uid 0 without capabilities.
        let p = policy(&extract(0, (0, 0)));
        assert_eq!(p.identity, Identity::RootWithoutCapabilities);
        // Root into a user's directory: become that user (the files get the owner).
        assert_eq!(
            policy(&extract(0, (1000, 100))).identity,
            Identity::Switch(Ids {
                uid: 1000,
                gid: 100
            })
        );
        // Root with a root-owned directory whose group is not root: still uid 0, no caps.
        assert_eq!(
            policy(&extract(0, (0, 1000))).identity,
            Identity::RootWithoutCapabilities
        );
        // Not root: nothing changes, whoever owns the destination.
        let p = policy(&extract(1000, (0, 0)));
        assert_eq!(p.identity, Identity::Keep);
        assert!(!p.started_as_root);
    }

    /// SBX-5, LIM-41, LIM-42: the address space covers KDF memory, the allocator cache,
    /// buffers, threads.
    #[test]
    fn address_space_covers_kdf_cache_and_buffers() {
        let p = policy(&req(Mode::Verify, 1000));
        let as_ = limit(&p, "RLIMIT_AS");
        assert!(as_ >= (4 << 30) + ALLOCATOR_CACHE + 8 * MAX_CHUNK_LEN + 7 * (128 << 20));
        assert!(as_ < (4u64 << 30) + ALLOCATOR_CACHE + (4 << 30));
        assert_eq!(address_space_limit(u64::MAX, usize::MAX), u64::MAX);
        // More jobs, more room; zero jobs counts as one.
        assert!(address_space_limit(0, 8) > address_space_limit(0, 2));
        assert_eq!(address_space_limit(0, 0), address_space_limit(0, 1));
    }

    /// SBX-6, LIM-43: a redirected report or log stays writable.
    #[test]
    fn redirected_report_may_be_written() {
        let mut r = req(Mode::Verify, 1000);
        r.output_is_regular_file = true;
        assert_eq!(limit(&policy(&r), "RLIMIT_FSIZE"), SANDBOX_REPORT_FILE_MAX);
        // stderr redirected to a log must not kill emit with SIGXFSZ either.
        let mut r = req(Mode::Emit, 1000);
        r.output_is_regular_file = true;
        assert_eq!(limit(&policy(&r), "RLIMIT_FSIZE"), SANDBOX_REPORT_FILE_MAX);
    }

    /// SBX-9: Landlock whenever the kernel has it; without it, seccomp alone for the
    /// commands with no path syscalls, and a mount namespace (a user namespace too when not
    /// root) for extract; the seccomp list does not change with the mechanism.
    #[test]
    fn confinement_follows_the_kernel() {
        for abi in [1, 7] {
            let mut r = req(Mode::Verify, 1000);
            r.landlock_abi = abi;
            assert_eq!(policy(&r).fs.confinement, FsConfinement::Landlock { abi });
            let mut r = extract(0, (0, 0));
            r.landlock_abi = abi;
            assert_eq!(policy(&r).fs.confinement, FsConfinement::Landlock { abi });
        }
        for abi in [0, -1, -95] {
            for mode in [Mode::Verify, Mode::List, Mode::Emit] {
                let mut r = req(mode.clone(), 0);
                r.landlock_abi = abi;
                let p = policy(&r);
                assert_eq!(p.fs.confinement, FsConfinement::NoPathSyscalls, "{mode:?}");
                let mut with = r.clone();
                with.landlock_abi = 7;
                assert_eq!(p.syscalls, policy(&with).syscalls);
            }
            for (euid, user_namespace) in [(0, false), (1000, true)] {
                let mut r = extract(euid, (1000, 1000));
                r.landlock_abi = abi;
                let p = policy(&r);
                assert_eq!(
                    p.fs.confinement,
                    FsConfinement::MountNamespace { user_namespace }
                );
                for s in [
                    "mount",
                    "umount2",
                    "pivot_root",
                    "unshare",
                    "setns",
                    "chroot",
                ] {
                    assert!(!allows(&p, s), "{s} allowed");
                }
            }
        }
        assert_eq!(
            FsConfinement::NoPathSyscalls.name(),
            "seccomp only (no path syscalls)"
        );
        assert_eq!(FsConfinement::Landlock { abi: 7 }.name(), "landlock ABI 7");
    }
}
