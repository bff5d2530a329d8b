#!/usr/bin/env bash
# A TPU VM (one host): every TPU device holds a block of agents (run.device: xla). Never run here — this
# machine has no TPU; the same code path is tested on 4 CPU XLA devices (make test-xla). See README "XLA devices".
#   launch/tpu.sh 4 --k 2 --iterations 1000        # 4 devices (a v4-8's chips), 10 agents need --nproc 2 or 5
# torch_xla starts one process per chip there; decnode's host side (environments, the central critic, the
# coordinator's exchange) then runs over gloo among those processes on this host (launch_xla.host_fabric).
# Needs .venv-xla with a TPU build of torch_xla (`pip install torch_xla[tpu]==2.9.0` there; the Makefile's
# venv is the CPU one).
set -euo pipefail
DEVICES=${1:?usage: launch/tpu.sh DEVICES [decnode-run flags]}; shift
export PJRT_DEVICE=TPU
exec "$(dirname "$0")/../.venv-xla/bin/decnode-run" --nproc "$DEVICES" --set run.device=xla "$@"
