//! SIGINT/SIGTERM: stop everything, remove `FILE.partial`, say so, exit 130. A watcher
//! thread does the work outside the signal handler (which only sets a flag); the final
//! rename and the removal are serialised by one lock, so a half archive never carries
//! its final name.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

static SIGNALLED: AtomicBool = AtomicBool::new(false);
/// pid of the verifier child, 0 when none.
pub static CHILD: AtomicI32 = AtomicI32::new(0);
/// The partial output to remove; `None` once renamed (or for stdout).
pub static PARTIAL: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Exit code after a signal (128 + SIGINT, by shell convention).
pub const EXIT_CANCELLED: i32 = 130;

extern "C" fn on_signal(_: libc::c_int) {
    SIGNALLED.store(true, Ordering::SeqCst);
}

/// Install the handlers and start the watcher. SIGXFSZ is ignored so that a file-size
/// limit surfaces as a write error (EFBIG) and the partial file is cleaned up.
pub fn install() {
    // SAFETY: the handler only stores to an atomic (async-signal-safe); sigaction is
    // given a zeroed, then filled struct.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGINT, &sa, std::ptr::null_mut());
        libc::sigaction(libc::SIGTERM, &sa, std::ptr::null_mut());
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    std::thread::spawn(|| loop {
        if SIGNALLED.load(Ordering::SeqCst) {
            cancel_now();
        }
        std::thread::sleep(Duration::from_millis(50));
    });
}

fn cancel_now() -> ! {
    let guard = PARTIAL.lock();
    let child = CHILD.load(Ordering::SeqCst);
    if child > 0 {
        // SAFETY: kill on the pid of the child we spawned.
        unsafe {
            libc::kill(child, libc::SIGTERM);
        }
    }
    match guard.as_ref().ok().and_then(|g| g.as_ref()) {
        Some(p) => match std::fs::remove_file(p) {
            Ok(()) => crate::say!("qbackup-pack: cancelled; removed {}", p.display()),
            Err(e) => crate::say!(
                "qbackup-pack: cancelled; could not remove {}: {e}",
                p.display()
            ),
        },
        None => crate::say!("qbackup-pack: cancelled"),
    }
    std::process::exit(EXIT_CANCELLED);
}

/// True once a signal arrived.
pub fn signalled() -> bool {
    SIGNALLED.load(Ordering::SeqCst)
}
