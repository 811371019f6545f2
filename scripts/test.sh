#!/usr/bin/env bash
# The project's test command: installs what the tests need, then runs the
# format check, clippy and the whole test suite. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

# Only what is missing is installed, and only that: no recommended extras
# and no upgrade of anything already there. Each package is announced with
# the reason it is needed before apt-get runs.
need=()
why=()
want() { # COMMAND PACKAGE REASON: PACKAGE unless COMMAND is on the PATH
  command -v "$1" >/dev/null 2>&1 || { need+=("$2"); why+=("$3"); }
}
want qemu-img qemu-utils "builds and compares test disk images"
want qemu-nbd qemu-utils "serves the NBD exports of the NBD volume and ticket tests"
want qemu-io qemu-utils "fills an NBD import target with old data"
want tar tar "packs and lists test OVAs"
want gzip gzip "gzip-compressed test disks"
want xz xz-utils "xz-compressed test packages"
want zstd zstd "zstd-compressed test packages"
want sha256sum coreutils "test manifests"
want curl curl "server tests and the README walkthrough"
want chromium chromium "browser upload tests"
want chromedriver chromium-driver "browser upload tests"
want tesseract tesseract-ocr "reads the upload page's screenshots"
want groff groff-base "manual page test"
want systemd-analyze systemd "checks the shipped unit (verify, security)"
want systemd-sysusers systemd "checks the shipped sysusers.d entry"
want openssl openssl "certificate reload test; the CA and certificate of the ovirt-imageio daemon in the remote volume tests"
want mkfifo coreutils "restart test: a job reading from a pipe"
want promtool prometheus "checks the server's /metrics exposition"
want dpkg-deb dpkg "unpacks the Debian package the packaging test builds"
want xmllint libxml2-utils "validates generated OVF descriptors against the DMTF schema"
want npm npm "installs tus-js-client for the resumable browser upload test"
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 ||
  { need+=(python3-venv); why+=("venv for ovirt-imageio, selenium and COT"); }
if [ ${#need[@]} -gt 0 ]; then
  for i in "${!need[@]}"; do
    echo "installing ${need[$i]} (${why[$i]})"
  done
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  # sudo resets the environment, so the frontend is set inside it.
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends --no-upgrade "${need[@]}"
fi
# The ovirt-imageio client library and daemon (the peer the server tests
# talk to), selenium (drives chromium for the browser upload test), the
# Common OVF Tool (`cot info` judges the packages export writes) and awscli
# (the S3 client that lists and downloads what the s3:// tests upload).
VENV="$PWD/target/test-venv"
if ! "$VENV/bin/python" -c 'import ovirt_imageio.client, selenium, COT, awscli' >/dev/null 2>&1 ||
  [ ! -x "$VENV/bin/cot" ] || [ ! -x "$VENV/bin/aws" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check 'ovirt-imageio==2.5.1' 'selenium>=4.20' 'cot==2.2.1' \
    'awscli==1.46.3'
fi
export OVAIO_TEST_PYTHON="$VENV/bin/python"
# s3s-fs, an S3-compatible server keeping objects as files (it checks
# SigV4 signatures and implements multipart uploads), pinned, built once
# into target/tools; 0.14.1 because later versions need a newer rustc.
S3S="$PWD/target/tools/bin/s3s-fs"
if ! { [ -x "$S3S" ] && "$S3S" --version | grep -q '^s3s-fs 0\.14\.1$'; }; then
  echo "installing s3s-fs 0.14.1 (the object store of the s3:// export and import tests)"
  cargo install --locked --quiet --features binary --root "$PWD/target/tools" s3s-fs@0.14.1
fi
export OVAIO_TEST_S3S="$S3S"
# tus-js-client (the resumable upload client the browser test loads from
# file://), pinned, installed once under target/js.
TUS_JS="$PWD/target/js/node_modules/tus-js-client/dist/tus.min.js"
if [ ! -f "$TUS_JS" ] ||
  ! grep -q '"version": "4.3.1"' "$PWD/target/js/node_modules/tus-js-client/package.json"; then
  mkdir -p target/js
  (cd target/js && npm install --no-audit --no-fund --silent tus-js-client@4.3.1)
fi

rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt

# Supply chain: licenses, duplicate crates and sources as deny.toml allows
# (offline: the advisory database cannot be fetched). cargo-deny and
# cargo-deb (the Debian package test) are built once into ~/.cargo/bin.
command -v cargo-deny >/dev/null 2>&1 && cargo deny --version | grep -q '^cargo-deny 0\.20\.' ||
  cargo install --locked --quiet --no-default-features cargo-deny@0.20.2
command -v cargo-deb >/dev/null 2>&1 && cargo deb --version | grep -q '^3\.' ||
  cargo install --locked --quiet cargo-deb@3.8.0

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo deny --offline check bans licenses sources
cargo test --all-targets
cargo test --doc
