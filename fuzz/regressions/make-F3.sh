#!/usr/bin/env bash
# Regenerate fuzz/regressions/pipeline/F3-v2-volume-inflated-whole: a v2 archive (header,
# not encrypted, gzip, SHA-512 HMACs, passphrase "fuzz") whose one data chunk inflates to a
# 64 MiB tar of zeros. SIZE (default 64M) scales it.
set -euo pipefail
export LC_ALL=C
size=${1:-64M}
out=$(cd "$(dirname "$0")" && pwd)/pipeline/F3-v2-volume-inflated-whole
w=$(mktemp -d)
trap 'rm -rf "$w"' EXIT
cd "$w"
mkdir -p st/vm5 src
printf 'encrypted=False\ncompressed=True\nhmac-algorithm=SHA512\n' > st/backup-header
cat > qubes.xml <<'XML'
<?xml version='1.0' encoding='UTF-8'?>
<QubesVmCollection clockvm="2" default_netvm="2" default_template="1" updatevm="2">
  <QubesAdminVm backup_content="False" label="black" name="dom0" netvm_qid="none" qid="0"/>
  <QubesTemplateVm backup_content="False" label="black" name="fedora-23" netvm_qid="2" qid="1"/>
  <QubesNetVm backup_content="False" label="red" name="sys-net" netvm_qid="none" qid="2" template_qid="1"/>
  <QubesAppVm backup_content="True" backup_path="vm5" backup_size="65536" label="blue" name="work" netvm_qid="2" qid="5" template_qid="1" uses_default_netvm="True"/>
</QubesVmCollection>
XML
tar -c qubes.xml | gzip -n > st/qubes.xml.000
truncate -s "$size" src/private.img
(cd src && tar -c --xform 's:^private.img:vm5/\0:' private.img | gzip -n -9 > ../st/vm5/private.img.000)
for f in backup-header qubes.xml.000 vm5/private.img.000; do
    openssl dgst -sha512 -hmac fuzz < "st/$f" > "st/$f.hmac"
done
(cd st && for f in backup-header backup-header.hmac qubes.xml.000 qubes.xml.000.hmac \
    vm5/private.img.000 vm5/private.img.000.hmac; do tar -cO --posix -b 1 "$f"; done) > "$out"
ls -l "$out"
