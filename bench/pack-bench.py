#!/usr/bin/env python3
"""Benchmark `qbackup-pack create` against the reference pipeline that builds a v4 archive
with the upstream tools (format-notes §10.3), in the same run.

Builds (once, cached under bench/out/) a realistic VM image: ~1 GiB of data (60 % random,
40 % compressible log-like text) in a 2 GiB sparse file. Then times:

  reference: `tar -Pc --sparse | gzip | split -b 100M` for qubes.xml and the image, then
             `scrypt enc --logN N -r 8 -p 1` per chunk (and for backup-header.hmac), then
             `tar -cO --posix` per member appended to the archive;
  qbackup:   `qbackup-pack create --plan PLAN --scrypt-log-n N -r 8 -p 1`, verified
             afterwards (untimed) with `qbackup-verify verify`;

and prints both times, the ratio, CPU time and peak memory (max RSS) of each. The
machine may be shared: the figures are only comparable within one run.

Usage: bench/pack-bench.py [--log-n 21] [--size-mib 1024] [--keep]
Needs: scrypt, gzip, GNU tar, split, /usr/bin/time, a release build
(cargo build --release -p qbackup-pack -p qbackup-verify).
"""
import argparse, json, os, shutil, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import BID, OUT, PASS, QUBES_XML, ROOT, make_image, sh  # noqa: E402


REFERENCE = r"""
set -euo pipefail
cd "$WORK"
mkdir -p stage/vm3
printf 'version=4\nencrypted=True\ncompressed=True\ncompression-filter=gzip\nhmac-algorithm=scrypt\nbackup-id=%s\n' "$BID" > stage/backup-header
ENC="scrypt enc -P --logN $LOGN -r 8 -p 1"
(cd stage && echo "backup-header!$PASS" | $ENC backup-header backup-header.hmac)
tar -Pc --sparse -C "$SRC" --use-compress-program=gzip --xform='s:^qubes.xml:\0:' qubes.xml \
  | split --numeric-suffixes --suffix-length=3 --bytes=104857600 - stage/qubes.xml.
tar -Pc --sparse -C "$SRC" --use-compress-program=gzip --xform='s:^private.img:vm3/\0:' private.img \
  | split --numeric-suffixes --suffix-length=3 --bytes=104857600 - stage/vm3/private.img.
cd stage
for n in qubes.xml.000 $(ls vm3/private.img.* | sort -V); do
  echo "$BID!$n!$PASS" | $ENC "$n" "$n.enc" && rm "$n"
done
for n in backup-header backup-header.hmac qubes.xml.000.enc $(ls vm3/*.enc | sort -V); do
  tar -cO --posix "$n" >> "$ARCHIVE"
done
"""


def timed(argv, env=None):
    """(wall s, max RSS MiB, cpu s) of one command, via /usr/bin/time."""
    stats = os.path.join(OUT, "time.txt")
    t = time.monotonic()
    p = subprocess.run(["/usr/bin/time", "-o", stats, "-f", "%M %U %S"] + argv, env=env,
                       stdout=subprocess.DEVNULL)
    elapsed = time.monotonic() - t
    if p.returncode != 0:
        sys.exit(f"{argv[0]} failed with {p.returncode}")
    rss, user, sys_ = open(stats).read().split()[-3:]
    return elapsed, int(rss) / 1024, float(user) + float(sys_)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--log-n", type=int, default=21)
    ap.add_argument("--size-mib", type=int, default=1024, help="data MiB in the image")
    ap.add_argument("--keep", action="store_true", help="keep both archives")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    rel = os.path.join(ROOT, "target", "release")
    packer, verifier = os.path.join(rel, "qbackup-pack"), os.path.join(rel, "qbackup-verify")
    if not (os.access(packer, os.X_OK) and os.access(verifier, os.X_OK)):
        sh(f"cd {ROOT} && cargo build --release -p qbackup-pack -p qbackup-verify")
    src = os.path.join(OUT, f"pack-src-{args.size_mib}m")
    img = os.path.join(src, "private.img")
    if not os.path.exists(img):
        os.makedirs(src, exist_ok=True)
        print(f"building {img} ...", file=sys.stderr)
        make_image(img + ".tmp", args.size_mib, 60)
        os.rename(img + ".tmp", img)
    with open(os.path.join(src, "qubes.xml"), "w") as f:
        f.write(QUBES_XML.replace("SIZE", str(os.path.getsize(img))))
    passfile = os.path.join(OUT, "passphrase")
    with open(passfile, "w") as f:
        f.write(PASS + "\n")
    plan = os.path.join(OUT, "pack-plan.json")
    with open(plan, "w") as f:
        json.dump({"vms": [{"name": "work", "class": "AppVM", "label": "red", "qid": 3,
                            "volumes": [{"name": "private", "path": img}]}]}, f)
    ours_arch = os.path.join(OUT, "pack-ours.bin")
    ref_arch = os.path.join(OUT, "pack-ref.bin")
    work = os.path.join(OUT, "pack-ref-work")
    for p in (ours_arch, ref_arch):
        if os.path.exists(p):
            os.remove(p)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    sh("sync")
    ours, ours_rss, ours_cpu = timed([packer, "create", "--plan", plan, "--passphrase-file", passfile,
                                      "--out", ours_arch, "--scrypt-log-n", str(args.log_n),
                                      "--scrypt-r", "8", "--scrypt-p", "1", "--no-progress"])
    env = dict(os.environ, WORK=work, SRC=src, ARCHIVE=ref_arch, PASS=PASS, BID=BID,
               LOGN=str(args.log_n))
    ref, ref_rss, ref_cpu = timed(["bash", "-c", REFERENCE], env=env)
    shutil.rmtree(work)
    sh(f"{verifier} verify --no-progress --passphrase-file {passfile} {ours_arch} >/dev/null")
    size = os.path.getsize(ours_arch)
    print(f"image: {img} ({os.path.getsize(img) / 2**20:.0f} MiB logical, {args.size_mib} MiB data); "
          f"scrypt logN {args.log_n} r 8 p 1; gzip; {os.cpu_count()} CPUs")
    print(f"reference (tar|gzip|split + scrypt enc): {ref:7.1f} s  cpu {ref_cpu:6.1f} s  "
          f"peak RSS {ref_rss:6.0f} MiB  archive {os.path.getsize(ref_arch) / 2**20:.0f} MiB")
    print(f"qbackup-pack create:                     {ours:7.1f} s  cpu {ours_cpu:6.1f} s  "
          f"peak RSS {ours_rss:6.0f} MiB  archive {size / 2**20:.0f} MiB (verified)")
    print(f"speed-up: {ref / ours:.2f}x (wall)  CPU ratio: {ref_cpu / ours_cpu:.2f}x  "
          f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if not args.keep:
        os.remove(ours_arch)
        os.remove(ref_arch)


if __name__ == "__main__":
    main()
