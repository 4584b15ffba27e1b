//! Progress on stderr: an indicatif bar on a terminal, or one JSON object per line
//! (`--progress-json`) for a GUI.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shared counters, updated by the pipeline and read by the reporter thread.
#[derive(Debug, Default)]
pub struct Progress {
    /// Logical input bytes processed (holes count when skipped).
    done: AtomicU64,
    /// Input bytes to process.
    total: AtomicU64,
    /// Archive bytes written.
    written: AtomicU64,
    vm: Mutex<String>,
    stop: AtomicBool,
}

impl Progress {
    pub fn set_total(&self, t: u64) {
        self.total.store(t, Ordering::Relaxed);
    }
    pub fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
    /// Bytes read while looking for holes (not counted as progress).
    pub fn scanned(&self, _n: u64) {}
    pub fn wrote(&self, n: u64) {
        self.written.fetch_add(n, Ordering::Relaxed);
    }
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
    pub fn set_vm(&self, vm: &str) {
        if let Ok(mut g) = self.vm.lock() {
            vm.clone_into(&mut g);
        }
    }
    fn vm(&self) -> String {
        self.vm.lock().map(|g| g.clone()).unwrap_or_default()
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    Bar,
    Json,
}

/// Start the reporter thread; [`Reporter::finish`] stops it.
pub struct Reporter {
    progress: Arc<Progress>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Reporter {
    pub fn start(progress: Arc<Progress>, mode: Mode) -> Reporter {
        let p = progress.clone();
        let handle = match mode {
            Mode::Off => None,
            Mode::Bar => Some(std::thread::spawn(move || bar(&p))),
            Mode::Json => Some(std::thread::spawn(move || json(&p))),
        };
        Reporter { progress, handle }
    }

    pub fn finish(mut self) {
        self.progress.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

fn bar(p: &Progress) {
    let bar = indicatif::ProgressBar::new(p.total.load(Ordering::Relaxed));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:12} {bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    while !p.stop.load(Ordering::Relaxed) {
        bar.set_length(p.total.load(Ordering::Relaxed));
        bar.set_position(p.done.load(Ordering::Relaxed));
        bar.set_message(p.vm());
        std::thread::sleep(Duration::from_millis(200));
    }
    bar.finish_and_clear();
}

fn json(p: &Progress) {
    let start = Instant::now();
    let mut last = Instant::now() - Duration::from_secs(1);
    loop {
        let stop = p.stop.load(Ordering::Relaxed);
        if stop || last.elapsed() >= Duration::from_millis(500) {
            last = Instant::now();
            let done = p.done.load(Ordering::Relaxed);
            let total = p.total.load(Ordering::Relaxed);
            let secs = start.elapsed().as_secs_f64();
            let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
            let eta = if rate > 0.0 && total >= done {
                Some(((total - done) as f64 / rate).round() as u64)
            } else {
                None
            };
            let line = serde_json::json!({
                "event": "progress",
                "done_bytes": done,
                "total_bytes": total,
                "written_bytes": p.written(),
                "bytes_per_second": rate.round() as u64,
                "eta_seconds": eta,
                "vm": p.vm(),
            });
            let mut e = std::io::stderr().lock();
            let _ = writeln!(e, "{line}");
        }
        if stop {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
