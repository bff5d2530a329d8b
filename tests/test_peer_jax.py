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
    update, runner = peer_jax.build(env, 4, 25, 1, 16, "per-agent", 0.1, 0)
    w0 = np.asarray(runner.actor["out"]["w"])
    assert w0.shape[0] == 3 and np.array_equal(w0[0], w0[1]) and np.array_equal(w0[0], w0[2])
    new, _ = jax.jit(update)(runner)
    w1 = np.asarray(new.actor["out"]["w"])
    assert not np.allclose(w1, w0)  # the actor moved
    assert not np.allclose(w1[0] - w0[0], w1[1] - w0[1])  # each agent by its own gradient
