#!/usr/bin/env bash
# One machine, n processes (default 10), k = 4: the README's main job. Extra flags pass through.
#   launch/local.sh 10 --k 2 --iterations 500
set -euo pipefail
NPROC=${1:-10}; shift || true
exec "$(dirname "$0")/../.venv/bin/decnode-run" --nproc "$NPROC" --k 4 "$@"
