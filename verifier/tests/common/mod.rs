//! What the sandbox tests share (`sandbox_main.rs`, `sandbox_probe.rs`): the kernels they
//! run every test on, and running as `nobody`.

use std::process::Command;

/// The test helper that makes this kernel look like one without Landlock.
pub const SIMULATE: &str = env!("CARGO_BIN_EXE_simulate-kernel");

/// The kernel a command runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// This machine's kernel, which must have Landlock.
    AsIs,
    /// Landlock's system calls fail with ENOSYS (`simulate-kernel no-landlock`).
    NoLandlock,
}

pub const KERNELS: [Kernel; 2] = [Kernel::AsIs, Kernel::NoLandlock];

impl Kernel {
    /// What runs a program on this kernel, before the program.
    pub fn prefix(self) -> &'static [&'static str] {
        match self {
            Kernel::AsIs => {
                assert!(
                    qbackup_verify::sandbox::landlock_abi() >= 1,
                    "this kernel has no Landlock (CONFIG_SECURITY_LANDLOCK, lsm=…,landlock): \
                     the Landlock half of these tests cannot run here"
                );
                &[]
            }
            Kernel::NoLandlock => &[SIMULATE, "no-landlock"],
        }
    }

    /// `bin` on this kernel.
    pub fn command(self, bin: &str) -> Command {
        match self.prefix().split_first() {
            Some((p, rest)) => {
                let mut c = Command::new(p);
                c.args(rest).arg(bin);
                c
            }
            None => Command::new(bin),
        }
    }
}

/// `setpriv` switching to `nobody` with no groups and no inheritable capabilities: put
/// before a command (as root) to run it as an unprivileged user.
pub const AS_NOBODY: [&str; 5] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
];

pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}
