"""Bytes on the wire (comm/wire.py), counted where the transport sends, over real processes: they equal the closed
form of a gossip round (rows sent × row bytes + the frame header, per link), reach metrics.jsonl, timing.json and
trace.json, and equal what the α–β model (net/model.py) prices for the same graph."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from decnode.comm.frames import HEADER_BYTES
from decnode.comm.wire import METRIC_STREAMS
from decnode.net import model
from decnode.topology import build_graph, mixing_matrix
from multiproc import run_ranks

DIM = 37


def rows_sent(P: np.ndarray, world: int, src: int, dst: int) -> int:
    """Agents of src's block that some agent of dst's block listens to (straight from P, not from block_plan)."""
    a = P.shape[0] // world
    return sum(any(P[i, j] > 0 for i in range(dst * a, (dst + 1) * a)) for j in range(src * a, (src + 1) * a))


def _gossip_worker(cases: list[tuple[int, int]], rounds: int):
    """Each (agents per process, k) of `cases` on its own Fabric (its own byte counts) in one process group:
    spawning the ranks costs more than the rounds."""
    from decnode.comm.fabric import Fabric, open_fabric
    from decnode.comm.transport import world_from_env
    rank, world = world_from_env()
    out = {}
    with open_fabric(world, 0, timeout_s=60) as base:
        for per_process, k in cases:
            fabric = Fabric(per_process * world, k, rank, world, timeout_s=60)
            x = torch.randn(per_process, DIM, generator=torch.Generator().manual_seed(rank))  # float32
            for _ in range(rounds):
                x = fabric.gossip(x).clone()
            fabric.allreduce_sum(torch.zeros(5, dtype=torch.float64))
            out[per_process, k] = fabric.wire.report()
            base.barrier()
    return out


@pytest.mark.parametrize("world,cases", [(2, [(1, 1), (2, 1)]), (4, [(1, 2), (1, 3), (2, 3)])])
def test_a_gossip_round_puts_the_closed_form_on_each_link(world, cases):
    rounds = 3
    results = run_ranks(_gossip_worker, world, cases, rounds, timeout=120)
    for per_process, k in cases:
        P = mixing_matrix(world * per_process, k)
        for src, report in enumerate(r[per_process, k] for r in results):
            for dst in range(world):
                rows = rows_sent(P, world, src, dst) if dst != src else 0
                got = report["links"].get(f"{src}->{dst}", {}).get("gossip")
                if rows == 0:
                    assert got is None, (per_process, k, src, dst, got)
                else:  # one frame per peer and round: the rows it needs, float32, and one header
                    want = {"bytes": rounds * (rows * DIM * 4 + HEADER_BYTES), "messages": rounds}
                    assert got == want, (per_process, k, src, dst)
            # a collective: the payload this rank hands to gloo, no link
            assert report["collectives"]["allreduce"] == {"bytes": 40, "calls": 1}
            assert report["total"] == sum(t["bytes"] for per in report["links"].values() for t in per.values()) + 40


GRAPH_CASES = [("knn", 1), ("exp", 1), ("exp", 2), ("exp1peer", 1), ("exp1peer", 2)]  # (graph, agents per process)


def _graph_worker(cases: list[tuple[str, int]]):
    from decnode.comm.fabric import Fabric, open_fabric
    from decnode.comm.transport import world_from_env
    rank, world = world_from_env()
    out = {}
    with open_fabric(world, 0, timeout_s=60) as base:
        for spec, per_process in cases:
            graph = build_graph(spec, per_process * world, k=2)
            fabric = Fabric(graph.n, graph, rank, world, timeout_s=60)  # round t mixes with the graph's round t
            x = torch.randn(per_process, DIM, generator=torch.Generator().manual_seed(rank))
            for _ in range(2 * graph.period):  # a time-varying graph: whole periods, where the model's mean is exact
                x = fabric.gossip(x).clone()
            base.barrier()
            out[spec, per_process] = fabric.wire.report()
    return out


def test_the_model_prices_the_bytes_the_transport_counts_on_any_graph():
    world = 4
    results = run_ranks(_graph_worker, world, GRAPH_CASES, timeout=120)
    for spec, per_process in GRAPH_CASES:
        graph = build_graph(spec, world * per_process, k=2)
        counted = {(src, int(link.split("->")[1])): per["gossip"]["bytes"]
                   for src, r in enumerate(results) for link, per in r[spec, per_process]["links"].items()}
        assert counted == model.gossip_link_bytes(graph, world, [DIM * 4], 2 * graph.period), (spec, per_process)


def test_the_constants_the_model_restates_match_the_transport():
    assert model.FRAME_HEADER_BYTES == HEADER_BYTES
    assert model.STATS_WIRE_SLOTS == len(METRIC_STREAMS)


@pytest.mark.parametrize("nproc", [2, 4])
def test_a_training_run_reports_its_bytes_in_metrics_timing_and_trace(tmp_path, nproc):
    from decnode.tools.netmodel import job_config

    n, k, epochs, iterations = 4, 1, 2, 2
    sets = [f"env.n_agents={n}", "env.episode_length=5", "env.n_envs=2", "train.hidden=16",
            f"train.ppo_epochs={epochs}", "eval.interval=0", "eval.episodes=1", "eval.test_episodes=1",
            "run.tensorboard=false", "run.trace_iterations=1"]
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "decnode.run", "--nproc", str(nproc), "--k", str(k), "--iterations",
                           str(iterations), "--out", str(out), "--no-preflight",
                           *(x for s in sets for x in ("--set", s))], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    D = torch.load(out / "models.pt", weights_only=False)["actor_rows"].shape[1]
    P = mixing_matrix(n, k)
    per_link = {(s, d): epochs * (rows_sent(P, nproc, s, d) * D * 4 + HEADER_BYTES)
                for s in range(nproc) for d in range(nproc) if s != d and rows_sent(P, nproc, s, d)}
    per_iteration = sum(per_link.values())
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["bytes"]["streams"]["gossip"] for line in lines] == [per_iteration] * iterations
    for line in lines:
        assert line["bytes"]["total"] == sum(line["bytes"]["streams"].values()) > per_iteration
        assert line["bytes"]["streams"]["step_exchange"] > 0
    wire = json.loads((out / "timing.json").read_text())["wire"]
    assert {tuple(map(int, link.split("->"))): s["gossip"] for link, s in wire["links"].items() if "gossip" in s} == \
        {link: iterations * b for link, b in per_link.items()}
    assert wire["streams"]["gossip"] == iterations * per_iteration
    assert wire["total"] >= sum(line["bytes"]["total"] for line in lines)  # + what followed the last line
    # the α–β model prices the same bytes for this graph
    cfg = job_config(nproc, "decpg", k, None, None, sets)
    assert model.predict_iteration_comm(cfg, model.NetProfile("x", latency_s=1e-3), nproc)["gossip_bytes"] == \
        per_iteration
    # trace.json: per-rank counters of the bytes sent, cumulative per stream
    events = json.loads((out / "trace.json").read_text())["traceEvents"]
    counters = [e for e in events if e["ph"] == "C"]
    assert {e["name"] for e in counters} == {f"bytes sent by rank {r}" for r in range(nproc)}
    last = [e for e in counters if e["name"] == "bytes sent by rank 0"][-1]["args"]
    assert last["gossip"] == sum(b for (s, _), b in per_link.items() if s == 0)
