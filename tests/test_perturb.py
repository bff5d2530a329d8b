"""PerturbedEnv (obs noise c * std, epsilon-random available actions) and RunningStd."""

from __future__ import annotations

import pickle

import numpy as np

from decnode.envs.base import Step
from decnode.envs.perturb import PerturbedEnv, RunningStd
from decnode.envs.spread import BatchedSpread


class FakeEnv:
    """Constant obs (feature f of agent i = 10 i + f); avail masks drawn per agent and step (>= 1 True).
    step() raises if any action is unavailable, so the wrapper is checked by the env itself."""

    state_dim, episode_limit = 3, 10

    def __init__(self, n_envs=8, n_agents=3, obs_dim=5, n_actions=6):
        self.n_envs, self.n_agents, self.obs_dim, self.n_actions = n_envs, n_agents, obs_dim, n_actions
        self.obs = np.broadcast_to(10.0 * np.arange(n_agents)[:, None] + np.arange(obs_dim),
                                   (n_envs, n_agents, obs_dim)).astype(np.float32)

    def reset(self, seed, first_env=0):
        self.g = np.random.default_rng([seed, first_env])
        return self._out()

    def step(self, actions):
        assert actions.shape == (self.n_envs, self.n_agents)
        if not np.take_along_axis(self.avail, actions[..., None], -1).all():
            raise ValueError("unavailable action executed")
        return self._out(np.zeros((self.n_envs, self.n_agents), np.float32), np.zeros(self.n_envs, bool))

    def _out(self, reward=None, done=None):
        B, N, K = self.n_envs, self.n_agents, self.n_actions
        self.avail = self.g.random((B, N, K)) < self.g.uniform(0.1, 1.0, (B, N, 1))  # varying density
        self.avail[np.arange(B), :, self.g.integers(0, K, B)] = True  # at least one per agent
        return Step(self.obs.copy(), np.ones((B, self.state_dim), np.float32), self.avail.copy(), reward, done, {})

    def get_state(self):
        return {"g": self.g.bit_generator.state, "avail": self.avail.copy()}

    def set_state(self, s):
        self.g = np.random.default_rng(0)
        self.g.bit_generator.state, self.avail = s["g"], s["avail"].copy()


def first_available(avail):
    """A fixed deterministic policy that is always legal."""
    return avail.argmax(axis=-1)


STD = np.array([0.0, 0.5, 1.0, 2.0, 3.0])


def test_obs_noise_scale_and_clean_state():
    env = PerturbedEnv(FakeEnv(n_envs=64, n_agents=4), STD, c=0.2, epsilon=0.0, seed=1)
    s = env.reset(0)
    deltas = []
    for _ in range(200):  # 200 * 64 * 4 = 51200 samples per feature: std known to ~0.3%
        deltas.append(s.obs.astype(np.float64) - env.env.obs)
        assert s.obs.dtype == np.float32 and s.obs.shape == (64, 4, 5)
        np.testing.assert_array_equal(s.state, 1.0)  # global state is never perturbed
        s = env.step(first_available(s.avail))
    d = np.concatenate(deltas).reshape(-1, 5)
    assert np.all(d[:, 0] == 0)  # a feature with std 0 gets no noise
    np.testing.assert_allclose(d[:, 1:].std(axis=0), 0.2 * STD[1:], rtol=0.02)
    assert np.all(np.abs(d[:, 1:].mean(axis=0)) < 4 * 0.2 * STD[1:] / np.sqrt(len(d)))


def test_zero_noise_c0_eps0():
    env = PerturbedEnv(FakeEnv(), STD, c=0.0, epsilon=0.0, seed=3)
    s = env.reset(5)
    for _ in range(50):
        np.testing.assert_array_equal(s.obs, env.env.obs)
        a = first_available(s.avail)
        s = env.step(a)
        np.testing.assert_array_equal(s.info["executed_actions"], a)
        assert not s.info["action_replaced"].any()


