#!/usr/bin/env bash
# Regenerate the seed corpus fuzz/corpus/<target>/seed-* with the real tools (GNU tar,
# openssl 3, scrypt 1.3.1, gzip, python3 for the fixed-key "fuzz containers").
# Passphrase: "fuzz" (qbackup_fuzz_targets::PASSPHRASE). Salts and scrypt output are
# random, so a rerun changes the encrypted seeds; commit the result.
set -euo pipefail
umask 022
export LC_ALL=C TZ=UTC
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
corpus=$here/corpus
PASS=fuzz
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
cd "$w"

seed() { # seed TARGET NAME < data
    mkdir -p "$corpus/$1"
    cat > "$corpus/$1/seed-$2"
}
rm -f "$corpus"/*/seed-*

# --- small source files --------------------------------------------------------------
mkdir -p src
printf 'For Your Eyes Only\n' > src/notes.txt
truncate -s 64K src/private.img # sparse, three data runs
printf 'signature-start' | dd of=src/private.img conv=notrunc status=none
printf 'middle' | dd of=src/private.img bs=1 seek=20000 conv=notrunc status=none
printf 'end' | dd of=src/private.img bs=1 seek=65533 conv=notrunc status=none
head -c 3000 /dev/zero | tr '\0' 'x' > src/dense.bin
mkdir -p "src/dir/$(printf 'long%.0s' {1..30})"
echo deep > "src/dir/$(printf 'long%.0s' {1..30})/file-with-a-long-name.txt"
ln -s notes.txt src/link

cat > qubes-r4.xml <<'EOF'
<?xml version='1.0' encoding='utf-8'?>
<qubes>
  <labels><label id="label-1" color="0xcc0000">red</label></labels>
  <pools/>
  <properties/>
  <domains>
    <domain id="domain-0" class="AdminVM"><properties><property name="label">label-1</property></properties><features/><tags/></domain>
    <domain id="domain-3" class="AppVM">
      <properties><property name="qid">3</property><property name="name">work</property><property name="label">label-1</property></properties>
      <features><feature name="backup-content">True</feature><feature name="backup-path">vm3/</feature><feature name="backup-size">65536</feature></features>
      <tags/>
      <volume-config><volume name="private" save_on_stop="True" size="65536"/><volume name="root" snap_on_start="True"/></volume-config>
    </domain>
  </domains>
</qubes>
EOF
cat > qubes-r3.xml <<'EOF'
<?xml version='1.0' encoding='UTF-8'?>
<QubesVmCollection clockvm="2" default_netvm="2" default_template="1" updatevm="2">
  <QubesAdminVm backup_content="False" label="black" name="dom0" netvm_qid="none" qid="0"/>
  <QubesTemplateVm backup_content="False" label="black" name="fedora-23" netvm_qid="2" qid="1"/>
  <QubesNetVm backup_content="False" label="red" name="sys-net" netvm_qid="none" qid="2" template_qid="1"/>
  <QubesAppVm backup_content="True" backup_path="vm5" backup_size="65536" label="blue" name="work" netvm_qid="2" qid="5" template_qid="1" uses_default_netvm="True"/>
</QubesVmCollection>
EOF

# --- qubes_xml ------------------------------------------------------------------------
seed qubes_xml r4-small < qubes-r4.xml
seed qubes_xml r3-small < qubes-r3.xml
seed qubes_xml r4-testdata < "$repo/format/src/qubes_xml/testdata/r4-qubes.xml"
seed qubes_xml r3-testdata < "$repo/format/src/qubes_xml/testdata/r3-qubes.xml"

# --- inner_tar: GNU tar, one file per archive -----------------------------------------
tr512() { tar --record-size=512 "$@"; }
tr512 -c -C src notes.txt | seed inner_tar plain-ustar
tr512 -c --format=gnu --sparse -C src private.img | seed inner_tar gnu-sparse
tr512 -c --format=posix --sparse --sparse-version=1.0 -C src private.img | seed inner_tar pax-sparse-1.0
tr512 -c --format=posix --sparse --sparse-version=0.1 -C src private.img | seed inner_tar pax-sparse-0.1
tr512 -c --format=gnu -C src dir link | seed inner_tar gnu-longname-dir-link
tr512 -c --format=posix -C src dir dense.bin | seed inner_tar pax-longname
tr512 -Pc --sparse -C src --xform 's:^private.img:vm3/\0:' private.img | seed inner_tar qubes-style

# --- inner_tar_multivolume: GNU multi-volume sets, volumes joined by the separator ----
sep='=QBACKUP-FUZZ-VOLUME='
mv_seed() { # mv_seed NAME TAPE_KIB FILES...
    local name=$1 len=$2
    shift 2
    rm -f vol.*
    tar -c -M -L "$len" --format=gnu -f vol.1 -f vol.2 -f vol.3 -f vol.4 -C src "$@" 2>/dev/null
    local first=1
    for v in vol.*; do
        [ $first = 1 ] || printf '%s' "$sep"
        first=0
        cat "$v"
    done | seed inner_tar_multivolume "$name"
}
mv_seed dense 10 dense.bin notes.txt
mv_seed sparse 10 --sparse private.img
tr512 -c --format=gnu -C src notes.txt | seed inner_tar_multivolume single

# --- member_name, sequencer -----------------------------------------------------------
for n in backup-header backup-header.hmac qubes.xml.000 qubes.xml.000.enc vm3/private.img.000.enc \
    vm3/private.img.012.hmac dom0-home/user.000 vm-templates/fedora-23/.000 vm5/root.img.1000; do
    printf '%s' "$n" | seed member_name "$(printf '%s' "$n" | tr '/.' '__')"
done
seqn() { # seqn NAME VERSION-BYTE NAMES...
    local name=$1 v=$2
    shift 2
    { printf "\\x$v"; local IFS=$'\x01'; printf '%s' "$*" | tr '\001' '\000'; } | seed sequencer "$name"
}
seqn v4 02 qubes.xml.000.enc vm3/private.img.000.enc vm3/private.img.001.enc vm3/notes.txt.000.enc
seqn v3 01 qubes.xml.000 qubes.xml.000.hmac vm5/private.img.000 vm5/private.img.000.hmac \
    vm5/private.img.001 vm5/private.img.001.hmac vm-templates/t/..000 dom0-home/user.000
seqn v2 00 qubes.xml.000 qubes.xml.000.hmac vm5/private.img.000 vm5/private.img.000.hmac

# --- header, hmac_file --------------------------------------------------------------------
hdr() { # hdr VERSION ENCRYPTED COMPRESSED FILTER HMAC [CRYPTO] [ID]
    printf 'version=%s\nencrypted=%s\ncompressed=%s\n' "$1" "$2" "$3"
    [ -n "$4" ] && printf 'compression-filter=%s\n' "$4"
    printf 'hmac-algorithm=%s\n' "$5"
    [ -n "${6:-}" ] && printf 'crypto-algorithm=%s\n' "$6"
    [ -n "${7:-}" ] && printf 'backup-id=%s\n' "$7"
    return 0
}
hdr 4 True True gzip scrypt '' 20161020T123455-1234 > h4
hdr 3 True True gzip SHA512 aes-256-cbc > h3
hdr 3 False True bzip2 sha256 > h3u
hdr 2 True True '' SHA1 aes-128-cbc > h2
for h in h4 h3 h3u h2; do seed header "$h" < $h; done
for d in sha512 sha256 sha1 md5 sha224 sha512-256; do
    openssl dgst -"$d" -hmac "$PASS" < h3 | seed hmac_file "$d"
done
printf '(stdin)= %s\n' "$(openssl dgst -sha512 -hmac "$PASS" -r < h3 | cut -d' ' -f1)" | seed hmac_file old-openssl

# --- scrypt_container, openssl_enc ------------------------------------------------------
printf 'backup-header!%s' "$PASS" > hp
scrypt enc --passphrase file:hp --logN 10 -r 8 -p 1 h4 h4.hmac
seed scrypt_container logN10 < h4.hmac
seed hmac_file scrypt < h4.hmac
: > empty
# scrypt(1) refuses logN < 10: cheap containers with an empty body (no AES needed) are
# made with Python's hashlib.scrypt; the target opens those with the real KDF.
tiny_container() { # tiny_container LOGN R P
    python3 - "$PASS" "$@" <<'EOF'
import hashlib, hmac, struct, sys
pw, logn, r, p = sys.argv[1].encode(), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
salt = bytes(range(32))
dk = hashlib.scrypt(pw, salt=salt, n=1 << logn, r=r, p=p, dklen=64)
h = b"scrypt" + bytes([0, logn]) + struct.pack(">II", r, p) + salt
h += hashlib.sha256(h).digest()[:16]
h += hmac.new(dk[32:], h, "sha256").digest()
sys.stdout.buffer.write(h + hmac.new(dk[32:], h, "sha256").digest())
EOF
}
tiny_container 1 1 1 | seed scrypt_container logN1-empty
tiny_container 2 2 2 | seed scrypt_container logN2-r2-p2-empty
i=0
for c in aes-128-cbc aes-192-cbc aes-256-cbc; do
    for f in empty notes-short src/notes.txt src/dense.bin; do
        [ -e "$f" ] || printf 'exactly16bytes!!' > "$f"
        { printf "\\x0$i"; openssl enc -e -"$c" -md MD5 -pass pass:$PASS < "$f" 2>/dev/null; } |
            seed openssl_enc "$c-$(basename "$f")"
    done
    i=$((i + 1))
done

# --- compression: first byte = filter (0 gzip, 1 bzip2, 2 xz, 3 lzma, 4 zstd, 5 none) --
i=0
for z in "gzip -n" "bzip2 -c" "xz -c" "xz --format=lzma -c" "zstd -q -c" cat; do
    { printf "\\x0$i"; $z < src/dense.bin; } | seed compression "${z%% *}-$i"
    { printf "\\x0$i"; $z < src/notes.txt; } | seed compression "${z%% *}-$i-notes"
    i=$((i + 1))
done

# --- outer_tar --------------------------------------------------------------------------
mkdir -p stage/vm3
cp h4 stage/backup-header
cp src/notes.txt stage/vm3/notes.txt.000
(cd stage && for f in backup-header vm3/notes.txt.000; do tar -cO --posix "$f"; done) | seed outer_tar posix
(cd stage && tar -c --format=ustar backup-header vm3) | seed outer_tar ustar
long=$(printf 'd%.0s' {1..120})
mkdir -p "stage/$long" && echo x > "stage/$long/f.000"
(cd stage && tar -cO --posix "$long/f.000") | seed outer_tar pax-long-name

# --- pipeline: whole archives -----------------------------------------------------------
inner() { # inner PREFIX FILE [tar options]: qubes-style inner tar of src/FILE as PREFIX/FILE
    local p=$1 f=$2
    shift 2
    tar -Pc --sparse "$@" -C src --xform "s:^$f:$p/\\0:" "$f"
}
xml_inner() { tar -Pc --sparse -C . --xform 's:^qubes-r.\.xml:qubes.xml:' "$1"; }
# One-block records keep the seeds small (real archives pad to 10 KiB: see v4-real-scrypt).
append() { (cd "$1" && tar -cO --posix -b 1 "$2"); }
append_real() { (cd "$1" && tar -cO --posix "$2"); }

# v4, real scrypt (logN 10): verifies in the stable replay test.
v4() { # v4 DIR ID CONTAINER-CMD APPEND-CMD [FILTER|none]
    local d=$1 id=$2 seal=$3 append=$4 filter=${5:-gzip}
    rm -rf "$d" && mkdir -p "$d/vm3"
    if [ "$filter" = none ]; then
        hdr 4 True False '' scrypt '' "$id" > "$d/backup-header"
        z() { cat; }
    else
        hdr 4 True True "$filter" scrypt '' "$id" > "$d/backup-header"
        case $filter in
            gzip) z() { gzip -n; } ;;
            lzma) z() { xz --format=lzma; } ;;
            *) z() { "$filter" -c -q; } ;;
        esac
    fi
    $seal "backup-header!$PASS" "$d/backup-header" "$d/backup-header.hmac"
    xml_inner qubes-r4.xml | z > "$d/qubes.xml.000"
    inner vm3 private.img --format=posix --sparse-version=1.0 | z > "$d/vm3/private.img.000"
    inner vm3 notes.txt | z > "$d/vm3/notes.txt.000"
    for f in qubes.xml.000 vm3/private.img.000 vm3/notes.txt.000; do
        $seal "$id!$f!$PASS" "$d/$f" "$d/$f.enc"
    done
    for f in backup-header backup-header.hmac qubes.xml.000.enc vm3/private.img.000.enc vm3/notes.txt.000.enc; do
        $append "$d" "$f"
    done
}
real_scrypt() { printf '%s' "$1" > pf; scrypt enc --passphrase file:pf --logN 10 -r 8 -p 1 "$2" "$3"; }
# Fixed-key mode container: the 96-byte header of a logN-1 container, plaintext, 32 bytes.
fuzz_container() {
    python3 - "$2" "$3" <<'EOF'
import hashlib, struct, sys
h = b"scrypt" + bytes([0, 1]) + struct.pack(">II", 1, 1) + bytes(32)
h += hashlib.sha256(h).digest()[:16]
h += bytes(32)
body = open(sys.argv[1], "rb").read()
open(sys.argv[2], "wb").write(h + body + bytes(32))
EOF
}
v4 v4real 20260101T000000-fuzz real_scrypt append_real | seed pipeline v4-real-scrypt
v4 v4fuzz 20260101T000000-fuzz fuzz_container append | seed pipeline v4-fixed-key
for f in none bzip2 xz lzma zstd; do
    v4 "v4$f" 20260101T000000-fuzz fuzz_container append "$f" | seed pipeline "v4-fixed-key-$f"
done
# the same, header only and qubes.xml only (short inputs for the fuzzer)
(append v4fuzz backup-header; append v4fuzz backup-header.hmac; append v4fuzz qubes.xml.000.enc) |
    seed pipeline v4-fixed-key-xml-only

# v3: real HMACs (verify in both modes).
v3() { # v3 DIR ENCRYPTED
    local d=$1 enc=$2
    rm -rf "$d" && mkdir -p "$d/vm5"
    if [ "$enc" = True ]; then
        hdr 3 True True gzip SHA512 aes-256-cbc > "$d/backup-header"
        filt() { gzip -n | openssl enc -e -aes-256-cbc -md MD5 -pass pass:$PASS 2>/dev/null; }
    else
        hdr 3 False True gzip SHA512 > "$d/backup-header"
        filt() { gzip -n; }
    fi
    xml_inner qubes-r3.xml | filt > "$d/qubes.xml.000"
    inner vm5 private.img | filt > "$d/vm5/private.img.000"
    for f in backup-header qubes.xml.000 vm5/private.img.000; do
        openssl dgst -sha512 -hmac "$PASS" < "$d/$f" > "$d/$f.hmac"
    done
    for f in backup-header backup-header.hmac qubes.xml.000 qubes.xml.000.hmac vm5/private.img.000 vm5/private.img.000.hmac; do
        append "$d" "$f"
    done
}
v3 v3e True | seed pipeline v3-encrypted
v3 v3u False | seed pipeline v3-unencrypted

# v2: header-less (so encrypted with aes-256-cbc, SHA1 HMACs, not compressed); private.img
# is a GNU multi-volume set, each volume encrypted on its own.
rm -rf v2 && mkdir -p v2/vm5
xml_inner qubes-r3.xml > v2/qubes.xml.000
rm -f vol.*
(cd src && tar -c -M -L 10 --format=gnu --sparse -f ../vol.1 -f ../vol.2 -f ../vol.3 \
    --xform 's:^private.img:vm5/\0:' private.img 2>/dev/null)
n=0
for v in vol.*; do cp "$v" "v2/vm5/private.img.00$n"; n=$((n + 1)); done
members=(qubes.xml.000)
for v in v2/vm5/private.img.*; do members+=("${v#v2/}"); done
for f in "${members[@]}"; do
    openssl enc -e -aes-256-cbc -md MD5 -pass pass:$PASS < "v2/$f" > v2.tmp 2>/dev/null
    mv v2.tmp "v2/$f"
    openssl dgst -sha1 -hmac "$PASS" < "v2/$f" > "v2/$f.hmac"
done
for f in "${members[@]}"; do append v2 "$f"; append v2 "$f.hmac"; done | seed pipeline v2-headerless

du -sh "$corpus"
