#!/usr/bin/env bash
# Installs everything the lab, the tests and the benches need on a fresh Debian 12 machine.
# Idempotent: a rerun on a machine that has everything touches no network and takes a second.
set -euo pipefail

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

APT_PACKAGES=(
    iproute2 iputils-ping wireguard-tools wireguard-go iperf3 tcpdump dnsutils
    clang llvm libbpf-dev bpftool etcd-server etcd-client protobuf-compiler libprotobuf-dev
    procps psmisc curl ca-certificates pkg-config build-essential python3 openssl iptables
)

installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done

if ((${#missing[@]} > 0)); then
    echo "install-deps: apt packages missing: ${missing[*]}"
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
    echo "install-deps: apt packages present"
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "install-deps: cargo not found; install a Rust toolchain (rustup) first" >&2
    exit 1
fi

# The reference userspace WireGuard peer for interop tests and benches.
if command -v boringtun-cli >/dev/null 2>&1; then
    echo "install-deps: boringtun-cli present"
else
    echo "install-deps: installing boringtun-cli"
    cargo install boringtun-cli --locked
fi

if command -v rustup >/dev/null 2>&1; then
    for component in rustfmt clippy; do
        # `cargo fmt`/`cargo clippy` answer --version only when the component is there.
        sub="${component/rustfmt/fmt}"
        if ! cargo "$sub" --version >/dev/null 2>&1; then
            echo "install-deps: adding rustup component $component"
            rustup component add "$component"
        fi
    done
fi

echo "install-deps: done"
