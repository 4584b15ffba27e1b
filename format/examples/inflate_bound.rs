//! Inflate bound for benchmarks: how fast this build's gzip decoder (flate2 on zlib-rs, the
//! one `qbackup-verify` uses) inflates a plain gzip file, with nothing else in the way.
//!
//! Usage: `cargo run --release -p qbackup-format --example inflate_bound -- FILE.gz`
//! Prints: `<compressed bytes> <seconds>`.

use std::io::Read;

use qbackup_format::compression::Filter;

fn main() {
    let Some(path) = std::env::args_os().nth(1) else {
        eprintln!("usage: inflate_bound FILE.gz");
        std::process::exit(2);
    };
    #[allow(clippy::disallowed_methods)] // an example binary, not the library
    let data = std::fs::read(&path).unwrap_or_else(|e| {
        eprintln!("reading {}: {e}", path.to_string_lossy());
        std::process::exit(1);
    });
    #[allow(clippy::disallowed_methods)]
    let started = std::time::Instant::now();
    let mut decoder = Filter::Gzip.decoder(&data[..]).unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(1);
    });
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        match decoder.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) => {
                eprintln!("inflating: {e}");
                std::process::exit(1);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!("{} {secs:.3} {total}", data.len());
}
