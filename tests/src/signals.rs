//! Signalling and waiting on the processes a test started.

use std::process::Child;
use std::time::{Duration, Instant};

/// Send `sig` to `pid` (a process this test started), asserting it was delivered.
pub fn signal(pid: u32, sig: i32) {
    let pid = libc::pid_t::try_from(pid).expect("pid fits pid_t");
    // SAFETY: signalling a process this test started.
    let r = unsafe { libc::kill(pid, sig) };
    assert_eq!(r, 0, "kill {pid} {sig}");
}

/// Send `sig` to `child` (spawned and not yet reaped).
pub fn kill(child: &Child, sig: i32) {
    signal(child.id(), sig);
}

/// Poll `cond` every 10 ms until it holds, failing after `limit` ("waited for WHAT").
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "waited for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}
