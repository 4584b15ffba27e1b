//! The seccomp allowlist, one row per syscall with the reason it is needed. Derived from
//! `strace -f` of `verify`, `list`, `extract` (file and stdin input) after the point where
//! the sandbox is applied; everything else returns `EPERM`.
//!
//! Not allowed, among others: `socket`, `connect`, `bind`, `execve`, `execveat`, `fork`,
//! `ptrace`, `process_vm_*`, `mount`, `pivot_root`, `chroot`, `setns`, `unshare`, `bpf`,
//! `perf_event_open`, `keyctl`, `io_uring_*`, `userfaultfd`, `prctl`, `seccomp`,
//! `landlock_*`, `set*id`, `capset`, `setrlimit`, `kill` — and for verify/list/emit every
//! syscall that opens, creates, renames or removes a path (SBX-4).
//!
//! A SIGINT handler in `extract` (temporary-file cleanup) needs nothing beyond this list:
//! `rt_sigaction` to install it, `tgkill` on its own pid to raise, `unlink(at)`/`rmdir` to
//! remove temporaries beneath DIR, `exit_group`. It must be installed after the sandbox is
//! applied if it starts a watcher thread (`apply` requires a single thread).

/// A condition on one argument: `args[index] & mask == value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArgEq {
    pub index: u8,
    pub mask: u64,
    pub value: u64,
}

/// One allowed syscall; with conditions, it is allowed when any one of them holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyscallRule {
    pub name: &'static str,
    pub nr: i64,
    pub reason: &'static str,
    pub any_of: Vec<ArgEq>,
}

macro_rules! rule {
    ($name:ident, $why:expr) => {
        SyscallRule {
            name: stringify!($name),
            nr: nr::$name,
            reason: $why,
            any_of: Vec::new(),
        }
    };
}

/// Syscall numbers by name (libc's `SYS_*`), so the macro can stringify names.
#[allow(non_upper_case_globals)]
mod nr {
    macro_rules! nrs {
        ($($name:ident = $sys:ident),* $(,)?) => { $(pub const $name: i64 = libc::$sys as i64;)* };
    }
    nrs!(
        read = SYS_read,
        write = SYS_write,
        readv = SYS_readv,
        writev = SYS_writev,
        pread64 = SYS_pread64,
        pwrite64 = SYS_pwrite64,
        lseek = SYS_lseek,
        close = SYS_close,
        fstat = SYS_fstat,
        fstatfs = SYS_fstatfs,
        newfstatat = SYS_newfstatat,
        statx = SYS_statx,
        fcntl = SYS_fcntl,
        ioctl = SYS_ioctl,
        ppoll = SYS_ppoll,
        brk = SYS_brk,
        mmap = SYS_mmap,
        munmap = SYS_munmap,
        mremap = SYS_mremap,
        mprotect = SYS_mprotect,
        madvise = SYS_madvise,
        clone3 = SYS_clone3,
        clone = SYS_clone,
        futex = SYS_futex,
        set_robust_list = SYS_set_robust_list,
        rseq = SYS_rseq,
        gettid = SYS_gettid,
        getpid = SYS_getpid,
        sched_yield = SYS_sched_yield,
        sched_getaffinity = SYS_sched_getaffinity,
        exit = SYS_exit,
        exit_group = SYS_exit_group,
        rt_sigprocmask = SYS_rt_sigprocmask,
        rt_sigaction = SYS_rt_sigaction,
        rt_sigreturn = SYS_rt_sigreturn,
        sigaltstack = SYS_sigaltstack,
        tgkill = SYS_tgkill,
        getrandom = SYS_getrandom,
        clock_gettime = SYS_clock_gettime,
        clock_nanosleep = SYS_clock_nanosleep,
        nanosleep = SYS_nanosleep,
        prlimit64 = SYS_prlimit64,
        getuid = SYS_getuid,
        geteuid = SYS_geteuid,
        getgid = SYS_getgid,
        getegid = SYS_getegid,
        sysinfo = SYS_sysinfo,
        openat = SYS_openat,
        openat2 = SYS_openat2,
        mkdirat = SYS_mkdirat,
        renameat2 = SYS_renameat2,
        unlinkat = SYS_unlinkat,
        symlinkat = SYS_symlinkat,
        linkat = SYS_linkat,
        readlinkat = SYS_readlinkat,
        fchmod = SYS_fchmod,
        fchmodat = SYS_fchmodat,
        ftruncate = SYS_ftruncate,
        fallocate = SYS_fallocate,
        fsync = SYS_fsync,
        fdatasync = SYS_fdatasync,
        getdents64 = SYS_getdents64,
        utimensat = SYS_utimensat,
    );
}

