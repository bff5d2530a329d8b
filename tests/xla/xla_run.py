"""Run a function in every XLA device thread of a fresh process, with a hard deadline.

A hang inside an XLA collective cannot be interrupted from Python, so each call gets its own process:
PJRT_DEVICE=CPU with CPU_NUM_DEVICES devices, `torch_xla.launch` runs fn(*args) in one thread per device, and
the results come back ordered by `xr.global_ordinal()`. fn must be importable: module:function.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import torch

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# torch_xla.launch runs the device threads in a child process it spawns (one process per host for CPU devices),
# so fn is named by module and each thread saves its result to a file named by its ordinal.
_SCRIPT = r"""
import sys, torch, torch_xla, xla_run
module, name, inp, outdir = sys.argv[1:]
torch_xla.launch(xla_run.device_main, args=(module, name, torch.load(inp, weights_only=False), outdir))
"""


def device_main(index: int, module: str, name: str, args: list, outdir: str) -> None:
    import importlib

    import torch_xla.runtime as xr
    result = getattr(importlib.import_module(module), name)(*args)
    torch.save(result, os.path.join(outdir, f"{xr.global_ordinal()}.pt"))


def xla_env(devices: int) -> dict:
    env = dict(os.environ)
    # Why each setting: the Makefile's test-xla target (the same ones, for the same reasons).
    env.update(PJRT_DEVICE="CPU", CPU_NUM_DEVICES=str(devices), XLA_THREAD_POOL_SIZE="64",
               XLA_ENABLE_PARAM_ALIASING="0")
    here = os.path.dirname(os.path.abspath(__file__))  # tests/xla, and tests/ for the gloo helper multiproc
    env["PYTHONPATH"] = os.pathsep.join([REPO, here, os.path.dirname(here), env.get("PYTHONPATH", "")])
    return env


def _essence(stderr: str) -> str:
    """XLA's own fatal lines (a stuck rendezvous) and the Python traceback's last lines."""
    lines = stderr.splitlines()
    xla = [line for line in lines if "rendezvous.cc" in line or " F " in line[:40]]
    return "\n".join(xla[:6] + lines[-25:])


def run_on_devices(target: str, *args, devices: int = 4, timeout: float = 300.0) -> list:
    """target 'module:function'; returns [fn's result on device 0, 1, …]."""
    module, name = target.split(":")
    with tempfile.TemporaryDirectory() as tmp:
        inp = os.path.join(tmp, "in.pt")
        torch.save(list(args), inp)
        try:
            proc = subprocess.run([sys.executable, "-c", _SCRIPT, module, name, inp, tmp], env=xla_env(devices),
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{target} on {devices} XLA devices gave no result within {timeout}s "
                                 "(hang?)") from None
        if proc.returncode != 0:
            raise AssertionError(f"{target} on {devices} XLA devices failed (exit {proc.returncode}):\n"
                                 f"{_essence(proc.stderr)}")
        files = sorted((f for f in os.listdir(tmp) if f != "in.pt"), key=lambda f: int(f.split(".")[0]))
        assert len(files) == devices, f"{len(files)} device threads answered, expected {devices}"
        return [torch.load(os.path.join(tmp, f), weights_only=False) for f in files]
