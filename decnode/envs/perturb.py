"""The paper's perturbed test environment: Gaussian observation noise + epsilon-random actions.

Observation noise: obs + N(0, (c * obs_std)^2) per feature, where obs_std is the sample std of the clean
observations (collect it with RunningStd). Only the per-agent obs the policy sees are perturbed; the global
`state` is returned clean, because it only feeds the critic, which is not used at test time.
Action noise: each agent's action is, with probability epsilon, replaced by one drawn uniformly from that
agent's currently available actions (the replacement may equal the original action).
Paper settings: Simple Spread c=0.2, eps=0.2; SMAC c=0.1, eps=0.01.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from decnode.envs.base import BatchedEnv, Step


class RunningStd:
    """Per-feature running mean / population std in float64; each update merges a batch of samples into the
    summary (Chan et al.). Only rank 0 keeps one: it steps every training environment, so nothing is summed
    over ranks."""

    def __init__(self, n_features: int):
        self.count = 0.0
        self.mean = np.zeros(n_features)
        self.m2 = np.zeros(n_features)

    def update(self, x: np.ndarray) -> None:
        """x [..., F]: every leading index is one sample."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.mean.size)
        if not len(x):
            return
        count, mean = len(x), x.mean(axis=0)
        n = self.count + count
        delta = mean - self.mean
        self.m2 = self.m2 + np.square(x - mean).sum(axis=0) + np.square(delta) * (self.count * count / n)
        self.mean = self.mean + delta * (count / n)
        self.count = float(n)

    @property
    def var(self) -> np.ndarray:
        return self.m2 / self.count if self.count else np.zeros_like(self.m2)

    @property
    def std(self) -> np.ndarray:
        std = np.sqrt(np.maximum(self.var, 0.0))
        # A std below 1e-6 |mean| is float64 rounding in the merges, not variation, and could not even be
        # represented in float32 obs: report such features, and constant ones, as 0.
        std[std <= 1e-6 * np.abs(self.mean)] = 0.0
        return std

    def state_dict(self) -> dict[str, np.ndarray]:
        return {"count": np.array(self.count), "mean": self.mean.copy(), "m2": self.m2.copy()}

    def load_state_dict(self, d: dict[str, np.ndarray]) -> None:
        self.count = float(d["count"])
        self.mean, self.m2 = np.array(d["mean"], np.float64), np.array(d["m2"], np.float64)


def test_env_wrapper(cfg_dict: dict, obs_std, seed: int):
    """wrap(env) for the Evaluator: the paper's test env with c = eval.obs_noise, ε = eval.action_noise of a run's
    config (as a dict: Config.to_dict() or models.pt's). PerturbedEnv draws env b's noise from (seed, reset
    seed, first_env + b): per episode, not per rank."""
    ev = cfg_dict["eval"]
    std = np.asarray(obs_std, dtype=np.float64)
    return lambda env: PerturbedEnv(env, std, ev["obs_noise"], ev["action_noise"], seed)


class PerturbedEnv:
    """Wraps any BatchedEnv; every attribute it does not define (n_envs, n_agents, obs_dim, the capabilities
    splittable and has_win, ...) is the env's.

    Step.info gains "executed_actions" [B, N] (what the env actually ran) and "action_replaced" [B, N] bool
    (an epsilon draw hit; the replacement can coincide with the policy's action).

    Randomness is per environment: reset(seed, first_env=f, ...) gives env b its own generator seeded from
    (seed of __init__, reset seed, f + b), so env b's noise depends only on its global index f + b, not on
    the size of the batch it is played in. Evaluation split over ranks (rank r plays envs f…f+B_r−1 of a
    larger batch) therefore sees exactly the noise of a one-process run, and a reset with the same seed
    replays the same noise (common random numbers across checkpoints). Every step, env b draws 2N uniforms
    for the actions (N "replace?" draws, N choices among the available actions) and then N·obs_dim normals
    for the observation, whatever c and epsilon are, so c and epsilon only scale / threshold the same draws.
    """

    def __init__(self, env: BatchedEnv, obs_std: np.ndarray, c: float, epsilon: float, seed: int):
        obs_std = np.asarray(obs_std, dtype=np.float64)
        assert obs_std.shape == (env.obs_dim,), (obs_std.shape, env.obs_dim)
        assert c >= 0 and 0 <= epsilon <= 1
        self.env, self.c, self.epsilon, self.seed = env, float(c), float(epsilon), seed
        self.noise_scale = (self.c * obs_std).astype(np.float32)
        self.rngs: list[np.random.Generator] = []  # one per environment, set by reset()
        self._avail: np.ndarray | None = None  # mask of the last returned Step: what actions may be drawn

    def __getattr__(self, name: str) -> Any:
        if name == "env":  # not yet set (e.g. during unpickling): avoid infinite recursion
            raise AttributeError(name)
        return getattr(self.env, name)

    def reset(self, seed: int, first_env: int = 0) -> Step:
        self.rngs = [np.random.default_rng([self.seed, seed, first_env + b]) for b in range(self.env.n_envs)]
        return self._perturb(self.env.reset(seed, first_env=first_env))

    def step(self, actions: np.ndarray) -> Step:
        assert self._avail is not None and self.rngs, "call reset(seed) first"
        actions = np.asarray(actions)
        avail = self._avail
        B, N = actions.shape
        u = np.empty((B, 2 * N))
        for g, row in zip(self.rngs, u):
            g.random(out=row)
        replace = u[:, :N] < self.epsilon
        # Uniform over available actions, vectorised: pick the k-th of the n_avail True entries, k = ⌊u·n_avail⌋
        # (min() guards u·n rounding up to n), then find it as the first position where the running count of
        # Trues exceeds k.
        n_avail = avail.sum(axis=-1)
        assert n_avail.min() >= 1, "an agent has no available action"
        k = np.minimum((u[:, N:] * n_avail).astype(np.int64), n_avail - 1)
        random_act = (np.cumsum(avail, axis=-1) > k[..., None]).argmax(axis=-1)
        executed = np.where(replace, random_act, actions).astype(actions.dtype, copy=False)
        out = self._perturb(self.env.step(executed))
        out.info = {**out.info, "executed_actions": executed, "action_replaced": replace}
        return out

    def get_state(self) -> dict[str, Any]:
        return {"env": self.env.get_state(), "rngs": [g.bit_generator.state for g in self.rngs],
                "avail": None if self._avail is None else self._avail.copy()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.env.set_state(state["env"])
        self.rngs = []
        for s in state["rngs"]:
            g = np.random.Generator(np.random.PCG64(0))  # seed irrelevant: state overwritten next
            g.bit_generator.state = s
            self.rngs.append(g)
        self._avail = None if state["avail"] is None else state["avail"].copy()

    def _perturb(self, s: Step) -> Step:
        self._avail = np.asarray(s.avail, dtype=bool).copy()
        assert len(self.rngs) == s.obs.shape[0], (len(self.rngs), s.obs.shape)
        noise = np.empty(s.obs.shape, dtype=np.float32)
        for g, row in zip(self.rngs, noise):
            g.standard_normal(dtype=np.float32, out=row)
        noise *= self.noise_scale
        obs = (s.obs + noise).astype(np.float32, copy=False)  # c=0: scale 0 adds exact zeros
        return Step(obs, s.state, s.avail, s.reward, s.done, s.info)
