"""decnode's C++ kernels (decnode/nn/*.cpp), compiled on first use by torch's extension builder and then cached.

torch.utils.cpp_extension builds with ninja and the system's C++ compiler: about 11 s once per machine, torch
version and source, then a load in milliseconds. The cache is $TORCH_EXTENSIONS_DIR (default
~/.cache/torch_extensions). Where no compiler is found, the caller falls back to its Python form after one
warning; DECNODE_NATIVE=0 asks for that fallback directly.

    python -m decnode.nn.native      # build now (make install does), and say where and how long it took
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
STALE_LOCK_S = 600  # a build takes ~11 s; a lock this old was left by a killed build and would block every load

build_error: str | None = None  # why the last build failed, for tests and `python -m decnode.nn.native`
_decided: list = []  # [the ops, or None] once the first call has loaded, built or given up
_building = threading.Lock()  # an actor block's row threads may ask at once: build and load once


def _flags() -> list[str]:
    # -fno-trapping-math lets the compiler turn the exp's range clamp into blends, i.e. vectorise the step loops
    flags = ["-O3", "-fno-trapping-math"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        flags += ["-mavx2", "-mfma"]
    return flags


def _build_dir() -> Path:
    # one directory per source, flags and torch: a built library there is current, and loads without a ninja check
    key = hashlib.sha256((HERE / "gru_native.cpp").read_bytes() + " ".join(_flags()).encode()).hexdigest()[:12]
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "torch_extensions"))
    return root / f"decnode-torch{torch.__version__}-{key}"


def gru_ops():
    """torch.ops.decnode_gru (forward, backward; see gru_native.cpp), or None where it cannot be built. Called on
    every recurrence (each acting step too): after the first call, a list lookup without the lock."""
    if not _decided:
        with _building:
            if not _decided:
                _decided.append(_gru_ops())
    return _decided[0]


def _gru_ops():
    global build_error
    if os.environ.get("DECNODE_NATIVE", "1") == "0":
        build_error = "DECNODE_NATIVE=0"
        return None
    try:
        build = _build_dir()
        if (build / "decnode_gru.so").exists():  # built before: milliseconds (the builder's import alone takes 0.15 s)
            torch.ops.load_library(str(build / "decnode_gru.so"))
            return torch.ops.decnode_gru
        from torch.utils.cpp_extension import load

        if os.environ.get("RANK", "0") == "0":  # (every process of a first job builds or waits; one says so)
            print(f"decnode: building the C++ GRU kernel, once for this machine and torch {torch.__version__} "
                  f"(~11 s; make install does it ahead)", file=sys.stderr, flush=True)
        build.mkdir(parents=True, exist_ok=True)
        lock = build / "lock"
        # torch's builder waits for its lock file forever; one left by a killed build would hang every process
        if lock.exists() and time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            lock.unlink(missing_ok=True)
        load(name="decnode_gru", sources=[str(HERE / "gru_native.cpp")], extra_cflags=_flags(),
             build_directory=str(build), is_python_module=False, verbose=False)
    except Exception as err:  # no compiler, no ninja, a failed compile: the Python kernel still works
        lines = [line for line in str(err).splitlines() if line.strip()]
        build_error = f"{type(err).__name__}: {lines[0] if lines else ''}"
        warnings.warn(f"decnode: the C++ GRU kernel could not be built or loaded ({build_error}); using the slower "
                      f"Python kernel (python -m decnode.nn.native retries; a damaged build: delete {_build_dir()})",
                      stacklevel=2)
        return None
    return torch.ops.decnode_gru


def main() -> None:
    start = time.perf_counter()
    ok = gru_ops() is not None
    took = time.perf_counter() - start
    if ok:
        print(f"decnode C++ kernels: ready in {took:.1f} s ({_build_dir()})")
    else:
        print(f"decnode C++ kernels: not built ({build_error}); the Python kernels will be used")


if __name__ == "__main__":
    main()
