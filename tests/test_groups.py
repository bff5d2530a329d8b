"""Agent groups (issue 29): algo.groups and the env's own groups, a graph per group, a network shape per group, PS
averaging within each group — in one process and over real processes, which must agree."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from decnode import config, groups
from decnode.extensions import env_groups, job_graph
from decnode.marl.teams import make_teams
from decnode.nn.grouped import GroupShape, GroupedNet, actor_net, group_seed, width
from decnode.nn.models import MASKED_LOGIT, RecurrentNet, flatten_parameters
from decnode.registry import ConfigError
from decnode.topology import build_graph

ROOT = Path(__file__).resolve().parent.parent
# (a group's parameters are views strided by the block's row width, as every actor's are: nn/models.py says why)
pytestmark = pytest.mark.filterwarnings("ignore:grad and param do not obey the gradient layout contract")


def test_the_env_s_names_make_consecutive_groups_and_algo_groups_regroups_them():
    g = groups.resolve("env", 5, ("stalker", "stalker", "zealot", "zealot", "zealot"))
    assert [(x.name, x.agents) for x in g.groups] == [("stalker", range(0, 2)), ("zealot", range(2, 5))]
    assert g.index() == [0, 0, 1, 1, 1] and g.local(range(1, 3)) == [(0, slice(0, 1)), (1, slice(1, 2))]
    assert groups.resolve("all", 5, ("a", "b", "b", "b", "b")).single
    assert groups.resolve("env", 3, None).single  # an env without groups: one
    assert [len(x.agents) for x in groups.resolve("agent", 3, None).groups] == [1, 1, 1]
    g = groups.resolve({"left": [0, 1], "right": [3, 2]}, 4, None)
    assert g.names == ["left", "right"] and g.groups[1].agents == range(2, 4)


@pytest.mark.parametrize("spec, names, message", [
    ("env", ("a", "b", "a"), "puts agent 2 in group 'a' after other groups"),
    ("some", None, "algo.groups must be env | all | agent or a mapping"),
    ({"x": [0, 1]}, None, "algo.groups leaves agent 2 in no group"),
    ({"x": [0, 1], "y": [1, 2]}, None, "puts agent 1 in both 'x' and 'y'"),
    ({"x": [0, 2], "y": [1]}, None, "algo.groups.x must be consecutive agent ids, got [0, 2]"),
    ({"x": [0, 1, 2, 3]}, None, "names agent 3, but the job has 3 agents"),
    ({"x": []}, None, "algo.groups.x must be a non-empty list of agent ids"),
    ({"x": [0, True]}, None, "must be a non-empty list of agent ids"),
])
def test_bad_groups_are_refused_in_one_line(spec, names, message):
    with pytest.raises(ConfigError, match=None) as err:
        groups.resolve(spec, 3, names)
    assert message in str(err.value) and "\n" not in str(err.value)


def _cfg(*sets, procs=1):
    return config.resolve(config.load(None, list(sets)), procs)


def test_each_group_gossips_on_its_own_graph_and_the_gap_is_the_smallest_group_s():
    cfg = _cfg("env.n_agents=7", "algo.groups={a: [0, 1, 2], b: [3, 4, 5, 6]}", "algo.k=2")
    graph = job_graph(cfg)
    ring3, ring4 = build_graph("knn", 3, k=2), build_graph("knn", 4, k=2)
    assert np.array_equal(graph.phases[0][:3, :3], ring3.phases[0]) and np.array_equal(graph.phases[0][3:, 3:],
                                                                                      ring4.phases[0])
    assert not graph.phases[0][:3, 3:].any() and not graph.phases[0][3:, :3].any()
    assert graph.gaps() == [min(ring3.gaps()[0], ring4.gaps()[0])] and graph.diameter() == 2
    # exp1peer has period 2 at n=3 and 4: the job's period is their least common multiple
    cfg = _cfg("env.n_agents=7", "algo.groups={a: [0, 1, 2], b: [3, 4, 5, 6]}", "algo.topology=exp1peer")
    assert job_graph(cfg).period == 2
    with pytest.raises(ConfigError, match=r"group 'a' of 3: algo.k must be in \[0, 2\] for n=3 agents, got k=3"):
        _cfg("env.n_agents=7", "algo.groups={a: [0, 1, 2], b: [3, 4, 5, 6]}", "algo.k=3")
    singletons = _cfg("env.n_agents=3", "algo.groups=agent", "algo.k=0")
    assert env_groups(singletons).names == ["agent_0", "agent_1", "agent_2"] and job_graph(singletons).edgeless


def test_a_group_s_agents_must_share_a_space():
    g = groups.resolve("all", 2, None)
    with pytest.raises(ConfigError, match=r"one group \(algo.groups=all\) holds agents with different spaces "
                                          r"\(agent 0: observation 3, 3 actions; agent 1: observation 11, 5 actions\)"):
        make_teams(g, [(3, 3), (11, 5)], 16)
    teams = make_teams(groups.resolve("agent", 2, None), [(3, 3), (11, 5)], 16)
    assert teams.width == width(11, 5, 16) > width(3, 3, 16) and teams.grouped


def test_a_grouped_net_runs_each_group_s_own_net_on_its_own_inputs_and_pads_the_rest():
    torch.manual_seed(0)
    shapes = [GroupShape(0, slice(0, 2), 3, 3), GroupShape(1, slice(2, 3), 5, 4)]
    D = max(width(3, 3, 8), width(5, 4, 8))
    net, params, grads = actor_net(shapes, 3, 5, 4, 8, D, seed=7)
    assert isinstance(net, GroupedNet) and params.shape == (3, D) and group_seed(7, 0) == 7 != group_seed(7, 1)
    # the reference: each group's RecurrentNet alone, drawn from the same generator
    refs = []
    for s in shapes:
        gen = torch.Generator().manual_seed(group_seed(7, s.index))
        ref = RecurrentNet(s.rows.stop - s.rows.start, s.obs_dim, s.n_actions, 8, out_gain=0.01, generator=gen)
        refs.append((ref, *flatten_parameters(ref, s.rows.stop - s.rows.start)))
    for s, (ref, p, _) in zip(shapes, refs):
        assert torch.equal(params[s.rows, : p.shape[1]], p)
        assert not params[s.rows, p.shape[1]:].any()  # the tail of a smaller group's row stays zero
    x, h0, reset = torch.randn(3, 4, 2, 5), torch.zeros(3, 2, 8), torch.zeros(4, 2, dtype=torch.bool)
    out, _ = net(x, h0, reset)
    assert out.shape == (3, 4, 2, 4)
    for s, (ref, _, ref_grads) in zip(shapes, refs):
        want, _ = ref(x[s.rows, ..., : s.obs_dim], h0[s.rows], reset)
        assert torch.equal(out[s.rows, ..., : s.n_actions], want)
        assert (out[s.rows, ..., s.n_actions:] == MASKED_LOGIT).all()
        want.square().sum().backward()
    out.clamp(min=-1e3).square().sum().backward()  # (the padding's constant logits carry no gradient)
    for s, (_, p, ref_grads) in zip(shapes, refs):
        assert torch.allclose(grads[s.rows, : p.shape[1]], ref_grads, rtol=1e-5, atol=1e-7)
        assert not grads[s.rows, p.shape[1]:].any()


def run(tmp_path: Path, name: str, *args: str) -> dict:
    out = tmp_path / name
    res = subprocess.run([sys.executable, "-m", "decnode.run", "--iterations", "3", "--set", "env.n_envs=4",
                          "--set", "env.episode_length=10", "--set", "train.hidden=16", "--set", "eval.interval=0",
                          "--set", "eval.episodes=4", "--set", "eval.test_episodes=4", "--set", "run.tensorboard=false",
                          "--set", "train.lr=0.5", "--no-preflight", "--out", str(out), *args],
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    models = torch.load(out / "models.pt", weights_only=False)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {"rows": models["actor_rows"], "models": models, "lines": lines}


GROUPS = ["--set", "env.n_agents=4", "--set", "algo.groups={front: [0, 1], back: [2, 3]}"]


@pytest.mark.parametrize("algo", ["ps", "decpg"])
def test_groups_train_alike_in_one_process_and_over_real_processes(tmp_path, algo):
    """PS: one network per group, so rows agree within a group and differ across groups; DecPG (k=1): each pair
    gossips within its group. Two processes (one group each) and one process holding all four agree."""
    extra = ["--algo", algo, "--k", "1"]
    one = run(tmp_path, "one", "--nproc", "1", *GROUPS, *extra)
    two = run(tmp_path, "two", "--nproc", "2", *GROUPS, *extra)
    assert torch.allclose(one["rows"], two["rows"], rtol=0, atol=1e-6), (one["rows"] - two["rows"]).abs().max()
    rows = two["rows"]
    if algo == "ps":
        assert torch.equal(rows[0], rows[1]) and torch.equal(rows[2], rows[3]) and not torch.equal(rows[0], rows[2])
        assert all(v["update_variance"] == 0.0 for v in two["lines"][-1]["groups"].values())
    else:
        assert not torch.equal(rows[0], rows[1])
        assert set(two["lines"][-1]["groups"]) == {"front", "back"}
        assert two["lines"][-1]["consensus_distance"] > 0
    assert [g["name"] for g in two["models"]["groups"]] == ["front", "back"]


def test_a_homogeneous_env_is_one_group_and_keeps_the_plain_actor():
    """One group takes exactly the code path of a run before groups existed (plain RecurrentNet rows, every mean over
    all agents); a run of it was compared with the commit before groups: identical parameters and metrics."""
    from decnode.marl.actor import ActorBlock

    assert env_groups(_cfg("env.n_agents=4", "algo.k=2")).single
    assert env_groups(_cfg("env.name=smax:5m_vs_6m", "algo.k=2")).single
    assert env_groups(_cfg("env.name=smax:3s5z", "algo.k=2")).names == ["stalker", "zealot"]
    assert env_groups(_cfg("env.name=smax:3s5z", "algo.k=2", "algo.groups=all")).single
    teams = make_teams(groups.one_group(4), [(24, 5)] * 4, 16)
    assert not teams.grouped and teams.shapes(range(4)) is None
    actor = ActorBlock(range(4), 24, 5, 16, seed=1, shapes=teams.shapes(range(4)), width=teams.width)
    assert type(actor.net) is RecurrentNet and actor.params.shape == (4, width(24, 5, 16))


def test_the_alpha_beta_model_counts_a_sum_per_group_in_ps_s_all_reduce():
    """One all-reduce carries every group's sum (comm/api.py group_sums_start): G times the bytes. Measured against
    the simulated clock (decnode-netmodel compare, 4 processes, PS, 10 ms / 20 Mbit/s): simulated/predicted 0.995
    with two groups, 0.987 with one."""
    from decnode.net.model import predict_iteration_comm
    from decnode.net.profile import NetProfile
    from decnode.tools.netmodel import job_config

    bandwidth_only = NetProfile("bandwidth only", latency_s=0.0, bandwidth_bit_s=1e8)
    sets = ["env.n_agents=4", "train.ppo_epochs=3"]
    one = predict_iteration_comm(job_config(4, "ps", 0, None, None, sets), bandwidth_only, 4)
    two = predict_iteration_comm(job_config(4, "ps", 0, None, None, [*sets, "algo.groups={a: [0, 1], b: [2, 3]}"]),
                                 bandwidth_only, 4)
    assert two["combine"] == pytest.approx(2 * one["combine"]) and two["combine"] > 0
    assert two["step_exchange"] == pytest.approx(one["step_exchange"])
