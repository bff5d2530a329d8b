"""Bounded staleness by real arrival (comm/arrival.py): 4 real processes, 8 agents on the directed exponential graph,
push-sum rounds of 50 000 floats with a sleep per round as the "compute"; wall seconds of ROUNDS rounds and the
iteration's flush with τ = 0 (synchronous) and τ = 2, in one run, twice each.

    python benchmarks/async_real.py            # rank 1 4× slower (40 ms vs 10 ms per round), then jitter
                                                # (every rank 5 or 35 ms per round, drawn per rank)

What to expect: a node that is always slower bounds the iteration either way (its compute is on every path: a node
runs at most τ + 2 rounds ahead of an out-neighbour, and the iteration ends with every message in), so τ = 2 only
moves the fast ranks' waits; jitter is what bounded staleness absorbs. Wall-clock figures: noisy on a shared host.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

ROUNDS, N, WORLD, DIM = 20, 8, 4, 50_000


def _compute_s(case: str, rank: int, rep: int) -> list[float]:
    if case == "slow":
        return [0.040 if rank == 1 else 0.010] * ROUNDS
    rng = random.Random(rank * 100 + rep)
    return [rng.choice((0.005, 0.035)) for _ in range(ROUNDS)]


def _worker(case: str, taus: list[int], reps: int):
    import torch

    from decnode.comm.arrival import RealArrival
    from decnode.comm.fabric import Fabric, open_fabric
    from decnode.comm.transport import world_from_env
    from decnode.marl.push_sum import PushSum
    from decnode.topology import build_graph

    rank, world = world_from_env()
    out = {}
    with open_fabric(N, 0, timeout_s=60):
        for rep in range(reps):
            for tau in taus:
                fabric = Fabric(N, build_graph("exp", N).push_weights(), rank, world, timeout_s=60)
                fabric.arrival = RealArrival(tau) if tau else None
                mine = slice(fabric.agents.start, fabric.agents.stop)
                combiner, params = PushSum(fabric), torch.zeros(N, DIM)[mine].clone()
                compute = _compute_s(case, rank, rep)
                fabric.barrier()
                t0 = time.perf_counter()
                for t in range(ROUNDS):
                    combiner.before_backward(params, True)
                    time.sleep(compute[t])
                    combiner.step(params, torch.zeros_like(params), 0.1, float("inf"))
                combiner.finish(params)
                out[(rep, tau)] = time.perf_counter() - t0
                if fabric.arrival:
                    fabric.arrival.close()
    return out


def main() -> None:
    from multiproc import run_ranks

    for case in ("slow", "jitter"):
        res = run_ranks(_worker, WORLD, case, [0, 2], 2, timeout=300)
        for rep in range(2):
            sync, stale = (max(r[(rep, tau)] for r in res) for tau in (0, 2))
            print(f"{case:>6} run {rep}: τ=0 {sync:.3f} s, τ=2 {stale:.3f} s ({stale / sync:.2f}×) for {ROUNDS} rounds")


if __name__ == "__main__":
    main()
