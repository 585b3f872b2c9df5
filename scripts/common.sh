# Sourced by the scripts in this folder: repo root as working directory, cargo on PATH, root.
# shellcheck shell=bash

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
export DEBIAN_FRONTEND=noninteractive

# Under sudo, PATH is reset and HOME is root's: also look in the invoking user's cargo home.
export PATH="${CARGO_HOME:-${HOME:-/root}/.cargo}/bin:${PATH}"
if [[ -n "${SUDO_USER:-}" ]] && ! command -v cargo >/dev/null 2>&1; then
    sudo_home="$(getent passwd "$SUDO_USER" | cut -d: -f6)"
    export PATH="${sudo_home}/.cargo/bin:${PATH}"
fi

if [[ "$(id -u)" -ne 0 ]]; then
    echo "$(basename "$0"): must run as root (network namespaces, TUN, apt): sudo bash scripts/$(basename "$0")" >&2
    exit 1
fi

TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
