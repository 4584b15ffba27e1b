//! A mock qubesd as a process, for benchmarks (`bench/restore-bench.py --into-qubes`):
//! starts [`qbackup_tests::mock_qubesd::MockQubesd`] with a typical host, prints the
//! environment that points `qbackup-pack` at it (`KEY=VALUE` lines, then `ready`), and
//! runs until its stdin closes. Not part of the product.

use std::io::{Read, Write};

use qbackup_tests::mock_qubesd::{Host, MockQubesd};

fn main() {
    let mock = MockQubesd::start(Host::typical());
    let mut out = std::io::stdout().lock();
    for (k, v) in mock.env() {
        let _ = writeln!(out, "{k}={v}");
    }
    let _ = writeln!(out, "ready");
    let _ = out.flush();
    drop(out);
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    let imports = mock.imports();
    eprintln!("mock-qubesd: {} imports", imports.len());
}