// The request type is `c_ulong` on glibc and `c_int` on musl.
#[allow(clippy::unnecessary_cast)]
fn ioctl_rule() -> SyscallRule {
    let eq = |value: u64| ArgEq {
        index: 1,
        mask: 0xffff_ffff,
        value,
    };
    SyscallRule {
        name: "ioctl",
        nr: nr::ioctl,
        reason: "terminal queries only (TCGETS for is_terminal, TIOCGWINSZ for the progress bar)",
        any_of: vec![eq(libc::TCGETS as u64), eq(libc::TIOCGWINSZ as u64)],
    }
}

fn clone_rule() -> SyscallRule {
    let flag = libc::CLONE_THREAD as u64;
    SyscallRule {
        name: "clone",
        nr: nr::clone,
        reason: "thread creation on kernels without clone3 (CLONE_THREAD required: no fork)",
        any_of: vec![ArgEq {
            index: 0,
            mask: flag,
            value: flag,
        }],
    }
}

fn prlimit_rule() -> SyscallRule {
    SyscallRule {
        name: "prlimit64",
        nr: nr::prlimit64,
        reason: "std reads RLIMIT_STACK when spawning threads (reading only: new limit NULL)",
        any_of: vec![ArgEq {
            index: 2,
            mask: u64::MAX,
            value: 0,
        }],
    }
}

