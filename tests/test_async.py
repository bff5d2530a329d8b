"""Bounded-staleness push-sum (issue 27 parts 2-4) over real processes: with messages that arrive late on the
simulated clock the mass (on the nodes plus in flight) is conserved every round and Σw = n once all is in; τ = 0
is the synchronous mix bit for bit; two runs, one beside processes that keep both cores busy, end bit-identical;
no message is mixed more than τ rounds late; a resume is exact; what cannot run is refused in one line."""

import json
import re
import subprocess
import sys
import time

import pytest
import torch

from decnode.comm.arrival import RealArrival
from decnode.comm.fabric import Fabric, open_fabric
from decnode.comm.stale import Staleness
from decnode.marl.push_sum import PushSum
from decnode.net.link import Link
from decnode.net.profile import make_profile
from decnode.timing import Section
from decnode.topology import build_graph
from multiproc import run_ranks
from test_reliability import decnode, metrics, models

N, WORLD, DIM, ROUNDS, LR, TAU = 8, 4, 5, 12, 0.1, 2
# rank 1 computes 4× slower: its messages reach the others late on the simulated clock
SLOW = {"preset": "ethernet", "name": "ethernet-slow1", "speed": [1, 4, 1, 1], "compute": "model"}
IRREGULAR = "0 -> 1\n0 -> 2\n1 -> 2\n2 -> 3\n3 -> 4\n4 -> 5\n5 -> 6\n6 -> 7\n7 -> 0\n3 -> 0\n"


def rows(n, seed):
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _stale_worker(specs: list[str], taus: list):
    """Per graph and τ (None: no clock, the synchronous path): ROUNDS push-sum steps with random gradients, each
    step's backward charged on the simulated clock; per round this rank's x, w, the shares it holds in flight, z,
    and at the end (after finish) x, w and the staleness statistics."""
    from decnode.comm.transport import world_from_env
    rank, world = world_from_env()
    out = {}
    with open_fabric(N, 0, timeout_s=60):
        for spec in specs:
            for tau in taus:
                link = Link(make_profile(SLOW) if tau is not None else None, rank, world)
                fabric = Fabric(N, build_graph(spec, N).push_weights(), rank, world, timeout_s=60, link=link)
                if tau is not None:
                    fabric.stale = Staleness(tau, link.clock)
                mine = slice(fabric.agents.start, fabric.agents.stop)
                combiner, params = PushSum(fabric), rows(N, 0)[mine].clone()
                seen = []
                for t in range(ROUNDS):
                    grads = rows(N, 1 + t)[mine].clone()
                    combiner.before_backward(params, True)
                    with fabric.recorder.section(Section.ACTOR_UPDATE):
                        pass  # compute: model charges its fixed cost × this rank's slowdown here
                    combiner.step(params, grads.clone(), LR, float("inf"))
                    flying = fabric.stale.in_flight(Section.GOSSIP) if fabric.stale else None
                    seen.append({"xw": combiner.xw.clone(), "g": grads, "z": params.clone(),
                                 "flying": torch.zeros_like(combiner.xw) if flying is None else flying})
                combiner.finish(params)
                window = fabric.stale.window() if fabric.stale else (0, 0, 0)
                out[(spec, tau)] = {"rounds": seen, "end": combiner.xw.clone(), "z": params.clone(), "stats": window}
    return out


@pytest.fixture(scope="module")
def stale_runs(tmp_path_factory):
    f = tmp_path_factory.mktemp("graphs") / "irregular.txt"
    f.write_text(IRREGULAR)
    specs = ["exp", "exp1peer", f"file:{f}"]
    return specs, run_ranks(_stale_worker, WORLD, specs, [None, 0, TAU], timeout=240)


def _all(results, key, spec, tau, t=None):
    parts = [r[(spec, tau)]["rounds"][t][key] if t is not None else r[(spec, tau)][key] for r in results]
    return torch.cat(parts)


