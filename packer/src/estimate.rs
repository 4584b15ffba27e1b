//! `create --dry-run` and the free-space check of `create --out FILE`: what would be backed
//! up, and an estimate of the archive's size and of the time writing it takes.
//!
//! Upstream estimates from the volumes' sizes and usage and is badly off
//! (QubesOS/qubes-issues#5699): a thin volume's size says nothing of its data, and the
//! size says nothing of how well the data compresses, nor of the KDF run per chunk in
//! format 4. Here the data is measured: regular files by SEEK_DATA/SEEK_HOLE (exact), block
//! devices by sampling (up to [`SAMPLES`] windows of [`SAMPLE_LEN`] bytes per volume and
//! [`SAMPLE_BUDGET`] in all, all-zero blocks being holes, as the writer skips them). The samples are compressed with the chosen
//! filter and level; their ratio and CPU rate estimate the compressed size and the
//! compression time; one KDF run at the chosen cost times the key derivation (format 4
//! runs one per chunk). The result is an estimate, with an upper bound
//! (nothing compresses) that is exact for the stored data.

use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::Path;
use std::time::Instant;

use qbackup_format::crypto::scrypt_container::Params;
use serde_json::{json, Value};

use crate::compress::{Encode, Filter};
use crate::pipeline::{Format, Layout, Reads};
use crate::progress::Progress;
use crate::Failure;

/// Sample windows read per volume, at most.
pub const SAMPLES: u64 = 16;
/// Sample bytes read and compressed for a whole archive, at most (but one window per
/// volume): the check before every `create --out FILE` stays around a second.
pub const SAMPLE_BUDGET: u64 = 64 << 20;
/// Bytes per sample window.
pub const SAMPLE_LEN: u64 = 1 << 20;
/// Zero-block granularity of block devices (as `source::scan_runs`).
const BLOCK: usize = 4096;
/// Archive bytes per chunk besides its data: the chunk's tar header and padding, its
/// scrypt container header (v4), and its `.hmac` member (header and padded digest).
const CHUNK_OVERHEAD: u64 = 512 + 256 + 128 + 1024;
/// Per archive file: its inner tar headers (GNU sparse map, long names).
const FILE_OVERHEAD: u64 = 4096;
/// The archive's fixed members: backup-header, its `.hmac`, end-of-archive blocks.
const FIXED_OVERHEAD: u64 = 8192;

/// One archive file, measured.
#[derive(Debug, Clone, PartialEq)]
pub struct FileEstimate {
    pub vm: String,
    pub path: String,
    /// Logical bytes (holes included).
    pub logical: u64,
    /// Data bytes the writer stores (holes and, for block devices, zero blocks excluded;
    /// sampled for block devices).
    pub data: u64,
    /// Whether `data` is sampled rather than exact.
    pub sampled: bool,
}

/// What the samples said of the data.
#[derive(Debug, Default, Clone, Copy)]
struct Samples {
    raw: u64,
    compressed: u64,
    cpu_seconds: f64,
    read_bytes: u64,
    read_seconds: f64,
}

/// The dry run's answer.
#[derive(Debug, Clone)]
pub struct Estimate {
    pub files: Vec<FileEstimate>,
    pub data_bytes: u64,
    /// Compressed size over data size, from the samples (1 when there were none).
    pub ratio: f64,
    pub chunks: u64,
    /// Estimated archive size.
    pub archive_bytes: u64,
    /// The archive's size if nothing compressed.
    pub upper_bytes: u64,
    pub read_seconds: f64,
    pub compress_seconds: f64,
    pub kdf_seconds: f64,
    /// The pipeline overlaps reading, compression and KDFs: the slowest of them.
    pub seconds: f64,
}

/// How the archive would be written.
pub struct Setup<'a> {
    pub filter: Filter,
    pub level: u32,
    pub params: &'a Params,
    pub format: Format,
    pub chunk_size: usize,
    pub kdf_threads: usize,
    pub compress_threads: usize,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |e| Failure::io(format!("{}: {e}", path.display()))
}

