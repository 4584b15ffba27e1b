//! Progress over the whole audit (SPEC.md AUD-7): a bar on a terminal, or JSON `progress`
//! lines on stderr (`--progress-json`), with an ETA from the estimated cost of the archives
//! left ([`crate::estimate`]: bytes and KDF counts) over the archives run in parallel.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

/// Shared counters, updated by the workers.
#[derive(Debug, Default)]
pub struct Counters {
    pub done_bytes: AtomicU64,
    pub total_bytes: AtomicU64,
    pub archives_done: AtomicU64,
    pub archives_total: AtomicU64,
    /// KDFs of the archives finished (measured) and of all selected (estimated).
    pub kdfs_done: AtomicU64,
    pub kdfs_total: AtomicU64,
    /// Estimated seconds of the archives not yet started.
    pub queued_seconds: Mutex<f64>,
    /// Archives being verified: slot → (location, start, estimated seconds).
    pub running: Mutex<BTreeMap<usize, (String, Instant, f64)>>,
    pub parallel: AtomicU64,
    stop: AtomicBool,
}

impl Counters {
    /// Seconds left: what is queued, plus what the running archives still need, over the
    /// archives run in parallel.
    pub fn eta_seconds(&self) -> f64 {
        let queued = self.queued_seconds.lock().map(|g| *g).unwrap_or(0.0);
        let running: f64 = self
            .running
            .lock()
            .map(|r| {
                r.values()
                    .map(|(_, t, est)| (est - t.elapsed().as_secs_f64()).max(0.0))
                    .sum()
            })
            .unwrap_or(0.0);
        (queued + running) / self.parallel.load(Ordering::Relaxed).max(1) as f64
    }

    fn running_names(&self) -> Vec<String> {
        self.running
            .lock()
            .map(|r| r.values().map(|(n, _, _)| n.clone()).collect())
            .unwrap_or_default()
    }

    /// The fields of a `progress` event.
    pub fn fields(&self, elapsed: Duration) -> serde_json::Value {
        let done = self.done_bytes.load(Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        json!({
            "done_bytes": done,
            "total_bytes": self.total_bytes.load(Ordering::Relaxed),
            "bytes_per_second": if secs > 0.0 { (done as f64 / secs).round() as u64 } else { 0 },
            "archives_done": self.archives_done.load(Ordering::Relaxed),
            "archives_total": self.archives_total.load(Ordering::Relaxed),
            "kdfs_done": self.kdfs_done.load(Ordering::Relaxed),
            "kdfs_total_estimated": self.kdfs_total.load(Ordering::Relaxed),
            "eta_seconds": self.eta_seconds().round() as u64,
            "elapsed_seconds": (secs * 10.0).round() / 10.0,
            "running": self.running_names(),
        })
    }
}

/// The reporter thread.
pub struct Reporter {
    counters: Arc<Counters>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Reporter {
    /// `json`: JSON lines; else a bar when stderr is a terminal and `bar` is allowed.
    pub fn start(counters: Arc<Counters>, json: bool, bar: bool) -> Reporter {
        use std::io::IsTerminal;
        let c = counters.clone();
        let handle = if json {
            Some(std::thread::spawn(move || json_lines(&c)))
        } else if bar && std::io::stderr().is_terminal() {
            Some(std::thread::spawn(move || draw_bar(&c)))
        } else {
            None
        };
        Reporter { counters, handle }
    }

    /// Stop (JSON: after one last event).
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.counters.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop();
    }
}

fn json_lines(c: &Counters) {
    let start = Instant::now();
    let mut last: Option<Instant> = None;
    loop {
        let stop = c.stop.load(Ordering::Relaxed);
        if stop || last.is_none_or(|l| l.elapsed() >= qbackup_console::progress::JSON_INTERVAL) {
            last = Some(Instant::now());
            qbackup_console::event("progress", c.fields(start.elapsed()));
        }
        if stop {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn draw_bar(c: &Counters) {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    while !c.stop.load(Ordering::Relaxed) {
        bar.set_length(c.total_bytes.load(Ordering::Relaxed));
        bar.set_position(c.done_bytes.load(Ordering::Relaxed));
        let eta = c.eta_seconds().round() as u64;
        bar.set_message(format!(
            "{}/{} archives, ETA {}:{:02}:{:02}",
            c.archives_done.load(Ordering::Relaxed),
            c.archives_total.load(Ordering::Relaxed),
            eta / 3600,
            eta % 3600 / 60,
            eta % 60
        ));
        std::thread::sleep(Duration::from_millis(200));
    }
    bar.finish_and_clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_counts_queued_and_running_work_over_the_parallel_archives() {
        let c = Counters::default();
        *c.queued_seconds.lock().unwrap() = 100.0;
        c.parallel.store(2, Ordering::Relaxed);
        c.running
            .lock()
            .unwrap()
            .insert(0, ("a".into(), Instant::now(), 20.0));
        let eta = c.eta_seconds();
        assert!((59.0..=60.0).contains(&eta), "{eta}");
        let f = c.fields(Duration::from_secs(1));
        assert_eq!(f["running"], json!(["a"]));
    }
}