def test_late_shares_conserve_the_mass_every_round(stale_runs):
    specs, results = stale_runs
    late = 0
    for spec in specs:
        mean = rows(N, 0).mean(0)  # SGD on the average: the mass moves by −η · mean g each round
        for t in range(ROUNDS):
            xw, flying = _all(results, "xw", spec, TAU, t), _all(results, "flying", spec, TAU, t)
            mean = mean - LR * _all(results, "g", spec, TAU, t).mean(0)
            total = xw + flying  # on the nodes plus held by their receivers
            assert abs(float(total[:, -1].sum()) - N) <= 1e-9, (spec, t)
            assert float((total[:, :-1].mean(0) - mean).abs().max()) <= 1e-6, (spec, t)
            z = _all(results, "z", spec, TAU, t)
            assert float((z - xw[:, :-1] / xw[:, -1:]).abs().max()) <= 1e-12
            late += float(flying.abs().sum()) > 0
        end = _all(results, "end", spec, TAU)  # after finish nothing is in flight: Σw = n on the nodes
        assert abs(float(end[:, -1].sum()) - N) <= 1e-9 and float((end[:, :-1].mean(0) - mean).abs().max()) <= 1e-6
    assert late >= ROUNDS  # not vacuous: shares were held in flight in many rounds


def test_no_message_is_mixed_more_than_tau_rounds_late_and_some_are_late(stale_runs):
    specs, results = stale_runs
    for spec in specs:
        stats = [r[(spec, TAU)]["stats"] for r in results]
        assert all(most <= TAU for _, _, most in stats), (spec, stats)
        assert max(most for _, _, most in stats) > 0 and sum(total for total, _, _ in stats) > 0, (spec, stats)
        assert all(most == 0 for _, _, most in (r[(spec, 0)]["stats"] for r in results))


def test_tau_zero_is_the_synchronous_mix_bit_for_bit(stale_runs):
    specs, results = stale_runs
    for spec in specs:
        for r in results:
            sync, zero = r[(spec, None)], r[(spec, 0)]
            assert sync["stats"] == (0, 0, 0) and zero["stats"][1] > 0  # the stale path ran, and counted messages
            for a, b in zip(sync["rounds"], zero["rounds"]):
                assert torch.equal(a["xw"], b["xw"]) and torch.equal(a["z"], b["z"]), spec
        # while τ = 2 mixes differently (the slow rank's shares come later)
        assert any(not torch.equal(r[(spec, None)]["end"], r[(spec, TAU)]["end"]) for r in results), spec


# ---- real arrival (no profile): what has really arrived is mixed -------------------------------------------------
ITERATIONS, SLEEP_S, HANG_S, HANG_WARNING_S = 3, 0.03, 3.0, 0.5


def _real_worker(taus: list):
    """Per τ (None: the synchronous path): ITERATIONS × ROUNDS push-sum steps on the directed exponential graph, rank 1
    sleeping SLEEP_S per round (really slower), the combiner's finish after each iteration; per iteration this rank's
    x | w after finish and its gradients, and the staleness statistics of the run."""
    import io
    from decnode.comm.transport import world_from_env
    rank, world = world_from_env()
    out = {}
    sys.stderr = io.StringIO()  # the watchdog prints its hang reports here (it takes sys.stderr when it starts)
    with open_fabric(N, 0, timeout_s=60, hang_warning_s=HANG_WARNING_S) as group:  # its watchdog watches ours too
        for tau in taus:
            fabric = Fabric(N, build_graph("exp", N).push_weights(), rank, world, timeout_s=60, watch=group.watch)
            fabric.arrival = RealArrival(tau) if tau is not None else None
            mine = slice(fabric.agents.start, fabric.agents.stop)
            combiner, params = PushSum(fabric), rows(N, 0)[mine].clone()
            ends, grads_seen = [], []
            for it in range(ITERATIONS):
                for t in range(ROUNDS):
                    grads = rows(N, 100 + it * ROUNDS + t)[mine].clone()
                    grads_seen.append(grads)
                    combiner.before_backward(params, True)
                    if rank == 1:
                        time.sleep(SLEEP_S)  # compute, slower on this node
                    combiner.step(params, grads.clone(), LR, float("inf"))
                combiner.finish(params)
                ends.append(combiner.xw.clone())
            out[tau] = {"ends": ends, "g": grads_seen, "z": params.clone(),
                        "stats": fabric.arrival.window() if fabric.arrival else (0, 0, 0)}
            if fabric.arrival:
                fabric.arrival.close()
        # then rank 1 sleeps HANG_S once (slow, not frozen), τ = 1: the others wait on its message τ rounds old
        fabric = Fabric(N, build_graph("exp", N).push_weights(), rank, world, timeout_s=60, watch=group.watch)
        fabric.arrival = RealArrival(1)
        combiner, params = PushSum(fabric), rows(N, 0)[mine].clone()
        for t in range(ROUNDS):  # long enough that nobody reaches the iteration's end (flush) while rank 1 sleeps
            combiner.before_backward(params, True)
            if rank == 1 and t == 3:
                time.sleep(HANG_S)
            combiner.step(params, rows(N, 1 + t)[mine].clone(), LR, float("inf"))
        combiner.finish(params)
        fabric.arrival.close()
    out["stderr"] = sys.stderr.getvalue()
    return out


