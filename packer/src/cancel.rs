//! SIGINT/SIGTERM for `create` and `restore`, on the shared mechanism of
//! `qbackup_destination::cancel` (RST-7): the restore's temporaries are registered there
//! by the destination writer; `create` adds its `FILE.partial` here. The final rename of
//! `create` and the removal are serialised by the [`PARTIAL`] lock, so a half archive
//! never carries its final name.

use std::path::PathBuf;
use std::sync::Mutex;

pub use qbackup_destination::cancel::{signalled, CHILD, EXIT_CANCELLED};

/// The partial output of `create` to remove; `None` once renamed (or for stdout).
pub static PARTIAL: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Install the handlers and start the watcher (see `qbackup_destination::cancel`).
pub fn install() {
    qbackup_destination::cancel::install("qbackup-pack");
    qbackup_destination::cancel::add_hook(remove_partial);
    // A child and FILE.partial exist before any destination temporary does.
    qbackup_destination::cancel::start_watcher();
}

/// Cancellation hook: remove `FILE.partial` (waits for a rename in progress).
fn remove_partial() -> Option<String> {
    let guard = PARTIAL.lock().unwrap_or_else(|p| p.into_inner());
    let p = guard.as_ref()?;
    Some(match std::fs::remove_file(p) {
        Ok(()) => format!("removed {}", p.display()),
        Err(e) => format!("could not remove {}: {e}", p.display()),
    })
}
