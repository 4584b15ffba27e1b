#!/usr/bin/env bash
# One command for the release artefacts (README "Install"):
#
#   dist/build.sh [--deb] [--rpm]
#
# - static binaries (glibc, `crt-static`: no shared library, runs on any x86-64 Linux
#   kernel, e.g. a rescue system): target/$TRIPLE/release/qbackup-{verify,pack,audit};
# - man pages and bash/zsh/fish completions generated from the clap definitions
#   (`qbackup-dist`): target/$TRIPLE/release/dist/{man,completions}/;
# - --deb: the Debian package, from those files (cargo-deb metadata in packer/Cargo.toml):
#   target/$TRIPLE/debian/qbackup-tools_*.deb;
# - --rpm: the RPM for dom0, with qbackup-verify and qbackup-pack only (dom0 has no network,
#   and its package carries no HTTP/TLS stack; qbackup-audit is in the Debian package).
#   rpmbuild builds it from a source tarball of HEAD and a tarball of vendored crates with
#   `cargo build --offline --frozen` and an empty CARGO_HOME
#   (dist/qbackup-tools.spec): target/rpm/RPMS/x86_64/qbackup-tools-*.rpm. It compiles
#   everything again in its own target directory: sharing this tree's saves nothing, as
#   cargo fingerprints a crate by its source path (vendor/ there, the registry here) and
#   would rebuild each one, over this tree's artefacts (measured: 7 min 20 s here, 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
deb=0 rpm=0
for a in "$@"; do
    case "$a" in
        --deb) deb=1 ;;
        --rpm) rpm=1 ;;
        *) echo "usage: dist/build.sh [--deb] [--rpm]" >&2; exit 2 ;;
    esac
done
if ! command -v cargo > /dev/null; then
    # shellcheck disable=SC1091
    . "$HOME/.cargo/env"
fi
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
# Static with glibc (README "Install"; why not musl: bench/static-bench.py). The
# RPM spec passes the same flags. `--target` keeps RUSTFLAGS off build scripts and
# proc-macros, which must stay dynamic.
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target "$TRIPLE" \
    --bin qbackup-verify --bin qbackup-pack --bin qbackup-audit --bin qbackup-dist
BIN="target/$TRIPLE/release"
rm -rf "$BIN/dist"
"$BIN/qbackup-dist" "$BIN/dist" > /dev/null
echo "static binaries: $BIN/qbackup-verify $BIN/qbackup-pack $BIN/qbackup-audit"
echo "man pages and completions: $BIN/dist/"

if [ "$deb" = 1 ]; then
    cargo deb --no-build --target "$TRIPLE" -p qbackup-pack
fi

if [ "$rpm" = 1 ]; then
    version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
    rev=$(git rev-parse --short=12 HEAD)
    top="$PWD/target/rpm"
    rm -rf "$top"
    mkdir -p "$top/SOURCES"
    # The committed tree (as a clean clone has it) and its crates, vendored.
    git archive --format=tar.gz --prefix="qbackup-$version/" -o "$top/SOURCES/qbackup-$version.tar.gz" HEAD
    stage="$top/vendor-stage"
    mkdir -p "$stage"
    cargo vendor --locked --versioned-dirs "$stage/vendor" > /dev/null
    tar -czf "$top/SOURCES/qbackup-$version-vendor.tar.gz" -C "$stage" vendor
    rm -rf "$stage"
    # --nodeps: BuildRequires name Fedora's packages, absent from this host's rpm database.
    rpmbuild -bb --nodeps dist/qbackup-tools.spec \
        --define "_topdir $top" \
        --define "version_ $version" \
        --define "gitrev $rev" \
        --define "rust_triple $TRIPLE"
fi