/// The allowlist; `extract` adds the path syscalls writing beneath the destination needs
/// (Landlock, or without it the mount namespace rooted at DIR, confines which paths they
/// reach: SBX-9, SBX-10). The list does not depend on the mechanism.
pub fn allowlist(extract: bool, pid: u32) -> Vec<SyscallRule> {
    let mut v = vec![
        rule!(
            read,
            "archive input (stdin or the archive opened before the sandbox)"
        ),
        rule!(
            write,
            "report, emitted stream and messages on stdout/stderr"
        ),
        rule!(readv, "buffered stdio"),
        rule!(writev, "buffered stdio"),
        rule!(pread64, "positioned reads of an already open archive"),
        rule!(pwrite64, "sparse writes of extracted files (EXT-3)"),
        rule!(lseek, "std::io::Seek on an open file"),
        rule!(close, "dropping descriptors"),
        rule!(fstat, "metadata of an open descriptor"),
        rule!(newfstatat, "fstat via AT_EMPTY_PATH (glibc)"),
        rule!(statx, "std File::metadata (AT_EMPTY_PATH)"),
        rule!(fcntl, "std queries/sets FD_CLOEXEC and status flags"),
        ioctl_rule(),
        rule!(ppoll, "std checks stdio descriptors"),
        rule!(brk, "memory allocation"),
        rule!(mmap, "memory allocation, thread stacks, KDF buffers"),
        rule!(munmap, "memory release"),
        rule!(mremap, "growing large buffers"),
        rule!(mprotect, "thread stack guard pages, glibc arenas"),
        rule!(madvise, "allocator returning memory"),
        rule!(clone3, "worker threads (KDF, MAC, inner stream)"),
        clone_rule(),
        rule!(futex, "thread synchronisation (channels, mutexes, join)"),
        rule!(set_robust_list, "new threads (glibc)"),
        rule!(rseq, "new threads (glibc restartable sequences)"),
        rule!(gettid, "thread ids (std, glibc)"),
        rule!(getpid, "temporary file names (EXT-2), abort"),
        rule!(sched_yield, "spin loops in synchronisation primitives"),
        rule!(sched_getaffinity, "std::thread::available_parallelism"),
        rule!(exit, "thread exit"),
        rule!(exit_group, "process exit"),
        rule!(rt_sigprocmask, "thread creation masks signals"),
        rule!(
            rt_sigaction,
            "std installs SIGSEGV/SIGBUS handlers for stack overflow"
        ),
        rule!(rt_sigreturn, "return from a signal handler"),
        rule!(sigaltstack, "per-thread stack-overflow handler stack"),
        SyscallRule {
            name: "tgkill",
            nr: nr::tgkill,
            reason: "abort() raises SIGABRT on itself (only its own pid)",
            any_of: vec![ArgEq {
                index: 0,
                mask: 0xffff_ffff,
                value: u64::from(pid),
            }],
        },
        rule!(getrandom, "HashMap seeds"),
        rule!(
            clock_gettime,
            "progress rate and time measurements (vDSO fallback)"
        ),
        rule!(clock_nanosleep, "thread sleeps"),
        rule!(nanosleep, "thread sleeps"),
        prlimit_rule(),
        rule!(getuid, "identity queries"),
        rule!(geteuid, "identity queries"),
        rule!(getgid, "identity queries"),
        rule!(getegid, "identity queries"),
        rule!(sysinfo, "physical memory for KDF budgets"),
    ];
    if extract {
        v.extend([
            rule!(
                openat,
                "open files and directories beneath DIR (Landlock or the namespace confines)"
            ),
            rule!(openat2, "cap-std RESOLVE_BENEATH opens beneath DIR (EXT-5)"),
            rule!(mkdirat, "create VM directories (EXT-1)"),
            rule!(
                renameat2,
                "commit a verified file without replacing (EXT-2)"
            ),
            rule!(unlinkat, "remove temporaries of failed files (EXT-2)"),
            rule!(symlinkat, "recreate contained symlinks (EXT-4)"),
            rule!(linkat, "recreate hard links within a file (EXT-4)"),
            rule!(readlinkat, "cap-std path resolution"),
            rule!(fchmod, "permission bits 0o777 (EXT-4)"),
            rule!(fchmodat, "permission bits of directories (EXT-4)"),
            rule!(ftruncate, "size sparse files to their logical size (EXT-3)"),
            rule!(fallocate, "size sparse files"),
            rule!(fsync, "durability before rename (EXT-2)"),
            rule!(fdatasync, "durability before rename (EXT-2)"),
            rule!(getdents64, "listing a temporary directory to remove it"),
            rule!(utimensat, "modification times"),
            rule!(fstatfs, "free space of DIR's file system (EXT-6)"),
        ]);
        #[cfg(target_arch = "x86_64")]
        v.extend([
            SyscallRule {
                name: "open",
                nr: libc::SYS_open,
                reason: "legacy open (x86_64 glibc fallbacks), beneath DIR only (SBX-9)",
                any_of: Vec::new(),
            },
            SyscallRule {
                name: "renameat",
                nr: libc::SYS_renameat,
                reason: "commit a verified file (EXT-2; aarch64 has only renameat2)",
                any_of: Vec::new(),
            },
            SyscallRule {
                name: "mkdir",
                nr: libc::SYS_mkdir,
                reason: "std::fs::create_dir (x86_64)",
                any_of: Vec::new(),
            },
            SyscallRule {
                name: "rename",
                nr: libc::SYS_rename,
                reason: "legacy rename (x86_64)",
                any_of: Vec::new(),
            },
            SyscallRule {
                name: "unlink",
                nr: libc::SYS_unlink,
                reason: "std::fs::remove_file: a SIGINT handler removing temporaries (EXT-2)",
                any_of: Vec::new(),
            },
            SyscallRule {
                name: "rmdir",
                nr: libc::SYS_rmdir,
                reason: "std::fs::remove_dir: a SIGINT handler removing a temporary directory",
                any_of: Vec::new(),
            },
        ]);
    }
    #[cfg(target_arch = "x86_64")]
    v.push(SyscallRule {
        name: "poll",
        nr: libc::SYS_poll,
        reason: "std checks stdio descriptors (x86_64)",
        any_of: Vec::new(),
    });
    v
}
