"""Issue 22: documented options and commands that no test ran, each run through its real command (real processes
over gloo on 127.0.0.1), asserting what the option promises. The training runs are tiny and trained once per
module, on first use; the tests that compare two of them share them."""

import json
import math
import re
import shutil
import struct
import sys

import numpy as np
import pytest
import torch
import yaml
from test_cli import run as command
from test_reliability import decnode, metrics, models

from decnode.nn.models import RecurrentNet
from decnode.net.profile import load_profile
from decnode.net.model import predict_iteration_comm
from decnode.tools.netmodel import job_config

# 3 iterations (smoothing over 3 points needs them), each one 5-step episode on 2 envs
TINY = ["--iterations", "3", "--set", "env.episode_length=5", "--set", "env.n_envs=2", "--set", "train.hidden=16",
        "--set", "eval.episodes=2", "--set", "eval.test_episodes=2", "--set", "eval.interval=0",
        "--set", "run.checkpoint_interval=0", "--no-preflight"]
NO_TB = ["--set", "run.tensorboard=false"]
TWO = ["--nproc", "2", "--k", "1", *TINY]  # one agent per process
# Two agents in one process (two row threads on two cores), compared bit for bit: a run's last bits must not
# depend on the host's load (they did, until each row thread set its own intra-op count: actor.row_pool).
ONE = ["--nproc", "1", "--set", "env.n_agents=2", "--k", "1", *TINY, *NO_TB]
LINK_DOWN = "faults=[{kind: link_down, link: [0, 1], iteration: 2, seconds: 5}]"
RUNS = {
    "base": [*TWO, "--verbose"],  # TensorBoard on (the default) and the launcher's logs shown
    "collective": [*TWO, *NO_TB, "--set", "run.exchange=collective"],
    "link_down": [*TWO, *NO_TB, "--net", "datacenter", "--set", LINK_DOWN],
    "mix_iteration": [*TWO, *NO_TB, "--set", "algo.mix_every=iteration"],
    # a larger step makes the entropy bonus's effect on the policy visible within 3 iterations
    "ps": [*ONE, "--algo", "ps", "--set", "train.lr=0.5", "--set", "train.min_lr=0.5"],
    "ps_entropy": [*ONE, "--algo", "ps_entropy", "--set", "train.lr=0.5", "--set", "train.min_lr=0.5"],
    "agent_id": [*ONE, "--critic", "local", "--set", "env.state_agent_id=true"],
    "agent_id_mpe2": [*ONE, "--critic", "local", "--set", "env.state_agent_id=true", "--set", "env.backend=mpe2"],
}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """trained(name) -> (run directory, finished process) of RUNS[name], trained on first use."""
    root, done = tmp_path_factory.mktemp("options"), {}

    def get(name):
        if name not in done:
            res = decnode(*RUNS[name], "--out", root / name, timeout=180)
            assert res.returncode == 0, (name, res.stderr[-2000:])
            done[name] = (root / name, res)
        return done[name]
    return get


def tool(module: str, *args, timeout: float = 180):
    res = command([sys.executable, "-m", f"decnode.{module}", *map(str, args)], timeout=timeout)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def ranks(run_dir) -> list[dict]:
    return json.loads((run_dir / "timing.json").read_text())["ranks"]


def same_models(a, b) -> bool:
    a, b = models(a), models(b)
    return torch.equal(a["actor_rows"], b["actor_rows"]) and torch.equal(a["critic"], b["critic"])


# ---- decnode-netmodel ------------------------------------------------------------------------------------------
SETS = ["env.episode_length=5", "env.n_envs=2", "train.hidden=16"]


def test_netmodel_predict_prints_the_models_prediction():
    # wan has jitter: the model's expected maximum draws from a fixed generator, so the numbers are reproducible
    res = tool("tools.netmodel", "predict", "--nproc", 3, "--algo", "decpg", "--k", 2, "--net", "wan",
               "--overlap-s", 0.005, *(x for s in SETS for x in ("--set", s)))
    want = predict_iteration_comm(job_config(3, "decpg", 2, None, None, SETS), load_profile("wan"), 3, 0.005)
    said = {k: float(v) for k, v in re.findall(r"(step_exchange|reward_scatter|combine|stats) ([\d.]+)", res.stdout)}
    said["total"] = float(re.search(r": ([\d.]+) ms per iteration", res.stdout)[1])
    said["combine_raw"] = float(re.search(r"combine before overlap ([\d.]+) ms", res.stdout)[1])
    megabytes = float(re.search(r"gossip ([\d.]+) MB per iteration", res.stdout)[1])  # printed with 3 decimals
    assert megabytes == pytest.approx(want.pop("gossip_bytes") / 1e6, abs=6e-4), res.stdout
    assert said.keys() == want.keys(), res.stdout
    for key, seconds in want.items():  # printed in ms with 2 decimals
        assert said[key] == pytest.approx(1e3 * seconds, abs=0.006), (key, res.stdout)
    assert 0 < said["combine"] < said["combine_raw"]  # the overlap was taken off each gossip round


