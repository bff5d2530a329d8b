"""SMAX backend (decnode.envs.smax) and the real-SMAC adapter's fallback (decnode.envs.smac).

One jit-compiled 5m_vs_6m configuration (B=4) is shared by every env test (compiled functions are cached per
map and reward, and the episode limit is a traced argument), so the whole file compiles once (~20 s).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import types

import numpy as np
import pytest

from decnode.envs.smax import SMAC_EPISODE_LIMITS, SUPPORTED_MAPS, SmaxEnv, smac_reward

MAP = "5m_vs_6m"
B = 4
N, E = 5, 6
MARINE_HEALTH = 45.0
MAX_REWARD = E * 10 + 200 + E * MARINE_HEALTH  # SMAC's max_reward for 5m_vs_6m in SMAX health units
SCALE = 20.0 / MAX_REWARD
N_UNIT_STATE_FEATURES = 10  # SMAX world state: per unit [health frac, x, y, cooldown, 6 type bits]
N_OWN_FEATURES = 10  # last 10 obs entries: own [health frac, x, y, cooldown, 6 type bits]


# ---------------------------------------------------------------------------------------------------- reward
def test_reward_damage():
    max_h = np.full(E, MARINE_HEALTH)
    prev = np.full(E, MARINE_HEALTH)
    cur = prev.copy()
    cur[0] -= 9.0
    cur[3] -= 18.0
    assert smac_reward(prev, cur, max_h, False) == pytest.approx(27.0 * SCALE, abs=1e-9)
    assert smac_reward(prev, prev, max_h, False) == 0.0


def test_reward_kill_counts_remaining_health_plus_death_value():
    max_h = np.full(E, MARINE_HEALTH)
    prev = np.full(E, MARINE_HEALTH)
    prev[2] = 7.0
    cur = prev.copy()
    cur[2] = 0.0  # killed with 7 health left
    cur[4] = 40.0  # 5 damage to another enemy
    assert smac_reward(prev, cur, max_h, False) == pytest.approx((7.0 + 10.0 + 5.0) * SCALE, abs=1e-9)
    # an enemy already dead before the step is never counted again
    assert smac_reward(cur, cur, max_h, False) == 0.0


def test_reward_win_bonus_and_positive_only():
    max_h = np.full(E, MARINE_HEALTH)
    prev = np.zeros(E)
    prev[5] = 3.0
    cur = np.zeros(E)
    assert smac_reward(prev, cur, max_h, True) == pytest.approx((3.0 + 10.0 + 200.0) * SCALE, abs=1e-9)
    # reward_only_positive=True: SMAC takes |delta| (e.g. shield regeneration never gives negative reward)
    healed = np.full(E, MARINE_HEALTH)
    hurt = healed - 1.0
    assert smac_reward(hurt, healed, max_h, False) == pytest.approx(6.0 * SCALE, abs=1e-9)


def test_reward_full_episode_sums_to_20_and_batched():
    rng = np.random.default_rng(0)
    max_h = np.array([80.0] * 3 + [150.0] * 5)  # mixed unit types, e.g. hydralisks and zealots
    health = max_h.copy()
    total = 0.0
    steps = []
    while health.max() > 0:  # random damage until every enemy is dead; the last step wins
        new = np.maximum(health - rng.uniform(0, 40, size=health.shape) * (rng.random(health.shape) < 0.5), 0)
        won = new.max() <= 0
        steps.append((health, new, won))
        total += smac_reward(health, new, max_h, won)
        health = new
    assert total == pytest.approx(20.0, abs=1e-5)
    # the same steps as one batched call, in float32 (as the env computes it)
    prev, cur, won = (np.stack(x) for x in zip(*steps))
    batched = smac_reward(prev.astype(np.float32), cur.astype(np.float32), max_h.astype(np.float32), won)
    assert batched.shape == (len(steps),)
    assert batched.sum() == pytest.approx(20.0, abs=1e-5)
    assert (batched >= 0).all() and batched.max() <= 20.0


def test_reward_jax_inputs_match_numpy():
    import jax.numpy as jnp

    prev = np.array([[45.0, 10.0, 0.0], [3.0, 0.0, 0.0]], np.float32)
    cur = np.array([[40.0, 0.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    max_h = np.full(3, 45.0, np.float32)
    won = np.array([False, True])
    expected = smac_reward(prev, cur, max_h, won)
    got = smac_reward(jnp.asarray(prev), jnp.asarray(cur), jnp.asarray(max_h), jnp.asarray(won))
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------- env
def test_unknown_map_lists_supported_maps():
    with pytest.raises(ValueError) as e:
        SmaxEnv("3m", 2)
    for name in ("5m_vs_6m", "10m_vs_11m", "27m_vs_30m", "6h_vs_8z"):
        assert name in str(e.value)
    assert set(SUPPORTED_MAPS) == {"5m_vs_6m", "10m_vs_11m", "27m_vs_30m", "6h_vs_8z", "2s3z", "3s5z", "3s5z_vs_3s6z"}
    assert SMAC_EPISODE_LIMITS == {"5m_vs_6m": 70, "10m_vs_11m": 150, "27m_vs_30m": 180, "6h_vs_8z": 150,
                                   "2s3z": 120, "3s5z": 150, "3s5z_vs_3s6z": 170}  # SMAC's own limits


def random_actions(rng: np.random.Generator, avail: np.ndarray) -> np.ndarray:
    return np.argmax(rng.random(avail.shape) * avail, axis=-1).astype(np.int64)


def rollout(env: SmaxEnv, seed: int, n_steps: int, action_seed: int = 0, first=None):
    rng = np.random.default_rng(action_seed)
    step = env.reset(seed) if first is None else first
    steps = [step]
    for _ in range(n_steps):
        step = env.step(random_actions(rng, step.avail))
        steps.append(step)
    return steps


@pytest.fixture(scope="module")
def env():
    return SmaxEnv(MAP, B)


@pytest.fixture(scope="module")
def trajectory(env):
    return rollout(env, seed=0, n_steps=200)


def test_shapes_and_dtypes(env, trajectory):
    assert (env.n_envs, env.n_agents, env.n_actions) == (B, N, 5 + E)
    assert env.obs_dim == 13 * (N - 1) + 13 * E + 10
    assert env.state_dim == 12 * (N + E)
    assert env.episode_limit == 70
    first, step = trajectory[0], trajectory[1]
    assert first.reward is None and first.done is None
    for s in (first, step):
        assert s.obs.shape == (B, N, env.obs_dim) and s.obs.dtype == np.float32
        assert s.state.shape == (B, env.state_dim) and s.state.dtype == np.float32
        assert s.avail.shape == (B, N, env.n_actions) and s.avail.dtype == np.bool_
        assert s.info["alive"].shape == (B, N) and s.info["alive"].dtype == np.bool_
    assert step.reward.shape == (B, N) and step.reward.dtype == np.float32
    assert step.done.shape == (B,) and step.done.dtype == np.bool_
    assert step.info["episode_return"].shape == (B,)
    assert step.info["won"].shape == (B,) and step.info["won"].dtype == np.bool_


def test_masks_dead_allies_only_noop(env, trajectory):
    noop = np.zeros(env.n_actions, bool)
    noop[env.noop_action] = True
    n_dead = 0
    for s in trajectory:
        assert s.avail.any(-1).all(), "every agent must always have an available action"
        alive = s.info["alive"]
        own_health = s.obs[..., -N_OWN_FEATURES]
        np.testing.assert_array_equal(alive, own_health > 0)
        dead = ~alive
        n_dead += dead.sum()
        assert (s.avail[dead] == noop).all(), "a dead ally may only take the no-op"
        assert (s.obs[dead] == 0).all()
        assert s.avail[alive][:, env.noop_action].all()  # stop is always possible for the living
    assert n_dead > 0, "the random rollout should contain dead allies"


def test_team_reward_and_episode_returns(trajectory):
    running = np.zeros(B)
    n_done = 0
    for s in trajectory[1:]:
        assert (s.reward == s.reward[:, :1]).all(), "the same team reward goes to every agent"
        assert (s.reward >= 0).all()
        running += s.reward.mean(1)
        np.testing.assert_allclose(s.info["episode_return"][s.done], running[s.done], atol=1e-4)
        assert (s.info["episode_return"] <= 20.0 + 1e-4).all()
        n_done += s.done.sum()
        running[s.done] = 0.0
    assert n_done > 0


def test_reward_matches_healths_in_world_state(trajectory):
    """The env's reward equals smac_reward of the enemy healths read from consecutive world states."""
    unit_health = lambda s: s.state[:, : (N + E) * N_UNIT_STATE_FEATURES : N_UNIT_STATE_FEATURES] * MARINE_HEALTH
    checked = 0
    for prev, s in zip(trajectory[:-1], trajectory[1:]):
        expected = smac_reward(unit_health(prev)[:, N:], unit_health(s)[:, N:], np.full(E, MARINE_HEALTH), False)
        ok = ~s.done  # where done, the returned state already belongs to the next episode
        np.testing.assert_allclose(s.reward[ok, 0], expected[ok], atol=1e-4)
        checked += ok.sum()
    assert checked > 100