/// Measure one volume or small file, sampling up to `windows` windows of its data into `s`.
fn measure(
    path: &Path,
    setup: &Setup<'_>,
    windows: u64,
    s: &mut Samples,
) -> Result<(u64, u64, bool), Failure> {
    let mut f = File::open(path).map_err(io(path))?;
    let block_dev = f
        .metadata()
        .map_err(io(path))?
        .file_type()
        .is_block_device();
    let (size, runs, sampled) = if block_dev {
        let size = f.seek(SeekFrom::End(0)).map_err(io(path))?;
        (size, vec![(0, size)], true)
    } else {
        // Exact data runs (SEEK_DATA/SEEK_HOLE, or a scan where unsupported).
        let (_, layout) = crate::source::open(path, &Progress::default()).map_err(io(path))?;
        (layout.size, layout.runs, false)
    };
    let data: u64 = runs.iter().map(|r| r.1).sum();
    if data == 0 {
        return Ok((size, 0, false));
    }
    let (mut zero, mut seen) = (0u64, 0u64);
    let windows = windows.clamp(1, SAMPLES).min(data.div_ceil(SAMPLE_LEN));
    let mut buf = vec![0u8; SAMPLE_LEN as usize];
    for k in 0..windows {
        // The k-th window, spread evenly over the data runs.
        let mut at = data / windows * k;
        let Some(&(start, len)) = runs.iter().find(|r| {
            let inside = at < r.1;
            if !inside {
                at -= r.1;
            }
            inside
        }) else {
            break;
        };
        let n = (len - at).min(SAMPLE_LEN) as usize;
        let t = Instant::now();
        f.read_exact_at(&mut buf[..n], start + at)
            .map_err(io(path))?;
        s.read_seconds += t.elapsed().as_secs_f64();
        s.read_bytes += n as u64;
        let mut kept = Vec::with_capacity(n);
        for b in buf[..n].chunks(BLOCK) {
            seen += 1;
            if block_dev && b.iter().all(|&x| x == 0) {
                zero += 1;
            } else {
                kept.extend_from_slice(b);
            }
        }
        let t = Instant::now();
        let mut enc = setup
            .filter
            .encoder(Vec::new(), setup.level)
            .map_err(io(path))?;
        std::io::Write::write_all(&mut enc, &kept).map_err(io(path))?;
        let out = enc.finish().map_err(io(path))?;
        s.cpu_seconds += t.elapsed().as_secs_f64();
        s.raw += kept.len() as u64;
        // The writer stores a block that does not shrink (CMP-1).
        s.compressed += (out.len() as u64).min(kept.len() as u64);
    }
    let data = if sampled && seen > 0 {
        (data as f64 * (seen - zero) as f64 / seen as f64) as u64
    } else {
        data
    };
    Ok((size, data, sampled))
}

/// Measure every archive file of `layout` and estimate the archive.
pub fn estimate(layout: &Layout<'_>, setup: &Setup<'_>) -> Result<Estimate, Failure> {
    let mut s = Samples::default();
    let mut files = Vec::new();
    let planned = layout.planned();
    let sources = planned
        .iter()
        .map(|(_, _, r)| match r {
            Reads::Sources(v) => v
                .iter()
                .filter(|d| matches!(d, crate::plan::Data::File(_)))
                .count() as u64,
            _ => 0,
        })
        .sum::<u64>();
    let windows = SAMPLE_BUDGET / SAMPLE_LEN / sources.max(1);
    for (path, vm, reads) in planned {
        let (mut logical, mut data, mut sampled) = (0u64, 0u64, false);
        match reads {
            Reads::Inline(n) => (logical, data) = (n as u64, n as u64),
            Reads::Sources(sources) => {
                for source in sources {
                    let p = match source {
                        crate::plan::Data::File(p) => p,
                        crate::plan::Data::Bytes(b) => {
                            logical += b.len() as u64;
                            data += b.len() as u64;
                            continue;
                        }
                        crate::plan::Data::Empty => continue,
                    };
                    let (l, d, smp) = measure(p, setup, windows, &mut s)?;
                    logical += l;
                    data += d;
                    sampled |= smp;
                }
            }
            Reads::Tree(home) => {
                let (bytes, _) = crate::source::tree_size(home).map_err(io(home))?;
                (logical, data) = (bytes, bytes);
            }
        }
        files.push(FileEstimate {
            vm: vm.to_string(),
            path: path.to_string(),
            logical,
            data,
            sampled,
        });
    }
    Ok(summarise(files, &s, setup, None))
}

/// Wall seconds of one KDF at `p` here, measured by running one (`--dry-run` only: it
/// takes as long as one chunk's KDF, ~5 s at the calibrated cost). Small-N calibration
/// runs stay in the CPU cache and would underestimate a KDF of 1 GiB or more.
pub fn measure_kdf(p: &Params) -> f64 {
    let Ok(sp) = scrypt::Params::new(p.log_n, p.r, p.p) else {
        return 0.0;
    };
    let mut out = [0u8; 64];
    let t = Instant::now();
    let _ = scrypt::scrypt(b"dry-run", b"qbackup estimate", &sp, &mut out);
    t.elapsed().as_secs_f64()
}

