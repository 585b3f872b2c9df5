#!/usr/bin/env bash
# README command (a): install what is missing, build the workspace's binaries, and run the
# namespace lab: 3 clusters, a real isthmus-gateway in each, pod-to-pod pings across every pair.
# Extra arguments go to `isthmus-lab run`, e.g. `sudo bash scripts/lab.sh --keep`.
set -euo pipefail
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

bash scripts/install-deps.sh
cargo build --release --workspace --bins
exec "$TARGET_DIR/release/isthmus-lab" run --clusters "${ISTHMUS_LAB_CLUSTERS:-3}" "$@"