def test_auto_reset(env, trajectory):
    resets = 0
    for prev, s in zip(trajectory[:-1], trajectory[1:]):
        for b in np.flatnonzero(s.done):
            resets += 1
            # the returned observation is the first of a fresh episode: everyone alive at full health
            assert s.info["alive"][b].all()
            np.testing.assert_allclose(s.obs[b, :, -N_OWN_FEATURES], 1.0)
            np.testing.assert_allclose(s.state[b, : (N + E) * N_UNIT_STATE_FEATURES : N_UNIT_STATE_FEATURES], 1.0)
            assert 1 <= s.info["episode_length"][b] <= env.episode_limit
            assert not s.info["won"][b] or s.info["episode_return"][b] > 200 * SCALE
    assert resets >= B


def test_episode_limit_enforced(env, trajectory):
    for s in trajectory[1:]:
        assert (s.info["episode_length"] <= 70).all()
    # a short limit shares the compiled step (the limit is a traced argument): episodes end exactly there
    traces = env.n_traces
    short = SmaxEnv(MAP, B, episode_limit=6)
    steps = rollout(short, seed=1, n_steps=30)
    assert short.n_traces == traces, "changing the episode limit must not recompile"
    count = np.zeros(B, int)
    lengths = []
    for s in steps[1:]:
        count += 1
        assert (count <= 6).all()
        np.testing.assert_array_equal(s.info["episode_length"][s.done], count[s.done])
        lengths += list(count[s.done])
        count[s.done] = 0
    assert lengths and max(lengths) == 6