def test_epsilon_rate_and_uniform_replacement():
    """Replacements are counted directly (rate eps); actions actually CHANGE with probability
    eps * (1 - 1/n_avail) under a fixed policy, n_avail taken from each step's own mask."""
    eps = 0.2
    env = PerturbedEnv(FakeEnv(n_envs=32, n_agents=4), STD, c=0.0, epsilon=eps, seed=7)
    s = env.reset(1)
    n_rep = n_changed = 0
    p_changed, ranks = [], {3: [], 6: []}  # position of the replacement within the available set
    for _ in range(300):  # 300 * 128 = 38400 agent-steps
        a = first_available(s.avail)
        n_av = s.avail.sum(-1)
        avail = s.avail
        s = env.step(a)
        rep, ex = s.info["action_replaced"], s.info["executed_actions"]
        assert np.all(ex[~rep] == a[~rep])
        n_rep += rep.sum()
        n_changed += (ex != a).sum()
        p_changed.append(eps * (1 - 1 / n_av))
        rank = np.take_along_axis(np.cumsum(avail, -1), ex[..., None], -1)[..., 0] - 1
        for n in ranks:
            ranks[n].append(rank[rep & (n_av == n)])
    total = 300 * 128
    assert abs(n_rep - eps * total) < 4 * np.sqrt(total * eps * (1 - eps))
    p = np.concatenate(p_changed).ravel()
    assert abs(n_changed - p.sum()) < 4 * np.sqrt((p * (1 - p)).sum())
    for n, r in ranks.items():  # uniform over the n available actions
        counts = np.bincount(np.concatenate(r), minlength=n)
        assert len(counts) == n and counts.sum() > 300
        expected = counts.sum() / n
        assert np.all(np.abs(counts - expected) < 4.5 * np.sqrt(expected))


def test_unavailable_actions_never_chosen_eps1():
    env = PerturbedEnv(FakeEnv(n_envs=16, n_agents=5, n_actions=7), np.ones(5), c=0.1, epsilon=1.0, seed=2)
    s = env.reset(0)
    seen = np.zeros(7, int)
    for _ in range(300):
        avail = s.avail
        s = env.step(first_available(avail))  # FakeEnv.step raises on an unavailable action
        ex = s.info["executed_actions"]
        assert s.info["action_replaced"].all()
        assert np.take_along_axis(avail, ex[..., None], -1).all()
        seen += np.bincount(ex.ravel(), minlength=7)
    assert np.all(seen > 0)  # every action gets drawn somewhere


def test_running_std_matches_numpy_whole_and_in_chunks():
    g = np.random.default_rng(0)
    x = g.normal(3.0, [0.1, 1.0, 5.0, 0.0], (1000, 4))
    x[:, 3] = 0.7  # constant feature
    one = RunningStd(4)
    one.update(x.reshape(10, 25, 4, 4))  # every leading dim is a sample dim
    chunks = RunningStd(4)
    for c in np.array_split(x, [1, 7, 300, 301, 650]):
        chunks.update(c)
    chunks.update(x[:0])  # empty chunk is a no-op
    for rs in (one, chunks):
        assert rs.count == 1000
        np.testing.assert_allclose(rs.mean, x.mean(0), rtol=1e-12)
        np.testing.assert_allclose(rs.std[:3], x.std(0)[:3], rtol=1e-9)
        assert rs.std[3] == 0.0  # numpy says ~6e-15 here: rounding, which RunningStd reports as 0
    assert RunningStd(4).std.tolist() == [0.0] * 4  # no data yet
    restored = RunningStd(4)
    restored.load_state_dict(pickle.loads(pickle.dumps(chunks.state_dict())))
    np.testing.assert_array_equal(restored.std, chunks.std)
    assert all(isinstance(v, np.ndarray) for v in chunks.state_dict().values())


def test_get_set_state_round_trip():
    env = PerturbedEnv(FakeEnv(), STD, c=0.2, epsilon=0.3, seed=4)
    s = env.reset(2)
    for _ in range(5):
        s = env.step(first_available(s.avail))
    snap = pickle.loads(pickle.dumps(env.get_state()))
    a0 = first_available(s.avail)

    def run(a):
        out = []
        for _ in range(20):
            s = env.step(a)
            out.append((s.obs, s.info["executed_actions"]))
            a = first_available(s.avail)
        return out

    first = run(a0)
    env.env.reset(99), env.reset(123)  # scramble everything
    env.set_state(snap)
    for (o1, e1), (o2, e2) in zip(first, run(a0)):
        np.testing.assert_array_equal(o1, o2), np.testing.assert_array_equal(e1, e2)


