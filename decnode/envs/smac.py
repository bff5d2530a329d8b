"""Real SMAC (StarCraft II) as a `BatchedEnv`: B `smac.env.StarCraft2Env` instances stepped one after another.

Needs the StarCraft Multi-Agent Challenge package (`pip install git+https://github.com/oxwhirl/smac.git`; PyPI's
`smac` is the unrelated SMAC3 and has no `smac.env`), the StarCraft II binary with the SMAC maps, and SC2PATH
pointing at it. Without them, constructing `Sc2Env` raises a one-line RuntimeError; use
`decnode.envs.smax.SmaxEnv` (JAX re-implementation, no StarCraft II needed) instead.

SMAC conventions kept as they are: action 0 is the no-op (the only action of a dead agent), 1 stop, 2..5 move,
6.. attack; the reward is SMAC's own (reward_only_positive=True, scaled so an episode returns at most 20),
given to every agent; done at a win, a loss or SMAC's episode limit; info["won"] is SMAC's "battle_won".
Env b is launched with game seed derived from (seed, first_env + b). StarCraft II's game state cannot be snapshotted, so
get_state()/set_state() raise NotImplementedError.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from decnode.envs.base import Step

INSTALL_HINT = (
    "install it with `pip install git+https://github.com/oxwhirl/smac.git`, install the StarCraft II binary "
    "(with the SMAC maps) and set SC2PATH to its directory, or use decnode.envs.smax.SmaxEnv instead"
)


def _load_starcraft2env():
    """Return (StarCraft2Env class or None, list of reasons it cannot be used)."""
    reasons = []
    cls = None
    try:
        from smac.env import StarCraft2Env as cls  # noqa: N813
    except ImportError:
        reasons.append("`from smac.env import StarCraft2Env` failed (PyPI's `smac` is SMAC3, not SMAC)")
    except Exception as e:  # a broken install: report it, still on one line
        reasons.append(f"importing smac.env raised {type(e).__name__}")
    sc2path = os.environ.get("SC2PATH")
    if not sc2path:
        reasons.append("SC2PATH is not set")
    elif not os.path.isdir(sc2path):
        reasons.append(f"SC2PATH={sc2path!r} is not a directory")
    return cls, reasons


def sc2_available() -> tuple[bool, str]:
    """(True, "") when real SMAC can be used here, else (False, one-line reason + install hint)."""
    cls, reasons = _load_starcraft2env()
    if cls is not None and not reasons:
        return True, ""
    return False, _message(reasons)


def _message(reasons: list[str]) -> str:
    return f"real SMAC is unavailable ({'; '.join(reasons)}): {INSTALL_HINT}".replace("\n", " ")


def check_installed(env_name: str) -> None:
    """Preflight (before any process starts; imports nothing): what real SMAC needs here, one ConfigError line."""
    import importlib.util

    from ..config import ConfigError
    from ..extensions import split_env_name

    reasons = []
    try:
        found = importlib.util.find_spec("smac.env") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        reasons.append("the smac package (oxwhirl) is not installed: "
                       "pip install git+https://github.com/oxwhirl/smac.git")
    sc2 = os.environ.get("SC2PATH")
    if not sc2:
        reasons.append("SC2PATH is not set (the StarCraft II directory)")
    elif not os.path.isdir(sc2):
        reasons.append(f"SC2PATH={sc2} is not a directory")
    if reasons:
        raise ConfigError(f"env.name={env_name} needs StarCraft II: {'; '.join(reasons)} "
                          f"(or use env.name=smax:{split_env_name(env_name)[1]}, no StarCraft II needed)")


def _env_seed(seed: int, b: int) -> int:
    return int(np.random.SeedSequence([int(seed), int(b)]).generate_state(1)[0] % (2**31 - 1))


class Sc2Env:
    """B real-SMAC environments behind the BatchedEnv interface (see module doc)."""

    splittable = False  # one StarCraft II game per environment: evaluated on rank 0 only
    has_win = True

    def __init__(self, map_name: str, n_envs: int, episode_limit: int | None = None, **sc2_kwargs: Any):
        cls, reasons = _load_starcraft2env()
        if cls is None or reasons:
            raise RuntimeError(_message(reasons)) from None
        if int(n_envs) < 1:
            raise ValueError(f"n_envs must be >= 1, got {n_envs}")
        self._cls = cls
        self.map_name = map_name
        self.n_envs = int(n_envs)
        self._kwargs = dict(sc2_kwargs)
        probe = cls(map_name=map_name, **self._kwargs)  # map parameters only; launches nothing
        info = probe.get_env_info()
        self.n_agents = int(info["n_agents"])
        self.obs_dim = int(info["obs_shape"])
        self.state_dim = int(info["state_shape"])
        self.n_actions = int(info["n_actions"])
        self.episode_limit = int(info["episode_limit"] if episode_limit is None else episode_limit)
        self.noop_action = 0
        self._envs: list = []
        self._ep_return = np.zeros(self.n_envs, np.float64)
        self._ep_len = np.zeros(self.n_envs, np.int64)

    def _observe(self) -> Step:
        obs = np.stack([np.asarray(e.get_obs(), np.float32) for e in self._envs])
        state = np.stack([np.asarray(e.get_state(), np.float32) for e in self._envs])
        avail = np.stack([np.asarray(e.get_avail_actions()) for e in self._envs]).astype(bool)
        step = Step(obs=obs, state=state, avail=avail)
        step.info["alive"] = ~avail[..., self.noop_action]  # SMAC: no-op is available only to dead agents
        return step

    def _new_env(self, seed: int, b: int):
        env = self._cls(map_name=self.map_name, seed=_env_seed(seed, b), **self._kwargs)
        env.episode_limit = self.episode_limit
        return env

    def reset(self, seed: int, first_env: int = 0) -> Step:
        self.close()
        self._envs = [self._new_env(seed, first_env + b) for b in range(self.n_envs)]
        for env in self._envs:
            env.reset()
        self._ep_return[:] = 0.0
        self._ep_len[:] = 0
        return self._observe()

    def step(self, actions: np.ndarray) -> Step:
        if not self._envs:
            raise RuntimeError("call reset(seed) before step()")
        acts = np.asarray(actions)
        if acts.shape != (self.n_envs, self.n_agents):
            raise ValueError(f"actions must have shape {(self.n_envs, self.n_agents)}, got {acts.shape}")
        reward = np.zeros((self.n_envs, self.n_agents), np.float32)
        done = np.zeros(self.n_envs, bool)
        won = np.zeros(self.n_envs, bool)
        ep_return = np.zeros(self.n_envs, np.float32)
        ep_len = np.zeros(self.n_envs, np.int32)
        for b, env in enumerate(self._envs):
            r, terminated, info = env.step([int(a) for a in acts[b]])
            reward[b] = r
            self._ep_return[b] += float(r)
            self._ep_len[b] += 1
            ep_return[b] = self._ep_return[b]
            ep_len[b] = self._ep_len[b]
            if terminated:
                done[b] = True
                won[b] = bool(info.get("battle_won", False))
                env.reset()
                self._ep_return[b] = 0.0
                self._ep_len[b] = 0
        step = self._observe()
        step.reward, step.done = reward, done
        step.info.update(episode_return=ep_return, won=won, episode_length=ep_len)
        return step

    def get_state(self) -> Any:
        raise NotImplementedError("StarCraft II's game state cannot be snapshotted; resume real SMAC runs by "
                                  "restarting episodes (SmaxEnv supports exact get_state/set_state)")

    def set_state(self, state: Any) -> None:
        self.get_state()

    def close(self) -> None:
        for env in self._envs:
            try:
                env.close()
            except Exception:
                pass
        self._envs = []

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass
