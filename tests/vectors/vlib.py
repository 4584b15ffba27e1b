"""Building blocks for the conformance vector generator (generate.py).

Everything cryptographic or compressing goes through the real tools (`scrypt` 1.3.1,
`openssl` 3, GNU `tar`, `gzip`, `bzip2`, `xz`, `zstd`); this module only lays out bytes
(outer tar members, hand-crafted inner tar entries, qubes.xml text) where a vector needs a
shape no tool writes. Python 3 standard library only.
"""
import hashlib
import os
import subprocess
import tempfile

PASS = "qubes"
BID = "20161020T123455-1234"
LOGN = 10
MTIME = 1600000000
XML_CHUNK = 1 << 20     # qubes.xml is one chunk (ORD-2, LIM-3)

_TMP = tempfile.mkdtemp(prefix="qbackup-vlib.")


def run(cmd, data=b"", env=None):
    """Run a command with `data` on stdin; return stdout (raise on failure)."""
    p = subprocess.run(cmd, input=data, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    if p.returncode != 0:
        raise RuntimeError("%s failed: %s" % (cmd, p.stderr.decode(errors="replace")))
    return p.stdout


def sha256(b):
    return hashlib.sha256(b).hexdigest()


# ---------------------------------------------------------------------------- crypto / tools

def scrypt_enc(data, key, logn=LOGN):
    """`scrypt enc -P` (the upstream v4 container writer) with passphrase `key`."""
    src = os.path.join(_TMP, "scrypt-in")
    dst = os.path.join(_TMP, "scrypt-out")
    with open(src, "wb") as f:
        f.write(data)
    if os.path.exists(dst):
        os.unlink(dst)
    k = key.encode() if isinstance(key, str) else key
    run(["scrypt", "enc", "-P", "--logN", str(logn), "-r", "8", "-p", "1", src, dst], k + b"\n")
    with open(dst, "rb") as f:
        return f.read()


def hmac_text(data, algo="sha512", pw=PASS):
    """The `.hmac` member upstream writes: `openssl dgst -ALGO -hmac PASS` output."""
    return run(["openssl", "dgst", "-" + algo, "-hmac", pw], data)


def openssl_enc(data, pw=PASS, cipher="aes-256-cbc"):
    """`openssl enc -e -CIPHER -md MD5 -pass pass:PW` (EVP_BytesToKey, V3-2)."""
    return run(["openssl", "enc", "-e", "-" + cipher, "-md", "MD5", "-pass", "pass:" + pw], data)


COMPRESSORS = {
    "gzip": ["gzip", "-n", "-c"],
    "pigz": ["gzip", "-n", "-c"],          # same format (CMP-1); pigz is not installed
    "bzip2": ["bzip2", "-c"],
    "pbzip2": ["bzip2", "-c"],
    "xz": ["xz", "-c"],
    "lzma": ["xz", "--format=lzma", "-c"],
    "zstd": ["zstd", "-q", "-c"],
    "zstdmt": ["zstd", "-q", "-T2", "-c"],
}


def compress(data, filt):
    return run(COMPRESSORS[filt], data)


def gnu_tar(name, content, sparse=False, fmt="gnu"):
    """A one-entry inner tar made by GNU tar (`tar -c`), the entry named `name`."""
    d = tempfile.mkdtemp(dir=_TMP)
    p = os.path.join(d, "f")
    if isinstance(content, tuple):          # (logical size, [(offset, bytes)]) -> sparse file
        size, runs = content
        with open(p, "wb") as f:
            f.truncate(size)
            for off, b in runs:
                f.seek(off)
                f.write(b)
    else:
        with open(p, "wb") as f:
            f.write(content)
    os.utime(p, (MTIME, MTIME))
    args = ["tar", "-c", "--format=" + fmt, "--owner=0", "--group=0", "--numeric-owner",
            "-f", "-", "-C", d, "--transform", "s|^f$|%s|" % name, "f"]
    if sparse:
        args.insert(1, "--sparse")
    return run(args)


# ---------------------------------------------------------------------------- tar layout

def octal(n, width):
    return ("%0*o" % (width - 1, n)).encode() + b"\0"


def tar_header(name, size, typeflag=b"0", magic=b"ustar\x0000", prefix=b"", linkname=b"",
               mode=0o644, raw_size=None, extra=None, checksum=None):
    """One 512-byte tar header. `extra`: {offset: bytes} written last (before the checksum)."""
    if isinstance(name, str):
        name = name.encode()
    b = bytearray(512)
    b[0:len(name)] = name[:100]
    b[100:108] = octal(mode, 8)
    b[108:116] = octal(0, 8)
    b[116:124] = octal(0, 8)
    b[124:136] = raw_size if raw_size is not None else octal(size, 12)
    b[136:148] = octal(MTIME, 12)
    b[156:157] = typeflag
    b[157:157 + len(linkname)] = linkname
    b[257:265] = magic
    b[345:345 + len(prefix)] = prefix
    for off, val in (extra or {}).items():
        b[off:off + len(val)] = val
    b[148:156] = b" " * 8
    s = sum(b) if checksum is None else checksum
    b[148:156] = ("%06o" % s).encode() + b"\0 "
    return bytes(b)


def pad(data):
    return data + b"\0" * (-len(data) % 512)


def pax(records):
    """pax extended header data: `LEN key=value\\n` records (TAR-5)."""
    out = b""
    for k, v in records:
        k = k.encode() if isinstance(k, str) else k
        v = v.encode() if isinstance(v, str) else v
        body = b" " + k + b"=" + v + b"\n"
        n = len(body) + 1
        while len(str(n)) + len(body) != n:
            n = len(str(n)) + len(body)
        out += str(n).encode() + body
    return out


def entry(name, data=b"", typeflag=b"0", magic=b"ustar  \0", **kw):
    """One inner tar entry (GNU magic by default, as `tar -c` writes) with its padded data."""
    return tar_header(name, len(data), typeflag, magic, **kw) + pad(data)


def pax_entry(records, typeflag=b"x", name="././@PaxHeader"):
    d = pax(records)
    return tar_header(name, len(d), typeflag) + pad(d)


END = b"\0" * 1024


def member_bytes(name, data, end=False, **kw):
    """One outer member: header, data, padding (and with `end`, the end-of-archive blocks
    each upstream `tar -cO --posix` run appends); names over 100 bytes get a pax `path`."""
    raw = name.encode() if isinstance(name, str) else name
    out = b""
    if len(raw) > 100:
        out += pax_entry([("path", raw)], name="./PaxHeaders/x")
        raw = raw[:100]
    return out + tar_header(raw, len(data), **kw) + pad(data) + (END if end else b"")


def archive(members):
    """Members (name, data) as one compact tar stream ending in two zero blocks: a valid
    archive (OUT-1 lets zero blocks between members be absent), smaller than upstream's
    one-tar-per-member layout, which ok-v4-gzip-full and ok-outer-tar-variants keep."""
    return b"".join(member_bytes(n, d) for n, d in members) + END


def parse_outer(b):
    """Split an archive made by the real tools into (name, data) members."""
    out, i, pending = [], 0, {}
    while i + 512 <= len(b):
        h = b[i:i + 512]
        i += 512
        if h == b"\0" * 512:
            continue
        size = int(h[124:136].rstrip(b"\0 ") or b"0", 8)
        data = b[i:i + size]
        i += size + (-size % 512)
        t = h[156:157]
        if t == b"x":
            pos = 0
            while pos < len(data):
                sp = data.index(b" ", pos)
                n = int(data[pos:sp])
                k, v = data[sp + 1:pos + n - 1].split(b"=", 1)
                pending[k] = v
                pos += n
            continue
        name = h[0:100].split(b"\0")[0]
        prefix = h[345:500].split(b"\0")[0]
        if prefix:
            name = prefix + b"/" + name
        name = pending.get(b"path", name).decode()
        if b"size" in pending:
            size = int(pending[b"size"])
        pending = {}
        out.append((name, data))
    return out


# ---------------------------------------------------------------------------- archives

def split(stream, chunk):
    """Chunks as upstream writes them: an extra empty chunk when the stream is empty or an
    exact multiple of the chunk size (WRT-3)."""
    out = [stream[i:i + chunk] for i in range(0, len(stream), chunk)]
    if not out or len(out[-1]) == chunk:
        out.append(b"")
    return out


def v4_header(filt="gzip", compressed=True, bid=BID, extra=""):
    return ("version=4\nencrypted=True\ncompressed=%s\ncompression-filter=%s\n"
            "hmac-algorithm=scrypt\nbackup-id=%s\n%s" % (compressed, filt, bid, extra)).encode()


def v4_members(files, filt="gzip", chunk=4096, header=None, pw=PASS, bid=BID,
               compressed=True, header_logn=LOGN):
    """A v4 archive's members. `files`: [(PATH, inner tar)] in archive order, qubes.xml first.
    A file given as (PATH, None, stored) uses the stored stream as is."""
    hdr = header if header is not None else v4_header(filt, compressed, bid)
    ms = [("backup-header", hdr),
          ("backup-header.hmac", scrypt_enc(hdr, "backup-header!" + pw, header_logn))]
    for f in files:
        path = f[0]
        stored = f[2] if len(f) > 2 else (compress(f[1], filt) if compressed else f[1])
        for i, c in enumerate(split(stored, XML_CHUNK if path == "qubes.xml" else chunk)):
            name = "%s.%03d" % (path, i)
            ms.append((name + ".enc", scrypt_enc(c, "%s!%s!%s" % (bid, name, pw))))
    return ms


def v3_header(filt="gzip", compressed=True, encrypted=True, algo="sha512",
              cipher="aes-256-cbc", extra=""):
    h = "version=3\nhmac-algorithm=%s\ncrypto-algorithm=%s\nencrypted=%s\ncompressed=%s\n" % (
        algo, cipher, encrypted, compressed)
    if compressed:
        h += "compression-filter=%s\n" % filt
    return (h + extra).encode()


def v3_members(files, filt="gzip", chunk=4096, header=None, pw=PASS, compressed=True,
               encrypted=True, algo="sha512", cipher="aes-256-cbc"):
    """A v3 archive's members (each chunk followed by its .hmac)."""
    hdr = header if header is not None else v3_header(filt, compressed, encrypted, algo, cipher)
    ms = [("backup-header", hdr), ("backup-header.hmac", hmac_text(hdr, algo, pw))]
    for f in files:
        path = f[0]
        if len(f) > 2:
            stored = f[2]
        else:
            stored = compress(f[1], filt) if compressed else f[1]
            if encrypted:
                stored = openssl_enc(stored, pw, cipher)
        for i, c in enumerate(split(stored, XML_CHUNK if path == "qubes.xml" else chunk)):
            name = "%s.%03d" % (path, i)
            ms += [(name, c), (name + ".hmac", hmac_text(c, algo, pw))]
    return ms


# ---------------------------------------------------------------------------- qubes.xml

def r4_domain(name, cls="AppVM", qid=3, path=None, size=1000000, vols=None, content="True",
              extra_props="", extra_feats=""):
    """One core3 domain; `vols`: [(volume, save_on_stop[, size])], default root False + private
    True; False: no volume-config element at all."""
    vols = vols if vols is not None else [("root", "False"), ("private", "True")]
    feats = '        <feature name="backup-content">%s</feature>\n' % content
    if path is not None:
        feats += '        <feature name="backup-path">%s</feature>\n' % path
        feats += '        <feature name="backup-size">%s</feature>\n' % size
    vc = "".join('        <volume name="%s" pool="varlibqubes" save_on_stop="%s"%s/>\n'
                 % (v[0], v[1], ' size="%d"' % v[2] if len(v) > 2 else "")
                 for v in (vols or []))
    vc = "      <volume-config>\n%s      </volume-config>\n" % vc if vols is not False else ""
    return ('    <domain id="domain-%d" class="%s">\n      <properties>\n'
            '        <property name="qid">%d</property>\n'
            '        <property name="name">%s</property>\n'
            '        <property name="label">label-1</property>\n%s'
            '      </properties>\n      <features>\n%s%s      </features>\n%s'
            '    </domain>\n'
            % (qid, cls, qid, name, extra_props, feats, extra_feats, vc))


def r4_xml(domains=None, prolog='<?xml version="1.0" encoding="utf-8"?>\n'):
    if domains is None:
        domains = [r4_domain("work", path="vm3/")]
    return (prolog + "<qubes>\n  <labels>\n"
            '    <label id="label-1" color="0xcc0000">red</label>\n  </labels>\n'
            "  <properties>\n    <property name=\"default_netvm\"></property>\n  </properties>\n"
            "  <domains>\n"
            '    <domain id="domain-0" class="AdminVM">\n      <properties>\n'
            '        <property name="label">label-1</property>\n      </properties>\n'
            "      <features/>\n    </domain>\n"
            + "".join(domains) + "  </domains>\n</qubes>\n").encode()


def r3_xml(vms=None):
    """core2 (R3) qubes.xml: dom0 and a template not in the backup, plus `vms` lines."""
    if vms is None:
        vms = ['<QubesAppVm qid="3" name="work" label="red" template_qid="9" '
               'backup_content="True" backup_path="vm3" backup_size="1000000"/>']
    return ('<?xml version="1.0" ?>\n<QubesVmCollection default_template="9">\n'
            '<QubesAdminVm qid="0" name="dom0" label="black" backup_content="False"/>\n'
            '<QubesTemplateVm qid="9" name="tmpl" label="black" template_qid="none" '
            'backup_content="False"/>\n' + "\n".join(vms) + "\n</QubesVmCollection>\n").encode()


def xml_tar(xml):
    return gnu_tar("qubes.xml", xml)
