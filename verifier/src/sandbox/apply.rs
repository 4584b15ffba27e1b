//! Applying a [`Policy`]: resource limits, (without Landlock, for `extract`) the mount
//! namespace, privilege drop, `PR_SET_NO_NEW_PRIVS`, Landlock (when the kernel has it),
//! seccomp — in that order, each verified, failing closed (SBX-2, SBX-7, SBX-9).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset,
    RulesetAttr, RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use qbackup_format::{Error, ErrorClass, Result};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::namespace;
use super::policy::{FsConfinement, Identity, Ids, Mode, Policy, SandboxRequest};
use super::syscalls::SyscallRule;

/// What [`apply`] enforced, for the report and `sandbox-check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforced {
    /// The identity the process runs as now.
    pub uid: u32,
    pub gid: u32,
    /// True when the process started as root (it then runs as another uid, or as uid 0
    /// without capabilities).
    pub dropped: bool,
    /// No capability left in the permitted, effective, inheritable and ambient sets (and
    /// the bounding set, when started as root).
    pub no_capabilities: bool,
    pub no_new_privs: bool,
    /// The kernel's Landlock ABI version.
    pub landlock_abi: i32,
    /// What confines path access (SBX-9).
    pub confinement: FsConfinement,
    /// True when every Landlock restriction requested exists in this kernel's ABI
    /// (false: the filesystem part is enforced, newer ones such as network or scoping are
    /// not; always false without Landlock).
    pub landlock_full: bool,
    pub seccomp_syscalls: usize,
    pub rlimits: Vec<(&'static str, u64)>,
}

impl Enforced {
    /// One line for logs and reports.
    pub fn summary(&self) -> String {
        format!(
            "sandbox: uid {} gid {}{}{}, no_new_privs, {}{}, seccomp {} syscalls, {}",
            self.uid,
            self.gid,
            match (self.dropped, self.uid) {
                (true, 0) => " (root without capabilities)",
                (true, _) => " (dropped from root)",
                (false, _) => "",
            },
            if self.no_capabilities {
                ", no capabilities"
            } else {
                ""
            },
            self.confinement.name(),
            match (self.confinement, self.landlock_full) {
                (FsConfinement::Landlock { .. }, true) => " (fully enforced)",
                (FsConfinement::Landlock { .. }, false) => " (partially enforced)",
                _ => " (Landlock unavailable)",
            },
            self.seccomp_syscalls,
            self.rlimits
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect::<Vec<_>>()
                .join(" ")
        )
    }
}

fn unsupported(what: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorClass::Unsupported,
        format!("sandbox: {what}; refusing to run unconfined (use --no-sandbox to override)"),
    )
}

fn os_err(what: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorClass::Io,
        format!("sandbox: {what}: {}", std::io::Error::last_os_error()),
    )
}

/// How to turn Landlock on, for messages (SBX-7, SBX-8).
pub const ENABLE_LANDLOCK: &str = "to enable Landlock, add it to the kernel command line's \
     LSM list (lsm=…,landlock, the current list is in /sys/kernel/security/lsm; or \
     security=landlock on older kernels); the kernel must be built with \
     CONFIG_SECURITY_LANDLOCK=y";

/// The kernel's Landlock ABI version (≤ 0: unavailable; a kernel built without Landlock
/// answers ENOSYS, one built with it but not enabled, as Qubes OS kernels, EOPNOTSUPP).
pub fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a NULL attribute and size 0 this only queries the ABI version.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    i32::try_from(v).unwrap_or(-1)
}

/// Threads of this process (the sandbox must be applied while there is only one:
/// `setuid` and Landlock act per thread or need all threads to agree).
fn thread_count() -> Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| Error::new(ErrorClass::Io, format!("sandbox: /proc/self/status: {e}")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| {
            Error::new(
                ErrorClass::Io,
                "sandbox: no thread count in /proc/self/status",
            )
        })
}

