"""Reference backend: B real `mpe2.simple_spread_v3` parallel envs behind the BatchedEnv interface.

Slow (pure-Python physics, one env at a time) but it *is* mpe2; use it to check BatchedSpread or
when the original implementation is wanted.

Seeding: gymnasium's `reset(seed=int)` only takes one non-negative int, so instead of hashing
(seed, b) we give env b the generator `np.random.default_rng([seed, first_env + b])` directly (mpe2 keeps it in
`raw_env.np_random`; gymnasium builds the same PCG64(SeedSequence(seed)) for an int seed) and
reset with seed=None. Every later auto-reset draws from that same generator, exactly as mpe2 does,
so Mpe2Spread and BatchedSpread produce identical trajectories for the same seed and actions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from decnode.envs.base import Step


class Mpe2Spread:
    n_actions = 5
    splittable = False  # the slow reference (pygame, pure-Python physics): evaluated on rank 0 only
    has_win = False

    def __init__(self, n_envs: int, n_agents: int, local_ratio: float = 0.5, max_cycles: int = 25):
        from mpe2 import simple_spread_v3  # imported lazily: pulls in pygame

        self.n_envs, self.n_agents = n_envs, n_agents
        self.local_ratio, self.max_cycles, self.episode_limit = local_ratio, max_cycles, max_cycles
        self.envs = [
            simple_spread_v3.parallel_env(
                N=n_agents, local_ratio=local_ratio, max_cycles=max_cycles, continuous_actions=False
            )
            for _ in range(n_envs)
        ]
        self.names = [f"agent_{i}" for i in range(n_agents)]
        self.obs_dim = int(self.envs[0].observation_space(self.names[0]).shape[0])
        self.state_dim = n_agents * self.obs_dim
        self.ep_ret = np.zeros(n_envs)

    def reset(self, seed: int, first_env: int = 0) -> Step:
        obs = []
        for b, env in enumerate(self.envs):
            env.unwrapped.np_random = np.random.default_rng([seed, first_env + b])
            obs.append(self._stack(env.reset()[0]))
        self.ep_ret[:] = 0.0
        return self._out(obs)

    def step(self, actions: np.ndarray) -> Step:
        B, N = self.n_envs, self.n_agents
        actions = np.asarray(actions)
        assert actions.shape == (B, N), actions.shape
        obs, reward = [], np.zeros((B, N))
        done, ep_return = np.zeros(B, dtype=bool), np.full(B, np.nan)
        for b, env in enumerate(self.envs):
            o, r, term, trunc, _ = env.step({n: int(actions[b, i]) for i, n in enumerate(self.names)})
            reward[b] = [r[n] for n in self.names]
            self.ep_ret[b] += reward[b].mean()
            if any(term.values()) or any(trunc.values()):
                done[b], ep_return[b], self.ep_ret[b] = True, self.ep_ret[b], 0.0
                o = env.reset()[0]  # seed=None: continue env b's own generator
            obs.append(self._stack(o))
        return self._out(obs, reward.astype(np.float32), done, {"episode_return": ep_return})

    def get_state(self) -> dict[str, Any]:
        """Snapshot entity states, step counters and generators. Between our steps every env is at
        the start of a cycle with no dead agents (we auto-reset on done), so nothing else in the
        AEC bookkeeping carries information forward."""
        worlds = []
        for env in self.envs:
            raw = env.unwrapped
            worlds.append({
                "agents": [(a.state.p_pos.copy(), a.state.p_vel.copy(), a.state.c.copy()) for a in raw.world.agents],
                "landmarks": [(l.state.p_pos.copy(), l.state.p_vel.copy()) for l in raw.world.landmarks],
                "steps": raw.steps, "rng": raw.np_random.bit_generator.state,
            })
        return {"worlds": worlds, "ep_ret": self.ep_ret.copy()}

    def set_state(self, state: dict[str, Any]) -> None:
        if len(state["worlds"]) != self.n_envs:
            raise ValueError("snapshot is from a different number of envs")
        for env, w in zip(self.envs, state["worlds"]):
            raw = env.unwrapped
            if raw.agents != raw.possible_agents:  # defensive: only if an env was left mid-death
                env.reset()
            for a, (p, v, c) in zip(raw.world.agents, w["agents"]):
                a.state.p_pos, a.state.p_vel, a.state.c = p.copy(), v.copy(), c.copy()
            for l, (p, v) in zip(raw.world.landmarks, w["landmarks"]):
                l.state.p_pos, l.state.p_vel = p.copy(), v.copy()
            raw.steps = w["steps"]
            rng = np.random.Generator(np.random.PCG64(0))
            rng.bit_generator.state = w["rng"]
            raw.np_random = rng
        self.ep_ret = state["ep_ret"].copy()

    def _stack(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.stack([obs[n] for n in self.names]).astype(np.float32)

    def _out(self, obs: list[np.ndarray], reward=None, done=None, info=None) -> Step:
        o = np.stack(obs)
        avail = np.ones((self.n_envs, self.n_agents, self.n_actions), dtype=bool)
        return Step(o, o.reshape(self.n_envs, -1).copy(), avail, reward, done, info or {})