/// Format 4 runs one KDF per chunk, qubes.xml's included, plus the header's (V4-1), in
/// rounds of `kdf_threads`; format 3 none.
fn kdf_time(chunks: u64, setup: &Setup<'_>, one: f64) -> f64 {
    match setup.format {
        Format::V4 => (chunks + 1).div_ceil(setup.kdf_threads.max(1) as u64) as f64 * one,
        Format::V3 => 0.0,
    }
}

/// `kdf_one`: seconds per KDF, if measured; without it the time is not estimated.
fn summarise(
    files: Vec<FileEstimate>,
    s: &Samples,
    setup: &Setup<'_>,
    kdf_one: Option<f64>,
) -> Estimate {
    let ratio = if s.raw > 0 {
        s.compressed as f64 / s.raw as f64
    } else {
        1.0
    };
    let chunk = setup.chunk_size.max(1) as u64;
    let (mut chunks, mut compressed, mut upper) = (0u64, 0u64, 0u64);
    for f in &files {
        let c = (f.data as f64 * ratio).ceil() as u64 + FILE_OVERHEAD;
        compressed += c;
        upper += f.data + FILE_OVERHEAD;
        chunks += c.div_ceil(chunk).max(1);
    }
    let upper_chunks: u64 = files
        .iter()
        .map(|f| (f.data + FILE_OVERHEAD).div_ceil(chunk).max(1))
        .sum();
    let data_bytes: u64 = files.iter().map(|f| f.data).sum();
    let archive_bytes = compressed + chunks * CHUNK_OVERHEAD + FIXED_OVERHEAD;
    let upper_bytes = upper + upper_chunks * CHUNK_OVERHEAD + FIXED_OVERHEAD;
    let rate = |bytes: u64, secs: f64| if secs > 0.0 { bytes as f64 / secs } else { 0.0 };
    let read_rate = rate(s.read_bytes, s.read_seconds);
    let read_seconds = if read_rate > 0.0 {
        data_bytes as f64 / read_rate
    } else {
        0.0
    };
    let cpu_rate = rate(s.raw, s.cpu_seconds);
    let compress_seconds = if cpu_rate > 0.0 && setup.filter != Filter::None {
        data_bytes as f64 / cpu_rate / setup.compress_threads.max(1) as f64
    } else {
        0.0
    };
    let kdf_seconds = kdf_one.map_or(0.0, |one| kdf_time(chunks, setup, one));
    Estimate {
        files,
        data_bytes,
        ratio,
        chunks,
        archive_bytes,
        upper_bytes,
        read_seconds,
        compress_seconds,
        kdf_seconds,
        seconds: read_seconds.max(compress_seconds).max(kdf_seconds),
    }
}

impl Estimate {
    /// Add the key derivation time, from one KDF measured at `params` ([`measure_kdf`]).
    pub fn with_kdf_time(self, setup: &Setup<'_>, kdf_one: f64) -> Estimate {
        let kdf = kdf_time(self.chunks, setup, kdf_one);
        Estimate {
            kdf_seconds: kdf,
            seconds: self.seconds.max(kdf),
            ..self
        }
    }

    /// The JSON document of `create --dry-run --json`.
    pub fn to_json(&self, space: Option<&qbackup_destination::Space>) -> Value {
        qbackup_console::with_schema(json!({
            "command": "create",
            "dry_run": true,
            "files": self.files.iter().map(|f| json!({
                "vm": f.vm, "path": f.path, "logical_bytes": f.logical,
                "data_bytes": f.data, "sampled": f.sampled,
            })).collect::<Vec<Value>>(),
            "data_bytes": self.data_bytes,
            "compression_ratio": (self.ratio * 1000.0).round() / 1000.0,
            "chunks": self.chunks,
            "estimated_archive_bytes": self.archive_bytes,
            "max_archive_bytes": self.upper_bytes,
            "estimated_seconds": self.seconds.round() as u64,
            "read_seconds": self.read_seconds.round() as u64,
            "compress_seconds": self.compress_seconds.round() as u64,
            "kdf_seconds": self.kdf_seconds.round() as u64,
            "space": space.map(|s| json!({
                "available_bytes": s.available, "fits": self.archive_bytes <= s.usable(),
            })),
        }))
    }

