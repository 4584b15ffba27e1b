#!/usr/bin/env bash
# CI test of the release artefacts, run by .ci/run after `dist/build.sh --deb --rpm`:
#
# - the static binaries are static, name the git revision, enforce the sandbox
#   (`sandbox-check` exits 0: the seccomp allowlist fits the static libc) and verify and
#   extract the example archive with the same output as the dynamic build (README's first
#   command, run here too);
# - the .deb installs into an empty directory root with every file it must hold, the
#   installed binary verifies the example, and the installed qbackup-audit audits it through
#   the installed verifier;
# - the RPM (built offline from vendored crates) holds the same files, less qbackup-audit;
# - the README's recipes work (dist/recipes.py).
#
# Speed and memory of static against dynamic are measured by bench/static-bench.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo > /dev/null; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
S="target/$TRIPLE/release"
D="target/release"
ARCHIVE=examples/example-v4.bin
PASSFILE=examples/example.passphrase
REV=$(git rev-parse --short=12 HEAD)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() {
    echo "dist/check.sh: FAIL: $*" >&2
    exit 1
}
pass() { echo "dist/check.sh: ok: $*"; }

# The README's first command (after .ci/setup): builds the dynamic verifier.
cargo run --release -p qbackup-verify -- verify --passphrase-file "$PASSFILE" "$ARCHIVE" > "$tmp/readme.out" ||
    fail "README's first command"
grep -q '^OK: ' "$tmp/readme.out" || fail "README's first command did not verify"
pass "README's first command"

for b in qbackup-verify qbackup-pack qbackup-audit; do
    file -L "$S/$b" | grep -qE 'static-pie linked|statically linked' || fail "$S/$b is not static: $(file -L "$S/$b")"
    "$S/$b" --version | grep -qF "(git $REV)" || fail "$b --version lacks the revision $REV"
done
pass "static binaries, --version names git $REV"

# The sandbox, enforced by the static binary: both policies tried in children.
"$S/qbackup-verify" sandbox-check > "$tmp/sbx.txt" || fail "static sandbox-check exited $?: $(cat "$tmp/sbx.txt")"
grep -q '^confinement: ' "$tmp/sbx.txt" || fail "sandbox-check names no confinement"
pass "static sandbox-check: $(grep '^confinement: ' "$tmp/sbx.txt")"

# Same output, static and dynamic, human and JSON, sandbox on (no --no-sandbox: a
# sandbox that cannot be applied is exit 21).
for json in "" --json; do
    for kind in static dynamic; do
        bin="$S/qbackup-verify"
        [ "$kind" = dynamic ] && bin="$D/qbackup-verify"
        code=0
        "$bin" verify --passphrase-file "$PASSFILE" $json "$ARCHIVE" > "$tmp/$kind.out" 2> "$tmp/$kind.err" || code=$?
        [ "$code" = 0 ] || fail "$kind verify $json exited $code: $(cat "$tmp/$kind.err")"
    done
    cmp -s "$tmp/static.out" "$tmp/dynamic.out" || fail "static and dynamic verify $json differ: $(diff "$tmp/static.out" "$tmp/dynamic.out")"
done
pass "static and dynamic verify print the same report"

# Extract, confined to DIR, with the static binary: every file as expect.json says.
"$S/qbackup-verify" extract --passphrase-file "$PASSFILE" --to "$tmp/x" "$ARCHIVE" > /dev/null ||
    fail "static extract exited $?"
python3 - "$tmp/x" "$ARCHIVE.expect.json" << 'PY' || fail "static extract: files differ from expect.json"
import hashlib, json, os, sys
root, expect = sys.argv[1], json.load(open(sys.argv[2]))
n = 0
for f in expect["files"]:
    if f["vm"] == "qubes.xml":
        continue
    path = os.path.join(root, f["vm"], f["path"])
    data = open(path, "rb").read()
    assert len(data) == f["size"] and hashlib.sha256(data).hexdigest() == f["sha256"], path
    n += 1
assert n >= 4, n
PY
pass "static extract matches $ARCHIVE.expect.json"

# The README's recipes, run with the static binaries.
python3 dist/recipes.py "$S" || fail "README recipes"

