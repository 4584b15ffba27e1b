#!/usr/bin/env python3
"""Benchmark `qbackup-verify verify` against the upstream emergency-restore procedure.

Builds (once, cached under bench/out/) a realistic ~1 GiB v4 archive the way upstream
writes it: a VM image with holes, random and compressible data; gzip; scrypt at what
`scrypt enc` picks by default on a 24 GiB machine (logN 21, r 8, p 1: ~2 GiB and a few
seconds per KDF). Then times, in the same run:

  reference: the qubes-doc v4 emergency procedure over the whole archive: `tar -i -x`,
             header check with `scrypt dec`, qubes.xml, then per chunk
             `scrypt dec | gzip -d | tar -t`;
  qbackup:   `qbackup-verify verify ARCHIVE`;

and prints both times, the ratio, and peak memory (max RSS) of each.

Usage: bench/verify-bench.py [--log-n 21] [--size-mib 1024] [--keep]
Needs: scrypt, gzip, GNU tar, a release build (cargo build --release).
"""
import argparse, os, resource, shutil, subprocess, sys, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")
PASS = "bench-passphrase"
BID = "20261126T120000-4242"


def sh(cmd, **kw):
    subprocess.run(cmd, shell=True, check=True, executable="/bin/bash", **kw)


def make_image(path, size_mib):
    """A sparse VM image: random data, compressible data (text-like), and holes."""
    total = size_mib * 2 << 20  # logical size: twice the data, the rest holes
    with open(path, "wb") as f:
        f.truncate(total)
    rnd = size_mib * 85 // 100
    comp = size_mib - rnd
    # pseudo-random, deterministic
    sh(f"openssl enc -aes-128-ctr -nosalt -K 00112233445566778899aabbccddeeff "
       f"-iv 0 </dev/zero 2>/dev/null | head -c {rnd << 20} | "
       f"dd of={path} bs=1M seek=16 conv=notrunc status=none")
    # compressible: repeated log-like lines with varying numbers
    sh(f"seq 1 100000000 | sed 's/$/ kernel: audit ok user=qubes op=read/' | head -c {comp << 20} | "
       f"dd of={path} bs=1M seek={16 + rnd + 64} conv=notrunc status=none")