/// Apply `policy` to this process. Call once, at the top of `main`, before any thread is
/// spawned and before any untrusted byte is read. On error the process may be partly
/// confined and MUST exit: it never runs without the sandbox it asked for.
pub fn apply(policy: &Policy) -> Result<Enforced> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(Error::new(
            ErrorClass::Io,
            format!("sandbox: apply() with {threads} threads running (must be 1)"),
        ));
    }
    let mut enforced = Enforced {
        uid: 0,
        gid: 0,
        dropped: false,
        no_capabilities: false,
        no_new_privs: false,
        landlock_abi: landlock_abi(),
        confinement: policy.fs.confinement,
        landlock_full: false,
        seccomp_syscalls: 0,
        rlimits: Vec::new(),
    };

    for r in &policy.rlimits {
        // Never raise a limit: a lower one set by the caller (`ulimit`, a test simulating a
        // full disk with RLIMIT_FSIZE) stays, as both soft and hard limit.
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain syscall on a valid struct.
        if unsafe { libc::getrlimit(r.resource, &mut cur) } != 0 {
            return Err(os_err(format!("getrlimit {}", r.name)));
        }
        let value = r.value.min(cur.rlim_cur).min(cur.rlim_max);
        let lim = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: plain syscall on a valid struct.
        if unsafe { libc::setrlimit(r.resource, &lim) } != 0 {
            return Err(os_err(format!("setrlimit {} {value}", r.name)));
        }
        enforced.rlimits.push((r.name, value));
    }

    // Opened while still privileged: the new identity may not be able to reach DIR by
    // its path (a 0700 parent), yet writes through the already open DIR.
    let landlock = matches!(policy.fs.confinement, FsConfinement::Landlock { .. });
    let dest_fd = match (&policy.fs.write_beneath, landlock) {
        (Some(dest), true) => Some(PathFd::new(dest).map_err(|e| {
            Error::new(
                ErrorClass::Io,
                format!("sandbox: opening {} for Landlock: {e}", dest.display()),
            )
        })?),
        _ => None,
    };
    // Also while still privileged: as root, a mount namespace needs CAP_SYS_ADMIN.
    if let (Some(dest), FsConfinement::MountNamespace { user_namespace }) =
        (&policy.fs.write_beneath, policy.fs.confinement)
    {
        namespace::confine_to(dest, user_namespace).map_err(|e| {
            unsupported(format!(
                "the kernel has no Landlock (ABI {}) and confining extract to {} with a mount \
                 namespace failed ({}); {ENABLE_LANDLOCK}",
                enforced.landlock_abi,
                dest.display(),
                e.message()
            ))
        })?;
    }
    drop_privileges(policy)?;
    enforced.dropped = policy.started_as_root;
    enforced.no_capabilities = true;
    // SAFETY: identity queries have no preconditions.
    (enforced.uid, enforced.gid) = unsafe { (libc::geteuid(), libc::getegid()) };

    if policy.no_new_privs {
        // SAFETY: prctl with integer arguments.
        let ok = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } == 0
            && unsafe { libc::prctl(libc::PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) } == 1;
        if !ok {
            return Err(os_err("PR_SET_NO_NEW_PRIVS"));
        }
        enforced.no_new_privs = true;
    }

    if landlock {
        enforced.landlock_full = apply_landlock(policy, dest_fd)?;
    }

    let filter = seccomp_program(&policy.syscalls)?;
    seccompiler::apply_filter_all_threads(&filter)
        .map_err(|e| unsupported(format!("cannot install the seccomp filter: {e}")))?;
    enforced.seccomp_syscalls = policy.syscalls.len();
    Ok(enforced)
}

/// securebits(7): uid 0 gets no capabilities at exec, and that cannot be undone.
const SECBIT_NOROOT: libc::c_ulong = 1 << 0;
const SECBIT_NOROOT_LOCKED: libc::c_ulong = 1 << 1;
const SECBIT_KEEP_CAPS_LOCKED: libc::c_ulong = 1 << 5;
const SECBIT_NO_CAP_AMBIENT_RAISE: libc::c_ulong = 1 << 6;
const SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED: libc::c_ulong = 1 << 7;
/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit capability sets in two 32-bit words.
const CAP_VERSION_3: u32 = 0x2008_0522;
/// Capability numbers probed in the bounding set (the kernel answers EINVAL above its
/// `CAP_LAST_CAP`, 40 in Linux 6.x).
const CAP_PROBE_MAX: libc::c_ulong = 63;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn capget() -> Result<[CapData; 2]> {
    let mut h = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut d = [CapData::default(); 2];
    // SAFETY: header and a two-element data array of the kernel's layout.
    if unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) } != 0 {
        return Err(os_err("capget"));
    }
    Ok(d)
}

/// Capabilities still in the bounding set.
fn bounding_set() -> Vec<libc::c_ulong> {
    (0..=CAP_PROBE_MAX)
        // SAFETY: prctl with integer arguments; EINVAL past the last capability.
        .filter(|&c| unsafe { libc::prctl(libc::PR_CAPBSET_READ, c, 0, 0, 0) } == 1)
        .collect()
}

