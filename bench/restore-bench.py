#!/usr/bin/env python3
"""Benchmark the split restore against `extract` on the same archive (issue: the split
restore at the speed of extract).

Builds (once, cached under bench/out/, by verify-bench.py's builder) a realistic v4 archive
(scrypt at --log-n, default 12; gzip) or a v3 archive, then times in one run, alternating,
`--runs` times each:

  extract: `qbackup-verify extract --to DIR ARCHIVE` (one sandboxed process);
  restore: `qbackup-pack restore ARCHIVE --to DIR` (the privileged consumer plus its
           sandboxed `qbackup-verify emit -` child, SPEC.md §21/§23);

  into-qubes: `qbackup-pack restore ARCHIVE --into-qubes --yes` against the mock qubesd
           (tests' `mock-qubesd` binary, a fresh host per run): the VM created through the
           Admin API socket and its volume streamed into the import script, which writes it
           to a file as dd writes an LVM volume (SPEC.md §27);

and prints the best wall time of each, CPU, peak RSS (restore: of the consumer and of the
verifier child, measured separately) and the ratios restore / extract and into-qubes /
extract. Targets: <= 1.15 each.

Usage: bench/restore-bench.py [--version 4|3] [--log-n 12] [--size-mib 1024] [--runs 3]
"""
import argparse, importlib.util, os, shutil, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchlib import OUT, PASS, ROOT, sh  # noqa: E402

spec = importlib.util.spec_from_file_location("verify_bench", os.path.join(HERE, "verify-bench.py"))
verify_bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(verify_bench)


def timed(argv, env=None):
    """Wall seconds, CPU seconds and peak RSS (KiB) of `argv` and its children, via wait4."""
    t = time.monotonic()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    elapsed = time.monotonic() - t
    err = p.stderr.read().decode(errors="replace")
    p.stderr.close()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(argv)} failed ({status}): {err}")
    return elapsed, ru.ru_utime + ru.ru_stime, ru.ru_maxrss, err


def mock_env():
    """Start a mock qubesd; returns (process, environment pointing at it)."""
    p = subprocess.Popen([os.path.join(ROOT, "target", "release", "mock-qubesd")],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    env = {}
    for line in p.stdout:
        line = line.strip()
        if line == "ready":
            break
        k, _, v = line.partition("=")
        env[k] = v
    return p, env


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--version", type=int, choices=(3, 4), default=4)
    ap.add_argument("--log-n", type=int, default=12)
    ap.add_argument("--size-mib", type=int, default=1024, help="data MiB in the image")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    sh(f"cd {ROOT} && cargo build -q --release -p qbackup-verify -p qbackup-pack "
       "-p qbackup-tests --bin mock-qubesd")
    rel = os.path.join(ROOT, "target", "release")
    verifier, packer = os.path.join(rel, "qbackup-verify"), os.path.join(rel, "qbackup-pack")
    arch = verify_bench.build(args.version, args.log_n, args.size_mib)
    size = os.path.getsize(arch)
    passfile = os.path.join(OUT, "passphrase")
    with open(passfile, "w") as f:
        f.write(PASS + "\n")
    dest = os.path.join(OUT, "restore-dest")
    child_rss = os.path.join(OUT, "child-rss")
    # The default child, wrapped by GNU time to measure its own peak RSS.
    wrapped = (f"/usr/bin/time -f %M -o {child_rss} {verifier} emit -")
    env = dict(os.environ, QBACKUP_PASSPHRASE=PASS)
    results = {"extract": [], "restore": [], "restore (child measured)": [], "into-qubes": []}
    for _ in range(args.runs):
        for kind in results:
            shutil.rmtree(dest, ignore_errors=True)
            if kind == "into-qubes":
                mock, menv = mock_env()
                os.makedirs(dest)
                argv = [packer, "restore", arch, "--into-qubes", "--yes", "--json",
                        "--ignore-missing", "--home-dir", dest, "--passphrase-file", passfile]
                results[kind].append(timed(argv, env=dict(env, **menv)))
                mock.stdin.close()
                mock.wait()
                continue
            if kind == "extract":
                argv = [verifier, "extract", "--no-progress", "--passphrase-file", passfile,
                        "--to", dest, arch]
            elif kind == "restore":
                argv = [packer, "restore", arch, "--to", dest, "--passphrase-file", passfile]
            else:
                argv = [packer, "restore", arch, "--to", dest, "--verifier-cmd", wrapped]
            results[kind].append(timed(argv, env=env))
    shutil.rmtree(dest, ignore_errors=True)
    kind = f"scrypt logN {args.log_n} r 8 p 1" if args.version == 4 else "v3 aes-256-cbc + HMAC-SHA512"
    print(f"archive: {arch} ({size / 2**20:.0f} MiB, {kind}, gzip; "
          f"load average {os.getloadavg()[0]:.1f}; best of {args.runs})")
    best = {k: min(v, key=lambda r: r[0]) for k, v in results.items()}
    ext, rst = best["extract"], best["restore"]
    with open(child_rss) as f:
        child_kib = int(f.read().split()[-1])
    print(f"qbackup-verify extract:  {ext[0]:6.2f} s  cpu {ext[1]:6.2f} s  peak RSS {ext[2] / 1024:6.0f} MiB")
    print(f"qbackup-pack restore:    {rst[0]:6.2f} s  cpu {rst[1]:6.2f} s  peak RSS {rst[2] / 1024:6.0f} MiB "
          f"(largest process); verifier child alone {child_kib / 1024:.0f} MiB")
    print(f"all runs (wall s): extract {[round(r[0], 2) for r in results['extract']]}, "
          f"restore {[round(r[0], 2) for r in results['restore']]}")
    q = best["into-qubes"]
    print(f"restore --into-qubes:    {q[0]:6.2f} s  cpu {q[1]:6.2f} s  peak RSS {q[2] / 1024:6.0f} MiB "
          f"(CPU includes the import script, not the mock qubesd)")
    print(f"all runs (wall s): into-qubes {[round(r[0], 2) for r in results['into-qubes']]}")
    print(f"restore / extract: {rst[0] / ext[0]:.2f}x wall (target <= 1.15), {rst[1] / ext[1]:.2f}x CPU")
    print(f"into-qubes / extract: {q[0] / ext[0]:.2f}x wall (target <= 1.15)")


if __name__ == "__main__":
    main()
