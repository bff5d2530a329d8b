"""Push-sum gossip (issue 27, τ = 0) over real processes: the mass is conserved every round on directed and
time-varying graphs, on a regular undirected graph a whole job equals DecPG, a directed graph DecPG refuses trains,
a resume is exact, and what push-sum cannot run is refused in one line."""

import numpy as np
import pytest
import torch

from decnode.comm.fabric import Fabric, open_fabric
from decnode.marl.push_sum import PushSum
from decnode.topology import GraphError, build_graph, check_graph
from multiproc import run_ranks
from test_reliability import decnode, metrics, models

N, DIM, ROUNDS, LR = 8, 11, 7, 0.1
MIXES = [t % 3 != 2 for t in range(ROUNDS)]  # every third step does not mix (algo.mix_every=iteration's steps)
# A directed graph whose in- and out-degrees differ (0 sends to 1 and 2; 1 to 2; …): w moves away from 1.
IRREGULAR = "0 -> 1\n0 -> 2\n1 -> 2\n2 -> 3\n3 -> 4\n4 -> 5\n5 -> 6\n6 -> 7\n7 -> 0\n3 -> 0\n"


def rows(n, seed, dtype):
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _push_worker(n: int, dtypes: list, specs: list[str]):
    """Each dtype and graph: ROUNDS push-sum steps from θ₀ with random gradients; per round this rank's x, w before
    and after, its gradients and the parameters z it acts with (one process group: spawning is the slow part)."""
    from decnode.comm.transport import world_from_env
    rank, world = world_from_env()
    out = {}
    with open_fabric(n, 0, timeout_s=60):
        for dtype, spec in [(dtype, spec) for dtype in dtypes for spec in specs]:
            fabric = Fabric(n, build_graph(spec, n).push_weights(), rank, world, timeout_s=60)
            mine = slice(fabric.agents.start, fabric.agents.stop)
            combiner = PushSum(fabric)
            params = rows(n, 0, dtype)[mine].clone()
            x, w = params.clone(), torch.ones(len(fabric.agents), dtype=dtype)
            seen = []
            for t in range(ROUNDS):
                grads = rows(n, 1 + t, dtype)[mine].clone()
                combiner.before_backward(params, MIXES[t])
                combiner.step(params, grads.clone(), LR, float("inf"))  # no clipping: the step is exactly −η g
                state = combiner.state_dict()
                seen.append({"x0": x, "w0": w, "g": grads, "x": state["x"], "w": state["w"], "z": params.clone()})
                x, w = state["x"], state["w"]
            out[(dtype, spec)] = seen
    return out


@pytest.fixture(scope="module")
def graph_file(tmp_path_factory):
    f = tmp_path_factory.mktemp("graphs") / "irregular.txt"
    f.write_text(IRREGULAR)
    return f"file:{f}"


@pytest.mark.parametrize("world", [1, 4, 8])  # 8, 2 and 1 agents per process
def test_the_mass_is_conserved_every_round(world, graph_file):
    specs, dtypes = ["exp", "exp1peer", graph_file], [torch.float32, torch.float64]
    results = run_ranks(_push_worker, world, N, dtypes, specs, timeout=240)
    for dtype, spec in [(dtype, spec) for dtype in dtypes for spec in specs]:
        tol = 1e-6 if dtype == torch.float32 else 1e-12
        graph, mixes = build_graph(spec, N).push_weights(), 0
        check_graph(graph, "column", "push_sum")
        for t in range(ROUNDS):
            got = {key: torch.cat([r[(dtype, spec)][t][key] for r in results]).to(torch.float64)
                   for key in ("x0", "w0", "g", "x", "w", "z")}
            if dtype == torch.float64:
                assert abs(float(got["w"].sum()) - N) <= 1e-9, (spec, t)
            else:
                assert abs(float(got["w"].sum()) - N) <= 1e-5, (spec, t)
            sgd = got["x0"].mean(0) - LR * got["g"].mean(0)  # SGD on the average
            assert float((got["x"].mean(0) - sgd).abs().max()) <= tol, (spec, world, t)
            A = torch.as_tensor(graph.matrix(mixes)) if MIXES[t] else torch.eye(N, dtype=torch.float64)
            assert float((got["x"] - (A @ got["x0"] - LR * got["g"])).abs().max()) <= tol, (spec, world, t)
            assert float((got["w"] - A @ got["w0"]).abs().max()) <= tol, (spec, world, t)
            assert float((got["z"] - got["x"] / got["w"].unsqueeze(1)).abs().max()) <= tol, (spec, world, t)
            mixes += MIXES[t]
    # not vacuous: on the irregular graph the weights leave 1 (on exp and exp1peer, regular, they stay 1)
    last = torch.cat([r[(torch.float64, graph_file)][-1]["w"] for r in results])
    assert float((last - 1).abs().max()) > 0.1


