#!/usr/bin/env bash
# The project's test command: installs what the tests need, then runs the
# format check, clippy and the whole test suite. Safe to run repeatedly.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v qemu-img >/dev/null 2>&1 || need+=(qemu-utils)
command -v tar >/dev/null 2>&1 || need+=(tar)
command -v gzip >/dev/null 2>&1 || need+=(gzip)
command -v sha256sum >/dev/null 2>&1 || need+=(coreutils)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
# The ovirt-imageio client library and daemon (the peer the server tests
# talk to) and selenium (drives chromium for the browser upload test).
VENV="$PWD/target/test-venv"
if ! "$VENV/bin/python" -c 'import ovirt_imageio.client, selenium' >/dev/null 2>&1; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check 'ovirt-imageio==2.5.1' 'selenium>=4.20'
fi
export OVAIO_TEST_PYTHON="$VENV/bin/python"

rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt

cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --all-targets
cargo test --doc
