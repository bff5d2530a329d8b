"""The JAX peer of benchmarks/iteration.py runs, reports finite timings, and trains each agent's own weights."""

import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("jaxmarl")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import peer_jax  # noqa: E402


def test_measure_is_finite_and_shaped():
    r = peer_jax.measure(n=3, n_envs=4, iterations=2, warmup=0)
    assert r["n"] == 3 and r["weights"] == "per-agent" and r["iterations"] == 2 and len(r["seconds"]) == 2
    for k in ("seconds_per_iteration", "compile_seconds", "mean_return_first", "mean_return_last"):
        assert math.isfinite(r[k]), k
    assert r["seconds_per_iteration"] > 0 and r["mean_return_first"] < 0  # spread rewards are distances: < 0
    assert all(math.isfinite(v) for v in r["last_metrics"].values())


def test_per_agent_rows_start_equal_and_update_separately():
    env = peer_jax.make_env(3, 25)
    update, runner = peer_jax.build(env, 4, 25, 1, 16, "per-agent", 0)
    w0 = np.asarray(runner.actor["out"]["w"])
    assert w0.shape[0] == 3 and np.array_equal(w0[0], w0[1]) and np.array_equal(w0[0], w0[2])
    new, _ = jax.jit(update)(runner, 0.1)
    w1 = np.asarray(new.actor["out"]["w"])
    assert not np.allclose(w1, w0)  # the actor moved
    assert not np.allclose(w1[0] - w0[0], w1[1] - w0[1])  # each agent by its own gradient


def test_learning_curve_follows_decnodes_schedule_and_definitions(tmp_path):
    """--curve: one line per iteration from θ₀; lr falls linearly (decnode's linear_lr, min_lr at the last
    iteration); the first entropy is the initial policy's, near-uniform (out gain 0.01) so ≈ ln 5."""
    path = tmp_path / "c.jsonl"
    r = peer_jax.learn(str(path), n=3, n_envs=4, weights="shared", iterations=3, seed=0, lr=0.5, min_lr=0.1)
    lines = [__import__("json").loads(x) for x in path.read_text().splitlines()]
    assert [x["iteration"] for x in lines] == [1, 2, 3]
    assert [x["lr"] for x in lines] == pytest.approx([0.5, 0.3, 0.1])
    assert abs(lines[0]["entropy"] - math.log(5)) < 1e-3
    assert all(x["train_reward"] < 0 for x in lines) and r["final_train_reward"] == lines[-1]["train_reward"]


def test_peer_env_is_decnodes_env():
    """The learning comparison (benchmarks/learning_peer.py) credits any difference to the algorithms only if the
    two Simple Spreads agree: the same world and actions give the same observations and rewards (float32 JAX
    against float64 numpy; measured 1.3e-5 and 2.9e-6 at n=10 over 24 steps)."""
    from decnode.envs.spread import BatchedSpread

    n = 4
    env = peer_jax.make_env(n, 25)
    obs_d, state = env.reset(jax.random.PRNGKey(3))
    ours = BatchedSpread(1, n)
    ours.reset(0)
    out = ours.set_world(np.asarray(state.p_pos[:n])[None], np.zeros((1, n, 2)), np.asarray(state.p_pos[n:])[None])
    stack = lambda d: np.stack([np.asarray(d[a]) for a in env.agents])  # noqa: E731
    assert np.abs(stack(obs_d) - out.obs[0]).max() < 1e-6
    rng = np.random.default_rng(0)
    for t in range(24):
        a = rng.integers(0, 5, n)
        obs_d, state, rew, _, _ = env.step_env(jax.random.PRNGKey(t), state,
                                               {ag: jax.numpy.int32(a[i]) for i, ag in enumerate(env.agents)})
        out = ours.step(a[None])
        assert np.abs(stack(obs_d) - out.obs[0]).max() < 1e-4, t
        assert np.abs(np.array([float(rew[ag]) for ag in env.agents]) - out.reward[0]).max() < 1e-4, t
