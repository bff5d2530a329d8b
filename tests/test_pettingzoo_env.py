"""The PettingZoo adapter (decnode/envs/pettingzoo.py) against the plain mpe2 envs it wraps.

mpe2's simple_speaker_listener_v4 has two agents with different spaces (speaker_0: Box(3,), Discrete(3); listener_0:
Box(11,), Discrete(5)); simple_spread_v3(N=3) is one homogeneous group. ToyEnv below is a small real ParallelEnv for
what mpe2 does not exercise: action masks in infos, no state(), a non-zero Discrete start, non-consecutive agents of
one kind, episodes that end at different steps, and an agent leaving mid-episode.
"""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch
from gymnasium.spaces import Box, Discrete
from mpe2 import simple_speaker_listener_v4
from pettingzoo import ParallelEnv

from decnode.envs.pettingzoo import PettingZooEnv, PettingZooSpec, describe, load
from decnode.registry import ConfigError

SL = "mpe2.simple_speaker_listener_v4:parallel_env"
SPREAD = "mpe2.simple_spread_v3:parallel_env"
TOY = "test_pettingzoo_env:ToyEnv"  # this module: pytest puts tests/ on sys.path


class ToyEnv(ParallelEnv):
    """Agents a_0, b_0, a_1 (the a's share spaces but are not consecutive). a_0's action mask [1, t % 2, 1] comes
    in infos; b_0's Discrete starts at 1. All agents terminate together with probability 0.1 per step (drawn from
    the reset seed's generator) or are truncated at max_steps; with leave_at, a_1 alone terminates at that step."""

    metadata = {"name": "toy_v0"}

    def __init__(self, max_steps: int = 40, leave_at: int | None = None):
        self.possible_agents = ["a_0", "b_0", "a_1"]
        self.max_steps, self.leave_at = max_steps, leave_at
        self._slices = {"a_0": slice(0, 2), "b_0": slice(2, 6), "a_1": slice(6, 8)}
        self._act = {"a_0": Discrete(3), "b_0": Discrete(2, start=1), "a_1": Discrete(3)}

    def observation_space(self, agent):
        return Box(-np.inf, np.inf, (self._slices[agent].stop - self._slices[agent].start,), np.float32)

    def action_space(self, agent):
        return self._act[agent]

    def reset(self, seed=None, options=None):
        self.rng = np.random.default_rng(seed)
        self.agents, self.steps, self.pos = list(self.possible_agents), 0, self.rng.normal(size=8)
        return self._observe(), self._infos()

    def step(self, actions):
        assert actions["b_0"] in (1, 2), actions  # the adapter adds Discrete.start
        self.steps += 1
        for n, a in actions.items():
            self.pos[self._slices[n]] += 0.1 * a
        self.pos += self.rng.normal(scale=0.1, size=8)
        obs, infos = self._observe(), self._infos()
        rew = {n: -float(np.abs(self.pos[self._slices[n]]).sum()) for n in self.agents}
        end = bool(self.rng.random() < 0.1)
        term = {n: end or (n == "a_1" and self.steps == self.leave_at) for n in self.agents}
        trunc = {n: self.steps >= self.max_steps for n in self.agents}
        self.agents = [n for n in self.agents if not (term[n] or trunc[n])]
        return obs, rew, term, trunc, infos

    def _observe(self):
        return {n: self.pos[self._slices[n]].astype(np.float32) for n in self.agents}

    def _infos(self):
        return {n: ({"action_mask": np.array([1, self.steps % 2, 1], np.int8)} if n == "a_0" else {})
                for n in self.agents}


def _random_actions(rng, env):
    return np.stack([rng.integers(0, k, env.n_envs) for k in env.agent_n_actions], axis=1)


def _assert_same_steps(x, y):
    for field in ("obs", "state", "avail", "reward", "done"):
        np.testing.assert_array_equal(getattr(x, field), getattr(y, field), err_msg=field)
    np.testing.assert_array_equal(x.info.get("episode_return"), y.info.get("episode_return"))  # nan == nan here


