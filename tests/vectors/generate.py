#!/usr/bin/env python3
"""Regenerate the conformance vectors in this directory: NAME.bin + NAME.json.

usage: tests/vectors/generate.py [--only SUBSTRING] [--check VERIFY_BIN]

Archives come from the real tools: tests/fixtures/make-archive.sh (over the --tiny trees of
make-sources.sh) for the faithful upstream layouts, and vlib.py (scrypt, openssl, GNU tar,
compressors; python only lays out the bytes no tool writes) for the hand-built ones.
Salts are random, so regenerated .bin files differ; the .json expectations do not (hashes are
of plaintext). The expected outcome of every vector is written here from SPEC.md, never taken
from a verifier; `--check BIN` runs BIN on each new vector and prints disagreements.
See README.md for the expectation schema.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import vlib  # noqa: E402
from vlib import (BID, PASS, archive, compress, entry, gnu_tar, hmac_text, member_bytes,  # noqa: E402
                  openssl_enc, pad, parse_outer, pax, pax_entry, r3_xml, r4_domain, r4_xml,
                  scrypt_enc, sha256, tar_header, v3_header, v3_members, v4_header,
                  v4_members, xml_tar, END)

FIXTURES = os.path.join(HERE, "..", "fixtures")


def prng(n, seed):
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"%d:%d" % (seed, i)).digest()
        i += 1
    return bytes(out[:n])


def text(n, seed):
    out = bytearray()
    i = 0
    while len(out) < n:
        out += b"line %06d of seed %d: the quick brown fox jumps over the lazy dog\n" % (i, seed)
        i += 1
    return bytes(out[:n])


# Vectors whose SPEC.md outcome qbackup-verify does not produce (reported as verifier bugs or
# spec ambiguities); left out of the committed suite until resolved. name -> what it returns.
DISPUTED = {}

PRIV = text(1500, 1) + prng(2000, 1)      # compresses to ~2.2 KiB: 3 chunks of 1024
NOTES = b"For Your Eyes Only\n"


class Gen:
    def __init__(self, outdir, only, check, disputed=False):
        self.outdir, self.only, self.check, self.disputed = outdir, only, check, disputed
        self.names = []
        self.mismatches = []

    def add(self, name, data, expect, comment, reqs, groups=(), fail_at=None,
            passphrase=PASS, args=(), symlinks=None, listing=None, extract_expect=None,
            may_only=False, stop=None, note=None):
        """groups: the outputs of each archive file in archive order ({extract path: sha256});
        ok vectors expect all of them. A failure in file `fail_at` (default: none, e.g.
        missing-data found at the end) never releases that file. Inside a file (stop="file":
        MAC, decryption, decompression, inner tar) the files before it were verified and are
        committed (EXT-2) and the reader may go on with those after it (ERR-1); a failure of
        the outer layer or the member order (stop="outer", the default for ord-/name-/out-
        vectors) stops the reader, so files still in flight may or may not be committed.
        fail_at=0 (qubes.xml, the header) commits nothing."""
        assert name not in self.names, name
        self.names.append(name)
        if self.only and self.only not in name:
            return
        if name in DISPUTED and not self.disputed:
            print("skipped (disputed): %s" % name)
            return
        if isinstance(data, list):
            data = archive(data)
        doc = {"passphrase": passphrase, "expect": expect, "comment": comment,
               "requirements": reqs}
        if args:
            doc["args"] = list(args)
        if extract_expect:
            doc["extract_expect"] = extract_expect
        if expect == "ok" and not extract_expect:
            files = {}
            for g in groups:
                files.update(g)
            doc["files"] = dict(sorted(files.items()))
            if symlinks:
                doc["symlinks"] = symlinks
            if listing:
                doc["list"] = listing
        else:
            if stop is None:
                outer = name.startswith(("ord-", "name-", "out-")) and name != "ord-drop-last-chunk"
                stop = "outer" if outer else "file"
            k = len(groups) if fail_at is None else fail_at
            committed, later = {}, {}
            if k > 0:
                for g in groups[:k]:
                    (later if may_only or stop == "outer" else committed).update(g)
                for g in groups[k + 1:]:
                    later.update(g)
            doc["committed"] = dict(sorted(committed.items()))
            doc["may_commit"] = dict(sorted(later.items()))
        if note:
            doc["note"] = note
        with open(os.path.join(self.outdir, name + ".bin"), "wb") as f:
            f.write(data)
        with open(os.path.join(self.outdir, name + ".json"), "w") as f:
            json.dump(doc, f, indent=1, ensure_ascii=False)
            f.write("\n")
        if self.check:
            self.run_check(name, doc)

    def run_check(self, name, doc):
        with tempfile.NamedTemporaryFile("w") as pf:
            pf.write(doc["passphrase"] + "\n")
            pf.flush()
            p = subprocess.run([self.check, "verify", "--json", "--passphrase-file", pf.name]
                               + doc.get("args", []) + [os.path.join(self.outdir, name + ".bin")],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out = json.loads(p.stdout)
        except ValueError:
            out = {}
        got = "ok" if p.returncode == 0 else (out.get("error") or {}).get("class", "?")
        msg = (out.get("error") or {}).get("message", "")
        status = "OK " if got == doc["expect"] else "BAD"
        print("%s %-45s want %-16s got %-16s %s" % (status, name, doc["expect"], got, msg[:150]))
        if got != doc["expect"]:
            self.mismatches.append(name)


# ---------------------------------------------------------------------------- helpers

def out_path(f):
    return "qubes.xml" if f["vm"] == "qubes.xml" else f["vm"] + "/" + f["path"]


def manifest_groups(man):
    """Outputs per archive file, in archive order, from a make-archive.sh manifest."""
    files, order = [], []
    for m in man["members"]:
        if m.startswith("backup-header") or m.endswith(".hmac"):
            continue
        base = m[:-4] if m.endswith(".enc") else m
        path = base.rsplit(".", 1)[0]
        if path not in order:
            order.append(path)
    groups = []
    for path in order:
        prefix = path[:-1] if path.endswith("/.") else path + "/"
        g = {}
        for f in man["files"]:
            if f["type"] != "file":
                continue
            if f["dest"] == path or f["dest"].startswith(prefix):
                g[out_path(f)] = f["sha256"]
        groups.append(g)
    return groups


def manifest_symlinks(man):
    return {out_path(f): f["target"] for f in man["files"] if f["type"] == "symlink"}


def manifest_listing(man):
    vms = sorted("dom0" if v["name"] == "dom0-home" else v["name"]
                 for v in man["vms"] if v["name"] != "qubes.xml")
    return {"version": man["version"], "vms": vms}


class Sources:
    def __init__(self, tmp):
        self.tmp = tmp
        self.src = os.path.join(tmp, "src")
        subprocess.run([os.path.join(FIXTURES, "make-sources.sh"), self.src, "--tiny"], check=True)
        self.n = 0

    def make(self, *args, passphrase=None):
        """make-archive.sh ARGS over the tiny sources -> (members, manifest)."""
        self.n += 1
        out = os.path.join(self.tmp, "a%d.bin" % self.n)
        cmd = [os.path.join(FIXTURES, "make-archive.sh")] + list(args)
        if passphrase is not None:
            pf = os.path.join(self.tmp, "pass%d" % self.n)
            with open(pf, "w") as f:
                f.write(passphrase + "\n")
            cmd += ["--passphrase-file", pf]
        subprocess.run(cmd + [self.src, out], check=True)
        with open(out, "rb") as f:
            raw = f.read()
        with open(out + ".expect.json") as f:
            man = json.load(f)
        return raw, man


def idx(ms, name):
    for i, (n, _) in enumerate(ms):
        if n == name:
            return i
    raise KeyError(name)


def flip(b, at):
    b = bytearray(b)
    b[at % len(b)] ^= 0x40
    return bytes(b)


def rehmac(ms, algo="sha512", pw=PASS):
    """Recompute every v2/v3 .hmac member after its data member was changed."""
    out = []
    for i, (n, d) in enumerate(ms):
        if n.endswith(".hmac") and n != "backup-header.hmac" and i > 0 and ms[i - 1][0] + ".hmac" == n:
            d = hmac_text(ms[i - 1][1], algo, pw)
        elif n == "backup-header.hmac" and not d.startswith(b"scrypt"):
            d = hmac_text(ms[i - 1][1], algo, pw)
        out.append((n, d))
    return out


def fix_scrypt_checksum(c):
    c = bytearray(c)
    c[48:64] = hashlib.sha256(bytes(c[:48])).digest()[:16]
    return bytes(c)


# ---------------------------------------------------------------------------- the vectors

def hand_built(g):
    """Hand-built archives: one AppVM `work` (vm3/) with private.img and notes.txt."""
    xml4 = r4_xml()
    xml3 = r3_xml()
    inner_priv = gnu_tar("vm3/private.img", PRIV)
    inner_notes = gnu_tar("vm3/notes.txt", NOTES)

    def files(xml):
        return [("qubes.xml", xml_tar(xml)), ("vm3/private.img", inner_priv),
                ("vm3/notes.txt", inner_notes)]

    def groups(xml):
        return [{"qubes.xml": sha256(xml)}, {"work/private.img": sha256(PRIV)},
                {"work/notes.txt": sha256(NOTES)}]

    G4, G3 = groups(xml4), groups(xml3)
    L4 = {"version": 4, "vms": ["work"]}
    L3 = {"version": 3, "vms": ["work"]}
    H4 = v4_members(files(xml4), chunk=1024)
    H3 = v3_members(files(xml3), chunk=1024)
    H3P = v3_members(files(xml3), chunk=1024, encrypted=False)

    # ---- compression filters not covered by make-archive.sh (CMP-1)
    for filt, note in [("lzma", "LZMA-alone (.lzma) stream from `xz --format=lzma`"),
                       ("pigz", "gzip data under the filter name pigz"),
                       ("pbzip2", "bzip2 data under the filter name pbzip2"),
                       ("zstdmt", "zstd data under the filter name zstdmt")]:
        g.add("ok-v4-filter-" + filt, v4_members(files(xml4), filt=filt, chunk=1024), "ok",
              "v4 archive compressed with filter %s: %s; decoded in-process (CMP-1, DEV-13)."
              % (filt, note), ["CMP-1", "HDR-5", "DEV-13", "VER-1"], G4, listing=L4)
    # concatenated gzip members / zstd frames + skippable frame / xz stream padding (CMP-1, CMP-3)
    multi = [("qubes.xml", None, compress(xml_tar(xml4), "gzip")),
             ("vm3/private.img", None, compress(inner_priv[:4096], "gzip") + compress(inner_priv[4096:], "gzip")),
             ("vm3/notes.txt", None, compress(inner_notes, "gzip"))]
    g.add("ok-v4-gzip-multimember", v4_members(multi, chunk=1024), "ok",
          "private.img's stored stream is two concatenated gzip members (as pigz and the packer write); "
          "they count as one stream (CMP-1, CMP-3).", ["CMP-1", "CMP-3"], G4)
    skippable = b"\x50\x2a\x4d\x18" + (8).to_bytes(4, "little") + b"skipped!"
    zmulti = [("qubes.xml", None, compress(xml_tar(xml4), "zstd")),
              ("vm3/private.img", None, compress(inner_priv[:5120], "zstd") + skippable
               + compress(inner_priv[5120:], "zstd")),
              ("vm3/notes.txt", None, compress(inner_notes, "zstd"))]
    g.add("ok-v4-zstd-frames-skippable", v4_members(zmulti, filt="zstd", chunk=1024), "ok",
          "private.img is two zstd frames with a skippable frame between them; skippable frames are "
          "ignored, the frames form one stream (CMP-1).", ["CMP-1", "CMP-3"], G4)
    xpad = [("qubes.xml", None, compress(xml_tar(xml4), "xz")),
            ("vm3/private.img", None, compress(inner_priv, "xz") + b"\0" * 8),
            ("vm3/notes.txt", None, compress(inner_notes, "xz"))]
    g.add("ok-v4-xz-stream-padding", v4_members(xpad, filt="xz", chunk=1024), "ok",
          "private.img's xz stream is followed by 8 bytes of xz stream padding, which the xz format "
          "makes part of the stream (CMP-1, CMP-3).", ["CMP-1", "CMP-3"], G4)

    # ---- v3 ciphers and digests the fixture script does not write
    for cipher in ["aes-128-cbc", "aes-192-cbc"]:
        xml = xml3
        g.add("ok-v3-" + cipher, v3_members(files(xml), chunk=1024, cipher=cipher), "ok",
              "v3 encrypted with %s; key and IV from EVP_BytesToKey(MD5) (V3-2, V3-6)." % cipher,
              ["V3-1", "V3-2", "V3-3", "V3-6", "HDR-5"], G3, listing=L3)
    g.add("ok-v3-sha2-256-alias", v3_members(files(xml3), chunk=1024, algo="sha2-256"), "ok",
          "hmac-algorithm=sha2-256 (OpenSSL 3 alias); .hmac files `SHA2-256(stdin)= …` (MAC-2, MAC-4, HDR-5).",
          ["MAC-2", "MAC-3", "MAC-4", "HDR-5"], G3)
    # .hmac text variants: label with source name, upper-case hex, no trailing LF
    var = []
    for n, d in H3:
        if n.endswith(".hmac"):
            hexv = d.split(b"= ")[1].strip()
            d = b"HMAC-SHA512(" + n[:-5].encode() + b")= " + hexv.upper()
        var.append((n, d))
    g.add("ok-v3-hmac-text-variants", var, "ok",
          "every .hmac is `HMAC-SHA512(<member>)= <UPPER HEX>` without LF: label and source are "
          "ignored, hex compared case-insensitively (MAC-4, MAC-6, DEV-11).",
          ["MAC-4", "MAC-6", "MAC-5", "DEV-11"], G3)
    var2 = [(n, d.replace(b")= ", b")=  ")) if n.endswith(".hmac") else (n, d) for n, d in H3]
    g.add("ok-v3-hmac-two-spaces", var2, "ok",
          "every .hmac has two spaces after `)=`; the grammar allows 1*SP (MAC-4).", ["MAC-4"], G3)
    # header spellings: unknown keys (repeated), boolean spellings, key order
    hdr = (b"unknown-key=1\nversion=3\nunknown-key=2\nhmac-algorithm=SHA512\n"
           b"crypto-algorithm=AES-256-CBC\nencrypted=yes\ncompressed=1\ncompression-filter=gzip")
    g.add("ok-v3-header-spellings", v3_members(files(xml3), chunk=1024, header=hdr), "ok",
          "header with a repeated unknown key, booleans `yes`/`1`, upper-case algorithm names and no "
          "final LF: all accepted (HDR-1, HDR-2, HDR-3, HDR-5).",
          ["HDR-1", "HDR-2", "HDR-3", "HDR-4", "HDR-5", "HDR-6"], G3)
    g.add("ok-v3-uncompressed-filter-ignored",
          v3_members(files(xml3), chunk=1024, compressed=False,
                     header=v3_header(compressed=False, extra="compression-filter=less\n")), "ok",
          "compressed=False with compression-filter=less: the filter is ignored when not compressed "
          "(CMP-2, HDR-5).", ["CMP-2", "HDR-5"], G3)
    g.add("ok-v4-passphrase-trailing-space", v4_members(files(xml4), chunk=1024, pw="qubes \t "), "ok",
          "passphrase ending in space, tab, space: a passphrase file loses one trailing LF only, the "
          "whitespace is part of the passphrase (PASS-1, DEV-7; upstream strips it).",
          ["PASS-1", "DEV-7"], G4, passphrase="qubes \t ")
    g.add("ok-v4-passphrase-bang-utf8",
          v4_members(files(xml4), chunk=1024, pw="correct horse!battery ünïcode"), "ok",
          "passphrase with a space, `!` and UTF-8 bytes, used verbatim in the composite scrypt "
          "passphrase `backup-id!name!passphrase` (V4-2, PASS-1).", ["V4-2", "PASS-1", "MAC-5"],
          G4, passphrase="correct horse!battery ünïcode")

    # ---- outer container variants (OUT-1 … OUT-5, DEV-17)
    b = b""
    for i, (n, d) in enumerate(H4):
        if i == 0:      # pax global header (ignored), then an x header with mtime
            b += pax_entry([("comment", "ignored")], typeflag=b"g", name="PaxHeaders.0")
            b += pax_entry([("mtime", "1600000000.5"), ("path", n)], name="./PaxHeaders/" + n)
            b += tar_header("ignored-name", len(d)) + pad(d) + b"\0" * 512 * 19
        elif i == 1:    # old GNU magic, typeflag NUL
            b += tar_header(n, len(d), typeflag=b"\0", magic=b"ustar  \0") + pad(d)
        elif i == 2:    # pax size overrides a wrong size field
            b += pax_entry([("size", str(len(d)))]) + tar_header(n, 7) + pad(d) + END
        elif n.startswith("vm3/private.img.000"):   # prefix/name split
            b += tar_header("private.img.000.enc", len(d), prefix=b"vm3") + pad(d)
        else:
            b += member_bytes(n, d, end=True)
    b += b"\0" * 512 * 7
    g.add("ok-outer-tar-variants", b, "ok",
          "outer layer written in every allowed way: pax global header, pax path overriding the name, "
          "pax size overriding the size field, old GNU magic, typeflag NUL, runs of zero blocks "
          "between and after members, no per-member end blocks (OUT-1, OUT-2, OUT-3, OUT-4, OUT-5).",
          ["OUT-1", "OUT-2", "OUT-3", "OUT-4", "OUT-5", "TAR-5", "DEV-17"], G4)
    # prefix/name split (ustar) on a long path
    long_path = "vm3/" + "d" * 60 + "/notes-with-a-long-name-" + "n" * 60 + ".txt"
    xml_long = xml4
    inner_long = gnu_tar(long_path, NOTES)
    ms = v4_members([("qubes.xml", xml_tar(xml_long)), ("vm3/private.img", inner_priv),
                     (long_path, inner_long)], chunk=1024)
    b = b""
    for n, d in ms:
        if n.startswith(long_path):
            pre, base = n.rsplit("/", 1)
            b += tar_header(base, len(d), prefix=pre.encode()) + pad(d) + END
        else:
            b += member_bytes(n, d)
    g.add("ok-outer-ustar-prefix", b, "ok",
          "a member name over 100 bytes split into the ustar prefix and name fields as `tar --posix` "
          "does; the name is prefix/name (OUT-5, WRT-2). The inner entry uses a GNU long name (TAR-4).",
          ["OUT-5", "WRT-2", "TAR-4", "EXT-1"],
          [G4[0], G4[1], {"work/" + long_path[4:]: sha256(NOTES)}])

    # ---- header failures (HDR, MAC-2, MAC-3)
    def v3h(hdr, **kw):
        return v3_members(files(xml3), chunk=1024, header=hdr, **kw)

    base3 = v3_header().decode()
    cases = [
        ("hdr-cr", base3.replace("\n", "\r\n"), "header-failure", "lines end in CRLF: CR is not allowed in a value (HDR-2, DEV-10).", ["HDR-2", "DEV-10"]),
        ("hdr-empty-line", base3 + "\n", "header-failure", "header ends in two LFs: an empty line (HDR-1, HDR-2).", ["HDR-1", "HDR-2"]),
        ("hdr-non-ascii", base3 + "owner=j\u00f6rg\n", "header-failure", "a non-ASCII byte in an unknown key's value (HDR-1).", ["HDR-1"]),
        ("hdr-space", base3.replace("compressed=True", "compressed= True"), "header-failure", "a space in a value (HDR-2).", ["HDR-2"]),
        ("hdr-duplicate-key", base3 + "compressed=True\n", "header-failure", "the known key `compressed` twice (HDR-3).", ["HDR-3"]),
        ("hdr-missing-filter", base3.replace("compression-filter=gzip\n", ""), "header-failure", "v3 compressed=True without compression-filter (HDR-4).", ["HDR-4"]),
        ("hdr-missing-crypto", base3.replace("crypto-algorithm=aes-256-cbc\n", ""), "header-failure", "v3 encrypted=True without crypto-algorithm (HDR-4).", ["HDR-4"]),
        ("hdr-version-5", base3.replace("version=3", "version=5"), "unsupported", "version=5 is not a supported version (HDR-5).", ["HDR-5"]),
        ("hdr-version-1", base3.replace("version=3", "version=1"), "unsupported", "version=1 (R1/R2 directory trees) is out of scope (HDR-5).", ["HDR-5"]),
        ("hdr-version-03", base3.replace("version=3", "version=03"), "header-failure", "version=03 is not canonical decimal (GEN-3, HDR-5, DEV-10).", ["HDR-5", "GEN-3", "DEV-10"]),
        ("hdr-bool-maybe", base3.replace("encrypted=True", "encrypted=maybe"), "header-failure", "encrypted=maybe is no boolean spelling (HDR-5, DEV-9).", ["HDR-5", "DEV-9"]),
        ("hdr-filter-less", base3.replace("compression-filter=gzip", "compression-filter=less"), "unsupported", "compression-filter=less names a program, not a supported filter (HDR-5, CMP-3, DEV-13).", ["HDR-5", "CMP-3", "DEV-13"]),
        ("hdr-cipher-ofb", base3.replace("crypto-algorithm=aes-256-cbc", "crypto-algorithm=aes-256-ofb"), "unsupported", "crypto-algorithm=aes-256-ofb is not a supported cipher (HDR-5, V3-6).", ["HDR-5", "V3-6"]),
        ("hdr-hmac-mismatch", base3.replace("hmac-algorithm=sha512", "hmac-algorithm=sha384"), "header-failure", "the header says sha384 but verified with HMAC-SHA512 (MAC-3, DEV-1).", ["MAC-3", "DEV-1"]),
    ]
    for name, hdr, want, comment, reqs in cases:
        g.add(name, v3h(hdr.encode()), want, comment, reqs + ["HDR-6"])
    # header too long (checked before MAC), .hmac too long
    big = (base3 + "padding=" + "x" * 4100 + "\n").encode()
    g.add("hdr-too-long", v3h(big), "limit-exceeded",
          "backup-header of 4.2 KiB exceeds LIM-1 (HDR-1).", ["HDR-1", "LIM-1", "OUT-5"])
    ms = list(H3)
    ms[1] = ("backup-header.hmac", b"(stdin)= " + b"0" * 4200 + b"\n")
    g.add("hdr-hmac-too-long", ms, "limit-exceeded",
          "backup-header.hmac of 4.2 KiB exceeds LIM-2.", ["LIM-2", "MAC-4"])
    ms = list(H3)
    ms[1] = ("backup-header.hmac", b"(stdin)= " + b"ab" * 20 + b"cd" * 2 + b"\n")
    g.add("hdr-hmac-length-unknown", ms, "unsupported",
          "backup-header.hmac holds 44 hex digits, a length no MAC-2 digest has.", ["MAC-2"])
    ms = list(H3)
    ms[1] = ("backup-header.hmac", b"no mac here\n")
    g.add("hdr-hmac-garbage", ms, "header-failure",
          "backup-header.hmac does not follow the MAC-4 grammar.", ["MAC-2", "MAC-4"])
    g.add("wrong-passphrase-v3", H3, "wrong-passphrase",
          "the passphrase differs from the one the archive was written with; HMAC of the header "
          "does not match (MAC-2, ERR-2).", ["MAC-2", "MAC-5", "ERR-2", "ERR-3"],
          passphrase="qubes2")
    g.add("wrong-passphrase-v4", H4, "wrong-passphrase",
          "wrong passphrase: the scrypt passphrase check of backup-header.hmac fails (V4-3).",
          ["V4-3", "V4-2", "ERR-2"], passphrase="Qubes")
    ms = list(H3)
    ms[0] = ("backup-header", flip(ms[0][1], 3))
    g.add("hdr-v3-altered", ms, "wrong-passphrase",
          "one header byte altered: for HMAC files indistinguishable from a wrong passphrase (MAC-2).",
          ["MAC-2", "HDR-6"])
    ms = list(H4)
    ms[0] = ("backup-header", ms[0][1].replace(b"compressed=True", b"compressed=Fals"))
    g.add("hdr-v4-altered", ms, "header-failure",
          "header bytes differ from the plaintext of backup-header.hmac (V4-3, HDR-6).",
          ["V4-3", "HDR-6", "MAC-1"])
    ms = list(H4)
    ms[1] = ("backup-header.hmac", flip(ms[1][1], -1))
    g.add("hdr-v4-final-hmac", ms, "header-failure",
          "the final HMAC of backup-header.hmac altered; the passphrase check passes (V4-3).",
          ["V4-3", "V4-1"])

    # v4-only header rules
    def v4h(hdr, bid=BID, pw=PASS):
        return v4_members(files(xml4), chunk=1024, header=hdr, bid=bid, pw=pw)
    b4 = v4_header().decode()
    for name, hdr, want, comment, reqs in [
        ("hdr-v4-unencrypted", b4.replace("encrypted=True", "encrypted=False"), "unsupported",
         "v4 with encrypted=False (HDR-5, DEV-15).", ["HDR-5", "DEV-15"]),
        ("hdr-v4-crypto-not-scrypt", b4 + "crypto-algorithm=aes-256-cbc\n", "header-failure",
         "v4 crypto-algorithm other than scrypt (HDR-5, DEV-15).", ["HDR-5", "DEV-15"]),
        ("hdr-v4-missing-backup-id", b4.replace("backup-id=%s\n" % BID, ""), "header-failure",
         "v4 header without backup-id (HDR-4).", ["HDR-4"]),
        ("hdr-v4-backup-id-dash", b4.replace("backup-id=", "backup-id=-"), "header-failure",
         "backup-id starting with `-` (HDR-5).", ["HDR-5"]),
        ("hdr-v4-hmac-not-scrypt", b4.replace("hmac-algorithm=scrypt", "hmac-algorithm=sha512"), "header-failure",
         "v4 header verified by a scrypt container but naming sha512 (MAC-3, DEV-1).", ["MAC-3", "DEV-1", "HDR-5"]),
    ]:
        g.add(name, v4h(hdr.encode()), want, comment, reqs + ["HDR-6"])
    long_bid = "B" * 129
    g.add("hdr-v4-backup-id-too-long",
          v4h(v4_header(bid=long_bid), bid=long_bid), "limit-exceeded",
          "backup-id of 129 bytes exceeds LIM-22 (HDR-5).", ["HDR-5", "LIM-22"])
    longpw = "p" * 1910
    g.add("v4-composite-passphrase-too-long",
          v4_members(files(xml4), chunk=1024, pw=longpw, bid="B" * 128,
                     header=v4_header(bid="B" * 128)), "limit-exceeded",
          "passphrase of 1910 bytes: `backup-header!` + it fits LIM-21, but `backup-id!qubes.xml.000!` "
          "+ it (2053 bytes) exceeds LIM-21; upstream's scrypt would truncate (V4-2, DEV-15).",
          ["V4-2", "LIM-21", "DEV-15", "PASS-1"], G4, fail_at=0, passphrase=longpw)

    # ---- order and name failures on the hand-built v4/v3 archives
    p0 = idx(H4, "vm3/private.img.000.enc")
    assert H4[p0 + 2][0] == "vm3/private.img.002.enc", "private.img needs 3 chunks"
    def mod4(f):
        ms = list(H4)
        f(ms)
        return ms
    def mod3(f, base=None):
        ms = list(base or H3)
        f(ms)
        return ms
    order = [
        ("ord-no-header", lambda m: m.pop(0), "header-failure", 0,
         "first member is backup-header.hmac: neither backup-header nor qubes.xml.000 (ORD-1).", ["ORD-1"]),
        ("ord-header-without-mac", lambda m: m.pop(1), "header-failure", 0,
         "backup-header followed by qubes.xml.000.enc instead of backup-header.hmac (ORD-1).", ["ORD-1"]),
        ("ord-xml-not-first", lambda m: m.insert(2, m.pop(p0)), "order-failure", 0,
         "a private.img chunk before qubes.xml.000.enc (ORD-2).", ["ORD-2"]),
        ("ord-xml-second-chunk", lambda m: m.insert(3, ("qubes.xml.001.enc", m[2][1])), "order-failure", 1,
         "qubes.xml.001.enc after qubes.xml.000.enc: qubes.xml is exactly one chunk (ORD-2).", ["ORD-2"]),
        ("ord-swap-chunks", lambda m: m.insert(p0 + 1, m.pop(p0)), "order-failure", 1,
         "private.img.001 before private.img.000 (ORD-3, DEV-2).", ["ORD-3", "DEV-2"]),
        ("ord-gap", lambda m: m.pop(p0 + 1), "order-failure", 1,
         "private.img.001 missing between .000 and .002 (ORD-3, VER-3).", ["ORD-3", "VER-3"]),
        ("ord-v4-hmac-member", lambda m: m.insert(p0 + 1, ("vm3/private.img.000.hmac", b"(stdin)= 00\n")), "order-failure", 1,
         "a .hmac member in a v4 archive (ORD-5, NAME-5).", ["ORD-5", "NAME-5"]),
        ("ord-repeat-file", lambda m: m.append(m[idx(m, "vm3/notes.txt.000.enc")]), "order-failure", 3,
         "vm3/notes.txt.000.enc a second time (ORD-6).", ["ORD-6"]),
        ("ord-repeat-xml", lambda m: m.append(m[2]), "order-failure", 3,
         "qubes.xml.000.enc again after the files (ORD-6).", ["ORD-6", "ORD-2"]),
        ("ord-repeat-header", lambda m: m.append(m[0]), "order-failure", 3,
         "backup-header again after the files (ORD-6).", ["ORD-6"]),
        ("ord-stray-file", lambda m: m.append(("vm77/private.img.000.enc", m[-1][1])), "order-failure", 3,
         "a file under vm77/, which no included VM has (ORD-7, VER-5, DEV-2).", ["ORD-7", "VER-5", "DEV-2"]),
        ("ord-drop-last-chunk", lambda m: m.pop(idx(m, "vm3/notes.txt.000.enc") - 1), "truncated", 1,
         "private.img's last chunk removed: the gzip stream ends early (VER-3, CMP-3).", ["VER-3", "CMP-3"]),
        ("ver-missing-volume", lambda m: [m.pop(p0) for _ in range(idx(m, "vm3/notes.txt.000.enc") - p0)], "missing-data", 2,
         "all of private.img removed: work's private volume (save_on_stop) is missing (VER-2, DEV-3, DEV-21).", ["VER-2", "DEV-3", "DEV-21"]),
        ("name-noncanonical-index", lambda m: m.__setitem__(p0 + 1, ("vm3/private.img.0001.enc", m[p0 + 1][1])), "malformed", 1,
         "chunk index spelled 0001 (NAME-2).", ["NAME-2", "NAME-1"]),
        ("name-index-too-big", lambda m: m.__setitem__(p0 + 1, ("vm3/private.img.1000000.enc", m[p0 + 1][1])), "limit-exceeded", 1,
         "chunk index 1000000 exceeds LIM-6 (NAME-2).", ["NAME-2", "LIM-6"]),
        ("name-no-index", lambda m: m.__setitem__(p0, ("vm3/private.img.enc", m[p0][1])), "malformed", 1,
         "member name without a chunk index (NAME-1).", ["NAME-1"]),
        ("name-path-ends-hmac", lambda m: m.append(("vm3/x.hmac.000.enc", m[-1][1])), "malformed", 3,
         "PATH ends in .hmac (NAME-5).", ["NAME-5"]),
        ("name-path-backup-header", lambda m: m.append(("backup-header.000.enc", m[-1][1])), "malformed", 3,
         "PATH is backup-header (NAME-5).", ["NAME-5"]),
        ("name-absolute", lambda m: m.__setitem__(p0, ("/vm3/private.img.000.enc", m[p0][1])), "unsafe-path", 1,
         "absolute member path (NAME-3).", ["NAME-3", "DEV-20"]),
        ("name-dotdot", lambda m: m.__setitem__(p0, ("vm3/../../etc/passwd.000.enc", m[p0][1])), "unsafe-path", 1,
         "`..` components in a member path (NAME-3).", ["NAME-3", "EXT-5"]),
        ("name-control-char", lambda m: m.__setitem__(p0, ("vm3/priv\x1bate.img.000.enc", m[p0][1])), "unsafe-path", 1,
         "an ESC byte in a member name (NAME-3).", ["NAME-3"]),
        ("name-dot-in-v4", lambda m: m.__setitem__(p0, ("vm3/..000.enc", m[p0][1])), "unsafe-path", 1,
         "PATH ending in `.` (vm3/.) in v4; NAME-4 allows it in v2/v3 only.", ["NAME-4"]),
        ("name-too-long", lambda m: m.append(("vm3/" + "x" * 4100 + ".000.enc", m[-1][1])), "limit-exceeded", 3,
         "a member path of 4.1 KiB (pax path) exceeds LIM-8 (NAME-3).", ["NAME-3", "LIM-8", "OUT-3", "DEV-16"]),
        ("name-too-deep", lambda m: m.append(("vm3/" + "d/" * 260 + "f.000.enc", m[-1][1])), "limit-exceeded", 3,
         "a member path of 262 components exceeds LIM-9 (NAME-3).", ["NAME-3", "LIM-9"]),
    ]
    for name, f, want, fail_at, comment, reqs in order:
        gr = [G4[0], G4[2]] if name == "ver-missing-volume" else G4
        g.add(name, mod4(f), want, comment, reqs, gr, fail_at=None if want == "missing-data" else fail_at)
    q0 = idx(H3, "vm3/private.img.000")
    order3 = [
        ("ord-v3-missing-hmac", lambda m: m.pop(q0 + 1), "order-failure", 1,
         "private.img.000 followed by private.img.001 instead of its .hmac (ORD-4).", ["ORD-4"]),
        ("ord-v3-misplaced-hmac", lambda m: m.insert(q0, m.pop(q0 + 1)), "order-failure", 1,
         "private.img.000.hmac before its chunk (ORD-4).", ["ORD-4"]),
        ("ord-v3-enc-suffix", lambda m: m.__setitem__(q0, ("vm3/private.img.000.enc", m[q0][1])), "malformed", 1,
         "a v3 member ending in .enc has no numeric index (NAME-5).", ["NAME-5"]),
        ("ord-v3-end-after-chunk", lambda m: m.__delitem__(slice(q0 + 1, None)), "truncated", 1,
         "the archive ends after private.img.000, where its .hmac must come (ORD-4).", ["ORD-4", "OUT-4"]),
        ("mac-v3-flip-chunk", lambda m: m.__setitem__(q0 + 2, (m[q0 + 2][0], flip(m[q0 + 2][1], 100))), "mac-failure", 1,
         "one bit of private.img.001 altered (MAC-5, MAC-6).", ["MAC-5", "MAC-6", "MAC-1"]),
        ("mac-v3-hex-length", lambda m: m.__setitem__(q0 + 1, (m[q0 + 1][0], hmac_text(m[q0][1], "sha256"))), "mac-failure", 1,
         "private.img.000.hmac holds a SHA-256 value in a sha512 archive (MAC-4, MAC-3).", ["MAC-4", "MAC-3"]),
        ("mac-v3-garbled", lambda m: m.__setitem__(q0 + 1, (m[q0 + 1][0], b"garbage\n")), "malformed", 1,
         "private.img.000.hmac does not follow the MAC-4 grammar.", ["MAC-4"]),
        ("mac-v3-hmac-too-long", lambda m: m.__setitem__(q0 + 1, (m[q0 + 1][0], b"(stdin)= " + b"0" * 5000 + b"\n")), "limit-exceeded", 1,
         "private.img.000.hmac of 5 KiB exceeds LIM-2 (MAC-4).", ["MAC-4", "LIM-2"]),
        ("mac-v3-xml", lambda m: m.__setitem__(2, (m[2][0], flip(m[2][1], 40))), "mac-failure", 0,
         "qubes.xml.000 altered (MAC-1).", ["MAC-1", "MAC-6"]),
    ]
    for name, f, want, fail_at, comment, reqs in order3:
        g.add(name, mod3(f), want, comment, reqs, G3, fail_at=fail_at,
              stop="outer" if name.startswith("ord-") or name == "mac-v3-hmac-too-long" else "file")

    # ---- v4 container failures (V4-1, V4-4 … V4-6, MAC-1)
    def cont(f):
        def apply(m):
            m[p0] = (m[p0][0], f(m[p0][1]))
        return apply
    v4c = [
        ("v4-flip-ciphertext", cont(lambda c: flip(c, 200)), "mac-failure", "one ciphertext byte of private.img.000 altered (V4-6).", ["V4-6", "MAC-1"]),
        ("v4-flip-final-hmac", cont(lambda c: flip(c, -1)), "mac-failure", "the final HMAC of private.img.000 altered (V4-6).", ["V4-6"]),
        ("v4-short-container", cont(lambda c: c[:100]), "malformed", "a 100-byte container (V4-1, V4-5).", ["V4-1", "V4-5"]),
        ("v4-bad-magic", cont(lambda c: b"scrypu" + c[6:]), "malformed", "container magic `scrypu` (V4-1).", ["V4-1", "V4-5"]),
        ("v4-container-version-1", cont(lambda c: c[:6] + b"\x01" + c[7:]), "unsupported", "scrypt container format version 1 (V4-5).", ["V4-5"]),
        ("v4-logn-zero", cont(lambda c: fix_scrypt_checksum(c[:7] + b"\x00" + c[8:])), "malformed", "logN 0 (V4-5).", ["V4-5"]),
        ("v4-logn-41", cont(lambda c: fix_scrypt_checksum(c[:7] + b"\x29" + c[8:])), "limit-exceeded", "logN 41 exceeds LIM-18 (V4-5).", ["V4-5", "LIM-18"]),
        ("v4-rp-too-big", cont(lambda c: fix_scrypt_checksum(c[:8] + (1 << 15).to_bytes(4, "big") + (1 << 15).to_bytes(4, "big") + c[16:])), "malformed", "r·p = 2^30 exceeds LIM-17 (V4-5).", ["V4-5", "LIM-17"]),
        ("v4-param-checksum", cont(lambda c: c[:48] + flip(c[48:64], 0) + c[64:]), "malformed", "the parameter checksum at offset 48 altered (V4-5).", ["V4-5"]),
        ("v4-kdf-memory-bomb", cont(lambda c: fix_scrypt_checksum(c[:7] + b"\x1e" + c[8:])), "limit-exceeded", "logN 30, r 8: 128 GiB of KDF memory, refused before the KDF runs (V4-4, DEV-5).", ["V4-4", "DEV-5", "LIM-19", "RES-1"]),
        ("v4-kdf-work-bomb", cont(lambda c: fix_scrypt_checksum(c[:7] + b"\x14" + (1).to_bytes(4, "big") + (1024).to_bytes(4, "big") + c[16:])), "limit-exceeded", "logN 20, r 1, p 1024: 128 MiB of memory but work 2^30 > LIM-20 (V4-4).", ["V4-4", "LIM-20"]),
        ("v4-wrong-salt-check", cont(lambda c: c[:64] + flip(c[64:96], 5) + c[96:]), "mac-failure", "passphrase check of a chunk fails after the header verified (V4-6).", ["V4-6"]),
        ("v4-swapped-contents", lambda m: m.__setitem__(p0, (m[p0][0], m[p0 + 1][1])) or m.__setitem__(p0 + 1, (m[p0 + 1][0], H4[p0][1])), "mac-failure", "private.img.000 and .001 trade contents; names still in order, but each container is bound to its name (V4-2, V4-6).", ["V4-2", "V4-6"]),
    ]
    for name, f, want, comment, reqs in v4c:
        g.add(name, mod4(f), want, comment, reqs, G4, fail_at=1)
    ms = list(H4)
    ms[1] = ("backup-header.hmac", fix_scrypt_checksum(ms[1][1][:7] + b"\x1e" + ms[1][1][8:]))
    g.add("v4-header-kdf-bomb", ms, "limit-exceeded",
          "backup-header.hmac asks for logN 30 (128 GiB): refused before the KDF (V4-4, MAC-2).",
          ["V4-4", "MAC-2", "DEV-5"], G4, fail_at=0)
    other = v4_members(files(xml4), chunk=1024, bid="20200101T000000-9999",
                       header=v4_header(bid="20200101T000000-9999"))
    ms = list(H4)
    ms[p0] = other[p0]
    g.add("v4-chunk-from-other-backup", ms, "mac-failure",
          "private.img.000.enc taken from a backup with another backup-id (V4-2, V4-6).",
          ["V4-2", "V4-6"], G4, fail_at=1)

    # ---- v3 encryption layer (V3-1, V3-3)
    plain_priv = compress(inner_priv, "gzip")
    g.add("v3-not-salted", v3_members(files(xml3)[:1] + [("vm3/private.img", None, plain_priv), files(xml3)[2]], chunk=1024),
          "malformed", "encrypted v3 file whose stored stream does not start with `Salted__` (V3-1).",
          ["V3-1"], G3, fail_at=1)
    ct = openssl_enc(plain_priv)
    g.add("v3-cipher-length", v3_members(files(xml3)[:1] + [("vm3/private.img", None, ct[:-5]), files(xml3)[2]], chunk=1024),
          "malformed", "ciphertext length not a multiple of 16 (V3-1).", ["V3-1"], G3, fail_at=1)
    g.add("v3-bad-padding", v3_members(files(xml3)[:1] + [("vm3/private.img", None, ct[:-16]), files(xml3)[2]], chunk=1024),
          "truncated", "the last CBC block removed, as when the last chunk is missing: the padding is "
          "invalid at the end (V3-3).", ["V3-3", "VER-3"], G3, fail_at=1)

    # ---- compression layer (CMP-1, CMP-3) on unencrypted v3 (the MAC covers the plain bytes)
    def plainv3(stored_priv, filt="gzip"):
        f = files(xml3)
        return v3_members([("qubes.xml", None, compress(f[0][1], filt)), ("vm3/private.img", None, stored_priv),
                           ("vm3/notes.txt", None, compress(f[2][1], filt))], chunk=1024,
                          encrypted=False, filt=filt)
    gz = compress(inner_priv, "gzip")
    crc = bytearray(gz)
    crc[-6] ^= 1
    cmp_cases = [
        ("cmp-trailing-garbage", plainv3(gz + b"junk"), "malformed", "4 bytes after the gzip stream (CMP-3, DEV-13).", ["CMP-3", "DEV-13"]),
        ("cmp-trailing-zeros", plainv3(gz + b"\0" * 16), "malformed", "16 zero bytes after the gzip stream (CMP-3).", ["CMP-3"]),
        ("cmp-gzip-crc", plainv3(bytes(crc)), "malformed", "gzip CRC-32 altered (CMP-1).", ["CMP-1"]),
        ("cmp-gzip-cut", plainv3(gz[:-30]), "truncated", "gzip stream cut short (CMP-3).", ["CMP-3"]),
        ("cmp-lzma-dict-bomb", plainv3(lambda_lzma(inner_priv), "lzma"), "limit-exceeded", "LZMA-alone header claims a 1 GiB dictionary, over LIM-26 (CMP-1).", ["CMP-1", "LIM-26"]),
        ("cmp-zstd-window-bomb", plainv3(run_zstd_long(inner_priv), "zstd"), "limit-exceeded", "zstd frame with a 1 GiB window (--long=30), over LIM-26 (CMP-1).", ["CMP-1", "LIM-26"]),
        ("cmp-xz-check", plainv3(xz_bad_check(inner_priv), "xz"), "malformed", "xz CRC64 check altered (CMP-1).", ["CMP-1"]),
    ]
    G3P = [{"qubes.xml": sha256(xml3)}, {"work/private.img": sha256(PRIV)}, {"work/notes.txt": sha256(NOTES)}]
    for name, ms, want, comment, reqs in cmp_cases:
        g.add(name, ms, want, comment, reqs, G3P, fail_at=1)

    # ---- inner tar (TAR) in v4 private.img
    def with_priv(inner, filt="gzip"):
        return v4_members([("qubes.xml", xml_tar(xml4)), ("vm3/private.img", inner),
                           ("vm3/notes.txt", inner_notes)], chunk=1024, filt=filt)
    N = "vm3/private.img"
    small = b"hello\n"
    one = entry(N, small)
    tar_cases = [
        ("tar-no-end-block", one, "truncated", "the inner tar ends after the entry without a zero block (TAR-8).", ["TAR-8"]),
        ("tar-nonzero-after-end", one + END + b"x" + b"\0" * 511, "malformed", "a non-zero byte after the end-of-archive block (TAR-8).", ["TAR-8"]),
        ("tar-padding-nonzero", tar_header(N, len(small), magic=b"ustar  \0") + small + b"X" * (512 - len(small)) + END, "malformed", "non-zero entry padding (TAR-8).", ["TAR-8"]),
        ("tar-too-many-zeros", one + b"\0" * (512 + (1 << 20) + 1024), "limit-exceeded", "LIM-23 + 1024 zero bytes after the first end block (TAR-8).", ["TAR-8", "LIM-23", "DEV-16"]),
        ("tar-too-many-zeros-by-one-block", one + b"\0" * (512 + (1 << 20) + 512), "limit-exceeded", "LIM-23 + 512 zero bytes after the first end block (TAR-8 counts from the first zero block).", ["TAR-8", "LIM-23"]),
        ("ok-tar-max-zeros", one + b"\0" * (512 + (1 << 20)), "ok", "exactly LIM-23 zero bytes after the first end block (TAR-8).", ["TAR-8", "LIM-23"]),
        ("tar-cut-in-data", tar_header(N, 5000, magic=b"ustar  \0") + small, "truncated", "the stream ends inside the entry's data (TAR-8).", ["TAR-8"]),
        ("tar-bad-checksum", tar_header(N, len(small), magic=b"ustar  \0", checksum=1234) + pad(small) + END, "malformed", "inner header checksum wrong (TAR-1 via OUT-5).", ["TAR-1", "OUT-5"]),
        ("tar-type-v", entry(N, b"", typeflag=b"V") + one + END, "unsupported", "a GNU volume label (V) entry (TAR-1).", ["TAR-1"]),
        ("tar-dir-for-file", entry(N, typeflag=b"5") + END, "unsafe-path", "a directory where the format puts private.img (TAR-1, TAR-11, EXT-4).", ["TAR-1", "TAR-11", "EXT-4"]),
        ("tar-symlink-for-file", entry(N, typeflag=b"2", linkname=b"/etc/shadow") + END, "unsafe-path", "a symlink where the format puts private.img (TAR-11, EXT-4).", ["TAR-11", "EXT-4", "TAR-7"]),
        ("tar-other-name", entry("vm3/other.img", small) + END, "unsafe-path", "the entry is named vm3/other.img instead of vm3/private.img (TAR-11).", ["TAR-11"]),
        ("tar-two-entries", one + entry(N + "/x", small) + END, "malformed", "a second entry after the single file (TAR-11).", ["TAR-11"]),
        ("tar-entry-dotdot", entry("vm3/../vm3/private.img", small) + END, "unsafe-path", "entry name with `..` (NAME-3, TAR-11).", ["NAME-3", "TAR-11"]),
        ("tar-two-longnames", entry("././@LongLink", N.encode() + b"\0", typeflag=b"L") * 2 + one + END, "malformed", "two GNU long-name entries before one entry (TAR-4).", ["TAR-4"]),
        ("tar-longname-dangling", one + entry("././@LongLink", N.encode() + b"\0", typeflag=b"L") + END, "malformed", "a long-name entry followed by the end of the archive (TAR-4).", ["TAR-4"]),
        ("tar-longname-too-long", entry("././@LongLink", b"a" * ((1 << 20) + 10), typeflag=b"L") + one + END, "limit-exceeded", "a long name over LIM-10 (TAR-4).", ["TAR-4", "LIM-10"]),
        ("tar-pax-bad-length", pax_entry([]) [:0] + tar_header("x", 20, b"x") + pad(b"99 path=vm3/private\n") + one + END, "malformed", "pax record whose length field is wrong (TAR-5).", ["TAR-5"]),
        ("tar-pax-dup-path", pax_entry([("path", N), ("path", N)]) + one + END, "malformed", "pax `path` twice in one header (TAR-5).", ["TAR-5"]),
        ("tar-pax-hdrcharset", pax_entry([("hdrcharset", "BINARY")]) + one + END, "unsupported", "hdrcharset=BINARY (TAR-5).", ["TAR-5"]),
        ("tar-size-base256-negative", tar_header(N, 0, magic=b"ustar  \0", raw_size=b"\xff" * 12) + END, "malformed", "negative base-256 size (TAR-6).", ["TAR-6"]),
        ("tar-size-non-octal", tar_header(N, 0, magic=b"ustar  \0", raw_size=b"0000000009\0\0") + END, "malformed", "non-octal digit in the size field (TAR-6).", ["TAR-6"]),
        ("tar-sparse-old-version", pax_entry([("GNU.sparse.size", "100"), ("GNU.sparse.map", "0,6"), ("GNU.sparse.name", N)]) + entry("vm3/GNUSparseFile.1/private.img", small) + END, "unsupported", "PAX 0.1 sparse records (GNU.sparse.map) (TAR-3).", ["TAR-3"]),
        ("tar-sparse-overlap", pax_sparse(N, 8192, [(0, 512), (256, 512)]), "malformed", "PAX 1.0 sparse runs that overlap (TAR-9).", ["TAR-9", "TAR-3"]),
        ("tar-sparse-beyond-realsize", pax_sparse(N, 1024, [(0, 512), (1000, 512)]), "malformed", "a run ending beyond realsize (TAR-9).", ["TAR-9"]),
        ("tar-sparse-exabytes", pax_sparse(N, 1 << 60, [(0, 512), ((1 << 60) - 512, 512)]), "limit-exceeded", "a PAX sparse map claiming 1 EiB of realsize, over LIM-12: refused by the limit before any write (TAR-1, TAR-9, EXT-3; TAR-9's 'malformed' conflicts with ERR-2's limit-exceeded).", ["TAR-1", "TAR-9", "LIM-12"]),
        ("tar-sparse-count-bomb", pax_sparse(N, 8192, [(0, 512)], count=5000000), "limit-exceeded", "a PAX 1.0 map announcing 5 000 000 entries, over LIM-11 (TAR-9).", ["TAR-9", "LIM-11"]),
        ("tar-gnu-sparse-exabytes", gnu_sparse_header(N, 1 << 60, [(0, 512)]) + b"S" * 512 + END, "limit-exceeded", "a GNU old sparse entry with base-256 realsize 2^60, over LIM-12 (TAR-1, TAR-2, TAR-6, TAR-9).", ["TAR-1", "TAR-2", "TAR-6", "TAR-9", "LIM-12"]),
        ("ok-tar-type-7", entry(N, small, typeflag=b"7") + END, "ok", "private.img as a typeflag 7 (contiguous) entry, a regular file per TAR-1.", ["TAR-1"]),
        ("tar-gnu-sparse-half-pair", gnu_sparse_header(N, 4096, [(0, 512)], half=True) + b"S" * 512 + END, "malformed", "a GNU sparse pair with only one field filled (TAR-2).", ["TAR-2"]),
    ]
    for name, inner, want, comment, reqs in tar_cases:
        if want == "ok":
            g.add(name, with_priv(inner), want, comment, reqs, [G4[0], {"work/private.img": sha256(small)}, G4[2]])
        else:
            g.add(name, with_priv(inner), want, comment, reqs, G4, fail_at=1)
    # valid sparse forms, hand-made
    g.add("ok-tar-sparse-pax-unaligned", with_priv(pax_sparse(N, 65536, [(4096, 700), (65536, 0)], data=prng(700, 5), unaligned=True)),
          "ok", "PAX 1.0 sparse entry as qubes.tarwriter writes it: last run not padded, end blocks "
          "unaligned, trailing (realsize, 0) run (TAR-3, TAR-8, TAR-9, EXT-3).",
          ["TAR-3", "TAR-8", "TAR-9", "EXT-3"],
          [G4[0], {"work/private.img": sha256(b"\0" * 4096 + prng(700, 5) + b"\0" * (65536 - 4796))}, G4[2]])
    runs = [(8192 + 65536 * i, prng(700 + i, 60 + i)) for i in range(6)] + [(700000, text(2000, 6))]
    sp = (1 << 20, runs)
    img = bytearray(1 << 20)
    for off, data in runs:
        img[off:off + len(data)] = data
    g.add("ok-tar-sparse-gnu", with_priv(gnu_tar(N, sp, sparse=True)), "ok",
          "GNU old sparse (S) entry written by `tar --sparse` with 7 runs, so the map continues in an "
          "extension block; extracted with its holes (TAR-2, EXT-3).",
          ["TAR-2", "TAR-6", "EXT-3"], [G4[0], {"work/private.img": sha256(bytes(img))}, G4[2]])
    g.add("ok-tar-pax-path-and-longname", with_priv(entry("././@LongLink", b"ignored/long\0", typeflag=b"L")
                                                    + pax_entry([("path", N), ("mtime", "1.5"), ("comment", "x")])
                                                    + entry("ignored", small) + END + b"\0" * 3000),
          "ok", "entry name from pax path, which wins over a GNU long name and the header name; unknown "
          "pax records ignored; 3000 zero bytes after the end block (TAR-4, TAR-5, TAR-8).",
          ["TAR-4", "TAR-5", "TAR-8"], [G4[0], {"work/private.img": sha256(small)}, G4[2]])
    g.add("ok-tar-base256-size", with_priv(tar_header(N, 0, magic=b"ustar  \0", raw_size=b"\x80" + (len(small)).to_bytes(11, "big")) + pad(small) + END),
          "ok", "size field in base-256 (TAR-6).", ["TAR-6"], [G4[0], {"work/private.img": sha256(small)}, G4[2]])

    # ---- decompression bomb vs backup-size (VER-4, DEV-14)
    zeros = gnu_tar(N, b"\0" * (20 << 20))          # 20 MiB of data, not sparse
    xmlsmall = r4_xml([r4_domain("work", path="vm3/", size=1000)])
    bomb = v4_members([("qubes.xml", xml_tar(xmlsmall)), ("vm3/private.img", zeros),
                       ("vm3/notes.txt", inner_notes)], filt="zstd", chunk=4096)
    gb = [{"qubes.xml": sha256(xmlsmall)}, {"work/private.img": sha256(b"\0" * (20 << 20))},
          {"work/notes.txt": sha256(NOTES)}]
    g.add("ver-backup-size-bomb", bomb, "limit-exceeded",
          "private.img decompresses to 20 MiB of data while work's backup-size is 1000: with "
          "--strict-backup-size that is over size + LIM-27, stopped while decoding (VER-4, DEV-14).",
          ["VER-4", "LIM-27", "DEV-14", "RES-1"], gb, fail_at=1, args=["--strict-backup-size"])
    g.add("ok-ver-backup-size-advisory", bomb, "ok",
          "the same archive by default: backup-size is advisory, the excess is a warning with both "
          "figures (upstream's figure is disk usage; #7198) (VER-4, DEV-14).",
          ["VER-4", "DEV-14", "ERR-3"], gb)

    # ---- exact per-entry bounds instead (VER-4)
    def with_vols(vols, priv, notes=inner_notes):
        xml = r4_xml([r4_domain("work", path="vm3/", size=1000, vols=vols)])
        ms = v4_members([("qubes.xml", xml_tar(xml)), ("vm3/private.img", priv),
                         ("vm3/notes.txt", notes)], chunk=4096)
        return xml, ms
    xml, ms = with_vols([("root", "False"), ("private", "True", 1 << 20)],
                        gnu_sparse_header(N, 1 << 30, [(0, 512)]) + b"S" * 512 + END)
    g.add("ver-volume-size-bomb", ms, "limit-exceeded",
          "private.img claims 1 GiB while its volume-config size is 1 MiB: over size + LIM-49, "
          "refused from the entry's header before any data (VER-4, LIM-49).",
          ["VER-4", "LIM-49", "XML-2"], [{"qubes.xml": sha256(xml)}, {}, {"work/notes.txt": sha256(NOTES)}],
          fail_at=1)
    img = prng(512, 77) + b"\0" * ((1 << 20) + 4096 - 512)
    xml, ms = with_vols([("root", "False"), ("private", "True", 1 << 20)],
                        gnu_tar(N, ((1 << 20) + 4096, [(0, prng(512, 77))]), sparse=True))
    g.add("ok-ver-volume-size-differs", ms, "ok",
          "private.img is 4 KiB larger than its volume-config size (LVM rounds volumes up), within "
          "LIM-49: verified, the difference is a note (VER-4).", ["VER-4", "LIM-49"],
          [{"qubes.xml": sha256(xml)}, {"work/private.img": sha256(img)}, {"work/notes.txt": sha256(NOTES)}])
    xml, ms = with_vols(None, inner_priv,
                        gnu_sparse_header("vm3/notes.txt", (16 << 20) + 1, [(0, 512)]) + b"S" * 512 + END)
    g.add("ver-text-file-bomb", ms, "limit-exceeded",
          "notes.txt claims 16 MiB + 1 byte, over LIM-47 for the small files a restore reads (VER-4).",
          ["VER-4", "LIM-47"], [{"qubes.xml": sha256(xml)}, {"work/private.img": sha256(PRIV)}, {}],
          fail_at=2)
    big = gnu_sparse_header("vm3/apps.templates/x.desktop", (4 << 30) + 1, [(0, 512)]) + b"S" * 512
    xml, ms = with_vols(None, inner_priv)
    ms = v4_members([("qubes.xml", xml_tar(xml)), ("vm3/private.img", inner_priv),
                     ("vm3/apps.templates", entry("vm3/apps.templates/", typeflag=b"5") + big + END),
                     ("vm3/notes.txt", inner_notes)], chunk=4096)
    g.add("ver-aux-file-bomb", ms, "limit-exceeded",
          "apps.templates/x.desktop claims 4 GiB + 1 byte, over LIM-48 for a VM file that is not an "
          "image (VER-4).", ["VER-4", "LIM-48"],
          [{"qubes.xml": sha256(xml)}, {"work/private.img": sha256(PRIV)}, {}, {"work/notes.txt": sha256(NOTES)}],
          fail_at=2)

    # ---- what a VM directory holds besides images (TAR-11, EXT-4; issue: R3/R4 layouts)
    desk_a, desk_b, kern = text(300, 81), text(200, 82), prng(3000, 83)
    trees = [("vm3/apps.templates", entry("vm3/apps.templates/", typeflag=b"5")
              + entry("vm3/apps.templates/a.desktop", desk_a)
              + entry("vm3/apps.templates/b.desktop", desk_b) + END),
             ("vm3/kernels", entry("vm3/kernels/", typeflag=b"5")
              + entry("vm3/kernels/vmlinuz", kern) + END),
             ("vm3/icon.png", entry("vm3/icon.png", typeflag=b"2",
                                    linkname=b"/usr/share/qubes/icons/green.png") + END),
             ("vm3/menu-link", entry("vm3/menu-link", typeflag=b"2",
                                     linkname=b"apps.templates/a.desktop") + END)]
    tree_out = [{"work/apps.templates/a.desktop": sha256(desk_a),
                 "work/apps.templates/b.desktop": sha256(desk_b)},
                {"work/kernels/vmlinuz": sha256(kern)}, {}, {}]
    g.add("ok-v4-vm-dir-trees", v4_members(files(xml4)[:2] + trees + files(xml4)[2:], chunk=1024), "ok",
          "a VM's apps.templates/ and kernels/ directories, an absolute icon.png link (skipped with a "
          "note) and a relative link staying inside, each its own file, as upstream archives a VM "
          "directory (TAR-1, TAR-11, EXT-4, DEV-24).", ["TAR-1", "TAR-11", "EXT-4", "TAR-7", "DEV-24"],
          G4[:2] + tree_out + G4[2:], symlinks={"work/menu-link": "apps.templates/a.desktop"})
    g.add("ok-v3-vm-dir-trees", v3_members(files(xml3)[:2] + trees + files(xml3)[2:], chunk=1024), "ok",
          "the same VM directory entries in a v3 archive (R3.2 appvms/NAME/kernels, icon.png) "
          "(TAR-11, EXT-4).", ["TAR-11", "EXT-4"], G3[:2] + tree_out + G3[2:],
          symlinks={"work/menu-link": "apps.templates/a.desktop"})
    dir_cases = [
        ("tar-vm-dir-entry-outside", entry("vm3/apps.templates/", typeflag=b"5")
         + entry("vm3/apps/x.desktop", desk_a) + END, "unsafe-path",
         "a VM directory file vm3/apps.templates holding vm3/apps/x.desktop, outside it (TAR-11)."),
        ("tar-vm-link-then-entry", entry("vm3/apps.templates", typeflag=b"2", linkname=b"x")
         + entry("vm3/apps.templates/x.desktop", desk_a) + END, "malformed",
         "a VM file that is a symlink followed by a second entry: a link is the only entry (TAR-11)."),
        ("tar-vm-dir-other-name", entry("vm3/apps/", typeflag=b"5") + END, "unsafe-path",
         "the file vm3/apps.templates whose first entry is the directory vm3/apps (TAR-11)."),
    ]
    for name, inner, want, comment in dir_cases:
        xm = v4_members(files(xml4)[:2] + [("vm3/apps.templates", inner)] + files(xml4)[2:], chunk=1024)
        g.add(name, xm, want, comment, ["TAR-11"], G4[:2] + [{}] + G4[2:], fail_at=2)
    g.add("ok-ver-backup-size-ignored", bomb, "ok",
          "the same archive with the backup-size check disabled (--ignore-backup-size): verifies; "
          "the opt-out is reported (VER-4).", ["VER-4", "ERR-3"], gb, args=["--ignore-backup-size"])

    # ---- LIM-13: a directory file (dom0 home) with more than 10^6 entries, zstd-compressed
    xh = r4_xml([doms_home := r4_domain("work", path="vm3/")]).replace(
        b'<features/>', b'<features>\n        <feature name="backup-content">True</feature>\n'
        b'        <feature name="backup-path">dom0-home/user</feature>\n      </features>')
    dirent = entry("dom0-home/user/", typeflag=b"5")
    many = vlib.run(["zstd", "-q", "-19", "-c"], dirent * 1000001 + END)
    g.add("tar-too-many-entries",
          v4_members([("qubes.xml", xml_tar(xh)), ("vm3/private.img", inner_priv), ("vm3/notes.txt", inner_notes),
                      ("dom0-home/user", None, many)], filt="zstd", chunk=1 << 20),
          "limit-exceeded", "dom0 home's inner tar holds 1 000 001 directory entries, over LIM-13 (TAR-1); "
          "508 MiB of headers, a few KiB compressed.", ["TAR-1", "LIM-13", "DEV-16"],
          [{"qubes.xml": sha256(xh)}, G4[1], G4[2]], fail_at=3)

    # ---- qubes.xml (XML)
    def x4(xml, fail_at=0, want=None, extra_files=()):
        fs = [("qubes.xml", xml_tar(xml)), ("vm3/private.img", inner_priv), ("vm3/notes.txt", inner_notes)]
        return v4_members(fs + list(extra_files), chunk=1024)
    gx = lambda xml: [{"qubes.xml": sha256(xml)}, G4[1], G4[2]]
    doms = r4_domain("work", path="vm3/")
    xml_cases = [
        ("xml-doctype-entities", r4_xml(prolog='<?xml version="1.0"?>\n<!DOCTYPE qubes [<!ENTITY a "aaaaaaaa"><!ENTITY b "&a;&a;&a;&a;">]>\n'), "unsupported", "a DOCTYPE with entity declarations (XML-4).", ["XML-4"]),
        ("xml-doctype-external", r4_xml(prolog='<?xml version="1.0"?>\n<!DOCTYPE qubes SYSTEM "file:///etc/passwd">\n'), "unsupported", "a DOCTYPE naming an external DTD (XML-4).", ["XML-4"]),
        ("xml-encoding-latin1", r4_xml(prolog='<?xml version="1.0" encoding="ISO-8859-1"?>\n'), "unsupported", "an XML declaration naming ISO-8859-1 (XML-4).", ["XML-4"]),
        ("xml-not-well-formed", r4_xml().replace(b"</domains>", b"</domain>"), "malformed", "mismatched end tag (XML-4).", ["XML-4"]),
        ("xml-cut-short", r4_xml()[:-10], "malformed", "the document ends inside an element; the tar entry itself is complete (XML-4).", ["XML-4"]),
        ("xml-too-deep", r4_xml([doms.replace("<tags/>", "") .replace("      <features>", "      " + "<x>" * 40 + "</x>" * 40 + "\n      <features>")]), "limit-exceeded", "elements nested 40 deep, over LIM-15 (XML-4).", ["XML-4", "LIM-15"]),
        ("xml-long-value", r4_xml([r4_domain("work", path="vm3/", extra_props='        <property name="description">%s</property>\n' % ("v" * 70000))]), "limit-exceeded", "a 70 000-byte property text, over LIM-16 (XML-4).", ["XML-4", "LIM-16"]),
        ("xml-too-many-attributes", r4_xml([doms.replace('<domain id="domain-3"', '<domain ' + " ".join('a%d="x"' % i for i in range(300)) + ' id="domain-3"')]), "limit-exceeded", "an element with 300 attributes, over LIM-25 (XML-4).", ["XML-4", "LIM-25"]),
        ("xml-too-many-vms", r4_xml([doms] + ['    <domain class="AppVM"><properties><property name="name">v%d</property><property name="label">label-1</property></properties></domain>\n' % i for i in range(10001)]), "limit-exceeded", "10 002 domains, over LIM-14 (XML-4).", ["XML-4", "LIM-14", "DEV-16"]),
        ("xml-too-many-elements", r4_xml([doms]).replace(b"</qubes>", b"<pad>" + b"<e/>" * (1 << 20) + b"</pad></qubes>"), "limit-exceeded", "2^20 + more elements, over LIM-24 (XML-4).", ["XML-4", "LIM-24"]),
        ("xml-too-big", r4_xml([doms]).replace(b"</qubes>", b"<!--" + b"c" * (17 << 20) + b"--></qubes>"), "limit-exceeded", "17 MiB of decompressed qubes.xml, over LIM-4 (XML-4).", ["XML-4", "LIM-4"]),
        ("xml-bad-char-ref", r4_xml([r4_domain("work", path="vm3/", extra_props='        <property name="description">a&#0;b</property>\n')]), "malformed", "a numeric character reference to NUL, not a legal XML character (XML-4).", ["XML-4"]),
        ("xml-undefined-entity", r4_xml([r4_domain("work", path="vm3/", extra_props='        <property name="description">&nbsp;</property>\n')]), "malformed", "an entity other than the five predefined ones (XML-4).", ["XML-4"]),
        ("xml-bad-class", r4_xml([doms.replace('class="AppVM"', 'class="FooVM"')]), "malformed", "domain class FooVM (XML-2).", ["XML-2"]),
        ("xml-bad-vm-name", r4_xml([doms.replace(">work<", ">-work<")]), "malformed", "VM name `-work` breaks the name grammar (XML-3).", ["XML-3", "DEV-22"]),
        ("xml-duplicate-names", r4_xml([doms, r4_domain("work", qid=4, path="vm4/")]), "malformed", "two VMs named work (XML-3).", ["XML-3"]),
        ("xml-unsafe-backup-path", r4_xml([r4_domain("work", path="../vm3/")]), "unsafe-path", "backup-path ../vm3/ (XML-3, NAME-3).", ["XML-3", "NAME-3", "DEV-22"]),
        ("xml-overlapping-paths", r4_xml([doms, r4_domain("other", qid=4, path="vm3/sub/")]), "malformed", "backup-paths vm3/ and vm3/sub/ overlap (XML-3, ORD-7).", ["XML-3", "ORD-7"]),
        ("xml-path-under-dom0-home", r4_xml([r4_domain("work", path="dom0-home/work/")]), "malformed", "a domU backup-path under dom0-home/ (XML-3).", ["XML-3"]),
        ("xml-bad-truth", r4_xml([r4_domain("work", path="vm3/", content="maybe")]), "malformed", "backup-content `maybe` (XML-3, DEV-9).", ["XML-3", "DEV-9"]),
        ("xml-bad-size", r4_xml([r4_domain("work", path="vm3/", size="12a")]), "malformed", "backup-size `12a` (XML-3).", ["XML-3"]),
        ("xml-bad-save-on-stop", r4_xml([r4_domain("work", path="vm3/", vols=[("private", "Perhaps")])]), "malformed", "volume save_on_stop `Perhaps` (XML-2, XML-3).", ["XML-2", "XML-3"]),
    ]
    for name, xml, want, comment, reqs in xml_cases:
        if name in ("xml-unsafe-backup-path", "xml-overlapping-paths"):
            g.add(name, x4(xml), want, comment, reqs, [gx(xml)[0], {}], fail_at=1, stop="outer",
                  note="the backup-path checks run on the parsed plan; the qubes.xml file itself "
                  "may already be committed (EXT-2 does not say whether XML-3 is part of its verification)")
        else:
            g.add(name, x4(xml), want, comment, reqs)
    # core3 root volume saved -> root.img required (VER-2)
    xr = r4_xml([r4_domain("work", path="vm3/", vols=[("root", "True"), ("private", "True")])])
    g.add("ver-missing-root-volume", x4(xr), "missing-data",
          "work's root volume has save_on_stop=True, so vm3/root.img is required and absent (VER-2, XML-2).",
          ["VER-2", "XML-2", "DEV-21"], gx(xr))
    # core3: VM with no volume-config -> AppVM needs private.img; empty VM needs one file
    xs = r4_xml([r4_domain("work", path="vm3/"), r4_domain("idle", qid=6, path="vm6/", vols=[])])
    g.add("ver-vm-without-files", x4(xs), "missing-data",
          "VM idle (AppVM, empty volume-config) is included but no vm6/ file is in the archive: a VM "
          "needs at least one file (VER-2).",
          ["VER-2", "XML-2"], gx(xs))
    # EXT-1 output collision: a VM named dom0-home
    xc = r4_xml([doms, r4_domain("dom0-home", qid=7, path="vm7/")]).replace(
        b'<features/>', b'<features>\n        <feature name="backup-content">True</feature>\n'
        b'        <feature name="backup-path">dom0-home/user</feature>\n      </features>')
    homet = entry("dom0-home/user", typeflag=b"5") + entry("dom0-home/user/f", NOTES) + END
    coll = v4_members([("qubes.xml", xml_tar(xc)), ("vm3/private.img", inner_priv), ("vm3/notes.txt", inner_notes),
                       ("vm7/private.img", gnu_tar("vm7/private.img", NOTES)), ("vm7/user", gnu_tar("vm7/user", NOTES)),
                       ("dom0-home/user", homet)], chunk=1024)
    g.add("ext-output-collision", coll, "ok", extract_expect="unsafe-path", may_only=True,
          comment=
          "a VM named dom0-home whose file `user` is extracted to dom0-home/user, where dom0's home "
          "directory goes: the archive verifies; extraction commits the VM's files and fails at dom0 "
          "home, whose output path is taken (EXT-1, EXT-2, DEV-22).", reqs=["EXT-1", "EXT-2", "DEV-22"],
          groups=gx(xc) + [{"dom0-home/private.img": sha256(NOTES)}, {"dom0-home/user": sha256(NOTES)}, {}],
          fail_at=5)

    # ---- shared qids (issue 9 item 2): a note in core3 and for unreferenced core2 qids; a
    # core2 reference to a shared qid is ambiguous (XML-1, XML-3, DEV-23)
    xq = r4_xml([doms, r4_domain("dvm", qid=3, path="vm4/", vols=[("private", "True")])])
    g.add("ok-xml-shared-qid-core3", x4(xq, extra_files=[("vm4/private.img", gnu_tar("vm4/private.img", NOTES))]), "ok",
          "core3 VMs work and dvm both have qid 3 (upstream's own v4 test qubes.xml has such a pair): "
          "nothing in core3 refers to a VM by qid and their files map through distinct backup-paths, "
          "so the archive verifies and the shared qid is reported as a note (XML-2, XML-3).",
          ["XML-2", "XML-3", "VER-2"], gx(xq) + [{"dvm/private.img": sha256(NOTES)}],
          listing={"version": 4, "vms": ["dvm", "work"], "notes": [["qid 3", "work", "dvm"]]})
    xq2 = r3_xml(['<QubesAppVm qid="3" name="work" label="red" template_qid="9" backup_content="True" '
                  'backup_path="vm3" backup_size="1000000"/>',
                  '<QubesAppVm qid="3" name="spare" label="red" template_qid="9" backup_content="False"/>'])
    g.add("ok-v3-xml-shared-qid-unreferenced", v3_members([("qubes.xml", xml_tar(xq2)), ("vm3/private.img", inner_priv)],
                                                          chunk=1024), "ok",
          "core2 VMs work and spare both have qid 3 and no qid reference names 3: nothing is ambiguous, "
          "so the archive verifies and the shared qid is reported as a note (XML-1, XML-3, DEV-23).",
          ["XML-1", "XML-3", "DEV-23"], [{"qubes.xml": sha256(xq2)}, {"work/private.img": sha256(PRIV)}],
          listing={"version": 3, "vms": ["work"], "notes": [["qid 3", "work", "spare"]]})
    xq3 = r3_xml(['<QubesAppVm qid="3" name="work" label="red" template_qid="9" backup_content="True" '
                  'backup_path="vm3" backup_size="1000000"/>',
                  '<QubesAppVm qid="9" name="spare" label="red" template_qid="none" backup_content="False"/>']
                 ).replace(b'default_template="9"', b'default_template="none"')
    g.add("xml-v3-ambiguous-qid-reference", v3_members([("qubes.xml", xml_tar(xq3)), ("vm3/private.img", inner_priv)],
                                                       chunk=1024), "malformed",
          "core2 template tmpl and AppVM spare share qid 9, and work's template_qid is 9: the reference "
          "is ambiguous (upstream's qid map would pick one of them) (XML-1, DEV-23).",
          ["XML-1", "DEV-23"], [{"qubes.xml": sha256(xq3)}, {"work/private.img": sha256(PRIV)}], fail_at=0)

    # ---- core2 prefix matching (ORD-7, DEV-18), ORD-9 interleaving, v3 directory files
    x10 = r3_xml(['<QubesAppVm qid="1" name="work" label="red" template_qid="9" backup_content="True" '
                  'backup_path="vm1" backup_size="1000000"/>'])
    fs = [("qubes.xml", xml_tar(x10)), ("vm1/private.img", gnu_tar("vm1/private.img", PRIV)),
          ("vm10/private.img", gnu_tar("vm10/private.img", PRIV))]
    g.add("ord-prefix-vm1-vm10", v3_members(fs, chunk=1024), "order-failure",
          "backup-path vm1 does not own vm10/private.img: component-wise match, unlike upstream's "
          "prefix test (ORD-7, DEV-18, XML-1).", ["ORD-7", "DEV-18", "XML-1", "VER-5"],
          [{"qubes.xml": sha256(x10)}, {"work/private.img": sha256(PRIV)}], fail_at=2)
    x2 = r4_xml([doms, r4_domain("other", qid=4, path="vm4/")])
    fs = [("qubes.xml", xml_tar(x2)), ("vm3/private.img", inner_priv), ("vm4/private.img", gnu_tar("vm4/private.img", NOTES)),
          ("vm3/notes.txt", inner_notes)]
    g.add("ord-interleaved-vms", v4_members(fs, chunk=1024), "order-failure",
          "work's files are split by other's file (ORD-9, DEV-2).", ["ORD-9", "DEV-2"],
          [{"qubes.xml": sha256(x2)}, G4[1], {"other/private.img": sha256(NOTES)}, G4[2]], fail_at=3)

    # v3 directory file (template as vm9/.) with links and specials (TAR-7, EXT-4, NAME-4)
    LONGT = "apps/" + "../apps/" * 16 + "x.desktop"      # 142 bytes: a GNU K record
    xt = r3_xml(['<QubesTemplateVm qid="8" name="tpl" label="black" template_qid="none" backup_content="True" '
                 'backup_path="vm8" backup_size="1000000"/>'])
    d = "vm8/."
    good = (entry(d + "/", typeflag=b"5") + entry(d + "/private.img", PRIV) + entry(d + "/apps/", typeflag=b"5")
            + entry(d + "/apps/x.desktop", NOTES) + entry(d + "/icon.png", typeflag=b"2", linkname=b"apps/x.desktop")
            + entry("././@LongLink", (LONGT + "\0").encode(), typeflag=b"K")
            + entry(d + "/longlink", typeflag=b"2", linkname=LONGT[:100].encode())
            + entry(d + "/escape", typeflag=b"2", linkname=b"../../../etc/passwd")
            + entry(d + "/abs", typeflag=b"2", linkname=b"/etc/passwd")
            + entry(d + "/hard", typeflag=b"1", linkname=(d + "/private.img").encode())
            + entry(d + "/fifo", typeflag=b"6") + entry(d + "/dev", typeflag=b"3") + END)
    gd = [{"qubes.xml": sha256(xt)}, {"tpl/private.img": sha256(PRIV), "tpl/apps/x.desktop": sha256(NOTES)}]
    g.add("ok-v3-template-dir-links", v3_members([("qubes.xml", xml_tar(xt)), ("vm8/.", good)], chunk=1024), "ok",
          "v3 template as a directory file vm8/. (chunks vm8/..NNN): relative symlinks inside are recreated "
          "(one with a 142-byte target in a GNU K record), "
          "symlinks leaving the VM directory, a hard link, a FIFO and a device are skipped and reported "
          "(NAME-4, TAR-7, TAR-11, EXT-1, EXT-4, DEV-19).",
          ["NAME-4", "TAR-4", "TAR-7", "TAR-11", "EXT-1", "EXT-4", "DEV-19", "XML-1", "VER-2"], gd,
          symlinks={"tpl/icon.png": "apps/x.desktop", "tpl/longlink": LONGT},
          listing={"version": 3, "vms": ["tpl"]})
    bad = entry(d + "/", typeflag=b"5") + entry(d + "/private.img", PRIV) + entry("vm8/../vm9/x", NOTES) + END
    g.add("tar-dir-entry-escapes", v3_members([("qubes.xml", xml_tar(xt)), ("vm8/.", bad)], chunk=1024), "unsafe-path",
          "an entry of directory file vm8/. named vm8/../vm9/x (NAME-3, TAR-11).", ["NAME-3", "TAR-11", "EXT-5"],
          gd, fail_at=1)
    bad = entry(d + "/", typeflag=b"5") + entry(d + "/private.img", PRIV) + entry("vm9/x", NOTES) + END
    g.add("tar-dir-entry-outside", v3_members([("qubes.xml", xml_tar(xt)), ("vm8/.", bad)], chunk=1024), "unsafe-path",
          "an entry of directory file vm8/. named vm9/x, outside its PATH (TAR-11).", ["TAR-11"], gd, fail_at=1)
    bad = (entry(d + "/", typeflag=b"5") + entry(d + "/private.img", PRIV)
           + entry(d + "/hard", typeflag=b"1", linkname=(d + "/nothing").encode()) + END)
    g.add("tar-hardlink-dangling", v3_members([("qubes.xml", xml_tar(xt)), ("vm8/.", bad)], chunk=1024), "malformed",
          "a hard link to no earlier entry of its file (TAR-7).", ["TAR-7"], gd, fail_at=1)
    g.add("ver-missing-template-dir", v3_members([("qubes.xml", xml_tar(xt))], chunk=1024), "missing-data",
          "core2 TemplateVM included but its directory file vm8/. is absent (VER-2, XML-1).", ["VER-2", "XML-1"],
          gd[:1])
    g.add("name-dot-not-last", v3_members([("qubes.xml", xml_tar(xt)), ("vm8/./x", good)], chunk=1024), "unsafe-path",
          "a `.` component in the middle of a v3 member path (NAME-4).", ["NAME-4", "NAME-3"], gd, fail_at=1)

    # ---- R2 qubes.xml without a dom0 element: one dom0-home/USER file is accepted (ORD-7)
    x2r = r3_xml().replace(b'<QubesAdminVm qid="0" name="dom0" label="black" backup_content="False"/>\n', b"")
    bashrc = b"# ~/.bashrc\nexport EDITOR=vi\n"
    home = (entry("dom0-home/user/", typeflag=b"5") + entry("dom0-home/user/.bashrc", bashrc)
            + entry("dom0-home/user/docs/", typeflag=b"5") + entry("dom0-home/user/docs/a.txt", NOTES) + END)
    g.add("ok-v3-r2-dom0-home", v3_members([("qubes.xml", xml_tar(x2r)), ("vm3/private.img", inner_priv),
                                            ("dom0-home/user", home)], chunk=1024), "ok",
          "core2 qubes.xml with no dom0 element (R2): the file dom0-home/user is accepted as dom0 home "
          "without being required, and extracted as a directory file (ORD-7, TAR-11, EXT-1).",
          ["ORD-7", "TAR-11", "EXT-1", "XML-1"],
          [{"qubes.xml": sha256(x2r)}, {"work/private.img": sha256(PRIV)},
           {"dom0-home/user/.bashrc": sha256(bashrc), "dom0-home/user/docs/a.txt": sha256(NOTES)}])

    # ---- core2 classes (XML-1) and default volumes (VER-2)
    xc2 = r3_xml(['<QubesAppVm qid="3" name="work" label="red" template_qid="9" backup_content="True" '
                  'backup_path="vm3" backup_size="1000000"/>',
                  '<QubesHVm qid="4" name="hvm" label="red" template_qid="none" backup_content="True" '
                  'backup_path="vm4" backup_size="1000000"/>',
                  '<QubesNetVm qid="5" name="net" label="red" template_qid="9" backup_content="False"/>',
                  '<QubesProxyVm qid="6" name="proxy" label="red" template_qid="9"/>',
                  '<QubesDisposableVm qid="7" name="disp1" label="red" template_qid="9" backup_content="whatever"/>'])
    root_img = gnu_tar("vm4/root.img", text(700, 4))
    c2 = [("qubes.xml", xml_tar(xc2)), ("vm3/private.img", inner_priv), ("vm4/private.img", gnu_tar("vm4/private.img", NOTES))]
    g2 = [{"qubes.xml": sha256(xc2)}, {"work/private.img": sha256(PRIV)}, {"hvm/private.img": sha256(NOTES)}]
    g.add("ok-v3-core2-classes", v3_members(c2 + [("vm4/root.img", root_img)], chunk=1024), "ok",
      "core2 qubes.xml with QubesAppVm, QubesHVm (template_qid none: a StandaloneVM needing private.img "
      "and root.img), QubesNetVm and QubesProxyVm not in the backup, and a QubesDisposableVm child, "
      "which is ignored whatever its attributes (XML-1, XML-3, VER-2).", ["XML-1", "XML-3", "VER-2"],
      g2 + [{"hvm/root.img": sha256(text(700, 4))}], listing={"version": 3, "vms": ["hvm", "work"]})
    g.add("ver-core2-standalone-without-root", v3_members(c2, chunk=1024), "missing-data",
      "the same archive without vm4/root.img: a core2 StandaloneVM needs b/root.img (VER-2, DEV-21).",
      ["VER-2", "XML-1", "DEV-21"], g2)
    xs3 = r4_xml([r4_domain("work", path="vm3/"), r4_domain("alone", cls="StandaloneVM", qid=4, path="vm4/", vols=False)])
    g.add("ver-core3-standalone-default-volumes",
      v4_members([("qubes.xml", xml_tar(xs3)), ("vm3/private.img", inner_priv), ("vm3/notes.txt", inner_notes),
                  ("vm4/private.img", gnu_tar("vm4/private.img", NOTES))], chunk=1024), "missing-data",
      "a core3 StandaloneVM without volume-config needs private.img and root.img; root.img is absent (VER-2, XML-2).",
      ["VER-2", "XML-2"], [{"qubes.xml": sha256(xs3)}, G4[1], G4[2], {"alone/private.img": sha256(NOTES)}])

    # ---- outer layer failures (OUT)
    raw = archive(H4)
    cut_hdr = raw[:512 * 3 + 100]
    fails = [
        ("out-empty", b"\0" * 1024, "truncated", 0, "only zero blocks: an archive with no member (OUT-4).", ["OUT-4"]),
        ("out-eof-unaligned", raw[:-1000], "truncated", 3, "EOF not on a block boundary (OUT-4).", ["OUT-4"]),
        ("out-eof-in-header", cut_hdr, "truncated", 0, "EOF inside the second member's header (OUT-4).", ["OUT-4"]),
        ("out-bad-checksum", corrupt_member_header(H4, 2, "checksum"), "malformed", 0, "qubes.xml.000.enc's header checksum wrong (OUT-5).", ["OUT-5"]),
        ("out-bad-magic", corrupt_member_header(H4, 2, "magic"), "malformed", 0, "magic `ustax` (OUT-2).", ["OUT-2"]),
        ("out-typeflag-dir", corrupt_member_header(H4, 2, "type5"), "malformed", 0, "an outer directory entry (OUT-2).", ["OUT-2"]),
        ("out-gnu-longname", corrupt_member_header(H4, 2, "typeL"), "malformed", 0, "an outer GNU long-name (L) entry (OUT-2).", ["OUT-2"]),
        ("out-global-path", corrupt_member_header(H4, 2, "gpath"), "unsupported", 0, "a pax global header with a path record (OUT-3).", ["OUT-3"]),
        ("out-two-x-headers", corrupt_member_header(H4, 2, "xx"), "malformed", 0, "two consecutive pax x headers (OUT-3).", ["OUT-3"]),
        ("out-x-at-end", raw + pax_entry([("path", "a")]) + END, "malformed", 3, "a pax x header followed by the end of the archive (OUT-3).", ["OUT-3"]),
        ("out-member-too-big", raw[:raw_len_until(H4, 3)] + tar_header("vm3/private.img.000.enc", 200 << 20) + b"\0" * 512, "limit-exceeded", 1, "a member header claiming 200 MiB, over LIM-5, refused from the header (OUT-5).", ["OUT-5", "LIM-5", "MAC-1", "DEV-16"]),
        ("out-xml-chunk-too-big", raw[:raw_len_until(H4, 2)] + tar_header("qubes.xml.000.enc", 2 << 20) + b"\0" * 512, "limit-exceeded", 0, "qubes.xml.000.enc claiming 2 MiB, over LIM-3 (ORD-2).", ["ORD-2", "LIM-3", "OUT-5"]),
        ("out-header-member-too-big", tar_header("backup-header", 5000) + b"\0" * 512, "limit-exceeded", 0, "backup-header member of 5000 bytes, over LIM-1 (OUT-5).", ["OUT-5", "LIM-1"]),
        ("out-cut-in-data", raw[:raw_len_until(H4, 3) + 1024], "truncated", 1, "EOF inside a member's data (OUT-4).", ["OUT-4"]),
        ("ord-header-only", archive(H4[:1]), "truncated", 0, "the archive ends after backup-header (ORD-1).", ["ORD-1", "OUT-4"]),
    ]
    for name, data, want, fail_at, comment, reqs in fails:
        g.add(name, data, want, comment, reqs, G4, fail_at=fail_at)

    # ---- extraction: what is committed before a failure (EXT-2)
    ms = list(H4)
    n0 = idx(ms, "vm3/notes.txt.000.enc")
    ms[n0] = (ms[n0][0], flip(ms[n0][1], 150))
    g.add("ext-commit-before-failure", ms, "mac-failure",
          "notes.txt, the last file, fails its MAC: qubes.xml and work/private.img were verified before and "
          "are committed; nothing of notes.txt is released (EXT-2, MAC-1, DEV-8, ERR-1).",
          ["EXT-2", "MAC-1", "DEV-8", "ERR-1", "VER-1"], G4, fail_at=2)


def raw_len_until(ms, k):
    """Offset of member k in archive(ms)."""
    return len(archive(ms[:k])) - len(END)


def corrupt_member_header(ms, k, how):
    before = archive(ms[:k])
    n, d = ms[k]
    h = bytearray(tar_header(n, len(d)))
    if how == "checksum":
        h[148:154] = b"000001"
        mid = bytes(h)
    elif how == "magic":
        mid = tar_header(n, len(d), magic=b"ustax\x0000")
    elif how == "type5":
        mid = tar_header(n, len(d), typeflag=b"5")
    elif how == "typeL":
        mid = tar_header("././@LongLink", 20, typeflag=b"L") + pad(n.encode() + b"\0") + tar_header(n, len(d))
    elif how == "gpath":
        mid = pax_entry([("path", "qubes.xml.000.enc")], typeflag=b"g") + tar_header(n, len(d))
    elif how == "xx":
        mid = pax_entry([("mtime", "1")]) + pax_entry([("mtime", "2")]) + tar_header(n, len(d))
    return before[:-len(END)] + mid + pad(d) + archive(ms[k + 1:])


def lambda_lzma(inner):
    c = bytearray(compress(inner, "lzma"))
    c[1:5] = (1 << 30).to_bytes(4, "little")
    return bytes(c)


def run_zstd_long(inner):
    return vlib.run(["zstd", "-q", "--long=30", "--no-content-size", "-c"], inner)


def xz_bad_check(inner):
    c = bytearray(compress(inner, "xz"))
    # stream: 12-byte header, block, index, 12-byte footer; the CRC64 check is the 8 bytes
    # before the index (index indicator 0x00 follows the block padding + check).
    # Find the index: footer's backward size field gives it.
    backward = (int.from_bytes(c[-8:-4], "little") + 1) * 4
    index_start = len(c) - 12 - backward
    c[index_start - 1] ^= 1
    return bytes(c)


def pax_sparse(name, realsize, runs, data=None, count=None, unaligned=False):
    """A PAX 1.0 sparse entry (TAR-3) with the given map, then the end blocks."""
    m = ("%d\n" % (len(runs) if count is None else count)).encode()
    for off, ln in runs:
        m += b"%d\n%d\n" % (off, ln)
    m = pad(m)
    total = sum(ln for _, ln in runs)
    body = data if data is not None else prng(total, 9)
    recs = [("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.name", name),
            ("GNU.sparse.realsize", str(realsize))]
    out = pax_entry(recs) + tar_header("vm3/GNUSparseFile.1/private.img", len(m) + total) + m + body
    if not unaligned:
        out = pad(out)
    return out + END


def gnu_sparse_header(name, realsize, runs, half=False):
    """GNU old sparse (S) header with up to 4 pairs (TAR-2); data follows (caller)."""
    extra = {}
    for i, (off, ln) in enumerate(runs):
        extra[386 + 24 * i] = vlib.octal(off, 12)
        extra[386 + 24 * i + 12] = vlib.octal(ln, 12)
    if half:
        extra[386 + 24] = vlib.octal(4096, 12)      # second pair: offset only
    extra[483] = vlib.octal(realsize, 12) if realsize < 8 ** 11 else b"\x80" + realsize.to_bytes(11, "big")
    total = sum(ln for _, ln in runs)
    return tar_header(name, total, typeflag=b"S", magic=b"ustar  \0", extra=extra)


def tool_built(g, s):
    """Archives written by tests/fixtures/make-archive.sh (the real tools, upstream layout)."""
    def ok(name, args, comment, reqs, vms="work,dom0-home", compact=True, passphrase=None):
        a = list(args)
        if vms:
            a += ["--vms", vms]
        raw, man = s.make(*a, passphrase=passphrase)
        data = archive(parse_outer(raw)) if compact else raw
        g.add(name, data, "ok", comment, reqs, manifest_groups(man),
              passphrase=passphrase or PASS, symlinks=manifest_symlinks(man) or None,
              listing=manifest_listing(man))
        return raw, man

    ok("ok-v4-gzip-full", ["--version", "4", "--compression", "gzip", "--chunk-size", "8192"],
       "v4, gzip, every tiny fixture VM (AppVMs, StandaloneVM, TemplateVM, dom0 home with symlink and "
       "long names), as upstream writes it: one `tar -cO --posix` per member with pax headers and "
       "10240-byte records (OUT-1 … OUT-3, ORD, V4, TAR-2 GNU sparse, XML-2, VER-1, EXT-1 … EXT-4).",
       ["OUT-1", "OUT-2", "OUT-3", "ORD-1", "ORD-2", "ORD-3", "ORD-5", "ORD-7", "ORD-9", "V4-1", "V4-2",
        "V4-3", "HDR-4", "MAC-2", "MAC-3", "XML-2", "XML-3", "TAR-2", "TAR-11", "VER-1", "VER-2",
        "EXT-1", "EXT-2", "EXT-3", "EXT-4", "WRT-3", "WRT-4", "GEN-2", "DEV-4"], vms=None, compact=False)
    for filt in ["bzip2", "xz", "zstd", "none"]:
        ok("ok-v4-" + filt, ["--version", "4", "--compression", filt, "--chunk-size", "20480" if filt == "none" else "8192"],
           "v4 with %s (CMP-1, CMP-2), work and dom0 home." % ("no compression" if filt == "none" else filt),
           ["CMP-1", "CMP-2", "CMP-3", "V4-1", "VER-1"] if filt != "none" else ["CMP-2", "V4-1", "VER-1"])
    ok("ok-v4-tarwriter", ["--version", "4", "--compression", "gzip", "--tarwriter", "--chunk-size", "4096"],
       "v4 volume images in qubes.tarwriter layout: PAX 1.0 sparse, last run unpadded (TAR-3, TAR-8).",
       ["TAR-3", "TAR-8", "TAR-9", "EXT-3"], vms="work,standalone")
    raw, _ = ok("ok-v4-exact-multiple", ["--version", "4", "--compression", "none", "--chunk-size", "20480"],
       "uncompressed GNU tar streams are multiples of 10240 bytes, so files end on a chunk boundary and "
       "carry an empty final chunk (128-byte container) (ORD-3, WRT-3, V4-1).",
       ["ORD-3", "WRT-3", "V4-1"], vms="work,standalone")
    assert any(len(d) == 128 for n, d in parse_outer(raw) if n.endswith(".enc")), "no empty chunk"
    ok("ok-v3-gzip-full", ["--version", "3", "--compression", "gzip", "--chunk-size", "8192"],
       "v3, gzip, aes-256-cbc, HMAC-SHA512, every tiny fixture VM including the template as directory file "
       "vm9/. and dom0 home; the CBC chain continues across chunks (V3-1 … V3-3, NAME-4, ORD-4, TAR-11, XML-1).",
       ["V3-1", "V3-2", "V3-3", "NAME-4", "ORD-4", "ORD-7", "TAR-11", "XML-1", "XML-3", "VER-2", "MAC-4",
        "EXT-1", "EXT-4"], vms=None)
    for filt in ["bzip2", "xz", "zstd", "none"]:
        ok("ok-v3-" + filt, ["--version", "3", "--compression", filt, "--chunk-size", "20480" if filt == "none" else "8192"],
           "v3 with %s." % ("no compression" if filt == "none" else filt), ["CMP-1", "CMP-2", "V3-3"])
    ok("ok-v3-unencrypted", ["--version", "3", "--compression", "gzip", "--encrypted", "no", "--chunk-size", "4096"],
       "v3 unencrypted: chunks are the compressed stream, backup paths appvms/NAME (V3-3, MAC-5, XML-3).",
       ["V3-3", "MAC-5", "XML-3", "CMP-3"], vms="work,dense,dom0-home")
    for algo in ["md5", "sha1", "sha224", "sha256", "sha384"]:
        ok("ok-v3-hmac-" + algo, ["--version", "3", "--compression", "gzip", "--hmac", algo, "--chunk-size", "8192"],
           "v3 with HMAC-%s; header MAC digest picked from the .hmac length (MAC-2, MAC-3)." % algo.upper(),
           ["MAC-2", "MAC-3", "MAC-4", "HDR-5"], vms="work")
    ok("ok-v2-gzip-encrypted", ["--version", "2", "--compression", "gzip", "--chunk-size", "10240"],
       "v2 (header without version), encrypted and compressed with `openssl enc -z` semantics: each chunk "
       "one zlib stream around its own Salted__ container; GNU multi-volume tar (V3-4, V3-5, TAR-10, DEV-6).",
       ["V3-4", "V3-5", "TAR-10", "DEV-6", "HDR-4", "XML-1"], vms="work,dom0-home")
    ok("ok-v2-none-encrypted", ["--version", "2", "--compression", "none", "--chunk-size", "10240"],
       "v2 encrypted, uncompressed: each chunk its own openssl container and tar volume (V3-4, TAR-10).",
       ["V3-4", "TAR-10", "DEV-6"], vms="work")
    ok("ok-v2-gzip-plain", ["--version", "2", "--compression", "gzip", "--encrypted", "no", "--chunk-size", "10240"],
       "v2 unencrypted, each chunk one gzip stream (V3-5, TAR-10).", ["V3-5", "TAR-10"], vms="work")
    ok("ok-v2-headerless", ["--version", "2", "--compression", "none", "--encrypted", "no", "--v2-headerless",
                            "--chunk-size", "10240"],
       "header-less v2 (R2-beta3): first member qubes.xml.000; digest from the .hmac length, plain tar volumes "
       "(ORD-8, DEV-12).", ["ORD-8", "DEV-12", "MAC-2", "TAR-10"], vms="work")
    ok("ok-v2-headerless-encrypted", ["--version", "2", "--compression", "gzip", "--v2-headerless",
                                      "--chunk-size", "10240"],
       "header-less v2, encrypted and compressed: the authenticated qubes.xml.000 starts with a zlib header "
       "(ORD-8, V3-5).", ["ORD-8", "V3-5", "DEV-12"], vms="work")

    ok("ok-v2-headerless-gzip", ["--version", "2", "--compression", "gzip", "--encrypted", "no", "--v2-headerless",
                                 "--chunk-size", "10240"],
       "header-less v2, unencrypted and compressed: the authenticated qubes.xml.000 starts with the gzip magic "
       "(ORD-8).", ["ORD-8", "DEV-12"], vms="work")
    raw, man = s.make("--version", "2", "--compression", "gzip", "--encrypted", "no", "--chunk-size", "10240",
                      "--vms", "work")
    ms = parse_outer(raw)
    hdr = ms[0][1].decode()
    assert "version" not in hdr and "hmac-algorithm=SHA1" in hdr, hdr
    ms2 = list(ms)
    ms2[0] = ("backup-header", (hdr + "compression-filter=less\n").encode())
    g.add("ok-v2-filter-ignored", rehmac(ms2, "sha1"), "ok",
          "v2 header (no version key) with compression-filter=less: v2 compression does not use the "
          "filter, so it is ignored (V3-5, HDR-5, HDR-4).", ["V3-5", "HDR-5", "HDR-4"], manifest_groups(man))
    ms2 = [("backup-header", hdr.replace("compressed=True\n", "").encode())] + ms[1:4]
    g.add("hdr-v2-missing-compressed", rehmac(ms2, "sha1"), "header-failure",
          "v2 header without the required key compressed (HDR-4).", ["HDR-4", "HDR-6"])

    # tampering with real-tool v2 volumes (TAR-10, V3-4, V3-5)
    raw, man = s.make("--version", "2", "--compression", "none", "--encrypted", "no", "--chunk-size", "10240",
                      "--vms", "work")
    ms = parse_outer(raw)
    groups = manifest_groups(man)
    c1 = idx(ms, "vm3/private.img.001")
    vol = bytearray(ms[c1][1])
    assert vol[156:157] == b"M", "fixture volume 1 must start with an M header"
    off = int(vol[369:381].rstrip(b"\0 ") or b"0", 8)
    vol[369:381] = vlib.octal(off + 512, 12)
    vol[148:156] = b" " * 8
    vol[148:156] = ("%06o" % sum(vol[:512])).encode() + b"\0 "
    ms2 = list(ms)
    ms2[c1] = (ms2[c1][0], bytes(vol))
    g.add("tar-v2-volume-offset", rehmac(ms2, "sha1"), "malformed",
          "v2 volume 1's M header carries a wrong offset (TAR-10).", ["TAR-10"], groups, fail_at=1)
    ms2 = list(ms)
    ms2[c1] = (ms2[c1][0], b"\0" * 512 + ms2[c1][1][512:])
    g.add("tar-v2-volume-no-m", rehmac(ms2, "sha1"), "malformed",
          "v2 volume 1 does not start with the M header of the entry volume 0 left open (TAR-10).",
          ["TAR-10"], groups, fail_at=1)
    raw, man = s.make("--version", "2", "--compression", "gzip", "--chunk-size", "10240", "--vms", "work")
    ms = parse_outer(raw)
    groups = manifest_groups(man)
    c0 = idx(ms, "vm3/private.img.000")
    z = bytearray(ms[c0][1])
    z[-1] ^= 1              # Adler-32
    ms2 = list(ms)
    ms2[c0] = (ms2[c0][0], bytes(z))
    g.add("v2-zlib-adler", rehmac(ms2, "sha1"), "malformed",
          "v2 chunk's zlib Adler-32 altered (V3-5).", ["V3-5"], groups, fail_at=1)
    inner = zlib.decompress(ms[c0][1])
    ms2 = list(ms)
    ms2[c0] = (ms2[c0][0], zlib.compress(inner[:-16]))
    g.add("v2-chunk-padding", rehmac(ms2, "sha1"), "malformed",
          "v2 chunk whose own openssl container lacks its last block: invalid padding (V3-4).",
          ["V3-4"], groups, fail_at=1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="regenerate only vectors whose name contains this")
    ap.add_argument("--check", metavar="VERIFY_BIN", help="run this verifier on each vector")
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--disputed", action="store_true",
                    help="also write the vectors in DISPUTED (qbackup-verify disagrees with SPEC.md)")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="qbackup-vectors.")
    try:
        if not a.only:
            for f in os.listdir(a.out):
                if f.endswith(".bin") or (f.endswith(".json") and f != "package.json"):
                    os.unlink(os.path.join(a.out, f))
        g = Gen(a.out, a.only, a.check, a.disputed)
        hand_built(g)
        tool_built(g, Sources(tmp))
        print("%d vectors defined, %d disputed" % (len(g.names), len(DISPUTED)))
        if g.mismatches:
            print("disagreements: %s" % " ".join(g.mismatches))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(vlib._TMP, ignore_errors=True)


if __name__ == "__main__":
    main()
