#!/usr/bin/env bash
# Several machines with torchrun's c10d rendezvous. Run on every node with the same arguments:
#   launch/multinode.sh NNODES PROCS_PER_NODE HEAD_HOST:PORT [decnode.run flags...]
# Rank 0 (the coordinator) lands on the node that wins the rendezvous; the run directory must be on a shared
# filesystem (every rank reads the checkpoint on --resume). torchrun's flag is --nproc-per-node, not --nproc.
set -euo pipefail
NNODES=$1; PER_NODE=$2; ENDPOINT=$3; shift 3
exec torchrun --nnodes "$NNODES" --nproc-per-node "$PER_NODE" --rdzv-backend c10d --rdzv-endpoint "$ENDPOINT" \
    --rdzv-id "${RDZV_ID:-decnode}" --max-restarts 0 -m decnode.run "$@"
