#!/usr/bin/env bash
# Installs everything `make test`, `make bench` and `make cluster` need on a fresh
# Debian 12 machine. Idempotent and fast when nothing is missing: it is run by every make
# target that builds or tests.
set -euo pipefail

need_apt=()
have_cmd() { command -v "$1" >/dev/null 2>&1; }

# command -> Debian package
declare -A packages=(
  [ip]=iproute2
  [unshare]=util-linux
  [openssl]=openssl
  [haproxy]=haproxy
  [iperf3]=iperf3
  [python3]=python3
  # the boot image (make image) and the QEMU end-to-end tests
  [qemu-system-x86_64]=qemu-system-x86
  [cpio]=cpio
  [depmod]=kmod
  [zstd]=zstd
  [mkfs.ext4]=e2fsprogs
  [strip]=binutils
  [mksquashfs]=squashfs-tools
  # `osctl inspect dependencies | dot -Tsvg` in osctl's tests
  [dot]=graphviz
)
for cmd in "${!packages[@]}"; do
  have_cmd "$cmd" || need_apt+=("${packages[$cmd]}")
done
# A static busybox for the extension layer of the QEMU test (the image has no libraries
# for it); Debian's plain busybox is dynamic.
if [[ ! -x /bin/busybox ]] || ldd /bin/busybox >/dev/null 2>&1; then
  need_apt+=(busybox-static)
fi

if ((${#need_apt[@]})); then
  echo "setup: installing ${need_apt[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# Python grpcio in a virtualenv of the checkout (.venv), for the independent Machine API
# client in apid's tests. A virtualenv because Debian's own python refuses pip installs
# (PEP 668), and its packaged grpc-tools is too old for proto3 `optional`.
venv="$(cd "$(dirname "$0")/.." && pwd)/.venv"
if ! "$venv/bin/python" -c "import grpc, grpc_tools" >/dev/null 2>&1; then
  if ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
    echo "setup: installing python3-venv" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  echo "setup: installing grpcio and grpcio-tools into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check grpcio grpcio-tools
fi

# Rust components and cargo tools.
if have_cmd rustup; then
  for component in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^${component}" \
      || rustup component add "$component"
  done
fi
# Test priorities (.config/nextest.toml) need 0.9.91.
nextest_version() { cargo nextest --version 2>/dev/null | sed -n 's/^cargo-nextest \([0-9.]*\).*/\1/p'; }
if ! printf '0.9.91\n%s\n' "$(nextest_version)" | sort -V -C; then
  cargo install --locked cargo-nextest
fi

# Tools for `make fuzz-smoke` only: installing cargo-fuzz takes a minute, so only on demand.
if [[ "${BASALT_SETUP_FUZZ:-0}" == 1 ]]; then
  have_cmd cargo-fuzz || cargo install --locked cargo-fuzz
fi