def test_reset_reseeds_and_passes_kwargs():
    env = PerturbedEnv(FakeEnv(), STD, c=0.2, epsilon=0.2, seed=4)
    o1 = env.reset(3).obs
    env.step(first_available(env._avail))
    np.testing.assert_array_equal(env.reset(3).obs, o1)  # same reset seed -> same noise
    s = env.reset(3, first_env=8)
    assert not np.array_equal(s.obs, o1)  # other env share -> independent noise
    np.testing.assert_array_equal(s.avail, FakeEnv().reset(3, first_env=8).avail)  # kwarg reached the env
    assert (env.n_envs, env.n_agents, env.obs_dim, env.n_actions, env.state_dim) == (8, 3, 5, 6, 3)
    wrapped = PerturbedEnv(BatchedSpread(2, 3), np.ones(18), c=0.1, epsilon=0.1, seed=0)
    assert (wrapped.splittable, wrapped.has_win) == (BatchedSpread.splittable, BatchedSpread.has_win)


def test_wraps_batched_spread_end_to_end():
    B, N = 4, 3
    clean = BatchedSpread(B, N)
    rs = RunningStd(clean.obs_dim)
    s = clean.reset(0)
    g = np.random.default_rng(0)
    for _ in range(50):
        rs.update(s.obs)
        s = clean.step(g.integers(0, 5, (B, N)))
    assert np.all(rs.std[-2 * (N - 1):] == 0)  # silent comm slots never vary -> never perturbed
    env = PerturbedEnv(BatchedSpread(B, N), rs.std, c=0.2, epsilon=0.2, seed=0)
    assert (env.n_envs, env.n_agents, env.obs_dim, env.state_dim, env.n_actions, env.episode_limit) == \
        (B, N, 18, 54, 5, 25)
    s, c = env.reset(1), clean.reset(1)
    n_done = 0
    for _ in range(60):
        assert s.obs.shape == (B, N, 18) and s.obs.dtype == np.float32 and s.avail.shape == (B, N, 5)
        np.testing.assert_array_equal(s.state, c.state)  # the wrapped env runs exactly what it was sent
        noise = s.obs - c.obs
        assert np.all(noise[..., -2 * (N - 1):] == 0) and np.all(np.abs(noise) <= 6 * 0.2 * rs.std + 1e-6)
        s = env.step(g.integers(0, 5, (B, N)))
        c = clean.step(s.info["executed_actions"])
        np.testing.assert_array_equal(s.reward, c.reward), np.testing.assert_array_equal(s.done, c.done)
        n_done += s.done.sum()
        assert np.array_equal(np.isfinite(s.info["episode_return"]), s.done)  # info passed through
    assert n_done == 2 * B


def test_noise_depends_only_on_global_env_index():
    """Episode e's noise and action replacements are the same played as env e of a batch of 8 or as env
    e − 4 of a batch of 4 reset with first_env=4 (how evaluation splits episodes over ranks)."""
    B, N = 8, 3
    std = np.ones(6 * N)
    whole = PerturbedEnv(BatchedSpread(B, N), std, c=0.5, epsilon=0.5, seed=11)
    half = PerturbedEnv(BatchedSpread(4, N), std, c=0.5, epsilon=0.5, seed=11)
    one = PerturbedEnv(BatchedSpread(1, N), std, c=0.5, epsilon=0.5, seed=11)
    sw, sh, so = whole.reset(5), half.reset(5, first_env=4), one.reset(5, first_env=6)
    g = np.random.default_rng(0)
    for t in range(60):  # crosses two auto-resets (episode_limit 25)
        np.testing.assert_array_equal(sh.obs, sw.obs[4:])
        np.testing.assert_array_equal(so.obs, sw.obs[6:7])
        if t:
            for key in ("executed_actions", "action_replaced"):
                np.testing.assert_array_equal(sh.info[key], sw.info[key][4:])
                np.testing.assert_array_equal(so.info[key], sw.info[key][6:7])
            np.testing.assert_array_equal(sh.reward, sw.reward[4:])
        a = g.integers(0, 5, (B, N))
        sw, sh, so = whole.step(a), half.step(a[4:]), one.step(a[6:7])
    assert sw.info["action_replaced"].any() and not np.array_equal(sw.obs[:4], sw.obs[4:])
    # a different wrapper seed or reset seed gives other noise for the same env
    other = PerturbedEnv(BatchedSpread(4, N), std, c=0.5, epsilon=0.5, seed=12)
    assert not np.array_equal(other.reset(5, first_env=4).obs, half.reset(5, first_env=4).obs)
    assert not np.array_equal(half.reset(6, first_env=4).obs[..., :4], half.reset(5, first_env=4).obs[..., :4])