@pytest.fixture(scope="module")
def real_runs():
    return run_ranks(_real_worker, WORLD, [None, 0, TAU], timeout=120)


def test_real_arrival_conserves_the_mass_and_mixes_late_shares_within_tau(real_runs):
    """τ = 2 without a profile, rank 1 really slower: after each iteration's flush Σw = n and the mean of x is the
    SGD average; some messages were mixed late, none more than τ rounds."""
    mean = rows(N, 0).mean(0)
    for it in range(ITERATIONS):
        for t in range(it * ROUNDS, (it + 1) * ROUNDS):
            mean = mean - LR * torch.cat([r[TAU]["g"][t] for r in real_runs]).mean(0)
        end = torch.cat([r[TAU]["ends"][it] for r in real_runs])
        assert abs(float(end[:, -1].sum()) - N) <= 1e-9, it
        assert float((end[:, :-1].mean(0) - mean).abs().max()) <= 1e-6, it
    stats = [r[TAU]["stats"] for r in real_runs]
    assert all(most <= TAU for _, _, most in stats), stats
    assert max(most for _, _, most in stats) > 0 and sum(total for total, _, _ in stats) > 0, stats
    # and the push-sum weights really differed from 1 somewhere (late shares moved mass between rounds)
    assert any(not torch.equal(r[TAU]["z"], r[None]["z"]) for r in real_runs)


def test_real_arrival_with_tau_zero_is_the_synchronous_mix_bit_for_bit(real_runs):
    for r in real_runs:
        assert r[0]["stats"][1] > 0 and r[0]["stats"][2] == 0  # the real-arrival path ran, and waited for all
        for a, b in zip(r[None]["ends"], r[0]["ends"]):
            assert torch.equal(a, b)
        assert torch.equal(r[None]["z"], r[0]["z"])


# ---- whole jobs (decnode-run) ------------------------------------------------------------------------------------
TINY = ["--nproc", "3", "--algo", "push_sum", "--topology", "exp1peer", "--set", "env.n_envs=2",
        "--set", "env.episode_length=8", "--set", "train.hidden=16", "--set", "eval.interval=0",
        "--set", "eval.episodes=2", "--set", "eval.test_episodes=2", "--set", "run.tensorboard=false",
        "--set", "run.checkpoint_interval=0", "--no-preflight"]
ITERS = ["--iterations", "3"]