def test_push_weights_are_column_stochastic_and_decpgs_on_a_regular_undirected_graph(graph_file):
    for spec in ("exp", "exp1peer", graph_file, "random_regular"):
        graph = build_graph(spec, N, degree=3).push_weights()
        assert graph.column_stochastic
        for t in range(graph.period):
            A = graph.matrix(t)
            assert np.allclose(A.sum(axis=0), 1.0, atol=1e-12)
            assert np.array_equal(A != 0, build_graph(spec, N, degree=3).matrix(t) != 0)  # the same edges
    for spec in ("ring", "complete", "knn"):  # undirected and regular: the very matrix DecPG mixes with
        assert np.array_equal(build_graph(spec, N, k=2).push_weights().phases[0], build_graph(spec, N, k=2).phases[0])
    assert not build_graph(graph_file, N).push_weights().doubly_stochastic  # its rows do not sum to 1
    with pytest.raises(GraphError) as err:  # a row-stochastic irregular graph is not column-stochastic
        check_graph(build_graph(graph_file, N), "column", "push_sum")
    assert "push_sum needs column-stochastic weights" in str(err.value) and "\n" not in str(err.value)


# ---- whole jobs (decnode-run) ------------------------------------------------------------------------------------
TINY = ["--set", "env.n_agents=4", "--k", "2", "--set", "env.n_envs=2", "--set", "env.episode_length=8",
        "--set", "train.hidden=16", "--set", "eval.interval=0", "--set", "eval.episodes=2",
        "--set", "eval.test_episodes=2", "--set", "run.tensorboard=false", "--set", "run.checkpoint_interval=0",
        "--no-preflight"]


# (knn at k = 2 and n = 4 is the ring: one of the two is enough)
@pytest.mark.parametrize("topology,critic", [("ring", "central"), ("complete", "local")])
def test_on_a_regular_undirected_graph_push_sum_is_decpg(tmp_path, topology, critic):
    ends = {}
    for algo in ("decpg", "push_sum"):
        res = decnode("--nproc", "2", "--algo", algo, "--topology", topology, "--critic", critic, "--iterations", "3",
                      *TINY, "--out", tmp_path / algo, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        ends[algo] = models(tmp_path / algo)
    assert float((ends["decpg"]["actor_rows"] - ends["push_sum"]["actor_rows"]).abs().max()) <= 1e-6
    assert float((ends["decpg"]["critic"] - ends["push_sum"]["critic"]).abs().max()) <= 1e-6


@pytest.mark.parametrize("critic", ["local"])  # both push-sum combiners (actor's and critics'); central: above
def test_a_directed_graph_decpg_refuses_trains_with_push_sum_and_resumes_exactly(tmp_path, critic):
    f = tmp_path / "directed.txt"
    f.write_text("0 -> 1\n0 -> 2\n1 -> 2\n2 -> 3\n3 -> 0\n")
    common = ["--nproc", "2", "--topology", f"file:{f}", "--critic", critic, "--iterations", "4", *TINY]
    refused = decnode(*common, "--algo", "decpg", "--out", tmp_path / "decpg", timeout=120)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "--algo push_sum accepts a directed graph" in lines[0]
    whole = decnode(*common, "--algo", "push_sum", "--out", tmp_path / "whole", timeout=300)
    assert whole.returncode == 0, whole.stderr[-2000:]
    part = decnode(*common, "--algo", "push_sum", "--set", "run.stop_after=2", "--out", tmp_path / "part")
    assert part.returncode == 0, part.stderr[-2000:]
    state = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False)["agents"]
    w = state["combiner"]["w"]  # push-sum's weights are checkpoint rows: they moved, and kept their sum
    assert float((w - 1).abs().max()) > 0.05 and abs(float(w.sum()) - 4) <= 1e-5
    if critic == "local":
        assert abs(float(state["critic"]["combiner"]["w"].sum()) - 4) <= 1e-5
    resumed = decnode("--nproc", "2", "--resume", tmp_path / "part", timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert metrics(tmp_path / "part") == metrics(tmp_path / "whole")
    a, b = models(tmp_path / "whole"), models(tmp_path / "part")
    assert torch.isfinite(a["actor_rows"]).all()
    assert torch.equal(a["actor_rows"], b["actor_rows"]) and torch.equal(a["critic"], b["critic"])


@pytest.mark.parametrize("args,needle", [
    (["--set", "run.device=xla"], "run.device=xla does not run algo.name=push_sum (the CPU placement does)"),
    (["--set", "algo.weights=metropolis"], "push_sum sends equal shares 1/(out-degree+1) on the graph's edges"),
])
def test_what_push_sum_cannot_run_is_one_line(tmp_path, args, needle):
    res = decnode("--nproc", "2", "--algo", "push_sum", *TINY, *args, "--out", tmp_path / "r", timeout=120)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert lines[0].startswith("decnode-run: error: ") and needle in lines[0], lines[0]
    assert not (tmp_path / "r").exists()