/// SBX-3: supplementary groups, securebits, bounding set (when root), then the identity
/// switch, then every remaining capability; each step verified. Single-threaded (checked
/// by the caller), so glibc's cross-thread setxid broadcast is not involved.
fn drop_privileges(policy: &Policy) -> Result<()> {
    // Keep-caps off (it may be locked off already, then setting it fails harmlessly).
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0);
        if libc::prctl(libc::PR_GET_KEEPCAPS, 0, 0, 0, 0) != 0 {
            return Err(os_err("PR_SET_KEEPCAPS 0"));
        }
    }
    if policy.started_as_root {
        // SAFETY: plain syscalls with valid arguments.
        unsafe {
            if libc::setgroups(0, std::ptr::null()) != 0 {
                return Err(os_err("setgroups"));
            }
            let bits = SECBIT_NOROOT
                | SECBIT_NOROOT_LOCKED
                | SECBIT_KEEP_CAPS_LOCKED
                | SECBIT_NO_CAP_AMBIENT_RAISE
                | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
            if libc::prctl(libc::PR_SET_SECUREBITS, bits, 0, 0, 0) != 0 {
                return Err(os_err("PR_SET_SECUREBITS"));
            }
        }
        for cap in bounding_set() {
            // SAFETY: prctl with integer arguments (needs CAP_SETPCAP, still held).
            if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
                return Err(os_err(format!(
                    "dropping capability {cap} from the bounding set"
                )));
            }
        }
        if !bounding_set().is_empty() {
            return Err(Error::new(
                ErrorClass::Io,
                "sandbox: the capability bounding set is not empty",
            ));
        }
    }
    if let Identity::Switch(ids) = policy.identity {
        switch_to(ids)?;
    }
    // SAFETY: prctl with integer arguments; ambient capabilities exist since Linux 4.3.
    unsafe {
        if libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        ) != 0
        {
            return Err(os_err("clearing ambient capabilities"));
        }
    }
    let mut h = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let none = [CapData::default(); 2];
    // SAFETY: header and a two-element data array of the kernel's layout; lowering
    // capabilities needs no privilege.
    if unsafe { libc::syscall(libc::SYS_capset, &mut h, none.as_ptr()) } != 0 {
        return Err(os_err("capset (dropping all capabilities)"));
    }
    let left = capget()?;
    if left
        .iter()
        .any(|d| d.effective | d.permitted | d.inheritable != 0)
    {
        return Err(Error::new(
            ErrorClass::Io,
            "sandbox: capabilities remain after capset",
        ));
    }
    Ok(())
}

fn switch_to(ids: Ids) -> Result<()> {
    // SAFETY: plain syscalls.
    unsafe {
        if libc::setresgid(ids.gid, ids.gid, ids.gid) != 0 {
            return Err(os_err(format!("setresgid {}", ids.gid)));
        }
        if libc::setresuid(ids.uid, ids.uid, ids.uid) != 0 {
            return Err(os_err(format!("setresuid {}", ids.uid)));
        }
        // Root must be gone for good.
        if ids.uid != 0 && (libc::setuid(0) == 0 || libc::geteuid() == 0) {
            return Err(Error::new(ErrorClass::Io, "sandbox: could regain root"));
        }
    }
    Ok(())
}

/// Landlock: every filesystem right handled; none granted except beneath the extraction
/// destination. ABI 1 is required; later rights (truncate, ioctl, network, scoping) are
/// added where the kernel has them. Returns whether everything requested is enforced.
fn apply_landlock(policy: &Policy, dest_fd: Option<PathFd>) -> Result<bool> {
    let abi = landlock_abi();
    if abi < policy.fs.min_abi {
        return Err(unsupported(format!(
            "the kernel has no Landlock (ABI {abi}, need {}); {ENABLE_LANDLOCK}",
            policy.fs.min_abi
        )));
    }
    let ll = |e: landlock::RulesetError| unsupported(format!("Landlock: {e}"));
    let newest = ABI::V7;
    let ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessFs::from_all(ABI::V1))
        .map_err(ll)?
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(newest))
        .map_err(ll)?
        .handle_access(AccessNet::from_all(newest))
        .map_err(ll)?
        .scope(Scope::from_all(newest))
        .map_err(ll)?;
    let mut created = ruleset.create().map_err(ll)?;
    if let Some(fd) = dest_fd {
        let denied = AccessFs::Execute
            | AccessFs::MakeChar
            | AccessFs::MakeBlock
            | AccessFs::MakeFifo
            | AccessFs::MakeSock
            | AccessFs::IoctlDev;
        let allowed = AccessFs::from_all(newest) & !denied;
        created = created
            .add_rule(PathBeneath::new(fd, allowed))
            .map_err(ll)?;
    }
    let status = created.restrict_self().map_err(ll)?;
    match status.ruleset {
        RulesetStatus::FullyEnforced => Ok(true),
        RulesetStatus::PartiallyEnforced => Ok(false),
        RulesetStatus::NotEnforced => Err(unsupported("Landlock ruleset not enforced")),
    }
}

