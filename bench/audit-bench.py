#!/usr/bin/env python3
"""Benchmark `qbackup-audit run` (issue: audit many stored archives).

Builds (once, cached under bench/out/audit/) ARCHIVES v4 archives with `qbackup-pack create`
(scrypt at --log-n, --chunk-mib chunks, gzip; each a realistic sparse image of --size-mib
MiB of data, bench/benchlib.py), then times in one run, alternating, --runs times each:

  loop:      a shell loop of `qbackup-verify verify ARCHIVE` (one after the other, each
             with its default KDF threads: all CPUs);
  audit:     `qbackup-audit run --jobs 2` over the directory, with a fresh ledger;
  audit-s3:  the same archives from a SeaweedFS S3 server on 127.0.0.1 (the tests'
             `s3-server` binary), with a fresh ledger.

and prints the best wall time of each, its CPU time, the peak memory of the whole process
tree (sampled every 20 ms from /proc) against the README bound, and the ratios. Goals:
audit / loop <= 1.00; audit-s3 / audit <= 1.10.

Usage: bench/audit-bench.py [--archives 8] [--size-mib 96] [--chunk-mib 16] [--log-n 15]
                            [--runs 3]
"""
import argparse, os, shutil, subprocess, sys, tempfile, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from benchlib import OUT, PASS, ROOT, make_image, sh, write_plan  # noqa: E402

REL = os.path.join(ROOT, "target", "release")


def build_archives(n, size_mib, chunk_mib, log_n):
    d = os.path.join(OUT, f"audit-{n}x{size_mib}m-c{chunk_mib}-n{log_n}")
    names = [os.path.join(d, f"qubes-backup-{i:02}.bin") for i in range(n)]
    if all(os.path.exists(a) for a in names):
        return d, names
    os.makedirs(d, exist_ok=True)
    passf = os.path.join(OUT, "pass")
    with open(passf, "w") as f:
        f.write(PASS + "\n")
    img = os.path.join(d, "private.img")
    make_image(img, size_mib, 40)
    plan = os.path.join(d, "plan.json")
    write_plan(plan, img)
    for a in names:
        subprocess.run([os.path.join(REL, "qbackup-pack"), "create", "--no-progress",
                        "--plan", plan, "--passphrase-file", passf, "--scrypt-log-n",
                        str(log_n), "--chunk-size", str(chunk_mib << 20), "--out", a],
                       check=True)
    os.remove(img)
    return d, names


def rss_tree_kib(root):
    """Resident KiB of `root` and its descendants, from /proc."""
    children = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(p))
        except (OSError, ValueError, IndexError):
            pass
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_of(pid):
    """CPU seconds of a running process (the S3 server), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def server_pid(launcher):
    """The `weed` process under the s3-server launcher."""
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                with open(f"/proc/{p}/stat") as f:
                    st = f.read()
                if int(st.rsplit(")", 1)[1].split()[1]) == launcher and "(weed)" in st:
                    return int(p)
            except (OSError, ValueError):
                pass
    return None


def timed(argv, env=None):
    """Wall seconds, CPU seconds of the tree, peak tree RSS (KiB)."""
    t = time.monotonic()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = [0]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_tree_kib(p.pid))
            time.sleep(0.02)
    s = threading.Thread(target=sample)
    s.start()
    before = os.times()
    err = p.stderr.read().decode(errors="replace")
    code = p.wait()
    after = os.times()
    done.set()
    s.join()
    if code != 0:
        sys.exit(f"{' '.join(argv)} exited {code}: {err}")
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return time.monotonic() - t, cpu, peak[0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--archives", type=int, default=8)
    ap.add_argument("--size-mib", type=int, default=96)
    ap.add_argument("--chunk-mib", type=int, default=16)
    ap.add_argument("--log-n", type=int, default=15)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    sh("cargo build --release -q -p qbackup-audit -p qbackup-verify -p qbackup-pack "
       "-p qbackup-tests --bin s3-server")
    d, archives = build_archives(a.archives, a.size_mib, a.chunk_mib, a.log_n)
    passf = os.path.join(OUT, "pass")
    total = sum(os.path.getsize(x) for x in archives)
    print(f"{len(archives)} archives, {total / 2**20:.0f} MiB, scrypt logN {a.log_n}, "
          f"{a.chunk_mib} MiB chunks, {os.cpu_count()} CPUs")

    server = subprocess.Popen([os.path.join(REL, "s3-server"), "bench", "audit", *archives],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    env = dict(os.environ)
    for line in server.stdout:
        line = line.strip()
        if line == "ready":
            break
        k, _, v = line.partition("=")
        env[k] = v

    audit = os.path.join(REL, "qbackup-audit")
    verify = os.path.join(REL, "qbackup-verify")
    loop = ["bash", "-c", "for a in \"$@\"; do \"$0\" verify --passphrase-file " + passf +
            " \"$a\" >/dev/null || exit 1; done", verify, *archives]
    best = {}
    weed = server_pid(server.pid)
    try:
        for _ in range(a.runs):
            for name in ("loop", "audit", "audit-s3"):
                with tempfile.TemporaryDirectory() as ledger:
                    if name == "loop":
                        argv, e = loop, None
                    else:
                        src = d if name == "audit" else "s3://bench/audit"
                        argv = [audit, "run", "--no-progress", "--jobs", "2", "--include", "*.bin",
                                "--ledger", ledger, "--passphrase-file", passf, src]
                        e = env if name == "audit-s3" else None
                    before = cpu_of(weed) if weed else 0.0
                    r = timed(argv, e)
                    served = (cpu_of(weed) - before) if weed else 0.0
                    if name not in best or r[0] < best[name][0]:
                        best[name] = (*r, served)
    finally:
        server.stdin.close()
        server.wait()

    # README "Auditing many archives": P x (verifier bound with T KDF threads) + P x 18 MiB
    # of S3 data in flight + 64 MiB; here P = 2, T = 1, C = chunk + 1 MiB, K = 128 r 2^logN, D = 8.
    c = a.chunk_mib + 1
    k = 128 * 8 * 2 ** a.log_n / 2**20
    bound = 2 * ((1 + 3) * c + k + 8 + 64 + 18) + 64
    for name, (wall, cpu, peak, served) in best.items():
        extra = f"; the S3 server on the same CPUs: cpu {served:.2f} s" if name == "audit-s3" else ""
        print(f"  {name:9} {wall:7.2f} s  cpu {cpu:6.2f} s  peak RSS {peak / 1024:6.0f} MiB "
              f"(tree; bound {bound:.0f} MiB){extra}")
    print(f"  audit / loop     {best['audit'][0] / best['loop'][0]:.2f}x wall (goal <= 1.00)")
    print(f"  audit-s3 / audit {best['audit-s3'][0] / best['audit'][0]:.2f}x wall (goal <= 1.10)")


if __name__ == "__main__":
    main()