# The subcommands of command $1 (a man page each).
subcommands() {
    case $1 in
        qbackup-verify) echo verify list extract emit sandbox-check ;;
        qbackup-pack) echo create restore ;;
        qbackup-audit) echo run report ;;
    esac
}
# The files a package with the commands $@ must hold.
expected_files() {
    local b sub
    for b in "$@"; do
        echo "/usr/bin/$b"
        echo "/usr/share/man/man1/$b.1"
        for sub in $(subcommands "$b"); do echo "/usr/share/man/man1/$b-$sub.1"; done
        echo "/usr/share/bash-completion/completions/$b"
        echo "/usr/share/fish/vendor_completions.d/$b.fish"
    done
}
# $1 root; $2 zsh completion directory; $3 documentation, $4 licence directory; the rest,
# the commands it holds
check_tree() {
    local root=$1 zsh=$2 doc=$3 lic=$4 f b c owned
    shift 4
    { expected_files "$@"; for b in "$@"; do echo "$zsh/_$b"; done
      echo "$doc/README.md"; echo "$lic/LICENSE-MIT"; echo "$lic/LICENSE-APACHE"; } |
    while read -r f; do
        # Packagers may compress man pages and documentation.
        [ -e "$root$f" ] || [ -e "$root$f.gz" ] || fail "missing in $root: $f"
    done
    for f in "$root"/usr/bin/* "$root"/usr/share/man/man1/*; do
        b=$(basename "$f" .gz)
        b=${b%.1}
        owned=0
        for c in "$@"; do case "$b" in "$c" | "$c"-*) owned=1 ;; esac; done
        [ "$owned" = 1 ] || fail "$root holds $f, of none of: $*"
    done
    "$root/usr/bin/qbackup-verify" verify --passphrase-file "$PASSFILE" "$ARCHIVE" > /dev/null ||
        fail "$root/usr/bin/qbackup-verify does not verify the example"
    "$root/usr/bin/qbackup-pack" --version | grep -qF "(git $REV)" || fail "$root: qbackup-pack --version"
}

# Debian: install into an empty root with its own dpkg database.
deb=$(ls target/"$TRIPLE"/debian/qbackup-tools_*.deb)
root="$tmp/deb-root"
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates"
: > "$root/var/lib/dpkg/status"
dpkg --root="$root" --log=/dev/null --force-script-chrootless -i "$deb" > /dev/null || fail "dpkg -i $deb"
dpkg --root="$root" -s qbackup-tools | grep -q '^Status: install ok installed' || fail "dpkg does not list qbackup-tools"
check_tree "$root" /usr/share/zsh/vendor-completions /usr/share/doc/qbackup-tools /usr/share/doc/qbackup-tools \
    qbackup-verify qbackup-pack qbackup-audit
# The installed audit, with the installed verifier beside it as its child (exit 0: verified).
"$root/usr/bin/qbackup-audit" run --no-progress --ledger "$tmp/ledger" --passphrase-file "$PASSFILE" "$ARCHIVE" \
    > "$tmp/audit.out" 2> "$tmp/audit.err" || fail "installed qbackup-audit exited $?: $(cat "$tmp/audit.err")"
grep -q '"verdict":"ok"' "$tmp/audit.out" || fail "installed qbackup-audit: $(cat "$tmp/audit.out")"
pass "$deb installs into an empty root; its qbackup-audit audits the example"

# RPM: install into an empty root with its own rpm database.
rpmfile=$(ls target/rpm/RPMS/*/qbackup-tools-*.rpm)
root="$tmp/rpm-root"
mkdir -p "$root"
rpm --root "$root" --dbpath /var/lib/rpm --initdb
rpm --root "$root" --dbpath /var/lib/rpm -i --nodeps --noscripts "$rpmfile" 2> "$tmp/rpm.err" ||
    fail "rpm -i $rpmfile: $(cat "$tmp/rpm.err")"
rpm --root "$root" --dbpath /var/lib/rpm -q qbackup-tools > /dev/null || fail "rpm does not list qbackup-tools"
# Fedora's %doc directory is NAME, Debian's rpm macros make it NAME-VERSION.
doc=$(cd "$root" && ls -d usr/share/doc/qbackup-tools*) || fail "the RPM has no doc directory"
lic=$(cd "$root" && ls -d usr/share/licenses/qbackup-tools*) || fail "the RPM has no licence directory"
check_tree "$root" /usr/share/zsh/site-functions "/$doc" "/$lic" qbackup-verify qbackup-pack
pass "$rpmfile installs into an empty root"
