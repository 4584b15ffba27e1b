//! CPU cost of the gzip paths on the benchmark image's kinds of data (thread CPU time).
//! `cargo run --release -p qbackup-pack --example deflate_cost -- IMAGE OFFSET_MIB LEN_MIB`
use std::io::{Read, Seek, SeekFrom, Write};

fn cpu() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct it is given.
    unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let mut f = std::fs::File::open(&a[1]).unwrap();
    let off: u64 = a[2].parse().unwrap();
    let len: usize = a[3].parse().unwrap();
    f.seek(SeekFrom::Start(off << 20)).unwrap();
    let mut data = vec![0u8; len << 20];
    f.read_exact(&mut data).unwrap();
    for level in [6u32, 1, 0] {
        let t = cpu();
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level));
        for block in data.chunks(8 << 20) {
            e.write_all(block).unwrap();
        }
        let out = e.finish().unwrap();
        let dt = cpu() - t;
        println!(
            "level {level}: {:.2} s CPU for {len} MiB ({:.0} MiB/s), ratio {:.3}",
            dt,
            len as f64 / dt,
            out.len() as f64 / data.len() as f64
        );
    }
    let t = cpu();
    let mut n = 0usize;
    for seg in data.chunks(256 << 10) {
        n += usize::from(qbackup_pack::compress::incompressible(seg));
    }
    let dt = cpu() - t;
    println!(
        "probe: {:.3} s CPU ({:.0} MiB/s), {n} of {} segments incompressible",
        dt,
        len as f64 / dt,
        data.chunks(256 << 10).count()
    );
}