    /// The human form of `create --dry-run`.
    pub fn human(&self, space: Option<(&Path, &qbackup_destination::Space)>) -> String {
        use qbackup_destination::human_bytes as h;
        let mut out = format!(
            "{:<24} {:<28} {:>12} {:>12}\n",
            "VM", "FILE", "SIZE", "DATA"
        );
        for f in &self.files {
            out += &format!(
                "{:<24} {:<28} {:>12} {:>12}{}\n",
                if f.vm.is_empty() { "-" } else { &f.vm },
                f.path,
                h(f.logical),
                h(f.data),
                if f.sampled { " (sampled)" } else { "" }
            );
        }
        out += &format!(
            "data: {}; compresses to about {:.0} % (sampled)\n",
            h(self.data_bytes),
            self.ratio * 100.0
        );
        out += &format!(
            "estimated archive: {} in {} chunks (at most {})\n",
            h(self.archive_bytes),
            self.chunks,
            h(self.upper_bytes)
        );
        out += &format!(
            "estimated time: {:.0} s (reading {:.0} s, compression {:.0} s, key derivation {:.0} s, overlapping)\n",
            self.seconds, self.read_seconds, self.compress_seconds, self.kdf_seconds
        );
        if let Some((dir, s)) = space {
            out += &format!(
                "{}: {} free, {}\n",
                dir.display(),
                h(s.available),
                if self.archive_bytes <= s.usable() {
                    "enough"
                } else {
                    "NOT enough"
                }
            );
        }
        out
    }
}

/// The directory `--out FILE` is written in.
pub fn out_dir(out: &Path) -> &Path {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(params: &Params, format: Format) -> Setup<'_> {
        Setup {
            filter: Filter::Gzip,
            level: 6,
            params,
            format,
            chunk_size: 100 << 20,
            kdf_threads: 2,
            compress_threads: 4,
        }
    }

    /// Chunks, overhead and the KDF term follow from the data, the ratio and the cost.
    #[test]
    fn the_estimate_adds_chunks_and_kdfs() {
        let params = Params {
            log_n: 20,
            r: 8,
            p: 1,
        };
        let files = vec![FileEstimate {
            vm: "work".into(),
            path: "vm3/private.img".into(),
            logical: 10 << 30,
            data: 1 << 30,
            sampled: false,
        }];
        let samples = Samples {
            raw: 100,
            compressed: 50,
            cpu_seconds: 1e-6,
            read_bytes: 1 << 20,
            read_seconds: 0.01,
        };
        // 1 s per KDF: 6 chunks and the header on 2 threads are 4 rounds.
        let e = summarise(
            files.clone(),
            &samples,
            &setup(&params, Format::V4),
            Some(1.0),
        );
        assert_eq!(e.chunks, 6); // 512 MiB + overhead in 100 MiB chunks
        assert!(e.archive_bytes > 512 << 20 && e.archive_bytes < (512 << 20) + (1 << 20));
        assert!(e.upper_bytes > 1 << 30);
        assert!((e.kdf_seconds - 4.0).abs() < 1e-9, "{}", e.kdf_seconds);
        assert!((e.read_seconds - 10.24).abs() < 0.01, "{}", e.read_seconds);
        assert_eq!(
            e.seconds,
            e.read_seconds.max(e.compress_seconds).max(e.kdf_seconds)
        );
        let v3 = summarise(
            files.clone(),
            &samples,
            &setup(&params, Format::V3),
            Some(1.0),
        );
        assert_eq!(v3.kdf_seconds, 0.0);
        // Without a measured KDF the time is the data path's; with it, the slowest part.
        let e = summarise(files, &samples, &setup(&params, Format::V4), None);
        assert_eq!(e.kdf_seconds, 0.0);
        let e = e.with_kdf_time(&setup(&params, Format::V4), 10.0);
        assert!((e.kdf_seconds - 40.0).abs() < 1e-9 && e.seconds == e.kdf_seconds);
    }

    /// A sparse file is measured exactly (its data, not its size); random data does not
    /// compress, zeros do.
    #[test]
    fn files_are_measured_by_their_data() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        let f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        let mut data = vec![0u8; 2 << 20];
        getrandom::fill(&mut data[..1 << 20]).unwrap();
        f.write_all_at(&data, 8 << 20).unwrap();
        drop(f);
        let params = Params {
            log_n: 10,
            r: 8,
            p: 1,
        };
        let mut s = Samples::default();
        let (size, stored, sampled) =
            measure(&p, &setup(&params, Format::V4), SAMPLES, &mut s).unwrap();
        assert_eq!(size, 64 << 20);
        assert!(!sampled);
        // SEEK_DATA may round to the file system's blocks, never to the whole file.
        assert!((2 << 20..=4 << 20).contains(&stored), "{stored}");
        assert!(s.raw >= 2 << 20 && s.compressed > 1 << 20 && s.compressed < s.raw);
    }
}
