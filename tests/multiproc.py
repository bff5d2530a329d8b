"""Run a function on W real processes joined by a gloo process group on 127.0.0.1, with a hard deadline.

Each rank's return value comes back through a queue; an exception in any rank, or a rank still running at the
deadline (a hang), fails the calling test instead of blocking CI.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue as queue_mod
import socket
import traceback


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn, rank, world, port, queue, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    import torch

    torch.set_num_threads(1)
    try:
        # Pickled to bytes here: torch's queue reductions would pass tensors through shared memory that dies
        # with this process before the parent reads it.
        queue.put((rank, "ok", pickle.dumps(fn(*args))))
    except BaseException:  # noqa: BLE001 - report everything to the parent
        queue.put((rank, "error", traceback.format_exc()))


def _context():
    """Processes forked from one server per test process that has imported torch once: a spawned rank spent ~1.4 s of
    CPU importing torch, the most of a small test's time (ranks of 2-8 processes share 2 cores). The server is a fresh
    interpreter, not a fork of the test process (which may hold JAX's threads), and is started once, on first use."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "numpy", "multiproc"])
    return ctx


def run_ranks(fn, world: int, *args, timeout: float = 120.0) -> list:
    """fn(*args) on `world` processes (RANK/WORLD_SIZE set); returns the results ordered by rank."""
    ctx = _context()
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(fn, r, world, port, queue, args), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    results, errors = {}, []
    try:
        for _ in range(world):
            try:
                rank, status, value = queue.get(timeout=timeout)
            except queue_mod.Empty:  # some rank hung
                missing = sorted(set(range(world)) - set(results))
                raise AssertionError(f"ranks {missing} gave no result within {timeout}s (hang?)") from None
            if status == "error":
                errors.append(f"rank {rank}:\n{value}")
                break
            results[rank] = pickle.loads(value)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    if errors:
        raise AssertionError("\n".join(errors))
    return [results[r] for r in range(world)]
