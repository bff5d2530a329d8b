"""What a run records about itself beside its metrics: which process is which rank (processes.json), and the graph
it gossips on, by content (topology.json). Rank 0 writes both once, after setup."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import torch

from . import cores


def netns() -> str | None:
    try:
        return os.readlink("/proc/self/ns/net")  # e.g. net:[4026531840]
    except OSError:  # not Linux
        return None


def processes(trainer, run_dir: Path) -> list[str]:
    """processes.json on rank 0, and the warnings (rank 0's) of machines running more threads than cores."""
    fabric = trainer.fabric
    # Which process is which rank: for whoever has to inspect or stop one of them. netns: the network namespace
    # (emulated hosts share a kernel, and a pid is only meaningful inside its host).
    procs = fabric.gather_objects({"rank": fabric.rank, "host": socket.gethostname(), "pid": os.getpid(),
                                   "netns": netns(), "machine": cores.machine_id(), "cores": cores.allowed(),
                                   "threads": torch.get_num_threads(), "row_threads": trainer.row_threads,
                                   "job_id": f"{getattr(fabric, 'job_id', 0):016x}"})  # what its frames carry
    oversubscribed = cores.oversubscribed(procs) if trainer.coordinator else []
    if trainer.coordinator:
        with trainer.writing("processes.json"):
            (Path(run_dir) / "processes.json").write_text(json.dumps(procs, indent=1))
        for line in oversubscribed:  # once per host, from the coordinator, which sees every host
            print(line, file=sys.stderr, flush=True)
    return oversubscribed


def topology(trainer, run_dir: Path) -> None:
    """topology.json: the graph by content (every round's matrix, its degree, diameter and gaps), so a file: graph
    stays on record whatever becomes of the file."""
    graph = trainer.fabric.graph
    with trainer.writing("topology.json"):
        (Path(run_dir) / "topology.json").write_text(json.dumps(
            {**graph.describe(), "weights": trainer.cfg.algo.weights, "matrices": [W.tolist() for W in graph.phases]}))
