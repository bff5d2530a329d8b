"""SMAX's mixed maps (2s3z, 3s5z, 3s5z_vs_3s6z) and the unit-type agent groups of every supported map.

Each mixed map compiles its own jitted step (~20-40 s here), so each is played once, by one test, with B=2 and
random available actions until every env has finished an episode. The other tests build envs without stepping
them (building compiles nothing).
"""

from __future__ import annotations

import numpy as np
import pytest

from decnode import smac_maps
from decnode.envs.smax import SMAC_EPISODE_LIMITS, SmaxEnv

B = 2
N_OWN_FEATURES = 10  # last 10 obs entries: own [health frac, x, y, cooldown, 6 type bits]
SMAX_TYPE_NAMES = ("marine", "marauder", "stalker", "zealot", "zergling", "hydralisk")  # SMAX's type ids 0..5

MIXED = {
    # map: (agent groups, n_enemies, SMAC episode limit)
    "2s3z": (("stalker",) * 2 + ("zealot",) * 3, 5, 120),
    "3s5z": (("stalker",) * 3 + ("zealot",) * 5, 8, 150),
    "3s5z_vs_3s6z": (("stalker",) * 3 + ("zealot",) * 5, 9, 170),
}


def test_tables_cover_every_map():
    assert set(smac_maps.UNIT_GROUPS) == set(smac_maps.SMAC_MAPS) == set(SMAC_EPISODE_LIMITS)
    for name, n_agents in smac_maps.N_AGENTS.items():
        assert len(smac_maps.agent_groups(name)) == n_agents
    for name, (groups, _, limit) in MIXED.items():
        assert smac_maps.agent_groups(name) == groups
        assert SMAC_EPISODE_LIMITS[name] == limit
    assert smac_maps.agent_groups("5m_vs_6m") == ("marine",) * 5
    assert smac_maps.agent_groups("6h_vs_8z") == ("hydralisk",) * 6


def test_every_map_matches_smax_scenario_and_homogeneous_is_one_group():
    """Building an env checks the table against SMAX's scenario; a homogeneous map has a single group."""
    for name in smac_maps.SMAC_MAPS:
        env = SmaxEnv(name, B)
        assert env.agent_groups == smac_maps.agent_groups(name)
        assert len(env.agent_groups) == env.n_agents
    assert set(SmaxEnv("6h_vs_8z", B).agent_groups) == {"hydralisk"}
    assert set(SmaxEnv("10m_vs_11m", B).agent_groups) == {"marine"}


def test_wrong_table_refused(monkeypatch):
    """A table that disagrees with SMAX (types swapped) stops construction instead of mislabelling agents."""
    monkeypatch.setitem(smac_maps.UNIT_GROUPS, "3s5z", (("zealot", 5), ("stalker", 3)))
    with pytest.raises(RuntimeError, match="UNIT_GROUPS"):
        SmaxEnv("3s5z", B)


@pytest.mark.parametrize("map_name", list(MIXED))
def test_mixed_map_plays_random_episodes(map_name):
    groups, n_enemies, limit = MIXED[map_name]
    n_agents = len(groups)
    env = SmaxEnv(map_name, B)
    assert env.agent_groups == groups
    assert (env.n_agents, env.n_enemies, env.episode_limit) == (n_agents, n_enemies, limit)
    # one obs_dim and n_actions for every agent, whatever its unit type
    assert env.obs_dim == 13 * (n_agents - 1) + 13 * n_enemies + N_OWN_FEATURES
    assert env.n_actions == 5 + n_enemies
    assert env.state_dim == 12 * (n_agents + n_enemies)

    rng = np.random.default_rng(0)
    step = env.reset(0)
    # each agent's own unit-type bits name its group: agent order in the observations is the table's order
    own_types = np.argmax(step.obs[..., -6:], axis=-1)
    assert [tuple(SMAX_TYPE_NAMES[t] for t in row) for row in own_types] == [groups] * B
    finished = np.zeros(B, bool)
    for _ in range(limit):
        assert step.obs.shape == (B, n_agents, env.obs_dim) and step.avail.shape == (B, n_agents, env.n_actions)
        assert step.avail.any(-1).all()
        actions = np.argmax(rng.random(step.avail.shape) * step.avail, axis=-1)
        step = env.step(actions)
        assert np.isfinite(step.obs).all() and np.isfinite(step.reward).all()
        lengths = step.info["episode_length"][step.done]
        assert ((lengths >= 1) & (lengths <= limit)).all()
        finished |= step.done
        if finished.all():
            break
    assert finished.all(), f"an episode of {map_name} outlasted its limit of {limit} steps"