def build(log_n, size_mib):
    arch = os.path.join(OUT, f"bench-v4-logn{log_n}-{size_mib}m.bin")
    if os.path.exists(arch):
        return arch
    stage = os.path.join(OUT, "stage")
    src = os.path.join(OUT, "src")
    shutil.rmtree(stage, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(os.path.join(stage, "vm3"))
    os.makedirs(src)
    print(f"building {arch} (scrypt logN {log_n}; this takes a while, once) ...", file=sys.stderr)
    make_image(os.path.join(src, "private.img"), size_mib)
    with open(os.path.join(src, "qubes.xml"), "w") as f:
        f.write(QUBES_XML.replace("SIZE", str(size_mib << 21)))
    with open(os.path.join(stage, "backup-header"), "w") as f:
        f.write(f"version=4\nencrypted=True\ncompressed=True\ncompression-filter=gzip\n"
                f"hmac-algorithm=scrypt\nbackup-id={BID}\n")
    enc = f"scrypt enc -P --logN {log_n} -r 8 -p 1"
    sh(f"cd {stage} && echo 'backup-header!{PASS}' | {enc} backup-header backup-header.hmac")
    sh(f"tar -Pc --sparse -C {src} --use-compress-program=gzip --xform='s:^qubes.xml:\\0:' qubes.xml"
       f" | split --numeric-suffixes --suffix-length=3 --bytes=104857600 - {stage}/qubes.xml.")
    sh(f"tar -Pc --sparse -C {src} --use-compress-program=gzip --xform='s:^private.img:vm3/\\0:' private.img"
       f" | split --numeric-suffixes --suffix-length=3 --bytes=104857600 - {stage}/vm3/private.img.")
    names = ["qubes.xml.000"] + sorted(
        f"vm3/{n}" for n in os.listdir(os.path.join(stage, "vm3")))
    for n in names:
        sh(f"cd {stage} && echo '{BID}!{n}!{PASS}' | {enc} {n} {n}.enc && rm {n}")
    part = arch + ".partial"
    for n in ["backup-header", "backup-header.hmac"] + [n + ".enc" for n in names]:
        sh(f"tar -cO --posix -C {stage} {n} >> {part}")
    os.rename(part, arch)
    shutil.rmtree(stage)
    shutil.rmtree(src)
    return arch


QUBES_XML = """<?xml version='1.0' encoding='utf-8'?>
<qubes><labels><label id="label-1" color="0xcc0000">red</label></labels><pools/><properties/>
<domains><domain id="domain-3" class="AppVM"><properties><property name="qid">3</property>
<property name="name">work</property><property name="label">label-1</property></properties>
<features><feature name="backup-content">True</feature><feature name="backup-path">vm3/</feature>
<feature name="backup-size">SIZE</feature></features><tags/>
<volume-config><volume name="private" save_on_stop="True"/></volume-config></domain></domains></qubes>
"""

REFERENCE = r"""
set -euo pipefail
cd "$WORK"
tar -i -xf "$ARCHIVE"
echo "backup-header!$PASS" | scrypt dec -P backup-header.hmac backup-header.verified
diff -q backup-header backup-header.verified >/dev/null
echo "$BID!qubes.xml.000!$PASS" | scrypt dec -P qubes.xml.000.enc | gzip -d | tar -x
find vm3/ -name 'private.img.*.enc' | sort -V | while read f_enc; do
  f_dec=${f_enc%.enc}
  echo "$BID!$f_dec!$PASS" | scrypt dec -P "$f_enc" || exit 1
done | gzip -d | tar -t >/dev/null
"""


def timed(argv, env=None):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    p = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL)
    elapsed = time.monotonic() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        sys.exit(f"{argv[0]} failed with {p.returncode}")
    # ru_maxrss of children is the max over all children so far (KiB).
    return elapsed, after.ru_maxrss, after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--log-n", type=int, default=21)
    ap.add_argument("--size-mib", type=int, default=1024, help="data MiB in the image")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    verifier = os.path.join(ROOT, "target", "release", "qbackup-verify")
    if not os.access(verifier, os.X_OK):
        sh(f"cd {ROOT} && cargo build --release -p qbackup-verify")
    arch = build(args.log_n, args.size_mib)
    size = os.path.getsize(arch)
    passfile = os.path.join(OUT, "passphrase")
    with open(passfile, "w") as f:
        f.write(PASS + "\n")
    work = os.path.join(OUT, "ref-work")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    env = dict(os.environ, WORK=work, ARCHIVE=arch, PASS=PASS, BID=BID)
    # qbackup first: the reference's ru_maxrss then cannot be ours.
    ours, ours_rss, ours_cpu = timed([verifier, "verify", "--no-progress", "--passphrase-file", passfile, arch])
    ref, ref_rss, ref_cpu = timed(["bash", "-c", REFERENCE], env=env)
    shutil.rmtree(work)
    print(f"archive: {arch} ({size / 2**20:.0f} MiB, scrypt logN {args.log_n} r 8 p 1, gzip)")
    print(f"reference (emergency procedure): {ref:7.1f} s  {size / 2**20 / ref:6.1f} MiB/s  cpu {ref_cpu:6.1f} s")
    print(f"qbackup-verify verify:           {ours:7.1f} s  {size / 2**20 / ours:6.1f} MiB/s  cpu {ours_cpu:6.1f} s  peak RSS {ours_rss / 1024:.0f} MiB")
    print(f"speed-up: {ref / ours:.2f}x")


if __name__ == "__main__":
    main()