fn target_arch() -> Result<TargetArch> {
    std::env::consts::ARCH
        .try_into()
        .map_err(|_| unsupported(format!("no seccomp filter for {}", std::env::consts::ARCH)))
}

/// Compile the allowlist: listed syscalls (with their argument conditions) are allowed,
/// all others fail with `EPERM`; the filter checks the architecture too.
pub fn seccomp_program(rules: &[SyscallRule]) -> Result<BpfProgram> {
    let bad = |e: seccompiler::BackendError| {
        Error::new(ErrorClass::Io, format!("sandbox: seccomp filter: {e}"))
    };
    let mut map: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for r in rules {
        let mut alternatives = Vec::new();
        for c in &r.any_of {
            let op = if c.mask == u64::MAX {
                SeccompCmpOp::Eq
            } else {
                SeccompCmpOp::MaskedEq(c.mask)
            };
            let cond = SeccompCondition::new(c.index, SeccompCmpArgLen::Qword, op, c.value)
                .map_err(bad)?;
            alternatives.push(SeccompRule::new(vec![cond]).map_err(bad)?);
        }
        map.entry(r.nr).or_default().extend(alternatives);
    }
    let filter = SeccompFilter::new(
        map,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        target_arch()?,
    )
    .map_err(bad)?;
    filter.try_into().map_err(bad)
}

/// Whether stdout or stderr is a regular file (for [`super::SandboxRequest`]: a redirected
/// report or log must stay writable under `RLIMIT_FSIZE`).
pub fn output_is_regular_file() -> bool {
    [libc::STDOUT_FILENO, libc::STDERR_FILENO]
        .into_iter()
        .any(|fd| {
            // SAFETY: fstat into a zeroed struct; an invalid fd just fails.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            unsafe { libc::fstat(fd, &mut st) == 0 && (st.st_mode & libc::S_IFMT) == libc::S_IFREG }
        })
}

/// The [`SandboxRequest`] for `mode` in this process: its euid and pid, the owner of the
/// extract destination (which must exist), whether a report goes to a regular file. Call
/// after the destination is created and before [`apply`].
pub fn request(mode: Mode, kdf_memory_budget: u64, jobs: usize) -> Result<SandboxRequest> {
    let dest_owner = match &mode {
        Mode::Extract { dest } => {
            let m = std::fs::metadata(dest).map_err(|e| {
                Error::new(
                    ErrorClass::Io,
                    format!("sandbox: destination {}: {e}", dest.display()),
                )
            })?;
            Some((m.uid(), m.gid()))
        }
        _ => None,
    };
    Ok(SandboxRequest {
        mode,
        // SAFETY: no preconditions.
        euid: unsafe { libc::geteuid() },
        pid: std::process::id(),
        dest_owner,
        kdf_memory_budget,
        jobs,
        output_is_regular_file: output_is_regular_file(),
        landlock_abi: landlock_abi(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::syscalls::allowlist;

    #[test]
    fn allowlists_compile_to_bpf() {
        for extract in [false, true] {
            let rules = allowlist(extract, 1);
            let prog = seccomp_program(&rules).unwrap();
            // At least one comparison per syscall plus the architecture check.
            assert!(prog.len() > rules.len(), "{} instructions", prog.len());
        }
    }

    #[test]
    fn summary_names_every_layer() {
        let e = Enforced {
            uid: 65534,
            gid: 65534,
            dropped: true,
            no_capabilities: true,
            no_new_privs: true,
            landlock_abi: 7,
            confinement: FsConfinement::Landlock { abi: 7 },
            landlock_full: true,
            seccomp_syscalls: 47,
            rlimits: vec![("RLIMIT_CORE", 0)],
        };
        let s = e.summary();
        for w in [
            "uid 65534",
            "dropped from root",
            "no capabilities",
            "no_new_privs",
            "landlock ABI 7",
            "seccomp 47",
            "RLIMIT_CORE=0",
        ] {
            assert!(s.contains(w), "{s}");
        }
        let without = Enforced {
            landlock_abi: -95,
            confinement: FsConfinement::NoPathSyscalls,
            landlock_full: false,
            ..e
        };
        let s = without.summary();
        assert!(
            s.contains("seccomp only (no path syscalls) (Landlock unavailable)"),
            "{s}"
        );
        assert!(!s.contains("landlock ABI"), "{s}");
    }
}
