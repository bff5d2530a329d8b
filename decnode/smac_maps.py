"""The SMAC maps we support, in one place: agents per map, SMAC's episode limit and the allies' unit types.

Imported by config.py (validation, before any process starts) and by the SMAX/SMAC environments; it imports
nothing, so the config stays free of jax and torch.
"""

from __future__ import annotations

# map: (n_agents, episode_limit); the limits are SMAC's own (smac/env/starcraft2/maps/smac_maps.py).
SMAC_MAPS: dict[str, tuple[int, int]] = {
    "5m_vs_6m": (5, 70),
    "10m_vs_11m": (10, 150),
    "27m_vs_30m": (27, 180),
    "6h_vs_8z": (6, 150),
    "2s3z": (5, 120),
    "3s5z": (8, 150),
    "3s5z_vs_3s6z": (8, 170),
}
N_AGENTS = {name: n for name, (n, _) in SMAC_MAPS.items()}
EPISODE_LIMITS = {name: limit for name, (_, limit) in SMAC_MAPS.items()}

# map: the allies' unit types in agent order, as (type, count) runs. The names are SMAX's `unit_type_names`;
# SmaxEnv checks this table against the SMAX scenario when it is built, so it cannot drift silently.
UNIT_GROUPS: dict[str, tuple[tuple[str, int], ...]] = {
    "5m_vs_6m": (("marine", 5),),
    "10m_vs_11m": (("marine", 10),),
    "27m_vs_30m": (("marine", 27),),
    "6h_vs_8z": (("hydralisk", 6),),
    "2s3z": (("stalker", 2), ("zealot", 3)),
    "3s5z": (("stalker", 3), ("zealot", 5)),
    "3s5z_vs_3s6z": (("stalker", 3), ("zealot", 5)),
}


def agent_groups(map_name: str) -> tuple[str, ...]:
    """The group (unit type) of each ally in agent order, e.g. "2s3z" -> 2 x "stalker" then 3 x "zealot".
    Unknown map -> KeyError."""
    return tuple(unit for unit, count in UNIT_GROUPS[map_name] for _ in range(count))


# Every map has its unit types, and they account for all its agents.
assert set(UNIT_GROUPS) == set(SMAC_MAPS)
assert all(len(agent_groups(name)) == n for name, n in N_AGENTS.items())


def map_groups(map_name: str, n_agents: int, kwargs: dict) -> tuple[str, ...]:  # noqa: ARG001
    """The env registry's groups hook (extensions.EnvEntry.groups): the map's unit types, one name per agent."""
    return agent_groups(map_name)
