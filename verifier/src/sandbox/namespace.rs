//! `extract` without Landlock (SBX-10): a private mount namespace whose root is DIR.
//!
//! While still single-threaded and (when root) still holding `CAP_SYS_ADMIN`: unshare a
//! mount namespace (inside a new user namespace when not root, mapping only the caller's
//! own uid and gid, `setgroups` denied), make every mount private, bind DIR onto itself,
//! `pivot_root` into it and detach the old root, so that no path outside DIR exists for
//! the process any more. A descriptor of a directory opened before would still resolve
//! `..` in the old tree: DIR's own descriptors (the destination writer's) are re-pointed at
//! the new root, any other directory descriptor makes setup fail. Afterwards seccomp
//! refuses `mount`, `umount2`, `pivot_root`, `chroot`, `unshare` and `setns` (SBX-4), and
//! no `/proc` is mounted in the new root.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use qbackup_format::{Error, ErrorClass, Result};

/// Why the namespace could not be set up: the step and the kernel's answer.
fn failed(step: impl std::fmt::Display) -> Error {
    let e = std::io::Error::last_os_error();
    Error::new(ErrorClass::Unsupported, format!("{step}: {e}"))
}

fn cstr(p: &Path) -> Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        Error::new(
            ErrorClass::Unsupported,
            format!("{} contains a NUL byte", p.display()),
        )
    })
}

/// (device, inode) of an open descriptor, and whether it is a directory.
fn fd_identity(fd: libc::c_int) -> Option<((u64, u64), bool)> {
    // SAFETY: fstat into a zeroed struct; a closed descriptor just fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return None;
    }
    let dir = st.st_mode & libc::S_IFMT == libc::S_IFDIR;
    Some(((st.st_dev, st.st_ino), dir))
}

/// (device, inode) of a path.
fn path_identity(p: &CString) -> Result<(u64, u64)> {
    // SAFETY: stat of a NUL-terminated path into a zeroed struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::stat(p.as_ptr(), &mut st) } != 0 {
        return Err(failed(format!("stat {}", p.to_string_lossy())));
    }
    Ok((st.st_dev, st.st_ino))
}

/// The descriptors open now (listed while `/proc` is still reachable).
fn open_descriptors() -> Result<Vec<libc::c_int>> {
    let entries = std::fs::read_dir("/proc/self/fd").map_err(|e| {
        Error::new(
            ErrorClass::Unsupported,
            format!("listing /proc/self/fd: {e}"),
        )
    })?;
    // Every entry must be read and understood: a descriptor missed here would escape the
    // check for directories other than DIR (fail closed, SBX-7).
    entries
        .map(|e| {
            e.ok()
                .and_then(|e| e.file_name().to_str()?.parse().ok())
                .ok_or_else(|| {
                    Error::new(
                        ErrorClass::Unsupported,
                        "listing /proc/self/fd: an entry could not be read",
                    )
                })
        })
        .collect()
}

fn write_proc(file: &str, text: &str) -> Result<()> {
    std::fs::write(file, text).map_err(|e| {
        Error::new(
            ErrorClass::Unsupported,
            format!("writing {text:?} to {file}: {e}"),
        )
    })
}

fn mount(src: Option<&CString>, target: &CString, flags: libc::c_ulong, what: &str) -> Result<()> {
    let src = src.map_or(std::ptr::null(), |s| s.as_ptr());
    // SAFETY: NUL-terminated strings or NULL; no filesystem type or data.
    if unsafe {
        libc::mount(
            src,
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(failed(what));
    }
    Ok(())
}

/// Make `dest` the root of a new mount namespace for this process (see the module doc).
/// Call while single-threaded, before privileges are dropped. `user_namespace`: create
/// a user namespace too (needed without `CAP_SYS_ADMIN`).
pub fn confine_to(dest: &Path, user_namespace: bool) -> Result<()> {
    let dest_c = cstr(dest)?;
    let dir = path_identity(&dest_c)?;
    let fds = open_descriptors()?;
    // SAFETY: identity queries.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let flags = if user_namespace {
        libc::CLONE_NEWUSER | libc::CLONE_NEWNS
    } else {
        libc::CLONE_NEWNS
    };
    // SAFETY: unshare with constant flags; the caller is single-threaded (required for
    // CLONE_NEWUSER).
    if unsafe { libc::unshare(flags) } != 0 {
        return Err(failed(if user_namespace {
            "unshare(CLONE_NEWUSER | CLONE_NEWNS)"
        } else {
            "unshare(CLONE_NEWNS)"
        }));
    }
    if user_namespace {
        // Only the caller's own ids exist inside: files get the same owner as without the
        // namespace, and no other identity can be taken.
        write_proc("/proc/self/setgroups", "deny")?;
        write_proc("/proc/self/uid_map", &format!("{uid} {uid} 1\n"))?;
        write_proc("/proc/self/gid_map", &format!("{gid} {gid} 1\n"))?;
    }
    let root = cstr(Path::new("/"))?;
    let dot = cstr(Path::new("."))?;
    // Nothing done here may propagate back to the caller's namespace.
    mount(
        None,
        &root,
        libc::MS_REC | libc::MS_PRIVATE,
        "making every mount private",
    )?;
    mount(
        Some(&dest_c),
        &dest_c,
        libc::MS_BIND | libc::MS_REC,
        "bind-mounting DIR onto itself",
    )?;
    // SAFETY: chdir/pivot_root/umount2 on NUL-terminated paths.
    unsafe {
        if libc::chdir(dest_c.as_ptr()) != 0 {
            return Err(failed("chdir DIR"));
        }
        // pivot_root(".", "."): DIR becomes the root, the old root is stacked on it and
        // detached next (pivot_root(2), "NOTES").
        if libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) != 0 {
            return Err(failed("pivot_root into DIR"));
        }
        if libc::umount2(dot.as_ptr(), libc::MNT_DETACH) != 0 {
            return Err(failed("detaching the old root"));
        }
        if libc::chdir(root.as_ptr()) != 0 {
            return Err(failed("chdir /"));
        }
    }
    // The new root must be DIR itself (not whatever a path race put at its name).
    if path_identity(&root)? != dir {
        return Err(Error::new(
            ErrorClass::Unsupported,
            format!(
                "the new root is not {} (was it replaced meanwhile?)",
                dest.display()
            ),
        ));
    }
    repoint_descriptors(&fds, dir, dest)
}

/// Descriptors opened before the namespace still belong to the old tree: DIR's are
/// replaced by a descriptor of the new root (same directory, no way up), any other
/// directory is refused.
fn repoint_descriptors(fds: &[libc::c_int], dir: (u64, u64), dest: &Path) -> Result<()> {
    // SAFETY: open of a constant NUL-terminated path.
    let new_root = unsafe {
        libc::open(
            c"/".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if new_root < 0 {
        return Err(failed("opening the new root"));
    }
    let result = fds
        .iter()
        .filter(|&&fd| fd != new_root)
        .try_for_each(|&fd| match fd_identity(fd) {
            Some((id, true)) if id == dir => {
                // SAFETY: both descriptors are open; dup3 atomically replaces `fd`.
                if unsafe { libc::dup3(new_root, fd, libc::O_CLOEXEC) } < 0 {
                    Err(failed(format!("re-pointing descriptor {fd} at DIR")))
                } else {
                    Ok(())
                }
            }
            Some((_, true)) => Err(Error::new(
                ErrorClass::Unsupported,
                format!(
                    "descriptor {fd} is a directory other than {} (it would reach outside \
                     the namespace)",
                    dest.display()
                ),
            )),
            _ => Ok(()),
        });
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(new_root) };
    result
}
