//! Compression filters (SPEC.md CMP-1 … CMP-3).
//!
//! The header names a filter program (`gzip`, `bzip2`, `xz`, …) that upstream ran as
//! `PROG` / `PROG -d`. We map each name to the stream format that program writes and
//! decode it in-process. Decoders accept concatenated streams (as `gzip -d` does) and
//! refuse trailing garbage.

use std::io::{self, BufRead, Read};

use crate::error::{Error, ErrorClass, Result};
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

    /// Wrap `input` (authenticated, decrypted bytes) in this filter's decoder. Decoder
    /// errors are classified (CMP-1, CMP-3): a stream cut short is Truncated, a decoder
    /// memory demand above LIM-26 LimitExceeded, any other decoding error Malformed.
    pub fn decoder<'a, R: Read + Send + 'a>(self, input: R) -> Result<Box<dyn Read + Send + 'a>> {
        if self == Filter::None {
            return Ok(Box::new(input));
        }
        Ok(Box::new(Classified {
            inner: self.raw_decoder(input)?,
            filter: self,
        }))
    }

    fn raw_decoder<'a, R: Read + Send + 'a>(self, input: R) -> Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Filter::None => Box::new(input),
            Filter::Gzip => Box::new(GzipMembers {
                member: Some(flate2::bufread::GzDecoder::new(
                    io::BufReader::with_capacity(1 << 16, input),
                )),
            }),
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

/// One or more gzip members (CMP-1). After a member's trailer, the next byte must start
/// another member (`1f 8b`) or be the end: anything else is trailing garbage (CMP-3).
struct GzipMembers<R: BufRead> {
    member: Option<flate2::bufread::GzDecoder<R>>,
}

impl<R: BufRead> Read for GzipMembers<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(member) = self.member.as_mut() else {
                return Ok(0);
            };
            let n = member.read(buf)?;
            if n > 0 {
                return Ok(n);
            }
            let Some(member) = self.member.take() else {
                return Ok(0);
            };
            let mut rest = member.into_inner();
            let next = rest.fill_buf()?;
            match next {
                [] => return Ok(0),
                [0x1f] | [0x1f, 0x8b, ..] => {
                    self.member = Some(flate2::bufread::GzDecoder::new(rest));
                }
                _ => {
                    return Err(
                        Error::malformed("bytes after the end of the gzip stream (CMP-3)")
                            .into_io(),
                    )
                }
            }
        }
    }
}

/// The zstd error name for a frame whose window exceeds `window_log_max` (LIM-26).
const ZSTD_WINDOW_TOO_LARGE: &str = "Frame requires too much memory for decoding";

/// Classifies the raw decoders' I/O errors (CMP-1, CMP-3); errors already classified by
/// the layers below pass through.
struct Classified<'a> {
    inner: Box<dyn Read + Send + 'a>,
    filter: Filter,
}

impl Read for Classified<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| classify(self.filter, e))
    }
}

fn classify(filter: Filter, e: io::Error) -> io::Error {
    use io::ErrorKind;
    let Some(source) = e.get_ref() else {
        return match e.kind() {
            ErrorKind::UnexpectedEof => {
                Error::truncated(format!("the {} stream ends early (CMP-3)", filter.name()))
                    .into_io()
            }
            _ => e,
        };
    };
    if source.is::<Error>() {
        return e;
    }
    let lzma_memlimit = source
        .downcast_ref::<liblzma::stream::Error>()
        .is_some_and(|l| matches!(l, liblzma::stream::Error::MemLimit));
    let class = if lzma_memlimit || source.to_string() == ZSTD_WINDOW_TOO_LARGE {
        ErrorClass::LimitExceeded
    } else {
        match e.kind() {
            ErrorKind::UnexpectedEof => ErrorClass::Truncated,
            ErrorKind::InvalidData | ErrorKind::InvalidInput | ErrorKind::Other => {
                ErrorClass::Malformed
            }
            _ => return e,
        }
    };
    let what = match class {
        ErrorClass::LimitExceeded => "decoder memory above LIM-26",
        ErrorClass::Truncated => "stream ends early",
        _ => "invalid stream",
    };
    Error::new(class, format!("{} {what}: {e}", filter.name())).into_io()
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

    fn class_of(filter: Filter, data: &[u8]) -> ErrorClass {
        let mut sink = Vec::new();
        let e = filter
            .decoder(data)
            .unwrap()
            .read_to_end(&mut sink)
            .unwrap_err();
        Error::from_read(e, "x").class()
    }

    /// CMP-1, LIM-26: dictionaries and windows above the limit are limit-exceeded.
    #[test]
    fn decoder_memory_demands_are_limit_exceeded() {
        let mut alone = vec![0x5d, 0x00, 0x00, 0x00, 0x40];
        alone.extend_from_slice(&[0xff; 8]);
        alone.extend_from_slice(&[0u8; 32]);
        assert_eq!(class_of(Filter::Lzma, &alone), ErrorClass::LimitExceeded);
        // zstd frame header: magic, descriptor with single-segment off, window log 31.
        let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, (31 - 10) << 3];
        frame.extend_from_slice(&[0u8; 16]);
        assert_eq!(class_of(Filter::Zstd, &frame), ErrorClass::LimitExceeded);
    }

    /// CMP-3: a cut stream is truncated, bytes after a complete stream malformed.
    #[test]
    fn trailing_bytes_are_malformed_and_cut_streams_truncated() {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(b"hello hello hello").unwrap();
        let gz = e.finish().unwrap();
        for tail in [
            &b"junk"[..],
            b"\0",
            b"\0\0\0\0\0\0\0\0\0\0\0\0",
            b"\x1f\x8c",
        ] {
            let mut bad = gz.clone();
            bad.extend_from_slice(tail);
            assert_eq!(
                class_of(Filter::Gzip, &bad),
                ErrorClass::Malformed,
                "{tail:?}"
            );
        }
        assert_eq!(
            class_of(Filter::Gzip, &gz[..gz.len() - 3]),
            ErrorClass::Truncated
        );
        let z = zstd::encode_all(&b"hello hello hello"[..], 3).unwrap();
        let mut bad = z.clone();
        bad.extend_from_slice(b"junk");
        assert_eq!(class_of(Filter::Zstd, &bad), ErrorClass::Malformed);
        assert_eq!(
            class_of(Filter::Zstd, &z[..z.len() - 2]),
            ErrorClass::Truncated
        );
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
