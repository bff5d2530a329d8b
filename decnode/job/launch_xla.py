"""Start a training job on XLA devices (run.device: xla): one device thread per block of agents.

torch_xla's launcher runs the job in a process it spawns, one thread per local device (4 CPU devices with
PJRT_DEVICE=CPU CPU_NUM_DEVICES=4; a TPU host's chips with PJRT_DEVICE=TPU). Every thread trains through an
XlaFabric (comm/xla.py): device 0's thread is also the coordinator (environments, central critic, logging),
as rank 0 is in the CPU placement. torch_xla is imported only here, inside functions.
"""

from __future__ import annotations

import os
import traceback
from pathlib import Path

# Set before torch_xla is imported, where the user did not: the Makefile's test-xla target says why each one
# (deadlocks seen on this 2-core host without them).
CPU_DEFAULTS = {"XLA_THREAD_POOL_SIZE": "64", "XLA_ENABLE_PARAM_ALIASING": "0"}


def xla_environment(devices: int) -> None:
    """PJRT_DEVICE (CPU unless the user chose, e.g. TPU); on CPU, `devices` devices."""
    os.environ.setdefault("PJRT_DEVICE", "CPU")
    if os.environ["PJRT_DEVICE"] == "CPU":
        os.environ["CPU_NUM_DEVICES"] = str(devices)
        for key, value in CPU_DEFAULTS.items():
            os.environ.setdefault(key, value)


def device_main(index: int, cfg_dict: dict, run_dir: str, resume: bool, devices: int) -> None:
    """What every device thread runs (torch_xla.launch calls it with the thread's local index)."""
    import torch

    from . import checkpoint as ckpt
    from . import cores
    from ..comm.transport import CommError
    from ..comm.xla import XlaFabric
    from ..config import from_dict
    from ..extensions import job_graph
    from .logger import RunLogger
    from .rundir import RunDirWriteError
    from .trainer import NonFiniteError, train

    cfg = from_dict(cfg_dict, "launcher")
    # The host's work (environments, the central critic, the host side of acting) may use every core.
    torch.set_num_threads(cfg.run.threads or len(cores.allowed()))
    graph = job_graph(cfg)  # PS never gossips: its graph has no edges
    with host_fabric(cfg) as host:
        fabric = XlaFabric(cfg.env.n_agents, graph, cfg.run.timeout_s, host=host)
        if fabric.world != devices:
            raise ValueError(f"--nproc {devices}, but torch_xla runs {fabric.world} devices here "
                             f"(PJRT_DEVICE={os.environ.get('PJRT_DEVICE')})")
        state = ckpt.load(Path(run_dir)) if resume else None
        try:
            train(cfg, fabric, Path(run_dir), state)
        except BaseException as err:
            if isinstance(err, CommError):  # a thread that stopped because another failed, or a host-side timeout
                fabric.board.barrier.abort()
            else:  # the cause: the other threads stop at their next host wait, naming it, not after the timeout
                fabric.board.fail(fabric.rank, err)
                if not isinstance(err, (NonFiniteError, RunDirWriteError)):  # a bug: its traceback, once
                    traceback.print_exc()
            if fabric.rank == 0:
                RunLogger.abandon()
            raise


def host_fabric(cfg):
    """Where torch_xla runs a process per device (a TPU VM's chips): a gloo Fabric of those processes for the host
    side (comm_xla.XlaFabric's `host`), on this one host. Never run here (see XlaFabric)."""
    from contextlib import nullcontext

    import torch_xla.runtime as xr

    from ..comm.fabric import open_fabric

    if xr.process_count() == 1:
        return nullcontext(None)
    if xr.process_count() != xr.local_process_count():
        raise ValueError("run.device=xla runs on one host; this TPU slice spans several hosts")
    os.environ.update(RANK=str(xr.global_ordinal()), WORLD_SIZE=str(xr.world_size()), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=os.environ["DECNODE_XLA_PORT"])
    return open_fabric(cfg.env.n_agents, 0, cfg.run.timeout_s)


def run_on_devices(cfg_dict: dict, run_dir: str, resume: bool, devices: int) -> None:
    """Train on `devices` XLA devices; the first exception of a device thread reaches the caller."""
    xla_environment(devices)
    import torch_xla

    from .launch import _free_port as free_port
    os.environ.setdefault("DECNODE_XLA_PORT", str(free_port()))  # for host_fabric, in the processes spawned below

    torch_xla.launch(device_main, args=(cfg_dict, run_dir, resume, devices))
