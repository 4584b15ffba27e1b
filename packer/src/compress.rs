//! In-process compression filters (SPEC.md CMP-1): each writes the format the program
//! named in the header writes, so `gzip -d`, `bzip2 -d`, `xz -d`, `zstd -d` read it.

use std::io::{self, Write};

/// A compression filter and its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    None,
    Gzip,
    Bzip2,
    Xz,
    Zstd,
}

impl Filter {
    pub fn parse(s: &str) -> Option<Filter> {
        Some(match s {
            "none" => Filter::None,
            "gzip" => Filter::Gzip,
            "bzip2" => Filter::Bzip2,
            "xz" => Filter::Xz,
            "zstd" => Filter::Zstd,
            _ => return None,
        })
    }

    /// The header's `compression-filter` value, `None` when uncompressed.
    pub fn header_name(self) -> Option<&'static str> {
        match self {
            Filter::None => None,
            Filter::Gzip => Some("gzip"),
            Filter::Bzip2 => Some("bzip2"),
            Filter::Xz => Some("xz"),
            Filter::Zstd => Some("zstd"),
        }
    }

    /// The program's default level (`gzip` 6, `bzip2` 9, `xz` 6, `zstd` 3).
    pub fn default_level(self) -> u32 {
        match self {
            Filter::None => 0,
            Filter::Gzip | Filter::Xz => 6,
            Filter::Bzip2 => 9,
            Filter::Zstd => 3,
        }
    }

    /// Wrap `w` in this filter's encoder.
    pub fn encoder<W: Write>(self, w: W, level: u32) -> io::Result<Encoder<W>> {
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
