"""Gossip round vs all-reduce, and the per-step coordinator exchange candidates, on real local processes.

    python benchmarks/comm.py                 # n = 4 and 10 processes, k in {1, 2, 4, n-1}, 4 KB .. 4 MB
    python benchmarks/comm.py --n 10 --reps 10

Prints median milliseconds per call (every rank times the call; the slowest rank's median is reported, since
a round is only over when everyone is done) and saves JSON (default benchmarks/results/comm.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SIZES_BYTES = [4_000, 40_000, 400_000, 4_000_000]


def _median_ms(fn, reps: int) -> float:
    import torch.distributed as dist

    fn()  # warm-up: connections and buffers
    times = []
    for _ in range(reps):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def bench_worker(n: int, ks: list[int], reps: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from decnode.comm.fabric import Fabric, open_fabric

    torch.set_num_threads(1)
    rows = {}
    with open_fabric(n, 0, timeout_s=120) as base:
        rank = base.rank
        for size in SIZES_BYTES:
            x = torch.randn(1, size // 4)
            rows[f"allreduce/{size}"] = _median_ms(lambda: base.allreduce_mean(x), reps)
            for k in ks:
                fabric = Fabric(n, k, rank, n, 120)
                rows[f"gossip k={k}/{size}"] = _median_ms(lambda: fabric.gossip(x), reps)
        # The per-step exchange of Simple Spread (B=32, obs 6n + 5 avail + 1 flag per agent; actions back).
        B, width = 32, 6 * n + 6
        full = torch.randn(n, B, width) if rank == 0 else None
        local, acts = torch.empty(1, B, width), torch.zeros(1, B, dtype=torch.long)
        all_acts = torch.zeros(n, B, dtype=torch.long) if rank == 0 else None

        def p2p():
            base.to_agents(full, local)
            base.to_coordinator(acts, all_acts)

        def collectives():
            dist.scatter(local[0], list(full.unbind(0)) if rank == 0 else None, src=0)
            dist.gather(acts[0], list(all_acts.unbind(0)) if rank == 0 else None, dst=0)

        def broadcast_allgather():
            buf = full if rank == 0 else torch.empty(n, B, width)
            dist.broadcast(buf, src=0)
            gathered = [torch.empty_like(acts[0]) for _ in range(n)]
            dist.all_gather(gathered, acts[0])

        rows["step exchange: p2p isend/irecv (used)"] = _median_ms(p2p, reps * 3)
        rows["step exchange: scatter + gather"] = _median_ms(collectives, reps * 3)
        rows["step exchange: broadcast + all_gather"] = _median_ms(broadcast_allgather, reps * 3)
    Path(out, f"rank{rank}.json").write_text(json.dumps(rows))  # the launcher returns no values: use files


def run(n: int, reps: int) -> dict:
    from decnode.job.launch import launch

    ks = sorted({k for k in (1, 2, 4, n - 1) if k <= n - 1})
    with tempfile.TemporaryDirectory() as tmp:
        code = launch(n, bench_worker, (n, ks, reps, tmp), Path(tmp))
        if code:
            raise SystemExit(f"benchmark workers failed (exit {code})")
        ranks = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(n)]
    return {key: max(r[key] for r in ranks) for key in ranks[0]}, ks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="*", default=[4, 10])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "comm.json"))
    args = parser.parse_args()
    results = {}
    for n in args.n:
        table, ks = run(n, args.reps)
        results[n] = table
        print(f"\nn = {n} processes (median ms per call, slowest rank)")
        header = f"{'size':>10}{'all-reduce':>12}" + "".join(f"{'gossip k=' + str(k):>14}" for k in ks)
        print(header)
        for size in SIZES_BYTES:
            cells = "".join(f"{table[f'gossip k={k}/{size}']:>14.2f}" for k in ks)
            print(f"{size / 1000:>8.0f}KB{table[f'allreduce/{size}']:>12.2f}{cells}")
        for key, value in table.items():
            if key.startswith("step exchange"):
                print(f"{key:<42}{value:>8.2f} ms")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"\nsaved {args.out}")


if __name__ == "__main__":
    main()
