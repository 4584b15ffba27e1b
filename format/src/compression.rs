//! Compression filters (SPEC.md CMP-1 … CMP-3).
//!
//! The header names a filter program (`gzip`, `bzip2`, `xz`, …) that upstream ran as
//! `PROG` / `PROG -d`. We map each name to the stream format that program writes and
//! decode it in-process. Decoders accept concatenated streams (as `gzip -d` does) and
//! refuse trailing garbage.

use std::io::{self, Read};

use crate::error::{Error, Result};
use crate::limits::MAX_DECODER_MEMORY;

/// The stream format behind a filter name (CMP-1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// `compressed=False` (CMP-2).
    None,
    /// `gzip`, `pigz`.
    Gzip,
    /// `bzip2`, `pbzip2`.
    Bzip2,
    /// `xz`.
    Xz,
    /// `lzma` (the legacy `.lzma` "alone" format).
    Lzma,
    /// `zstd`, `zstdmt`.
    Zstd,
}

impl Filter {
    /// Map a header's `compression-filter` value (CMP-1). Unknown programs are
    /// unsupported: we cannot know what format they wrote.
    pub fn from_header(compressed: bool, filter: Option<&str>) -> Result<Filter> {
        if !compressed {
            return Ok(Filter::None);
        }
        let name = filter.ok_or_else(|| Error::malformed("compressed backup names no filter"))?;
        Ok(match name {
            "gzip" | "pigz" => Filter::Gzip,
            "bzip2" | "pbzip2" => Filter::Bzip2,
            "xz" => Filter::Xz,
            "lzma" => Filter::Lzma,
            "zstd" | "zstdmt" => Filter::Zstd,
            other => {
                return Err(Error::unsupported(format!(
                    "compression filter {other:?} is not supported (CMP-1)"
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Filter::None => "none",
            Filter::Gzip => "gzip",
            Filter::Bzip2 => "bzip2",
            Filter::Xz => "xz",
            Filter::Lzma => "lzma",
            Filter::Zstd => "zstd",
        }
    }

    /// Wrap `input` (authenticated, decrypted bytes) in this filter's decoder.
    pub fn decoder<'a, R: Read + Send + 'a>(self, input: R) -> Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Filter::None => Box::new(input),
            Filter::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
                io::BufReader::with_capacity(1 << 16, input),
            )),
            Filter::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(input)),
            Filter::Xz => {
                // LIM-26 bounds the dictionary; CONCATENATED accepts `xz` multi-stream files.
                let stream = liblzma::stream::Stream::new_stream_decoder(
                    MAX_DECODER_MEMORY,
                    liblzma::stream::CONCATENATED,
                )
                .map_err(|e| Error::malformed(format!("xz decoder: {e}")))?;
                Box::new(liblzma::read::XzDecoder::new_stream(input, stream))
            }
            Filter::Lzma => {
                let stream = liblzma::stream::Stream::new_lzma_decoder(MAX_DECODER_MEMORY)
                    .map_err(|e| Error::malformed(format!("lzma decoder: {e}")))?;
                Box::new(liblzma::read::XzDecoder::new_stream(input, stream))
            }
            Filter::Zstd => {
                let mut decoder = zstd::stream::read::Decoder::new(input)
                    .map_err(|e| Error::from_read(e, "zstd decoder"))?;
                // LIM-26: the window may not exceed 2^28 bytes.
                decoder
                    .window_log_max(MAX_DECODER_MEMORY.ilog2())
                    .map_err(|e| Error::from_read(e, "zstd decoder"))?;
                Box::new(decoder)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn names_map_to_formats() {
        assert_eq!(
            Filter::from_header(false, Some("bogus")).unwrap(),
            Filter::None
        );
        assert_eq!(
            Filter::from_header(true, Some("pigz")).unwrap(),
            Filter::Gzip
        );
        assert_eq!(
            Filter::from_header(true, Some("zstdmt")).unwrap(),
            Filter::Zstd
        );
        let e = Filter::from_header(true, Some("less")).unwrap_err();
        assert_eq!(e.class(), crate::ErrorClass::Unsupported);
    }

    /// Fuzz finding F4: a 13-byte `.lzma` header asking for a 4 GiB dictionary is refused
    /// by LIM-26 instead of being allocated.
    #[test]
    fn decoder_memory_is_bounded() {
        let mut alone = vec![0x5d, 0xff, 0xff, 0xff, 0xff];
        alone.extend_from_slice(&[0xff; 8]);
        alone.extend_from_slice(&[0u8; 32]);
        let mut sink = Vec::new();
        assert!(Filter::Lzma
            .decoder(&alone[..])
            .unwrap()
            .read_to_end(&mut sink)
            .is_err());
        // An xz filter does not accept the legacy format at all.
        assert!(Filter::Xz
            .decoder(&alone[..])
            .unwrap()
            .read_to_end(&mut sink)
            .is_err());
    }

    #[test]
    fn gzip_members_concatenate_and_garbage_is_refused() {
        let gz = |data: &[u8]| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        };
        let mut two = gz(b"hello ");
        two.extend(gz(b"world"));
        let mut out = String::new();
        Filter::Gzip
            .decoder(&two[..])
            .unwrap()
            .read_to_string(&mut out)
            .unwrap();
        assert_eq!(out, "hello world");
        let mut bad = gz(b"hello");
        bad.extend_from_slice(b"garbage!");
        let mut sink = Vec::new();
        assert!(Filter::Gzip
            .decoder(&bad[..])
            .unwrap()
            .read_to_end(&mut sink)
            .is_err());
    }
}
