"""Batched numpy MPE Simple Spread, reproducing `mpe2.simple_spread_v3` (discrete actions) exactly.

Every formula below copies mpe2 (core.World.step, simple_env.SimpleEnv._set_action /
_execute_world_step, simple_spread.Scenario) operation for operation, in float64 and in the same
floating-point order, so states match mpe2 bit for bit, not just to a tolerance:
  * action a -> u: 0 none, 1 -x, 2 +x, 3 -y, 4 +y; u *= 5.0 (sensitivity, agent.accel is None).
  * force_i = u_i + sum_{j != i} 100 * (p_i - p_j) / d_ij * logaddexp(0, -(d_ij - 0.3)/1e-3) * 1e-3,
    for agent pairs only (landmarks have collide=False); the soft contact term is applied at ANY
    distance, it only underflows to 0 far apart. mpe2 accumulates j = 0..N-1 in order; so do we.
  * p += v * 0.1;  v = v * 0.75 + force * 0.1  (mass 1, damping 0.25, no max_speed, no noise).
  * reward_i = (1 - lr) * global + lr * local_i, with global = -sum_l min_a |p_a - l| and
    local_i = -#{j != i : |p_i - p_j| < 0.3} (self excluded), both evaluated AFTER the move.
  * obs_i = [v_i, p_i, l - p_i for all l, p_j - p_i for j != i, zeros(2(N-1)) (silent comm)],
    computed in float64 and cast to float32; state = concatenated obs (mpe2 `state()`).
  * reset: agents then landmarks ~ U(-1, 1)^2 drawn in that order from the env's generator,
    velocities zero (mpe2 Scenario.reset_world).
Reward outputs are float32 (base.py); mpe2 returns python floats, so they agree after the cast.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from decnode.envs.base import Step

_DT, _DAMPING, _CONTACT_FORCE, _CONTACT_MARGIN = 0.1, 0.25, 1e2, 1e-3
_AGENT_SIZE, _SENSITIVITY = 0.15, 5.0
# Discrete action -> unit direction, then scaled by sensitivity exactly like _set_action does.
_ACTION_U = np.array([[0, 0], [-1, 0], [1, 0], [0, -1], [0, 1]], dtype=np.float64) * _SENSITIVITY


class BatchedSpread:
    """B independent Simple Spread worlds stepped together; see base.BatchedEnv for the contract.

    info["episode_return"] is a float64 [B] array on every step: the finished episode's
    sum_t mean_i r_t^i (mean over the float64 rewards) where done, nan elsewhere.
    """

    n_actions = 5
    splittable = True  # numpy only: a copy per rank costs nothing
    has_win = False

    def __init__(self, n_envs: int, n_agents: int, local_ratio: float = 0.5, max_cycles: int = 25):
        assert 0.0 <= local_ratio <= 1.0 and n_agents >= 2 and max_cycles >= 1
        self.n_envs, self.n_agents = B, N = n_envs, n_agents
        self.local_ratio, self.max_cycles, self.episode_limit = local_ratio, max_cycles, max_cycles
        self.obs_dim = 6 * N  # 2 vel + 2 pos + 2N landmarks + 2(N-1) others + 2(N-1) comm
        self.state_dim = N * self.obs_dim
        self.pos = np.zeros((B, N, 2))
        self.vel = np.zeros((B, N, 2))
        self.lm = np.zeros((B, N, 2))
        self.t = 0  # all envs share the clock: fixed-length episodes started together
        self.ep_ret = np.zeros(B)
        self.rngs: list[np.random.Generator] = []
        self._dist_min = _AGENT_SIZE + _AGENT_SIZE  # mpe2 adds the two sizes; keep its rounding

    # ----------------------------------------------------------------------------- public API
    def reset(self, seed: int, first_env: int = 0) -> Step:
        """Env b draws from default_rng([seed, first_env + b]): a share of a larger batch played elsewhere
        (evaluation split over ranks) sees the same episodes as the whole batch in one place."""
        self.rngs = [np.random.default_rng([seed, first_env + b]) for b in range(self.n_envs)]
        self._reset_worlds()
        return self._step_out()

    def step(self, actions: np.ndarray) -> Step:
        actions = np.asarray(actions)
        assert actions.shape == (self.n_envs, self.n_agents), actions.shape
        if actions.min() < 0 or actions.max() >= self.n_actions:  # a negative index would wrap silently
            raise ValueError(f"actions must be in [0, {self.n_actions}), got {actions.min()}..{actions.max()}")
        force = self._forces(_ACTION_U[actions])
        # Integration order of World.integrate_state: position uses the OLD velocity.
        self.pos = self.pos + self.vel * _DT
        self.vel = self.vel * (1 - _DAMPING) + force * _DT
        self._geometry()
        reward = self._rewards()
        self.ep_ret += reward.mean(axis=1)
        self.t += 1
        done = np.full(self.n_envs, self.t >= self.max_cycles)
        ep_return = np.full(self.n_envs, np.nan)
        if self.t >= self.max_cycles:  # truncation hits every env at once; auto-reset them all
            ep_return[:] = self.ep_ret
            self._reset_worlds()
        return self._step_out(reward.astype(np.float32), done, {"episode_return": ep_return})

    def set_world(self, agent_pos: np.ndarray, agent_vel: np.ndarray, landmark_pos: np.ndarray) -> Step:
        """Load explicit world states ([B, N, 2] each, e.g. copied from mpe2); the clock, returns and
        generators are left alone. Returns the observation of the loaded state."""
        shape = (self.n_envs, self.n_agents, 2)
        for a in (agent_pos, agent_vel, landmark_pos):
            assert np.shape(a) == shape, (np.shape(a), shape)
        self.pos, self.vel, self.lm = (np.array(a, dtype=np.float64) for a in (agent_pos, agent_vel, landmark_pos))
        self._geometry()
        return self._step_out()

    def get_state(self) -> dict[str, Any]:
        return {
            "pos": self.pos.copy(), "vel": self.vel.copy(), "lm": self.lm.copy(), "t": self.t,
            "ep_ret": self.ep_ret.copy(), "rngs": [g.bit_generator.state for g in self.rngs],
        }

    def set_state(self, state: dict[str, Any]) -> None:
        assert state["pos"].shape == self.pos.shape, "snapshot is from a differently sized env"
        self.pos, self.vel, self.lm = state["pos"].copy(), state["vel"].copy(), state["lm"].copy()
        self.t, self.ep_ret = int(state["t"]), state["ep_ret"].copy()
        self.rngs = []
        for s in state["rngs"]:
            g = np.random.Generator(np.random.PCG64(0))  # seed irrelevant: state overwritten next
            g.bit_generator.state = s
            self.rngs.append(g)
        self._geometry()

    # ---------------------------------------------------------------------------- internals
    def _reset_worlds(self) -> None:
        assert self.rngs, "call reset(seed) first"
        N = self.n_agents
        for b, g in enumerate(self.rngs):  # B small draws every max_cycles steps: cheap
            # One call of shape (2N, 2) yields the same stream as mpe2's 2N calls of size 2.
            x = g.uniform(-1, +1, (2 * N, 2))
            self.pos[b], self.lm[b] = x[:N], x[N:]
        self.vel = np.zeros_like(self.pos)
        self.t = 0
        self.ep_ret = np.zeros(self.n_envs)
        self._geometry()

    def _geometry(self) -> None:
        """Pairwise offsets of the current positions, shared by rewards, obs and the next forces."""
        N = self.n_agents
        # Partner-major [N_j, B, N_i, 2] (delta = p_i - p_j): the force sum over j is then an
        # outer-axis reduction, which numpy adds sequentially j = 0..N-1 exactly as mpe2's pair
        # loop does. p_j - p_i is -delta exactly (IEEE negation), so one array serves both signs.
        self._delta = self.pos[None] - self.pos.transpose(1, 0, 2)[:, :, None, :]
        self._dist = np.sqrt(np.square(self._delta[..., 0]) + np.square(self._delta[..., 1]))
        # Self-distance -> inf: makes the self force exactly 0 (0/inf * 0) and removes self from
        # the collision count, which is what mpe2's `entity_a is entity_b` / `a != agent` do.
        self._dist[np.arange(N), :, np.arange(N)] = np.inf
        self._lrel = self.lm[:, None, :, :] - self.pos[:, :, None, :]  # [B, N_i, N_l, 2]: l - p_i

    def _forces(self, u: np.ndarray) -> np.ndarray:
        k, dist = _CONTACT_MARGIN, self._dist
        pen = np.logaddexp(0, -(dist - self._dist_min) / k) * k
        f = _CONTACT_FORCE * self._delta / dist[..., None] * pen[..., None]  # same op order as mpe2
        return np.concatenate([u[None], f]).sum(axis=0)  # u_i + f_i0 + f_i1 + ... in mpe2's order

    def _rewards(self) -> np.ndarray:
        lr = self._lrel
        min_d = np.sqrt(np.square(lr[..., 0]) + np.square(lr[..., 1])).min(axis=1)  # [B, N_l]
        # mpe2: rew = 0; rew -= m_l for l in order == -(running sum); cumsum is strictly sequential.
        glob = -np.cumsum(min_d, axis=1)[:, -1]
        local = -(self._dist < self._dist_min).sum(axis=0).astype(np.float64)  # [B, N_i]
        return glob[:, None] * (1 - self.local_ratio) + local * self.local_ratio

    def _obs(self) -> np.ndarray:
        B, N = self.n_envs, self.n_agents
        obs = np.zeros((B, N, self.obs_dim), dtype=np.float32)  # comm tail stays zero
        obs[..., 0:2] = self.vel  # assignment casts float64 -> float32 like mpe2's astype
        obs[..., 2:4] = self.pos
        obs[..., 4:4 + 2 * N] = self._lrel.reshape(B, N, 2 * N)
        # rel[b, i, j] = delta[i, b, j] = p_j - p_i; drop the diagonal with the flat-reshape trick.
        rel = self._delta.transpose(1, 0, 2, 3).reshape(B, N * N, 2)[:, 1:]
        obs[..., 4 + 2 * N:2 + 4 * N] = rel.reshape(B, N - 1, N + 1, 2)[:, :, :N].reshape(B, N, 2 * (N - 1))
        return obs

    def _step_out(self, reward=None, done=None, info=None) -> Step:
        obs = self._obs()
        avail = np.ones((self.n_envs, self.n_agents, self.n_actions), dtype=bool)
        return Step(obs, obs.reshape(self.n_envs, -1).copy(), avail, reward, done, info or {})
