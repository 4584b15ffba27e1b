#!/usr/bin/env python3
"""Benchmark the static release binaries (dist/build.sh: glibc `crt-static`) against the
dynamic ones (cargo build --release) on `qbackup-verify verify` of the same archive,
sandbox enforced.

Why glibc and not musl: the sandbox's rlimit table uses glibc's `__rlimit_resource_t`
(verifier/src/sandbox/policy.rs), so the musl target does not even compile today, and
musl's allocator is the known slow path of static Rust programs; glibc `crt-static`
needs no other toolchain.

Target (issue 12): the static build within 5 % of the dynamic one in wall time and in
peak memory (max RSS), median of --runs alternating runs. This is a measurement, not a
CI test (dist/check.sh checks that the static binaries give the same output, sandboxed).

The archive (cached under bench/out/) is written by the dynamic `qbackup-pack create`:
a VM image with --size-mib MiB of data (40 % random, the rest text, plus holes), gzip,
scrypt logN --log-n (14: the KDFs do not drown the data path; 20: what a real backup pays).

Usage: bench/static-bench.py [--size-mib 512] [--log-n 14] [--runs 5]
"""
import argparse, os, statistics, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import OUT, PASS, ROOT, make_image, sh, write_plan  # noqa: E402

TARGET_PERCENT = 5.0


def host_triple():
    out = subprocess.run(["rustc", "-vV"], capture_output=True, text=True, check=True).stdout
    return next(l.split()[1] for l in out.splitlines() if l.startswith("host:"))


def archive(size_mib, log_n, pack):
    path = os.path.join(OUT, f"static-bench-{size_mib}m-logn{log_n}.bin")
    if os.path.exists(path):
        return path
    os.makedirs(OUT, exist_ok=True)
    img = os.path.join(OUT, "static-bench.img")
    make_image(img, size_mib, 40)
    plan = os.path.join(OUT, "static-bench-plan.json")
    write_plan(plan, img)
    env = dict(os.environ, QBACKUP_PASSPHRASE=PASS)
    subprocess.run([pack, "create", "--plan", plan, "--out", path, "--scrypt-log-n", str(log_n),
                    "--no-progress", "--no-space-check"], env=env, check=True)
    os.unlink(img)
    return path


def run_once(binary, path):
    """Wall seconds and max RSS (KiB) of one sandboxed `verify`."""
    env = dict(os.environ, QBACKUP_PASSPHRASE=PASS)
    t0 = time.monotonic()
    p = subprocess.Popen([binary, "verify", "--no-progress", path], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    err = p.stderr.read().decode()
    p.stderr.close()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        sys.exit(f"{binary} verify exited {p.returncode}: {err}")
    return wall, usage.ru_maxrss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-mib", type=int, default=512)
    ap.add_argument("--log-n", type=int, default=14)
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    os.chdir(ROOT)
    triple = host_triple()
    sh("cargo build --release --locked -p qbackup-verify -p qbackup-pack --bin qbackup-verify --bin qbackup-pack")
    sh("dist/build.sh > /dev/null")
    builds = {
        "dynamic": "target/release/qbackup-verify",
        "static-glibc": f"target/{triple}/release/qbackup-verify",
    }
    path = archive(a.size_mib, a.log_n, "target/release/qbackup-pack")
    print(f"archive: {path} ({os.path.getsize(path) >> 20} MiB), {a.runs} runs each, alternating")
    for b in builds.values():
        run_once(b, path)  # warm the page cache
    results = {k: [] for k in builds}
    for _ in range(a.runs):
        for k, b in builds.items():
            results[k].append(run_once(b, path))
    base_t = statistics.median(w for w, _ in results["dynamic"])
    base_m = statistics.median(m for _, m in results["dynamic"])
    ok = True
    print(f"{'build':<14} {'median s':>9} {'min s':>7} {'max s':>7} {'RSS MiB':>8} {'time':>7} {'RSS':>7}")
    for k, r in results.items():
        t = statistics.median(w for w, _ in r)
        m = statistics.median(m for _, m in r)
        dt, dm = (t / base_t - 1) * 100, (m / base_m - 1) * 100
        print(f"{k:<14} {t:9.3f} {min(w for w, _ in r):7.3f} {max(w for w, _ in r):7.3f} "
              f"{m / 1024:8.1f} {dt:+6.1f}% {dm:+6.1f}%")
        if k == "static-glibc" and (dt > TARGET_PERCENT or dm > TARGET_PERCENT):
            ok = False
    print(f"target: static-glibc within {TARGET_PERCENT:.0f} % of dynamic: {'met' if ok else 'NOT met'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
