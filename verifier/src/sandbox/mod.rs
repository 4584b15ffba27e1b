//! The verifier's sandbox (SPEC.md §22; glycin-style): a [`Policy`] produced by a pure
//! function of the command ([`policy`], SBX-1), unit-tested as data, then applied once by
//! [`apply`] at the top of `main` — after the archive and the extraction directory are
//! opened and the passphrase is read, before any thread starts and before any archive byte
//! is read (SBX-2). It fails closed: if the kernel cannot enforce the policy, [`apply`]
//! returns an error and the binary exits 21 (unless the user passed `--no-sandbox`; SBX-7).
//! Path access is confined by the strongest mechanism the kernel offers (SBX-9): Landlock;
//! without it, seccomp alone for the commands that have no path syscalls, and a mount
//! namespace rooted at DIR for `extract` (SBX-10).
//!
//! Layers, in the order applied: resource limits (`RLIMIT_AS` sized for KDF memory, the
//! allocator's cache, chunk buffers and threads; `RLIMIT_FSIZE`, `RLIMIT_NOFILE`,
//! `RLIMIT_CORE`; never raised; SBX-5, SBX-6); identity (SBX-3: all capabilities dropped;
//! root becomes `nobody`, or for `extract` the owner of DIR, or stays uid 0 without any
//! capability when root owns DIR); `PR_SET_NO_NEW_PRIVS`; Landlock with every filesystem
//! right handled and none granted (extract: read/write beneath the destination), or its
//! fallback ([`FsConfinement`]; the namespace is entered before the identity changes); a seccomp
//! allowlist ([`syscalls`], SBX-4) where everything else is `EPERM`.

mod apply;
mod check;
mod namespace;
mod policy;
pub mod syscalls;

pub use apply::{
    apply, landlock_abi, output_is_regular_file, request, seccomp_program, Enforced,
    ENABLE_LANDLOCK,
};
pub use check::{check, describe, CheckReport};
pub use policy::{
    address_space_limit, policy, FsConfinement, FsPolicy, Identity, Ids, Mode, Policy, Rlimit,
    SandboxRequest, ALLOCATOR_CACHE, LANDLOCK_MIN_ABI, NOBODY,
};