def test_netmodel_compare_puts_a_real_jobs_simulated_clock_beside_the_prediction(tmp_path):
    profile = tmp_path / "slow.yaml"  # 10 ms, 20 Mbit/s: communication dominates this tiny job
    profile.write_text("preset: ethernet\nlatency_s: 0.01\nbandwidth_bit_s: 20000000\n")
    sets = [*SETS, "train.ppo_epochs=2"]
    res = tool("tools.netmodel", "compare", "--nproc", 2, "--algo", "decpg", "--k", 1, "--iterations", 2,
               "--net", profile, *(x for s in sets for x in ("--set", s)), timeout=300)
    m = re.search(r"predicted\s+([\d.]+) ms\s+simulated\s+([\d.]+) ms\s+simulated/predicted ([\d.]+)\s+"
                  r"host-measured \(loopback, oversubscribed\)\s+([\d.]+) ms", res.stdout)
    assert m, res.stdout
    predicted, simulated, ratio, host = map(float, m.groups())
    # The command measures the compute a gossip round hides behind: its prediction lies between hiding nothing
    # and hiding every round.
    cfg, p = job_config(2, "decpg", 1, None, None, sets), load_profile(str(profile))
    most, least = (1e3 * predict_iteration_comm(cfg, p, 2, hide)["total"] for hide in (0.0, 1e9))
    assert least - 0.01 <= predicted <= most + 0.01, (least, predicted, most)
    assert ratio == pytest.approx(simulated / predicted, abs=2e-3)
    assert ratio == pytest.approx(1.0, abs=0.2), res.stdout  # tests/test_netmodel.py: within 0.15 on 3 processes
    assert host > 0


def test_netmodel_sweep_draws_a_column_per_latency_and_says_where_decpg_wins(tmp_path):
    out = tmp_path / "bandwidth.png"
    res = tool("tools.netmodel", "sweep", "--latency-s", 0.0001, 0.002, 0.02, "--compute-s", 0.2, "--out", out)
    head = out.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", head[16:24]) == (3 * 6 * 110, 7 * 110)  # figsize (6 per α, 7) inches at 110 dpi
    lines = [line for line in res.stdout.splitlines() if line.startswith("α = ")]
    assert [line.split(":")[0] for line in lines] == [f"α = {a} ms, compute 0.200 s/iteration"
                                                       for a in ("0.1", "2", "20")]
    verdicts = [line.split(": ", 1)[1].split("; ") for line in lines]
    for per_k in verdicts:
        assert [re.match(r"decpg k=(\d) (beats|never beats) PS", v)[1] for v in per_k] == ["2", "4", "6", "8"], per_k
    # README: at α = 20 ms PS's ring all-reduce pays 18 latencies per epoch and a gossip round one, so k = 2 wins at
    # every bandwidth and every k at the fast end (the sweep's last point, 100 Gbit/s), whatever compute overlaps.
    wan = verdicts[2]
    assert wan[0].startswith("decpg k=2 beats PS at every bandwidth"), wan
    assert all(re.search(r"beats PS from [\d.e+]+ to 1e\+05 Mbit/s", v) for v in wan[1:]), wan


def test_netmodel_calibrate_writes_a_profile_that_net_accepts(tmp_path):
    out = tmp_path / "calibrated.yaml"
    res = tool("tools.netmodel", "calibrate", "--reps", 2, "--out", out, timeout=300)
    profile = load_profile(str(out))  # what decnode-run --net FILE reads
    assert profile.active and profile.name == "calibrated"
    assert math.isfinite(profile.latency_s) and profile.latency_s > 0
    assert math.isfinite(profile.bandwidth_bit_s) and profile.bandwidth_bit_s > 0
    said = re.search(r"α = ([\d.]+) µs, β = ([\d.]+) Gbit/s", res.stdout)
    assert 1e6 * profile.latency_s == pytest.approx(float(said[1]), abs=0.06)  # the fit it printed
    assert profile.bandwidth_bit_s / 1e9 == pytest.approx(float(said[2]), abs=0.006)


