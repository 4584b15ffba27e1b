"""Shared pieces of the benchmark scripts: paths, the test passphrase and backup-id, a shell
helper, the realistic VM image, and the R4 qubes.xml that describes it."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "bench", "out")
PASS = "bench-passphrase"
BID = "20261126T120000-4242"

# The R4 qubes.xml of the benchmark archives: one AppVM `work` (qid 3) whose `private`
# volume is backed up; SIZE is replaced by the backup-size.
QUBES_XML = """<?xml version='1.0' encoding='utf-8'?>
<qubes><labels><label id="label-1" color="0xcc0000">red</label></labels><pools/><properties/>
<domains><domain id="domain-3" class="AppVM"><properties><property name="qid">3</property>
<property name="name">work</property><property name="label">label-1</property></properties>
<features><feature name="backup-content">True</feature><feature name="backup-path">vm3/</feature>
<feature name="backup-size">SIZE</feature></features><tags/>
<volume-config><volume name="private" save_on_stop="True"/></volume-config></domain></domains></qubes>
"""


def sh(cmd, **kw):
    subprocess.run(cmd, shell=True, check=True, executable="/bin/bash", **kw)


def write_plan(path, img):
    """A backup plan (packer/PLAN.md): one AppVM `work` whose private volume is `img`."""
    with open(path, "w") as f:
        f.write('{"vms": [{"name": "work", "class": "AppVM", "label": "red", "qid": 3, '
                f'"volumes": [{{"name": "private", "path": "{img}"}}]}}]}}')


def make_image(path, size_mib, random_percent):
    """A sparse VM image of twice `size_mib` logical MiB: `random_percent` of the data is
    pseudo-random (deterministic AES-CTR), the rest compressible log-like text, the other
    half holes."""
    total = size_mib * 2 << 20
    with open(path, "wb") as f:
        f.truncate(total)
    rnd = size_mib * random_percent // 100
    comp = size_mib - rnd
    sh(f"openssl enc -aes-128-ctr -nosalt -K 00112233445566778899aabbccddeeff "
       f"-iv 0 </dev/zero 2>/dev/null | head -c {rnd << 20} | "
       f"dd of={path} bs=1M seek=16 conv=notrunc status=none")
    sh(f"seq 1 100000000 | sed 's/$/ kernel: audit ok user=qubes op=read/' | head -c {comp << 20} | "
       f"dd of={path} bs=1M seek={16 + rnd + 64} conv=notrunc status=none")
