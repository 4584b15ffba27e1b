//! Progress on stderr, for every command that reads or writes an archive (`create`,
//! `verify`, `list`, `extract`, `emit`, `restore`'s verifier child): an indicatif bar on a
//! terminal, or one JSON `progress` event per half second (`--progress-json`, README
//! "JSON output"). A reporter thread samples shared counters, so the data path only adds
//! to atomics.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How often a JSON `progress` event is written.
pub const JSON_INTERVAL: Duration = Duration::from_millis(500);

/// How often the bar is redrawn.
const BAR_INTERVAL: Duration = Duration::from_millis(200);

/// `total` while it is unknown (an archive on a pipe).
const UNKNOWN: u64 = u64::MAX;

/// Shared counters, updated by the data path and read by the reporter thread.
#[derive(Debug)]
pub struct Progress {
    /// Bytes processed: archive bytes read (verifier), or logical input bytes (packer;
    /// holes count when skipped).
    done: AtomicU64,
    /// Bytes to process, or [`UNKNOWN`].
    total: AtomicU64,
    /// Archive bytes written (`create` only: see [`Progress::writer`]).
    written: Option<AtomicU64>,
    vm: Mutex<String>,
    file: Mutex<String>,
    stop: AtomicBool,
}

impl Default for Progress {
    fn default() -> Progress {
        Progress {
            done: AtomicU64::new(0),
            total: AtomicU64::new(UNKNOWN),
            written: None,
            vm: Mutex::new(String::new()),
            file: Mutex::new(String::new()),
            stop: AtomicBool::new(false),
        }
    }
}

impl Progress {
    /// Counters for a command that writes an archive: its events carry `written_bytes`.
    pub fn writer() -> Progress {
        Progress {
            written: Some(AtomicU64::new(0)),
            ..Progress::default()
        }
    }
    pub fn set_total(&self, t: u64) {
        self.total.store(t, Ordering::Relaxed);
    }
    pub fn total(&self) -> Option<u64> {
        Some(self.total.load(Ordering::Relaxed)).filter(|&t| t != UNKNOWN)
    }
    pub fn advance(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
    /// Set the bytes processed so far (a reader that counts itself).
    pub fn set_done(&self, n: u64) {
        self.done.store(n, Ordering::Relaxed);
    }
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
    /// Bytes read while looking for holes (not counted as progress).
    pub fn scanned(&self, _n: u64) {}
    pub fn wrote(&self, n: u64) {
        if let Some(w) = &self.written {
            w.fetch_add(n, Ordering::Relaxed);
        }
    }
    pub fn written(&self) -> u64 {
        self.written
            .as_ref()
            .map_or(0, |w| w.load(Ordering::Relaxed))
    }
    pub fn set_vm(&self, vm: &str) {
        if let Ok(mut g) = self.vm.lock() {
            if *g != vm {
                vm.clone_into(&mut g);
            }
        }
    }
    /// The file being processed, below its VM (`private.img`, `user/.bashrc`).
    pub fn set_file(&self, file: &str) {
        if let Ok(mut g) = self.file.lock() {
            if *g != file {
                file.clone_into(&mut g);
            }
        }
    }
    fn vm(&self) -> String {
        self.vm.lock().map(|g| g.clone()).unwrap_or_default()
    }
    fn file(&self) -> String {
        self.file.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// The fields of a `progress` event, `elapsed` after the start.
    pub fn fields(&self, elapsed: Duration) -> Value {
        let done = self.done();
        let total = self.total();
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
        let (percent, eta) = match total {
            Some(t) if t > 0 => {
                let left = t.saturating_sub(done);
                let pct = (done.min(t) as f64 * 100.0 / t as f64 * 10.0).round() / 10.0;
                let eta = (rate > 0.0).then(|| (left as f64 / rate).round() as u64);
                (Some(pct), eta)
            }
            Some(_) => (Some(100.0), Some(0)),
            None => (None, None),
        };
        let mut v = json!({
            "done_bytes": done,
            "total_bytes": total,
            "percent": percent,
            "bytes_per_second": rate.round() as u64,
            "eta_seconds": eta,
            "elapsed_seconds": (secs * 10.0).round() / 10.0,
            "vm": self.vm(),
            "file": self.file(),
        });
        if self.written.is_some() {
            v["written_bytes"] = json!(self.written());
        }
        v
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Off,
    Bar,
    Json,
}

impl Mode {
    /// `--progress-json` wins; else a bar when stderr is a terminal and not `--no-progress`.
    pub fn choose(json: bool, no_progress: bool) -> Mode {
        use std::io::IsTerminal;
        if json {
            Mode::Json
        } else if !no_progress && std::io::stderr().is_terminal() {
            Mode::Bar
        } else {
            Mode::Off
        }
    }
}

/// The reporter thread; [`Reporter::finish`] stops it after a last report.
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
            Mode::Json => Some(std::thread::spawn(move || json_lines(&p))),
        };
        Reporter { progress, handle }
    }

    /// Stop the thread; in JSON mode it writes one last `progress` event first.
    pub fn finish(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.progress.stop.store(true, Ordering::Relaxed);
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

fn bar(p: &Progress) {
    let bar = indicatif::ProgressBar::new(p.total().unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:12} {bytes}/{total_bytes} {wide_bar} {binary_bytes_per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    while !p.stop.load(Ordering::Relaxed) {
        match p.total() {
            Some(t) => bar.set_length(t),
            None => bar.unset_length(),
        }
        bar.set_position(p.done());
        bar.set_message(p.vm());
        std::thread::sleep(BAR_INTERVAL);
    }
    bar.finish_and_clear();
}

fn json_lines(p: &Progress) {
    let start = Instant::now();
    let mut last: Option<Instant> = None;
    loop {
        let stop = p.stop.load(Ordering::Relaxed);
        if stop || last.is_none_or(|l| l.elapsed() >= JSON_INTERVAL) {
            last = Some(Instant::now());
            crate::event("progress", p.fields(start.elapsed()));
        }
        if stop {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_give_percent_and_eta_from_the_rate() {
        let p = Progress::default();
        p.set_total(1000);
        p.set_done(250);
        p.set_vm("work");
        p.set_file("private.img");
        let f = p.fields(Duration::from_secs(1));
        assert_eq!(f["percent"], json!(25.0));
        assert_eq!(f["bytes_per_second"], json!(250));
        assert_eq!(f["eta_seconds"], json!(3));
        assert_eq!(
            (f["vm"].as_str(), f["file"].as_str()),
            (Some("work"), Some("private.img"))
        );
        assert!(f.get("written_bytes").is_none());
    }

    #[test]
    fn an_unknown_total_has_no_percent_and_a_writer_counts_output() {
        let p = Progress::writer();
        p.advance(10);
        p.wrote(7);
        let f = p.fields(Duration::from_secs(2));
        assert_eq!(f["total_bytes"], Value::Null);
        assert_eq!(f["percent"], Value::Null);
        assert_eq!(f["eta_seconds"], Value::Null);
        assert_eq!(f["written_bytes"], json!(7));
        assert_eq!(f["done_bytes"], json!(10));
    }
}
