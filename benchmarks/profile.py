"""Where a single-process iteration's time goes: torch.profiler's operator table over a few training iterations.

    python benchmarks/profile.py                      # Simple Spread N=10, DecPG, all cores, 3 profiled iterations
    python benchmarks/profile.py --algo ps --threads 1 --trace /tmp/iteration.json   # + a Chrome/Perfetto trace

It builds the Trainer in this process (the same code `decnode-run --nproc 1` runs), warms up, then profiles. The
first rows of the table are what to attack next; the README's "Speed" section says what was found so far.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import profile, record_function

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from decnode.comm.fabric import open_fabric  # noqa: E402
from decnode.config import load, resolve  # noqa: E402
from decnode.job.cores import intra_op_threads  # noqa: E402
from decnode.job.trainer import Trainer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--algo", default="decpg", choices=["decpg", "ps", "ps_entropy"])
    p.add_argument("--config", default=str(ROOT / "configs" / "simple_spread.yaml"))
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: the cores)")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--rows", type=int, default=25)
    p.add_argument("--trace", help="also write a Chrome trace (open in Perfetto)")
    args = p.parse_args()
    torch.set_num_threads(args.threads or intra_op_threads())
    cfg = load(args.config, [f"algo.name={args.algo}", f"env.n_agents={args.n}"])
    resolve(cfg, 1)
    with open_fabric(cfg.env.n_agents, cfg.algo.k if args.algo == "decpg" else 0, 600.0) as fabric:
        trainer = Trainer(cfg, fabric, Path(tempfile.mkdtemp()))
        for _ in range(2):
            trainer.iterate()
        start = time.perf_counter()
        with profile() as prof:
            for _ in range(args.iterations):
                with record_function("iteration"):
                    trainer.iterate()
        seconds = (time.perf_counter() - start) / args.iterations
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))
    print(f"{seconds:.3f} s per iteration under the profiler, the actors' backward on {trainer.row_threads} row "
          f"thread(s) × {torch.get_num_threads()} intra-op thread(s)")
    if args.trace:
        prof.export_chrome_trace(args.trace)
        print(f"trace: {args.trace}")


if __name__ == "__main__":
    main()
