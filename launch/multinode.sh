#!/usr/bin/env bash
# Several machines with torchrun's c10d rendezvous. Run on every node with the same arguments:
#   [NODE_ADDR=ADDR] [IS_HEAD=1] launch/multinode.sh NNODES PROCS_PER_NODE HEAD_ADDR:PORT [decnode.run flags...]
# NODE_ADDR: this node's own address on the cluster network (torchrun --local-addr). IS_HEAD=1 on the node at
# HEAD_ADDR, which then starts the rendezvous store, IS_HEAD=0 on the others (torchrun --rdzv-conf is_host=1|0).
# Both are needed when a node's hostname does not resolve to its cluster address (several interfaces, network
# namespaces): without them the head does not see the endpoint as its own, starts no store (60 s connect
# timeouts), workers are told MASTER_ADDR=localhost, and a node whose hostname does not resolve at all fails.
# Set GLOO_SOCKET_IFNAME to the cluster interface too.
# Rank 0 (the coordinator) lands on the node that wins the rendezvous; the run directory must be on a shared
# filesystem (every rank reads the checkpoint on --resume). torchrun's flag is --nproc-per-node, not --nproc.
set -euo pipefail
if (($# < 3)); then
    echo "usage: [NODE_ADDR=ADDR] [IS_HEAD=1] $0 NNODES PROCS_PER_NODE HEAD_ADDR:PORT [decnode.run flags...]" >&2
    exit 2
fi
NNODES=$1; PER_NODE=$2; ENDPOINT=$3; shift 3
NODE=()
if [[ -n ${NODE_ADDR:-} ]]; then NODE+=(--local-addr "$NODE_ADDR"); fi
case ${IS_HEAD:-} in
    1) NODE+=(--rdzv-conf is_host=1) ;;
    0) NODE+=(--rdzv-conf is_host=0) ;;  # do not even try to resolve this node's hostname to compare
    "") ;;                                # torchrun guesses from the hostname
    *) echo "$0: IS_HEAD must be 1 or 0, got '$IS_HEAD'" >&2; exit 2 ;;
esac
exec "${TORCHRUN:-torchrun}" --nnodes "$NNODES" --nproc-per-node "$PER_NODE" --rdzv-backend c10d \
    --rdzv-endpoint "$ENDPOINT" --rdzv-id "${RDZV_ID:-decnode}" --max-restarts 0 \
    ${NODE[@]+"${NODE[@]}"} -m decnode.run "$@"
