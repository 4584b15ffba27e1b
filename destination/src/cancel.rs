//! Process-wide cancellation (SPEC.md RST-7): on SIGINT or SIGTERM every live temporary
//! is removed and named on stderr, the child (if any) is terminated, and the process
//! exits with [`EXIT_CANCELLED`]. One mechanism for `qbackup-pack create`/`restore` and
//! `qbackup-verify extract`.
//!
//! The signal handler only sets a flag; a watcher thread does the work. Creating a
//! temporary, renaming it into place and removing it all happen under one lock that the
//! watcher takes before cleaning up, so a temporary is either still registered (and
//! removed) or already carries its final name (and is complete).
//!
//! [`install`] only installs the handlers: the watcher thread starts with the first
//! temporary (or with [`start_watcher`]), so `qbackup-verify extract` is still single
//! threaded when it applies its sandbox. Until the watcher runs there is nothing to clean
//! up, and the handler itself says so and exits.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::Duration;

use cap_std::fs::Dir;

/// Exit code after a signal (128 + SIGINT, by shell convention).
pub const EXIT_CANCELLED: i32 = 130;

static SIGNALLED: AtomicBool = AtomicBool::new(false);
static INSTALLED: Once = Once::new();
static WATCHING: AtomicBool = AtomicBool::new(false);
static WATCHER: Once = Once::new();
/// The message prefix, readable from the signal handler.
static PROGRAM: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// The child to terminate on cancellation: a pid, or a negated process-group id; 0 when
/// none.
pub static CHILD: AtomicI32 = AtomicI32::new(0);

/// A temporary to remove on cancellation.
struct Live {
    id: u64,
    root: Arc<Dir>,
    rel: PathBuf,
    shown: PathBuf,
}

struct Registry {
    program: &'static str,
    next: u64,
    live: Vec<Live>,
    hooks: Vec<fn() -> Option<String>>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    program: "qbackup",
    next: 0,
    live: Vec::new(),
    hooks: Vec::new(),
});

/// The registry lock; a poisoned lock is still usable (the data stays consistent: every
/// mutation is a single push or retain).
fn lock() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
    if !WATCHING.load(Ordering::SeqCst) {
        // No watcher yet: no temporary and no child exist. Only async-signal-safe calls.
        let program = PROGRAM.get().copied().unwrap_or("qbackup");
        let tail = b": interrupted; nothing was written\n";
        // SAFETY: write(2) and _exit(2) are async-signal-safe; the buffers are valid.
        unsafe {
            libc::write(2, program.as_ptr().cast(), program.len());
            libc::write(2, tail.as_ptr().cast(), tail.len());
            libc::_exit(EXIT_CANCELLED);
        }
    }
}

/// Install the SIGINT/SIGTERM handlers and start the watcher (once per process;
/// `program` prefixes the messages). SIGXFSZ is ignored so that a file-size limit surfaces
/// as a write error (EFBIG) and the temporaries are cleaned up.
pub fn install(program: &'static str) {
    lock().program = program;
    let _ = PROGRAM.set(program);
    INSTALLED.call_once(|| {
        // SAFETY: the handler only stores to an atomic (async-signal-safe); sigaction is
        // given a zeroed, then filled struct.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
            // Interrupted system calls restart: a signal never turns into a spurious I/O
            // error that could win the race against the watcher's exit.
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
            libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        }
    });
}

/// Start the watcher thread (once); from then on a signal is handled by it. Called by
/// the first registration of a temporary, and by programs that have a child or a
/// partial file of their own before that (`create`, `restore`).
pub fn start_watcher() {
    WATCHER.call_once(|| {
        std::thread::spawn(|| loop {
            if SIGNALLED.load(Ordering::SeqCst) {
                cancel_now();
            }
            std::thread::sleep(Duration::from_millis(50));
        });
        WATCHING.store(true, Ordering::SeqCst);
    });
}

/// A cleanup step run on cancellation after the temporaries are removed (e.g. the
/// packer's `FILE.partial`); it returns the path it removed, for the message.
pub fn add_hook(hook: fn() -> Option<String>) {
    let mut r = lock();
    if !r.hooks.contains(&hook) {
        r.hooks.push(hook);
    }
}

/// True once a signal arrived.
pub fn signalled() -> bool {
    SIGNALLED.load(Ordering::SeqCst)
}

/// Exit with `code`, unless a cancellation is under way: then leave the exit (with
/// [`EXIT_CANCELLED`]) to the watcher, so an error the cancellation itself caused (the
/// killed child's stream ending) never wins the race.
pub fn exit(code: i32) -> ! {
    if signalled() && INSTALLED.is_completed() {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    std::process::exit(code);
}

fn cancel_now() -> ! {
    let mut r = lock();
    let child = CHILD.load(Ordering::SeqCst);
    if child != 0 {
        // SAFETY: kill on the pid (or process group) of the child we spawned.
        unsafe {
            libc::kill(child, libc::SIGKILL);
        }
    }
    let program = r.program;
    let mut said = false;
    for l in std::mem::take(&mut r.live) {
        said = true;
        match l.root.remove_file(&l.rel) {
            Ok(()) => crate::say!("{program}: cancelled; removed {}", l.shown.display()),
            Err(e) => crate::say!(
                "{program}: cancelled; could not remove {}: {e}",
                l.shown.display()
            ),
        }
    }
    for hook in r.hooks.clone() {
        if let Some(msg) = hook() {
            said = true;
            crate::say!("{program}: cancelled; {msg}");
        }
    }
    if !said {
        crate::say!("{program}: cancelled");
    }
    std::process::exit(EXIT_CANCELLED);
}

/// Run `f` under the registry lock: cancellation waits for it, so what `f` creates or
/// renames is registered or final, never in between.
pub(crate) fn locked<R>(f: impl FnOnce(&mut Tracker<'_>) -> R) -> R {
    let mut guard = lock();
    f(&mut Tracker { r: &mut guard })
}

/// Access to the registry while its lock is held.
pub(crate) struct Tracker<'a> {
    r: &'a mut Registry,
}

impl Tracker<'_> {
    /// Register a temporary; call before creating it, so a signal in between finds the
    /// watcher running (and at worst a name that does not exist yet).
    pub(crate) fn register(&mut self, root: &Arc<Dir>, rel: PathBuf, shown: PathBuf) -> u64 {
        if INSTALLED.is_completed() {
            start_watcher();
        }
        self.r.next = self.r.next.wrapping_add(1);
        let id = self.r.next;
        self.r.live.push(Live {
            id,
            root: root.clone(),
            rel,
            shown,
        });
        id
    }

    pub(crate) fn unregister(&mut self, id: u64) {
        self.r.live.retain(|l| l.id != id);
    }
}
