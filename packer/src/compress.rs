//! In-process compression filters (SPEC.md CMP-1): each writes the format the program
//! named in the header writes, so `gzip -d`, `bzip2 -d`, `xz -d`, `zstd -d` read it.

use std::io::{self, Write};

pub use qbackup_format::compression::Filter;

/// The writing side of a [`Filter`] (the format crate knows how to read each one).
pub trait Encode: Sized {
    /// The `--compression` values the packer writes: `none` and the four filters every
    /// upstream restore knows (not the legacy `lzma`).
    fn for_writing(name: &str) -> Option<Self>;
    /// The header's `compression-filter` value, `None` when uncompressed.
    fn header_name(self) -> Option<&'static str>;
    /// The program's default level (`gzip` 6, `bzip2` 9, `xz` 6, `zstd` 3).
    fn default_level(self) -> u32;
    /// Wrap `w` in this filter's encoder.
    fn encoder<W: Write>(self, w: W, level: u32) -> io::Result<Encoder<W>>;
}

impl Encode for Filter {
    fn for_writing(name: &str) -> Option<Filter> {
        match name {
            "none" => Some(Filter::None),
            "gzip" | "bzip2" | "xz" | "zstd" => Filter::from_header(true, Some(name)).ok(),
            _ => None,
        }
    }

    fn header_name(self) -> Option<&'static str> {
        (self != Filter::None).then(|| self.name())
    }

    fn default_level(self) -> u32 {
        match self {
            Filter::None => 0,
            Filter::Gzip | Filter::Xz | Filter::Lzma => 6,
            Filter::Bzip2 => 9,
            Filter::Zstd => 3,
        }
    }

    fn encoder<W: Write>(self, w: W, level: u32) -> io::Result<Encoder<W>> {
        Ok(match self {
            Filter::None => Encoder::None(w),
            Filter::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                w,
                flate2::Compression::new(level.min(9)),
            )),
            Filter::Bzip2 => Encoder::Bzip2(bzip2::write::BzEncoder::new(
                w,
                bzip2::Compression::new(level.clamp(1, 9)),
            )),
            Filter::Xz => Encoder::Xz(liblzma::write::XzEncoder::new(w, level.min(9))),
            Filter::Zstd => Encoder::Zstd(zstd::Encoder::new(w, level.min(19) as i32)?),
            Filter::Lzma => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the packer does not write the legacy lzma format",
                ))
            }
        })
    }
}

/// A running encoder; [`Encoder::finish`] ends the stream and returns the writer.
pub enum Encoder<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Bzip2(bzip2::write::BzEncoder<W>),
    Xz(liblzma::write::XzEncoder<W>),
    Zstd(zstd::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Bzip2(e) => e.finish(),
            Encoder::Xz(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Bzip2(e) => e.write(buf),
            Encoder::Xz(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Input bytes per independently compressed block of [`ParallelEncoder`].
pub const BLOCK: usize = 8 << 20;

type Job = (
    Vec<u8>,
    Filter,
    u32,
    crossbeam_channel::Sender<io::Result<Vec<u8>>>,
);

/// Compression threads shared by all files of an archive.
pub struct Pool {
    jobs: Option<crossbeam_channel::Sender<Job>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    width: usize,
}

impl Pool {
    pub fn new(threads: usize) -> Pool {
        let threads = threads.max(1);
        let (tx, rx) = crossbeam_channel::bounded::<Job>(threads);
        let handles = (0..threads)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    for (input, filter, level, reply) in rx {
                        let out = filter
                            .encoder(Vec::with_capacity(input.len() / 2), level)
                            .and_then(|mut e| e.write_all(&input).and_then(|()| e.finish()));
                        let _ = reply.send(out);
                    }
                })
            })
            .collect();
        Pool {
            jobs: Some(tx),
            threads: handles,
            width: threads,
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.jobs.take();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// pigz-style compression: the input is cut into [`BLOCK`]-byte blocks, each compressed
/// on the pool as a complete gzip member / bzip2 stream / xz stream / zstd frame, and the
/// results are written to `out` in order. Concatenated members form one stream in the
/// sense of SPEC.md CMP-3, which `gzip -d` (etc.) and the verifier read. At most
/// pool-width + 1 blocks are in flight.
pub struct ParallelEncoder<'p, W: Write> {
    pool: &'p Pool,
    filter: Filter,
    level: u32,
    out: W,
    buf: Vec<u8>,
    pending: std::collections::VecDeque<crossbeam_channel::Receiver<io::Result<Vec<u8>>>>,
    blocks: u64,
}

impl<'p, W: Write> ParallelEncoder<'p, W> {
    pub fn new(pool: &'p Pool, filter: Filter, level: u32, out: W) -> Self {
        ParallelEncoder {
            pool,
            filter,
            level,
            out,
            buf: Vec::with_capacity(BLOCK),
            pending: std::collections::VecDeque::new(),
            blocks: 0,
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        let input = std::mem::replace(&mut self.buf, Vec::with_capacity(BLOCK));
        let (tx, rx) = crossbeam_channel::bounded(1);
        let jobs = self
            .pool
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("compression pool closed"))?;
        jobs.send((input, self.filter, self.level, tx))
            .map_err(|_| io::Error::other("compression pool stopped"))?;
        self.pending.push_back(rx);
        self.blocks += 1;
        while self.pending.len() > self.pool.width {
            self.drain_one()?;
        }
        Ok(())
    }

    fn drain_one(&mut self) -> io::Result<()> {
        if let Some(rx) = self.pending.pop_front() {
            let block = rx
                .recv()
                .map_err(|_| io::Error::other("compression worker stopped"))??;
            self.out.write_all(&block)?;
        }
        Ok(())
    }

    /// Compress what is left (at least one block, so the stream is never empty) and
    /// return the writer.
    pub fn finish(mut self) -> io::Result<W> {
        if !self.buf.is_empty() || self.blocks == 0 {
            self.submit()?;
        }
        while !self.pending.is_empty() {
            self.drain_one()?;
        }
        Ok(self.out)
    }
}

impl<W: Write> Write for ParallelEncoder<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let take = (BLOCK - self.buf.len()).min(data.len());
        self.buf.extend_from_slice(&data[..take]);
        if self.buf.len() == BLOCK {
            self.submit()?;
        }
        Ok(take)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The encoder of one file: in-line for `none`, else parallel blocks.
pub enum FileEncoder<'p, W: Write> {
    Plain(W),
    Parallel(ParallelEncoder<'p, W>),
}

impl<W: Write> FileEncoder<'_, W> {
    pub fn finish(self) -> io::Result<W> {
        match self {
            FileEncoder::Plain(w) => Ok(w),
            FileEncoder::Parallel(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for FileEncoder<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        match self {
            FileEncoder::Plain(w) => w.write(data),
            FileEncoder::Parallel(e) => e.write(data),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