def _arrays(steps):
    return [
        np.concatenate([s.obs.ravel(), s.state.ravel(), s.avail.ravel()]
                       + ([] if s.reward is None else [s.reward.ravel(), s.done.ravel()]))
        for s in steps
    ]


def test_reproducible_with_same_seed(env):
    a = _arrays(rollout(env, seed=7, n_steps=40, action_seed=1))
    b = _arrays(rollout(env, seed=7, n_steps=40, action_seed=1))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = _arrays(rollout(env, seed=8, n_steps=40, action_seed=1))
    assert not np.array_equal(a[0], c[0]), "a different seed must give different episodes"
    # envs within a batch differ too (each derives its key from (seed, b))
    first = env.reset(7)
    assert not np.array_equal(first.state[0], first.state[1])


def test_first_env_offsets_the_episodes(env):
    """B envs reset at first_env f play envs f, f+1, … of a larger batch (evaluation split over ranks)."""
    whole, tail = env.reset(7), env.reset(7, first_env=2)
    np.testing.assert_array_equal(tail.state[:2], whole.state[2:])
    assert not np.array_equal(tail.state[2:], whole.state[2:])
    assert SmaxEnv.has_win and not SmaxEnv.splittable


def test_get_state_set_state_round_trip(env):
    start = rollout(env, seed=3, n_steps=10, action_seed=2)[-1]
    snapshot = pickle.loads(pickle.dumps(env.get_state()))
    assert all(isinstance(x, np.ndarray) for x in snapshot["leaves"])
    original = _arrays(rollout(env, seed=None, n_steps=40, action_seed=5, first=start))

    traces = env.n_traces
    env.set_state(snapshot)
    again = _arrays(rollout(env, seed=None, n_steps=40, action_seed=5, first=start))
    fresh = SmaxEnv(MAP, B)  # a new instance (e.g. after a restart) resumes the same way
    fresh.set_state(snapshot)
    resumed = _arrays(rollout(fresh, seed=None, n_steps=40, action_seed=5, first=start))
    assert env.n_traces == traces, "set_state must not trigger a recompile"
    for x, y, z in zip(original, again, resumed):
        np.testing.assert_array_equal(x, y)
        np.testing.assert_array_equal(x, z)
    with pytest.raises(ValueError):
        SmaxEnv(MAP, B, episode_limit=6).set_state(snapshot)


