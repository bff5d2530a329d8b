"""Environment backends behind one batched interface (see base.py); `make_env` picks one from the config."""

from __future__ import annotations

from .base import BatchedEnv, Step


def make_env(name: str, n_agents: int, n_envs: int, *, backend: str = "batched", local_ratio: float = 0.5,
             max_cycles: int = 25, reward: str = "smac") -> BatchedEnv:
    """name: simple_spread | smax:<map> | smac:<map>. Heavy backends are imported only when chosen."""
    kind, _, map_name = name.partition(":")
    if kind == "simple_spread":
        if backend == "mpe2":
            from .mpe2_ref import Mpe2Spread
            return Mpe2Spread(n_envs, n_agents, local_ratio=local_ratio, max_cycles=max_cycles)
        from .spread import BatchedSpread
        return BatchedSpread(n_envs, n_agents, local_ratio=local_ratio, max_cycles=max_cycles)
    if kind == "smax":
        from .smax import SmaxEnv
        return SmaxEnv(map_name, n_envs, reward=reward)
    if kind == "smac":
        from .smac import Sc2Env
        return Sc2Env(map_name, n_envs)
    raise ValueError(f"unknown environment '{name}' (simple_spread, smax:<map>, smac:<map>)")


__all__ = ["BatchedEnv", "Step", "make_env"]
