"""The SMAC maps we support, in one place: agents per map and SMAC's episode limit.

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
}
N_AGENTS = {name: n for name, (n, _) in SMAC_MAPS.items()}
EPISODE_LIMITS = {name: limit for name, (_, limit) in SMAC_MAPS.items()}
