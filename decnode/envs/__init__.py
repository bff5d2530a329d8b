"""Environment backends behind one batched interface (see base.py); `env_factory` picks one from the config.

May import: the root modules only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import extensions
from .base import BatchedEnv, Step


@dataclass(frozen=True)
class EnvFactory:
    """Builds B environments of one configured kind. `cls` answers capability questions (splittable, has_win)
    before any environment exists, so a heavy backend is started only where it is played."""

    cls: type
    kwargs: dict = field(default_factory=dict)

    def __call__(self, n_envs: int) -> BatchedEnv:
        return self.cls(n_envs=n_envs, **self.kwargs)


def env_factory(name: str, n_agents: int, *, backend: str = "batched", local_ratio: float = 0.5,
                max_cycles: int = 25, reward: str = "smac", env_kwargs: dict | None = None) -> EnvFactory:
    """name: an environment of the registry (decnode/extensions.py ENVS), e.g. simple_spread | smax:<map> |
    smac:<map> | pettingzoo:<module>:<factory> (env_kwargs: its keyword arguments). Heavy backends import their
    libraries only when built."""
    entry, arg = extensions.env(name)
    extra = {"env_kwargs": env_kwargs} if env_kwargs is not None else {}
    return entry.load()(arg, n_agents, backend=backend, local_ratio=local_ratio, max_cycles=max_cycles,
                        reward=reward, **extra)


def config_factory(env: dict, n_agents: int) -> EnvFactory:
    """The run's environments as the trainer builds them, from its config's env section (a dict)."""
    return env_factory(env["name"], n_agents, backend=env["backend"], local_ratio=env["local_ratio"],
                       max_cycles=env["episode_length"], reward=env["reward"], env_kwargs=env.get("kwargs"))


# The built-in environments' factories (registered by import path in extensions.py).
def spread_factory(arg: str, n_agents: int, *, backend: str = "batched", local_ratio: float = 0.5,
                   max_cycles: int = 25, **_) -> EnvFactory:
    kwargs = dict(n_agents=n_agents, local_ratio=local_ratio, max_cycles=max_cycles)
    if backend == "mpe2":
        from .mpe2_ref import Mpe2Spread
        return EnvFactory(Mpe2Spread, kwargs)
    from .spread import BatchedSpread
    return EnvFactory(BatchedSpread, kwargs)


def smax_factory(arg: str, n_agents: int, *, reward: str = "smac", **_) -> EnvFactory:
    from .smax import SmaxEnv
    return EnvFactory(SmaxEnv, dict(map_name=arg, reward=reward))


def smac_factory(arg: str, n_agents: int, **_) -> EnvFactory:
    from .smac import Sc2Env
    return EnvFactory(Sc2Env, dict(map_name=arg))


def pettingzoo_factory(arg: str, n_agents: int, *, max_cycles: int = 25, env_kwargs: dict | None = None,
                       **_) -> EnvFactory:
    """arg: '<module>:<factory>' of a PettingZoo parallel env; episodes end where the env ends them or after
    env.episode_length steps (max_cycles here)."""
    from .pettingzoo import PettingZooEnv
    return EnvFactory(PettingZooEnv, dict(target=arg, kwargs=dict(env_kwargs or {}), episode_limit=max_cycles))


def make_env(name: str, n_agents: int, n_envs: int, **kwargs) -> BatchedEnv:
    """n_envs environments of `name` (keywords as env_factory's)."""
    return env_factory(name, n_agents, **kwargs)(n_envs)


__all__ = ["BatchedEnv", "EnvFactory", "Step", "config_factory", "env_factory", "make_env"]
