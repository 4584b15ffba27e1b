//! The default KDF cost: what `scrypt enc` picks (format-notes §5.2): at most 1/8 of the
//! RAM and about 5 s of this machine's CPU, measured once per archive.

use std::time::Duration;

use qbackup_format::crypto::scrypt_container::Params;

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Physical memory in bytes (1 GiB when the system does not say).
pub fn physical_memory() -> u64 {
    qbackup_bigalloc::physical_memory().unwrap_or(1 << 30)
}

/// salsa20/8 cores per CPU second, measured with small scrypt runs.
fn salsa_per_second() -> f64 {
    let mut log_n = 12u8;
    loop {
        let p = scrypt::Params::new(log_n, 8, 1).unwrap_or_else(|_| unreachable!("valid"));
        let mut out = [0u8; 64];
        let t0 = thread_cpu();
        let _ = scrypt::scrypt(b"calibration", b"salt", &p, &mut out);
        let t = thread_cpu().saturating_sub(t0).as_secs_f64();
        // scrypt runs 4·N·r salsa20/8 cores per p.
        let ops = 4.0 * f64::from(1u32 << log_n) * 8.0;
        if t > 0.1 || log_n >= 18 {
            return ops / t.max(1e-6);
        }
        log_n += 1;
    }
}

/// `scrypt enc`'s choice for 5 s and 1/8 of the RAM, with r = 8.
pub fn calibrate() -> Params {
    let memlimit = (physical_memory() / 8).max(1 << 20) as f64;
    let opslimit = (salsa_per_second() * 5.0).max(32768.0);
    let r = 8.0;
    let (max_n, p) = if opslimit < memlimit / 32.0 {
        (opslimit / (r * 4.0), 1u32)
    } else {
        (memlimit / (r * 128.0), 0)
    };
    let mut log_n = 1u8;
    while log_n < 40 && 2f64.powi(i32::from(log_n)) <= max_n / 2.0 {
        log_n += 1;
    }
    let p = if p == 1 {
        1
    } else {
        let max_rp = (opslimit / 4.0) / 2f64.powi(i32::from(log_n));
        ((max_rp / r) as u32).clamp(1, 1 << 16)
    };
    Params { log_n, r: 8, p }
}

/// logN when only r or p is given explicitly: the calibrated one.
pub fn calibrate_log_n_default() -> u8 {
    calibrate().log_n
}