# ---- training options ----------------------------------------------------------------------------------------------
def test_ps_entropy_is_ps_with_the_entropy_bonus(trained):
    ps, ent = trained("ps")[0], trained("ps_entropy")[0]
    coef = lambda d: yaml.safe_load((d / "config.yaml").read_text())["train"]["entropy_coef"]  # noqa: E731
    assert (coef(ps), coef(ent)) == (0.0, 1e-3)  # configs/simple_spread.yaml's per_algo.ps_entropy
    a, b = metrics(ps), metrics(ent)
    # Iteration 1: the same θ₀ and rollout, so the same loss and entropy; only the gradient holds the bonus.
    assert [a[0][k] for k in ("train_reward", "policy_loss", "entropy")] == \
           [b[0][k] for k in ("train_reward", "policy_loss", "entropy")]
    assert a[0]["grad_norm"] != b[0]["grad_norm"]
    assert b[-1]["entropy"] > a[-1]["entropy"]  # the bonus holds the entropy up
    rows = models(ent)["actor_rows"]
    assert (rows == rows[0]).all()  # still PS: one shared network
    assert not same_models(ps, ent)


def test_tensorboard_events_hold_the_scalars_of_metrics_jsonl(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = trained("base")[0]
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    logged = metrics(run_dir)
    for key in ("train_reward", "policy_loss", "value_loss", "entropy", "lr", "grad_disagreement"):
        scalars = events.Scalars(key)
        assert [s.step for s in scalars] == [m["iteration"] for m in logged] == [1, 2, 3]
        assert [s.value for s in scalars] == pytest.approx([m[key] for m in logged], rel=1e-6)  # float32 there
    assert [(s.step, s.value) for s in events.Scalars("eval_reward")] == [(3, pytest.approx(logged[-1]["eval_reward"]))]
    assert not (trained("collective")[0] / "tb").exists()  # run.tensorboard=false writes none


def test_verbose_shows_the_launchers_logs_and_only_then(trained):
    loud, quiet = trained("base")[1].stderr, trained("collective")[1].stderr
    assert "Starting elastic_operator with launch configs" in loud, loud[-2000:]
    assert re.search(r"nproc_per_node\s+: 2", loud) and "Rendezvous complete for workers" in loud, loud[-2000:]
    assert "torch/distributed" not in quiet, quiet[-2000:]


def test_collective_exchange_trains_exactly_as_point_to_point(trained):
    p2p, coll = trained("base")[0], trained("collective")[0]
    # The option really changed the transport: scatter/gather instead of counted point-to-point messages.
    assert all(r["step_exchange"]["messages"] > 0 for r in ranks(p2p))
    assert all(r["step_exchange"]["messages"] == 0 and r["step_exchange"]["calls"] > 0 for r in ranks(coll))
    # Results never depend on the transport; what it put on the wire does (frames' headers, a scatter's payload).
    drop = lambda lines: [{k: v for k, v in d.items() if k != "bytes"} for d in lines]  # noqa: E731
    assert drop(metrics(p2p)) == drop(metrics(coll))
    assert all(d["bytes"]["streams"]["step_exchange"] > 0 for d in metrics(coll))
    assert same_models(p2p, coll)


def test_mix_every_iteration_gossips_once_per_iteration(trained):
    step, once = trained("base")[0], trained("mix_iteration")[0]
    # 2 ranks with one out-neighbour each: a message per rank and round; 3 iterations × 10 PPO epochs
    assert [r["gossip"]["messages"] for r in ranks(step)] == [30, 30]
    assert [r["gossip"]["messages"] for r in ranks(once)] == [3, 3]
    assert metrics(step)[0]["consensus_distance"] == metrics(once)[0]["consensus_distance"] == 0.0  # same θ₀
    assert not same_models(step, once)


def test_link_down_holds_its_messages_on_the_simulated_clock_and_changes_no_result(trained):
    run_dir, base = trained("link_down")[0], trained("base")[0]
    logged = metrics(run_dir)
    sim = [m.pop("sim") for m in logged]
    comm = [s["wire"] + s["waiting"] for s in sim]
    # Rank 0's link to rank 1 is down for 5 s of its clock from the start of iteration 2: its observations leave
    # when it is up again, and rank 0 waits for the actions that answer them.
    assert sim[1]["seconds"] >= 5.0 and comm[1] > 4.5, sim  # (less the compute before the first send)
    assert comm[0] < 1.0 and comm[2] < 1.0, sim  # down in iteration 2 only; 10 µs, 25 Gbit/s otherwise
    assert logged == metrics(base) and same_models(run_dir, base)  # the network changes time, never results


def test_mpe2_backend_trains_exactly_like_its_batched_twin(trained):
    batched, mpe2 = trained("agent_id")[0], trained("agent_id_mpe2")[0]
    env = lambda d: torch.load(d / "checkpoint.pt", weights_only=False)["coordinator"]["rollout"]["env"]  # noqa: E731
    assert len(env(mpe2)["worlds"]) == 2 and "worlds" not in env(batched)  # two real mpe2 envs were stepped
    # The README's "exact twin": the same states, rewards and so the same run, bit for bit (local critics: the
    # global states too).
    assert metrics(batched) == metrics(mpe2) and same_models(batched, mpe2)
    evaluation = lambda d: json.loads((d / "eval.json").read_text())["modes"]  # noqa: E731
    assert evaluation(batched) == evaluation(mpe2)


def test_state_agent_id_appends_a_one_hot_id_to_each_local_critics_state(trained):
    saved = models(trained("agent_id")[0])
    n, obs_dim = 2, saved["obs_dim"]
    assert saved["state_dim"] == n * obs_dim + n  # Simple Spread's state is every agent's observation, + the id
    width = sum(p[0].numel() for p in RecurrentNet(1, n * obs_dim + n, 1, 16).parameters())
    assert saved["critic"].shape == (n, width)


def test_native_smax_reward_is_smaxs_own(tmp_path):
    """Same seed, so the same first rollout; the reward only changes what it pays. Per unit of enemy health SMAC's
    reward pays 20 / max_reward = 20 / 530 on 5m_vs_6m and SMAX's 1 / (6 × 45), 10.2× less (kills and a win add
    more to SMAC's), and SMAX's episode return is at most 2 (all health, plus 1 for a win)."""
    common = ["--nproc", 1, "--config", "configs/smac_5m_vs_6m.yaml", "--agents-per-process", 5, "--iterations", 1,
              "--set", "env.episode_length=70", "--set", "env.n_envs=2", "--set", "train.hidden=16",
              "--set", "train.ppo_epochs=1", "--set", "eval.episodes=1", "--set", "eval.test_episodes=1",
              *NO_TB, "--no-preflight"]
    # JAX compiles the env for ~15 s in each: the two run side by side
    procs = {r: decnode(*common, "--set", f"env.reward={r}", "--out", tmp_path / r, wait=False)
             for r in ("smac", "native")}
    try:
        for reward, proc in procs.items():
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, (reward, err[-2000:])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    smac, native = (metrics(tmp_path / r)[0]["train_reward"] for r in ("smac", "native"))
    assert 0 < native <= 2, native  # some damage was dealt (with none both pay 0 and this proves nothing)
    assert smac >= 9.9 * native, (smac, native)


# ---- analysis commands ---------------------------------------------------------------------------------------------
def test_eval_episodes_sets_the_episodes_played(trained, tmp_path):
    out = tmp_path / "eval.json"
    tool("tools.evalmodes", trained("ps")[0], "--mode", "average", "--episodes", 5, "--test-episodes", 3, "--out", out)
    result = json.loads(out.read_text())
    assert result["episodes"] == {"train": 5, "test": 3}  # the run's own config says 2 and 2
    entry = result["modes"]["average"]
    assert (entry["train"]["episodes"], entry["test"]["episodes"]) == (5, 3)


def test_landscape_span_sets_the_grids_extent(trained, tmp_path):
    run_dir = tmp_path / "run"  # the landscape writes into the run directory: a copy
    shutil.copytree(trained("ps")[0], run_dir)
    tool("tools.landscape", run_dir, "--grid", 3, "--span", 0.25, "--episodes", 1)
    data = np.load(run_dir / "landscape.npz")
    assert list(data["alphas"]) == list(data["betas"]) == [-0.25, 0.0, 0.25] and float(data["span"]) == 0.25
    assert data["loss"][0, 0] != data["loss"][1, 1]  # the corners are away from θ̄


def test_plot_smooth_averages_every_per_iteration_curve(trained, tmp_path):
    figures = {}
    for w in (1, 3):
        tool("tools.plots", trained("ps")[0], "--out", tmp_path / f"w{w}", "--smooth", w)
        figures[w] = {p.name: p.read_bytes() for p in (tmp_path / f"w{w}").glob("*.png")}
    # Entropy and the noise metrics have a point per iteration, 3 ≥ W: drawn smoothed.
    assert figures[1]["entropy.png"] != figures[3]["entropy.png"]
    assert figures[1]["noise.png"] != figures[3]["noise.png"]
    # The eval reward has one point (< W, left as logged) and timing bars are no curve: the same bytes, which also
    # shows that the figures are deterministic, so the differences above are the smoothing's.
    assert figures[1]["reward.png"] == figures[3]["reward.png"]
    assert figures[1]["timing.png"] == figures[3]["timing.png"]