def test_describe():
    assert describe(SL, {}) == PettingZooSpec(names=("speaker_0", "listener_0"), groups=("speaker", "listener"),
                                              obs_dims=(3, 11), n_actions=(3, 5), state_dim=14)
    spread = describe(SPREAD, {"N": 3})
    assert spread.groups == ("agent",) * 3 and spread.obs_dims == (18,) * 3 and spread.n_actions == (5,) * 3
    assert spread.state_dim == 54
    # ToyEnv: the a's are not consecutive, so each is its own group under its full name; no state() -> concat obs.
    assert describe(TOY, {}) == PettingZooSpec(names=("a_0", "b_0", "a_1"), groups=("a_0", "b", "a_1"),
                                               obs_dims=(2, 4, 2), n_actions=(3, 2, 3), state_dim=8)
    env = PettingZooEnv(2, SL)
    assert (env.n_agents, env.obs_dim, env.n_actions, env.state_dim) == (2, 11, 5, 14)
    assert (env.agent_obs_dims, env.agent_n_actions, env.agent_groups) == ((3, 11), (3, 5), ("speaker", "listener"))


def test_batched_copies_equal_envs_stepped_alone():
    """B=3 adapter vs three plain mpe2 envs reset with the seeds the adapter's generators give, 60 steps of the
    same random actions (episodes of 25: two auto-resets)."""
    seed, B = 11, 3
    env = PettingZooEnv(B, SL)
    names = env.names
    plain = [simple_speaker_listener_v4.parallel_env() for _ in range(B)]
    seed_rngs = [np.random.default_rng([seed, b]) for b in range(B)]
    plain_obs = [p.reset(seed=int(g.integers(2**31)))[0] for p, g in zip(plain, seed_rngs)]

    def check(out):
        for b in range(B):
            np.testing.assert_array_equal(out.state[b], plain[b].state())
            for i, n in enumerate(names):
                d, k = env.agent_obs_dims[i], env.agent_n_actions[i]
                np.testing.assert_array_equal(out.obs[b, i, :d], plain_obs[b][n])
                assert not out.obs[b, i, d:].any()  # padding
                np.testing.assert_array_equal(out.avail[b, i], np.arange(env.n_actions) < k)

    check(env.reset(seed))
    act_rng, returns, n_done = np.random.default_rng(0), np.zeros(B), 0
    for _ in range(60):
        actions = _random_actions(act_rng, env)
        out = env.step(actions)
        assert out.reward.dtype == np.float32 and out.info["episode_return"].dtype == np.float64
        for b, p in enumerate(plain):
            o, r, term, trunc, _ = p.step({n: int(actions[b, i]) for i, n in enumerate(names)})
            rew = np.array([r[n] for n in names])
            np.testing.assert_array_equal(out.reward[b], rew.astype(np.float32))
            returns[b] += rew.mean()
            ended = all(term[n] or trunc[n] for n in names)
            assert out.done[b] == ended
            if ended:
                assert out.info["episode_return"][b] == returns[b]
                returns[b], n_done = 0.0, n_done + 1
                o = p.reset(seed=int(seed_rngs[b].integers(2**31)))[0]
            else:
                assert np.isnan(out.info["episode_return"][b])
            plain_obs[b] = o
        check(out)
    assert n_done == 2 * B


def test_first_env_plays_a_share_of_the_batch():
    whole, share = PettingZooEnv(3, SPREAD, {"N": 3}), PettingZooEnv(2, SPREAD, {"N": 3})
    x, y = whole.reset(5), share.reset(5, first_env=1)
    rng = np.random.default_rng(1)
    for _ in range(60):
        for f in ("obs", "state", "avail"):
            np.testing.assert_array_equal(getattr(x, f)[1:], getattr(y, f))
        actions = _random_actions(rng, whole)
        x, y = whole.step(actions), share.step(actions[1:])
        np.testing.assert_array_equal(x.reward[1:], y.reward)
        np.testing.assert_array_equal(x.done[1:], y.done)
        np.testing.assert_array_equal(x.info["episode_return"][1:], y.info["episode_return"])
    assert x.done.sum() == 0 and whole.t.tolist() == [10] * 3  # 60 = 2 x 25 + 10: two episodes went by


