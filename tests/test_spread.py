"""BatchedSpread must reproduce mpe2.simple_spread_v3 (discrete, local_ratio=0.5, max_cycles=25).

Rewards are compared after casting mpe2's python floats to float32, the dtype base.py prescribes
(float32 rounding of a reward around -20 alone is ~1e-6, so comparing float32 to float64 at 1e-6
absolute would test the cast, not the env). In practice every comparison below is bit-exact.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from mpe2 import simple_spread_v3

from decnode.envs.mpe2_ref import Mpe2Spread
from decnode.envs.spread import BatchedSpread

ATOL = 1e-6


def _names(n):
    return [f"agent_{i}" for i in range(n)]


def _world(envs):
    ws = [e.unwrapped.world for e in envs]
    pos = np.array([[a.state.p_pos for a in w.agents] for w in ws])
    vel = np.array([[a.state.p_vel for a in w.agents] for w in ws])
    lm = np.array([[l.state.p_pos for l in w.landmarks] for w in ws])
    return pos, vel, lm


def _mpe_obs(envs, n):
    return np.array([[e.unwrapped.observe(a) for a in _names(n)] for e in envs])


@pytest.mark.parametrize("n_agents", [3, 10])
def test_matches_mpe2_step_by_step(n_agents):
    """1000 env-steps (4 envs x 10 episodes x 25) against raw mpe2, obs + rewards at every step."""
    N, B, episodes = n_agents, 4, 10
    envs = [simple_spread_v3.parallel_env(N=N, local_ratio=0.5, max_cycles=25, continuous_actions=False)
            for _ in range(B)]
    # Never auto-reset here, so the post-step obs of the final step can be compared too; the
    # auto-reset path is checked against Mpe2Spread below.
    ours = BatchedSpread(B, N, local_ratio=0.5, max_cycles=10**9)
    ours.reset(seed=0)
    rng = np.random.default_rng(123)
    collisions = 0
    for ep in range(episodes):
        for b, e in enumerate(envs):
            e.reset(seed=1000 * ep + b)
            if ep % 3 == 2:  # crowded start with velocities: strong, overlapping contact forces
                for a in e.unwrapped.world.agents:
                    a.state.p_pos = rng.uniform(-0.25, 0.25, 2)
                    a.state.p_vel = rng.uniform(-1, 1, 2)
        step = ours.set_world(*_world(envs))  # the two samplers differ: copy mpe2's start
        np.testing.assert_allclose(step.obs, _mpe_obs(envs, N), rtol=0, atol=ATOL)
        for t in range(25):
            act = rng.integers(0, 5, (B, N))
            rew = np.zeros((B, N))
            for b, e in enumerate(envs):
                obs_b, r_b, term, trunc, _ = e.step(dict(zip(_names(N), act[b].tolist())))
                rew[b] = [r_b[a] for a in _names(N)]
                np.testing.assert_allclose(
                    np.stack([obs_b[a] for a in _names(N)]), _mpe_obs([e], N)[0], rtol=0, atol=0)
                assert all(trunc.values()) == (t == 24) and not any(term.values())
            step = ours.step(act)
            np.testing.assert_allclose(step.obs, _mpe_obs(envs, N), rtol=0, atol=ATOL)
            np.testing.assert_allclose(step.state, step.obs.reshape(B, -1), rtol=0, atol=0)
            np.testing.assert_allclose(step.reward, rew.astype(np.float32), rtol=0, atol=ATOL)
            np.testing.assert_allclose(ours.pos, _world(envs)[0], rtol=0, atol=1e-9)
            collisions += int((rew != rew.max(axis=1, keepdims=True)).sum())  # someone got a local penalty
    assert collisions > 0, "the collision penalty was never exercised"


@pytest.mark.parametrize("n_agents", [3, 10])
def test_same_as_reference_backend_through_auto_reset(n_agents):
    """Same seed -> Mpe2Spread and BatchedSpread draw identical worlds (also on auto-reset)."""
    B, N = 2, n_agents
    ref, ours = Mpe2Spread(B, N), BatchedSpread(B, N)
    s_ref, s_ours = ref.reset(seed=5), ours.reset(seed=5)
    np.testing.assert_array_equal(s_ours.obs, s_ref.obs)
    np.testing.assert_array_equal(s_ours.state, s_ref.state)
    rng = np.random.default_rng(0)
    for t in range(3 * 25):
        act = rng.integers(0, 5, (B, N))
        a, r = ours.step(act), ref.step(act)
        np.testing.assert_allclose(a.obs, r.obs, rtol=0, atol=ATOL)
        np.testing.assert_allclose(a.state, r.state, rtol=0, atol=ATOL)
        np.testing.assert_allclose(a.reward, r.reward, rtol=0, atol=ATOL)
        np.testing.assert_array_equal(a.done, r.done)
        np.testing.assert_allclose(a.info["episode_return"], r.info["episode_return"], rtol=0, atol=1e-9)


def test_action_encoding_and_collision_reward():
    """0 none, 1 -x, 2 +x, 3 -y, 4 +y with force 5; collision penalty excludes self."""
    env = BatchedSpread(5, 3)
    env.reset(seed=0)
    far = np.array([[-50.0, 0.0], [0.0, 50.0], [50.0, 0.0]])  # far apart: contact force underflows to 0
    env.set_world(np.repeat(far[None], 5, 0), np.zeros((5, 3, 2)), np.zeros((5, 3, 2)))
    env.step(np.repeat(np.arange(5)[:, None], 3, axis=1))  # env k: every agent takes action k
    expected = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]]) * 5.0 * 0.1
    np.testing.assert_array_equal(env.vel, np.repeat(expected[:, None], 3, axis=1))
    np.testing.assert_array_equal(env.pos, np.repeat(far[None], 5, 0))  # position moves with OLD velocity
    # Agents 0 and 1 overlap (distance 0.2 < 0.15 + 0.15), agent 2 is alone.
    env = BatchedSpread(1, 3)
    env.reset(seed=0)
    pos = np.array([[[0.0, 0.0], [0.2, 0.0], [5.0, 5.0]]])
    env.set_world(pos, np.zeros((1, 3, 2)), pos.copy())  # landmarks on the agents: global part 0
    r = env.step(np.zeros((1, 3), dtype=np.int64)).reward
    # velocities were 0, so positions (= landmarks) are unchanged and the global part is exactly 0
    np.testing.assert_array_equal(r[0], [-0.5, -0.5, 0.0])
    assert env.vel[0, 0, 0] < 0 < env.vel[0, 1, 0]  # the soft contact force pushes the pair apart
    assert (env.vel[0, 2] == 0).all()  # far away the contact term underflows to exactly 0


@pytest.mark.parametrize("cls", [BatchedSpread, Mpe2Spread])
def test_shapes_dtypes_auto_reset_and_episode_return(cls):
    B, N = 3, 3
    env = cls(B, N)
    assert (env.obs_dim, env.state_dim, env.n_actions, env.episode_limit) == (18, 54, 5, 25)
    s = env.reset(seed=1)
    assert s.obs.shape == (B, N, 18) and s.obs.dtype == np.float32
    assert s.state.shape == (B, 54) and s.state.dtype == np.float32
    assert s.avail.shape == (B, N, 5) and s.avail.dtype == bool and s.avail.all()
    assert s.reward is None and s.done is None
    rng, hand = np.random.default_rng(0), np.zeros(B)
    for t in range(1, 61):
        prev = s
        s = env.step(rng.integers(0, 5, (B, N)))
        assert s.reward.shape == (B, N) and s.reward.dtype == np.float32
        assert s.done.shape == (B,) and s.done.dtype == bool
        assert s.obs.dtype == np.float32 and s.state.shape == (B, 54) and s.avail.all()
        hand += s.reward.astype(np.float64).mean(axis=1)
        ret = s.info["episode_return"]
        assert ret.shape == (B,)
        if t % 25 == 0:
            assert s.done.all()
            np.testing.assert_allclose(ret, hand, rtol=0, atol=1e-4)  # hand sum uses the f32 rewards
            hand[:] = 0.0
            assert (s.obs[..., 0:4] != prev.obs[..., 0:4]).any()
            assert (s.obs[..., 0:2] == 0).all()  # fresh episode: zero velocity
            assert (np.abs(s.obs[..., 2:4]) <= 1).all()
        else:
            assert not s.done.any() and np.isnan(ret).all()


def test_seeding_is_per_env_and_deterministic():
    def run(B, seed):
        env = BatchedSpread(B, 4)
        out = [env.reset(seed).obs]
        rng = np.random.default_rng(9)
        for _ in range(30):
            out.append(env.step(rng.integers(0, 5, (B, 4))).obs)
        return np.stack(out)
    a, b = run(4, 3), run(4, 3)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, run(4, 4))
    # env b's worlds depend on (seed, b) only, not on how many envs run (step 0 and the reset at 25)
    small = run(2, 3)
    np.testing.assert_array_equal(small[0], a[0][:2])
    np.testing.assert_array_equal(small[25], a[25][:2])


@pytest.mark.parametrize("cls", [BatchedSpread, Mpe2Spread])
def test_get_set_state_round_trip(cls):
    B, N = 2, 3
    env = cls(B, N)
    env.reset(seed=11)
    rng = np.random.default_rng(1)
    for _ in range(10):
        env.step(rng.integers(0, 5, (B, N)))
    snap = pickle.loads(pickle.dumps(env.get_state()))
    actions = rng.integers(0, 5, (40, B, N))  # crosses an auto-reset: generators must be restored
    first = [env.step(a) for a in actions]
    env.set_state(snap)
    second = [env.step(a) for a in actions]
    for x, y in zip(first, second):
        np.testing.assert_array_equal(x.obs, y.obs)
        np.testing.assert_array_equal(x.reward, y.reward)
        np.testing.assert_array_equal(x.done, y.done)
        np.testing.assert_array_equal(x.info["episode_return"], y.info["episode_return"])
    assert sum(x.done.all() for x in first) == 2  # steps 25 and 50 of the run


def test_initial_state_distribution_matches_mpe2():
    N = 3
    # Exact: mpe2 with env b's generator draws the very same world (agents first, then landmarks).
    ours = BatchedSpread(4, N)
    ours.reset(seed=42)
    envs = [simple_spread_v3.parallel_env(N=N) for _ in range(4)]
    for b, e in enumerate(envs):
        e.unwrapped.np_random = np.random.default_rng([42, b])
        e.reset()
    for got, want in zip((ours.pos, ours.vel, ours.lm), _world(envs)):
        np.testing.assert_array_equal(got, want)
    # Statistical: U(-1, 1) per coordinate for agents and landmarks, zero velocity.
    big = BatchedSpread(3000, N)
    big.reset(seed=0)
    e = envs[0]
    mpe_pos, mpe_lm = [], []
    for s in range(300):  # mpe2's own integer seeding
        e.reset(seed=s)
        p, _, l = _world([e])
        mpe_pos.append(p), mpe_lm.append(l)
    for ours_x, mpe_x in ((big.pos, np.concatenate(mpe_pos)), (big.lm, np.concatenate(mpe_lm))):
        for x in (ours_x, mpe_x):
            assert x.min() >= -1 and x.max() < 1
            assert abs(x.mean()) < 0.05 and abs(x.var() - 1 / 3) < 0.03
            assert x.min() < -0.95 and x.max() > 0.95
    assert (big.vel == 0).all()


def test_first_env_offsets_the_episodes_in_both_backends():
    """B envs reset at first_env f play envs f, f+1, … of a larger batch (evaluation split over ranks)."""
    whole = BatchedSpread(5, 3).reset(seed=9).obs
    for cls in (BatchedSpread, Mpe2Spread):
        np.testing.assert_array_equal(cls(2, 3).reset(seed=9, first_env=3).obs, whole[3:])