def test_rejects_unavailable_actions(env):
    s = env.reset(0)
    bad = np.full((B, N), env.noop_action)
    bad[0, 0] = env.n_actions - 1  # attack the last enemy: out of range at the start
    assert not s.avail[0, 0, -1]
    with pytest.raises(ValueError, match="not available"):
        env.step(bad)


def test_modules_import_without_jax():
    code = "import sys, decnode.envs.smax, decnode.envs.smac; assert 'jax' not in sys.modules, 'jax imported'"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root,
                   env={**os.environ, "PYTHONPATH": root})


# ---------------------------------------------------------------------------------------------------- real SMAC
def _assert_one_line_install_error(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg
    assert "pip install git+https://github.com/oxwhirl/smac.git" in msg
    assert "SC2PATH" in msg and "StarCraft II" in msg


def test_sc2env_one_line_runtime_error_here(monkeypatch):
    from decnode.envs.smac import Sc2Env, sc2_available

    monkeypatch.delenv("SC2PATH", raising=False)
    with pytest.raises(RuntimeError) as e:
        Sc2Env(MAP, 2)
    _assert_one_line_install_error(e)
    ok, why = sc2_available()
    assert not ok and "\n" not in why


def test_sc2env_with_pypi_smac3_installed(monkeypatch, tmp_path):
    """PyPI's `smac` (SMAC3) is importable but has no `smac.env`: still the one-line message."""
    from decnode.envs.smac import Sc2Env

    monkeypatch.setitem(sys.modules, "smac", types.ModuleType("smac"))  # not a package: no smac.env
    monkeypatch.delitem(sys.modules, "smac.env", raising=False)
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    with pytest.raises(RuntimeError) as e:
        Sc2Env(MAP, 2)
    _assert_one_line_install_error(e)
    assert "SMAC3" in str(e.value)


class _FakeStarCraft2Env:
    """Just enough of smac.env.StarCraft2Env: 2 agents, 1 enemy; every episode lasts 3 steps and is won."""

    def __init__(self, map_name, seed=None, **kwargs):
        self.seed, self.t, self.closed = seed, 0, False

    def get_env_info(self):
        return {"n_agents": 2, "obs_shape": 3, "state_shape": 4, "n_actions": 7, "episode_limit": 10}

    def reset(self):
        self.t = 0
        return self.get_obs(), self.get_state()

    def get_obs(self):
        return [np.full(3, self.t, np.float32)] * 2

    def get_state(self):
        return np.full(4, self.seed, np.float32)

    def get_avail_actions(self):
        return [[0, 1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0, 0]]  # agent 1 is dead

    def step(self, actions):
        self.t += 1
        return 1.0, self.t == 3, {"battle_won": self.t == 3}

    def close(self):
        self.closed = True


def test_sc2env_adapter_logic_with_stub(monkeypatch, tmp_path):
    from decnode.envs.smac import Sc2Env

    smac_mod, env_mod = types.ModuleType("smac"), types.ModuleType("smac.env")
    smac_mod.__path__ = []
    env_mod.StarCraft2Env = _FakeStarCraft2Env
    smac_mod.env = env_mod
    monkeypatch.setitem(sys.modules, "smac", smac_mod)
    monkeypatch.setitem(sys.modules, "smac.env", env_mod)
    monkeypatch.setenv("SC2PATH", str(tmp_path))
    env = Sc2Env("3m", 2)
    assert (env.n_agents, env.obs_dim, env.state_dim, env.n_actions, env.episode_limit) == (2, 3, 4, 7, 10)
    s = env.reset(seed=5)
    assert s.obs.shape == (2, 2, 3) and s.state.shape == (2, 4) and s.avail.dtype == np.bool_
    assert s.state[0, 0] != s.state[1, 0]  # per-env seeds from (seed, b)
    np.testing.assert_array_equal(s.info["alive"], [[True, False]] * 2)
    for t in range(3):
        s = env.step(np.ones((2, 2), np.int64))
    assert s.done.all() and s.info["won"].all()
    np.testing.assert_allclose(s.info["episode_return"], 3.0)
    assert (s.obs == 0).all()  # auto-reset: first observation of the next episode
    with pytest.raises(NotImplementedError):
        env.get_state()
    env.close()


def test_won_episode_returns_exactly_20():
    """End to end on 10m_vs_11m (5m_vs_6m is rarely won by a scripted policy): focus fire on the weakest
    enemy in range until an episode is won; killing every enemy and winning must return 20."""
    env = SmaxEnv("10m_vs_11m", 4)
    n, e = env.n_agents, env.n_enemies
    s = env.reset(0)
    for _ in range(300):
        enemy_health = s.state[:, n * N_UNIT_STATE_FEATURES:(n + e) * N_UNIT_STATE_FEATURES:N_UNIT_STATE_FEATURES]
        can_attack = s.avail[..., 5:]
        target = np.argmax(np.where(can_attack, -enemy_health[:, None, :], -np.inf), axis=-1)
        move_east = 1
        actions = np.where(can_attack.any(-1), 5 + target, move_east)
        s = env.step(np.where(s.info["alive"], actions, env.noop_action))
        won = s.done & s.info["won"]
        if won.any():
            np.testing.assert_allclose(s.info["episode_return"][won], 20.0, atol=1e-4)
            return
    pytest.fail("no episode won within 300 steps")


# ---------------------------------------------------------------------------------------------------- compile cache
_PLAY = """
import hashlib, numpy as np
from decnode.envs.smax import SmaxEnv
env = SmaxEnv("5m_vs_6m", 2)
step, digest = env.reset(seed=3), hashlib.sha256()
for t in range(5):
    digest.update(step.obs.tobytes())
    step = env.step(np.argmax(step.avail, axis=-1))
print(digest.hexdigest())
"""


def test_the_compilation_cache_is_kept_in_the_users_cache_and_replays_the_same_steps(tmp_path):
    """decnode's default (no JAX_COMPILATION_CACHE_DIR: the suite sets one, removed here): XDG_CACHE_HOME/decnode/jax
    fills on the first run, and a second run loads it and steps bit for bit alike. A cache directory that cannot be
    made leaves JAX without a cache (which then has nothing to warn about on every program) and says nothing."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}

    def python(code, cache_home):
        res = subprocess.run([sys.executable, "-c", code], env=dict(env, XDG_CACHE_HOME=str(cache_home)),
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        assert "Warning" not in res.stderr, res.stderr[-2000:]
        return res.stdout.split()[-1]

    first = python(_PLAY, tmp_path / "cache")
    entries = sorted(p.name for p in (tmp_path / "cache" / "decnode" / "jax").glob("*-cache"))
    assert any(e.startswith("jit_step_batch") for e in entries)
    assert any(e.startswith("jit_reset_batch") for e in entries)
    assert python(_PLAY, tmp_path / "cache") == first
    (tmp_path / "file").write_text("not a directory\n")
    configured = ("import jax; from decnode.envs.jaxcache import persistent_compile_cache; "
                  "persistent_compile_cache(jax); print(repr(jax.config.jax_compilation_cache_dir))")
    assert python(configured, tmp_path / "file") == "None"
    assert python(configured, tmp_path / "cache") == repr(str(tmp_path / "cache" / "decnode" / "jax"))
