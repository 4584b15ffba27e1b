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

With `--version 3` the archive is v3 (openssl enc -aes-256-cbc -md MD5 over the whole
stream, split, HMAC-SHA512 per chunk) and the reference is the v3 emergency procedure
(`openssl dgst` per chunk, then `cat | openssl enc -d | gzip -d | tar -t`). For cheap KDFs
(logN <= 14) and v3 the script also prints the inflate bound: the time this build's gzip
decoder (zlib-rs) needs to inflate the same compressed stream with nothing else to do.

Usage: bench/verify-bench.py [--version 4|3] [--log-n 21] [--size-mib 1200]
Needs: scrypt, openssl, gzip, GNU tar; builds the release binaries it needs.
"""
import argparse, os, resource, shutil, subprocess, sys, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from benchlib import BID, OUT, PASS, QUBES_XML, ROOT, make_image, sh  # noqa: E402


def build(version, log_n, size_mib):
    tag = f"v4-logn{log_n}" if version == 4 else "v3"
    arch = os.path.join(OUT, f"bench-{tag}-{size_mib}m.bin")
    if os.path.exists(arch):
        return arch
    stage = os.path.join(OUT, "stage")
    src = os.path.join(OUT, "src")
    shutil.rmtree(stage, ignore_errors=True)
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(os.path.join(stage, "vm3"))
    os.makedirs(src)
    print(f"building {arch} (this takes a while, once) ...", file=sys.stderr)
    make_image(os.path.join(src, "private.img"), size_mib, 85)
    with open(os.path.join(src, "qubes.xml"), "w") as f:
        f.write((QUBES_XML if version == 4 else QUBES_XML_R3).replace("SIZE", str(size_mib << 21)))
    if version == 3:
        return build_v3(arch, src, stage)
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


def build_v3(arch, src, stage):
    hdr = ("version=3\nhmac-algorithm=SHA512\ncrypto-algorithm=aes-256-cbc\n"
           "encrypted=True\ncompressed=True\ncompression-filter=gzip\n")
    with open(os.path.join(stage, "backup-header"), "w") as f:
        f.write(hdr)
    enc = f"openssl enc -e -aes-256-cbc -md MD5 -pass pass:{PASS} 2>/dev/null"
    sh(f"tar -Pc --sparse -C {src} --use-compress-program=gzip --xform='s:^qubes.xml:\\0:' qubes.xml"
       f" | {enc} | split --numeric-suffixes --suffix-length=3 --bytes=104857600 - {stage}/qubes.xml.")
    sh(f"tar -Pc --sparse -C {src} --use-compress-program=gzip --xform='s:^private.img:vm3/\\0:' private.img"
       f" | {enc} | split --numeric-suffixes --suffix-length=3 --bytes=104857600 - {stage}/vm3/private.img.")
    names = ["backup-header", "qubes.xml.000"] + sorted(
        f"vm3/{n}" for n in os.listdir(os.path.join(stage, "vm3")))
    part = arch + ".partial"
    for n in names:
        sh(f"cd {stage} && openssl dgst -sha512 -hmac '{PASS}' < {n} > {n}.hmac")
        sh(f"tar -cO --posix -C {stage} {n} {n}.hmac >> {part}")
    os.rename(part, arch)
    shutil.rmtree(stage)
    shutil.rmtree(src)
    return arch


QUBES_XML_R3 = """<?xml version='1.0' encoding='utf-8'?>
<QubesVmCollection default_netvm="None" default_template="None" updatevm="None" clockvm="None">
<QubesTemplateVm qid="1" name="tmpl" label="black" template_qid="none" netvm_qid="none"
 uses_default_netvm="False"/>
<QubesAppVm qid="3" name="work" label="red" template_qid="1" netvm_qid="none"
 uses_default_netvm="False" backup_content="True" backup_path="vm3" backup_size="SIZE"/>
</QubesVmCollection>
"""

REFERENCE_V3 = r"""
set -euo pipefail
cd "$WORK"
tar -i -xf "$ARCHIVE"
check() { [ "$(openssl dgst -sha512 -hmac "$PASS" < "$1" | sed 's/.*= //')" = "$(sed 's/.*= //' "$1.hmac")" ]; }
check backup-header
check qubes.xml.000
openssl enc -d -aes-256-cbc -md MD5 -pass pass:"$PASS" -in qubes.xml.000 2>/dev/null | gzip -d | tar -x
for f in $(find vm3/ -name 'private.img.*[0-9]' | sort -V); do check "$f"; done
find vm3/ -name 'private.img.*[0-9]' | sort -V | xargs cat \
  | openssl enc -d -aes-256-cbc -md MD5 -pass pass:"$PASS" 2>/dev/null | gzip -d | tar -t >/dev/null
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


def inflate_bound(version, arch, work):
    """Seconds for this build's inflater over the archive's private.img gzip stream."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    gz = os.path.join(work, "stream.gz")
    if version == 4:
        sh(f"cd {work} && tar -i -xf {arch} && find vm3/ -name 'private.img.*.enc' | sort -V | "
           f"while read f; do echo \"{BID}!${{f%.enc}}!{PASS}\" | scrypt dec -P \"$f\"; done > {gz}")
    else:
        sh(f"cd {work} && tar -i -xf {arch} && find vm3/ -name 'private.img.*[0-9]' | sort -V | xargs cat"
           f" | openssl enc -d -aes-256-cbc -md MD5 -pass pass:{PASS} 2>/dev/null > {gz}")
    tool = os.path.join(ROOT, "target", "release", "examples", "inflate_bound")
    out = subprocess.run([tool, gz], check=True, capture_output=True, text=True).stdout.split()
    shutil.rmtree(work)
    return float(out[1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--version", type=int, choices=(3, 4), default=4)
    ap.add_argument("--log-n", type=int, default=21)
    ap.add_argument("--size-mib", type=int, default=1200, help="data MiB in the image")
    args = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    verifier = os.path.join(ROOT, "target", "release", "qbackup-verify")
    sh(f"cd {ROOT} && cargo build -q --release -p qbackup-verify "
       f"&& cargo build -q --release -p qbackup-format --example inflate_bound")
    arch = build(args.version, args.log_n, args.size_mib)
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
    ref, ref_rss, ref_cpu = timed(["bash", "-c", REFERENCE if args.version == 4 else REFERENCE_V3], env=env)
    shutil.rmtree(work)
    bound = None
    if args.version == 3 or args.log_n <= 14:
        bound = inflate_bound(args.version, arch, work)
    kind = f"scrypt logN {args.log_n} r 8 p 1" if args.version == 4 else "v3 aes-256-cbc + HMAC-SHA512"
    print(f"archive: {arch} ({size / 2**20:.0f} MiB, {kind}, gzip; load average {os.getloadavg()[0]:.1f})")
    print(f"reference (emergency procedure): {ref:7.1f} s  {size / 2**20 / ref:6.1f} MiB/s  cpu {ref_cpu:6.1f} s")
    print(f"qbackup-verify verify:           {ours:7.1f} s  {size / 2**20 / ours:6.1f} MiB/s  cpu {ours_cpu:6.1f} s  peak RSS {ours_rss / 1024:.0f} MiB")
    print(f"speed-up: {ref / ours:.2f}x wall, {ref_cpu / ours_cpu:.2f}x CPU")
    if bound is not None:
        print(f"inflate bound (zlib-rs, one core): {bound:7.1f} s  {size / 2**20 / bound:6.1f} MiB/s;"
              f" qbackup-verify / bound = {ours / bound:.2f}x")


if __name__ == "__main__":
    main()
