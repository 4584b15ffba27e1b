//! A SeaweedFS S3 server on 127.0.0.1 as a process, for benchmarks
//! (`bench/audit-bench.py`): starts [`qbackup_tests::seaweed::S3Server`], creates BUCKET,
//! uploads each FILE as `PREFIX/<file name>`, prints the `AWS_*` environment that points a
//! client at it (`KEY=VALUE` lines, then `ready`), and runs until its stdin closes. Not part
//! of the product.
//!
//! Usage: s3-server BUCKET PREFIX [FILE...]

use std::io::{Read, Write};
use std::path::Path;

use qbackup_tests::seaweed::S3Server;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bucket, prefix, files @ ..] = args.as_slice() else {
        eprintln!("usage: s3-server BUCKET PREFIX [FILE...]");
        std::process::exit(2);
    };
    let server = S3Server::start();
    server.create_bucket(bucket);
    for f in files {
        let name = Path::new(f)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("{f}: {e}"));
        server.put(
            bucket,
            &format!("{prefix}/{}", name.unwrap_or_default()),
            &data,
        );
    }
    let mut out = std::io::stdout().lock();
    for (k, v) in server.env() {
        let _ = writeln!(out, "{k}={v}");
    }
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    drop(out);
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
}