@pytest.mark.parametrize("target,kwargs,limit", [(SL, {}, 25), (TOY, {}, 15)])
def test_resume_through_pickle_mid_episode(target, kwargs, limit):
    env = PettingZooEnv(3, target, kwargs, episode_limit=limit)
    env.reset(3)
    rng = np.random.default_rng(2)
    for _ in range(37):
        env.step(_random_actions(rng, env))
    assert (env.t > 0).all()  # mid-episode everywhere
    snapshot = pickle.loads(pickle.dumps(env.get_state()))
    buf = io.BytesIO()
    torch.save(snapshot, buf)  # as the checkpoint stores it
    snapshot = torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    actions = [_random_actions(rng, env) for _ in range(30)]
    original = [env.step(a) for a in actions]
    assert any(s.done.any() for s in original)  # the 30 steps span an auto-reset

    resumed = PettingZooEnv(3, target, kwargs, episode_limit=limit)
    resumed.reset(99)  # a different history, overwritten by set_state
    resumed.step(_random_actions(rng, resumed))
    resumed.set_state(snapshot)
    for a, x in zip(actions, original):
        _assert_same_steps(resumed.step(a), x)

    with pytest.raises(ValueError, match="snapshot is of 3"):
        PettingZooEnv(2, target, kwargs).set_state(snapshot)
    snapshot["obs"][0, 0, 0] += 1.0  # as if the env had not replayed its episode the same way
    with pytest.raises(ValueError, match="cannot be resumed exactly"):
        resumed.set_state(snapshot)


def test_masks_padding_state_and_own_truncation():
    """ToyEnv: avail from infos' action_mask, padding, concatenated-obs state, Discrete.start, and episodes that end
    at different steps: by termination or by the adapter's episode_limit."""
    env = PettingZooEnv(2, TOY, {"max_steps": 40}, episode_limit=15)
    out = env.reset(4)
    lengths = []
    rng = np.random.default_rng(3)
    for _ in range(80):
        for b in range(2):
            np.testing.assert_array_equal(out.avail[b, 0], [True, env.t[b] % 2 == 1, True])  # a_0's mask
            np.testing.assert_array_equal(out.avail[b, 1], [True, True, False])  # b_0: 2 own actions
            np.testing.assert_array_equal(out.avail[b, 2], [True, True, True])
            unpadded = [out.obs[b, 0, :2], out.obs[b, 1], out.obs[b, 2, :2]]
            np.testing.assert_array_equal(out.state[b], np.concatenate(unpadded))
            assert not out.obs[b, [0, 2], 2:].any()
        before = env.t.copy()
        out = env.step(_random_actions(rng, env))
        lengths += [int(before[b]) + 1 for b in range(2) if out.done[b]]
        assert (env.t <= 14).all()
    assert 15 in lengths and min(lengths) < 15  # the adapter truncated some episodes, the env ended others


def test_agent_leaving_mid_episode_is_refused():
    env = PettingZooEnv(1, TOY, {"leave_at": 3})
    env.reset(0)
    env.step(np.zeros((1, 3), np.int64))
    with pytest.raises(ValueError, match=r"\['a_1'\].*agents that leave mid-episode are not supported") as e:
        for _ in range(2):
            env.step(np.zeros((1, 3), np.int64))
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="outside its"):  # b_0 has 2 actions; index 2 is padding
        env.step(np.array([[0, 2, 0]]))


@pytest.mark.parametrize("target,kwargs,says", [
    ("mpe2.simple_speaker_listener_v4:env", {}, "builds an AEC env"),
    ("no_such_module_xyz.sub:parallel_env", {}, "cannot import module 'no_such_module_xyz.sub'"),
    ("mpe2.simple_speaker_listener_v4:no_such_factory", {}, "has no attribute 'no_such_factory'"),
    (SL, {"continuous_actions": True}, "agent speaker_0's action space is Box"),
    ("mpe2.simple_speaker_listener_v4", {}, "expected pettingzoo:<module>:<factory>"),
    (SL, {"no_such_kwarg": 1}, "env.kwargs of pettingzoo:"),
])
def test_refusals_are_one_line(target, kwargs, says):
    with pytest.raises(ConfigError) as e:
        describe(target, kwargs)
    message = str(e.value)
    assert says in message and "\n" not in message and len(message) < 400
    assert f"pettingzoo:{target}" in message  # names what was tried
    if "AEC" in says or "Box" in says:
        assert "supported: PettingZoo parallel envs whose agents have Discrete actions" in message
    with pytest.raises(ConfigError):
        PettingZooEnv(1, target, kwargs)


def test_load_returns_the_factory():
    assert load(SL) is simple_speaker_listener_v4.parallel_env