@pytest.fixture(scope="module")
def slow_profile(tmp_path_factory):
    f = tmp_path_factory.mktemp("net") / "slow.yaml"
    f.write_text("preset: ethernet\nname: ethernet-slow1\nspeed: [1, 4, 1]\ncompute: model\n")
    return str(f)


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """The job without a network (synchronous push-sum), run once for the tests below."""
    run = tmp_path_factory.mktemp("plain") / "r"
    res = decnode(*TINY, *ITERS, "--out", run, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    return run


def test_tau_zero_under_a_slow_network_trains_as_without_one(tmp_path, slow_profile, plain_run):
    """The stale path with τ = 0 (every message waited for) gives the job of no network bit for bit."""
    slow = decnode(*TINY, *ITERS, "--net", slow_profile, "--out", tmp_path / "slow", timeout=300)
    assert slow.returncode == 0, slow.stderr[-2000:]
    a, b = models(plain_run), models(tmp_path / "slow")
    assert torch.equal(a["actor_rows"], b["actor_rows"]) and torch.equal(a["critic"], b["critic"])
    lines = metrics(tmp_path / "slow")
    assert all(d["staleness_max"] == 0 and d["staleness_mean"] == 0 for d in lines)


@pytest.mark.serial  # it keeps both cores busy on purpose: make test runs it alone, not beside other tests
def test_a_run_beside_busy_cores_and_a_resumed_run_end_bit_identical(tmp_path, slow_profile):
    """τ = 2: one whole run while two processes keep both cores busy, one stopped after iteration 2 and resumed:
    the same parameters bit for bit, the same metrics (simulated clocks and staleness included)."""
    args = [*TINY, "--net", slow_profile, "--set", f"algo.staleness={TAU}", "--critic", "local"]
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        busy = decnode(*args, *ITERS, "--out", tmp_path / "busy", timeout=300)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert busy.returncode == 0, busy.stderr[-2000:]
    part = decnode(*args, *ITERS, "--set", "run.stop_after=2", "--out", tmp_path / "part", timeout=300)
    assert part.returncode == 0, part.stderr[-2000:]
    state = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["agents"]
    for w in (state["combiner"]["w"], state["critic"]["combiner"]["w"]):  # nothing in flight at a checkpoint
        assert abs(float(w.sum()) - 3) <= 1e-5
    resumed = decnode("--nproc", "3", "--resume", tmp_path / "part", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = models(tmp_path / "busy"), models(tmp_path / "part")
    assert torch.equal(a["actor_rows"], b["actor_rows"]) and torch.equal(a["critic"], b["critic"])
    lines = metrics(tmp_path / "busy")
    assert lines == metrics(tmp_path / "part")
    assert all(d["staleness_max"] <= TAU for d in lines) and max(d["staleness_max"] for d in lines) > 0
    assert any(d["staleness_mean"] > 0 for d in lines)


@pytest.mark.parametrize("net", [[], ["--net", "ethernet", "--set", "net.mode=emulate"]], ids=["no-net", "emulate"])
def test_a_job_with_staleness_and_real_arrival_runs(tmp_path, net):
    """What was refused (τ > 0 without a simulated clock) runs: messages mixed as they really arrive, none more than
    τ rounds late, and the checkpoint after the last iteration holds nothing in flight (Σw = n)."""
    res = decnode(*TINY, *ITERS, *net, "--set", f"algo.staleness={TAU}", "--out", tmp_path / "r", timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = metrics(tmp_path / "r")
    assert len(lines) == 3 and all(0 <= d["staleness_max"] <= TAU for d in lines)
    w = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=False)["agents"]["combiner"]["w"]
    assert abs(float(w.sum()) - 3) <= 1e-5
    # The trace (first 2 iterations): a late message's arrow ends where it was mixed, marked there — in a gossip
    # slice — exactly when metrics.jsonl counts a late one.
    events = json.loads((tmp_path / "r" / "trace.json").read_text())["traceEvents"]
    marks = [e for e in events if e["ph"] == "i" and e["cat"] == "late"]
    assert bool(marks) == any(d["staleness_max"] > 0 for d in lines[:2]), (len(marks), lines[:2])
    ends = {(e["pid"], e["id"]): e for e in events if e["ph"] == "f"}
    for mark in marks:
        end = ends[(mark["pid"], mark["args"]["flow"])]
        assert end["ts"] == mark["ts"] and end["tid"] == mark["tid"]
        assert any(x["name"].startswith("gossip") and x["ts"] <= mark["ts"] <= x["ts"] + x["dur"] for x in events
                   if x["ph"] == "X" and (x["pid"], x["tid"]) == (mark["pid"], mark["tid"])), mark


@pytest.mark.parametrize("args,needle", [
    (["--set", "algo.staleness=-1"], "algo.staleness must be ≥ 0, got -1"),
    (["--set", "algo.staleness=1.5"], "config key 'algo.staleness' must be int, got 1.5"),
    (["--algo", "decpg", "--set", "algo.staleness=2"], "needs an algorithm that adds a late message when it arrives "
                                                      "(push_sum); algo.name=decpg waits for every message"),
    (["--set", "algo.staleness=2", "--net", "ethernet"], "algo.staleness=2 needs net.compute=model"),
    (["--set", "algo.staleness=2", "--set", "run.device=xla"], "run.device=xla does not run algo.staleness=2"),
    (["--set", "net.compute=model"], "net.compute=model needs a network profile (--net)"),
])
def test_what_staleness_cannot_run_is_one_line(tmp_path, args, needle):
    res = decnode(*TINY, *args, "--out", tmp_path / "r", timeout=120)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert lines[0].startswith("decnode-run: error: ") and needle in lines[0], lines[0]
    assert not (tmp_path / "r").exists()


def test_compute_model_costs_come_from_a_finished_run(plain_run):
    """compute_s: RUN_DIR — the run's measured seconds per call and agent row become the model's costs."""
    costs = dict(make_profile({**SLOW, "name": "measured-costs", "compute_s": str(plain_run)}).compute_s)
    timing = json.loads((plain_run / "timing.json").read_text())["ranks"]
    act = sum(t["act"]["seconds"] for t in timing) / sum(t["act"]["calls"] for t in timing)  # one agent per rank
    assert costs["act"] == pytest.approx(act, abs=1e-9) and costs["actor_update"] > 0
    critic = timing[0]["critic"]  # the central critic: rank 0's one net
    assert costs["critic"] == pytest.approx(critic["seconds"] / critic["calls"], abs=1e-9)


def test_the_alpha_beta_model_hides_a_round_behind_tau_plus_one_rounds_of_compute():
    from decnode.config import load, resolve
    from decnode.net.model import predict_iteration_comm
    from decnode.net.profile import PRESETS

    pred = {}
    for tau in (0, 2):
        cfg = resolve(load(None, ["algo.name=push_sum", "algo.k=2", f"algo.staleness={tau}", "env.n_agents=10"]), 10)
        pred[tau] = predict_iteration_comm(cfg, PRESETS["wan"], 10, overlap_s=0.012)
    one, rounds = pred[0]["combine_raw"] / 10, 10
    assert pred[0]["combine"] == pytest.approx(rounds * (one - 0.012))
    assert pred[2]["combine"] == pytest.approx((rounds - 1) * max(one - 3 * 0.012, 0) + one - 0.012)
    assert pred[2]["total"] < pred[0]["total"] and pred[2]["combine_raw"] == pred[0]["combine_raw"]


def test_the_hang_report_tells_a_neighbour_behind_the_staleness_bound_from_a_frozen_rank(real_runs):
    """Rank 1 sleeps HANG_S (hang_warning_s 0.5): its neighbours wait on its message τ rounds old, and the report
    says so — their waits, and the rank they wait on as behind the bound, not as frozen."""
    tables = [t for r in real_runs for t in r["stderr"].split("decnode: hang report")[1:]]
    table = next((t for t in tables if "staleness bound" in t), "\n".join(tables) or "no hang report")
    assert re.search(r"^\s+\d+\s+rank 1\s.*waiting on rank 1, 1\+ rounds behind \(staleness bound τ=1\)$", table,
                     re.M), table
    assert re.search(r"^\s+1\s+-\s+\(reports no wait: more than τ=1 rounds behind its neighbours", table, re.M), table
    assert "→ everybody waits on rank 1, more than τ rounds behind (staleness bound τ=1)" in table, table
    assert "frozen, or busy outside communication" not in table
