"""The extension points' registries: algorithms (combiners), critic placements, environments.

Each entry says what the rest of the code asks of it — whether an algorithm gossips on the kNN graph, how a run of
it is labelled, whether a critic is per agent, how many agents an environment's map fixes, what it needs
installed — so no module compares a name. Built-in implementations are named by import path (`Lazy`): they live in
marl/ and envs/, floors above this one, and config.py checks names here without importing torch.

Adding one is a class plus one line here, or a plugin (run.plugins, --plugin) that calls `COMBINERS.register`
itself: README "Extending decnode".
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from .registry import ConfigError, Lazy, Registry
from .smac_maps import N_AGENTS as SMAC_MAPS


# ---- algorithms: how a step combines gradients and parameters --------------------------------------------------
@dataclass(frozen=True)
class CombinerEntry(Lazy):
    """impl: a marl.combiners.Combiner subclass, built as cls(fabric, cls.streams[critic]) for the actor's rows
    and (local critics) the critics'.

    comm: what one combine sends — "gossip" (θ to the in-neighbours of the graph algo.topology; algo.k, algo.weights,
          algo.degree and algo.mix_every apply), "allreduce" (the mean gradient over all agents) or "none".
    label: how plots and reports name a run; "{graph}" is replaced by "k=<algo.k>" on the kNN ring, else by the
           topology's name; "{k}" by algo.k.
    stochastic: what a gossiping algorithm's mixing needs of the graph's matrices (topology.check_graph): "doubly"
           (DSGD: the average is kept), "row", or "column" (push-sum: the job gossips on the graph's edges with
           each sender's equal shares, Graph.push_weights, whatever algo.weights says).
    xla: the XLA placement (run.device=xla) runs it; otherwise config time refuses it in one line.
    staleness: it can add a message in a later round than it was sent (algo.staleness > 0: push-sum's shares).
    baseline: a parameter-sharing baseline the paper's claims compare DecPG against.
    entropy: the baseline's "+entropy" variant (its bonus is configs' per_algo.<name>.entropy_coef, not code).
    """

    comm: str = "none"
    label: str = ""
    baseline: bool = False
    entropy: bool = False
    stochastic: str = "doubly"
    xla: bool = True
    staleness: bool = False

    def __post_init__(self):
        if self.comm not in ("gossip", "allreduce", "none"):
            raise ValueError(f"comm must be gossip, allreduce or none, got {self.comm!r}")
        if self.stochastic not in ("row", "doubly", "column"):
            raise ValueError(f"stochastic must be row, doubly or column, got {self.stochastic!r}")

    @property
    def gossips(self) -> bool:
        """Talks to graph neighbours only: the run has a topology (algo.topology), the fabric a gossip plan."""
        return self.comm == "gossip"

    def run_label(self, name: str, k, graph: str | None = None) -> str:
        graph = f"k={k}" if graph is None else graph
        return (self.label or name).replace("{graph}", graph).replace("{k}", str(k))


COMBINERS: Registry[CombinerEntry] = Registry("algorithm")
COMBINERS.register("decpg", CombinerEntry("decnode.marl.combiners:DecPG", comm="gossip", label="DecPG {graph}"))
COMBINERS.register("ps", CombinerEntry("decnode.marl.combiners:ParameterSharing", comm="allreduce", label="PS",
                                       baseline=True))
COMBINERS.register("ps_entropy", CombinerEntry("decnode.marl.combiners:ParameterSharing", comm="allreduce",
                                               label="PS+entropy", baseline=True, entropy=True))
COMBINERS.register("push_sum", CombinerEntry("decnode.marl.push_sum:PushSum", comm="gossip", label="push-sum {graph}",
                                             stochastic="column", xla=False, staleness=True))


def combiner(name: str) -> CombinerEntry:
    return COMBINERS.get(name)


def topology_k(algo) -> int:
    """The kNN graph's k a job builds: algo.k for a gossiping algorithm, 0 (no edges) otherwise (PS's k is not a
    topology). `algo`: the config's algo section (AlgoConfig or its dict)."""
    name, k = (algo["name"], algo["k"]) if isinstance(algo, Mapping) else (algo.name, algo.k)
    return k if combiner(name).gossips else 0


def run_label(algo: Mapping) -> str:
    """A run's label from its config's algo section (a dict); an algorithm no loaded plugin knows: its name."""
    name = algo["name"]
    if name not in COMBINERS:
        return str(name)
    return COMBINERS.get(name).run_label(name, algo.get("k"), topology_label(algo))


def topology_label(algo: Mapping) -> str:
    """How a run names its graph: "k=4" (the kNN ring), "exp1peer", "random_regular d=4", "file:NAME" (the file's
    name only), with ", metropolis" for Metropolis–Hastings weights."""
    topo = str(algo.get("topology", "knn"))
    if topo == "knn":
        topo = f"k={algo.get('k')}"
    if topo.startswith("file:"):
        topo = "file:" + os.path.basename(topo[len("file:"):])
    if topo == "random_regular":
        topo += f" d={algo.get('degree', 3)}"
    return topo + (", metropolis" if algo.get("weights", "uniform") == "metropolis" else "")


def job_graph(cfg):
    """The graph a job gossips on (topology.Graph), checked for its algorithm (a one-line GraphError naming the
    node at fault): algo.topology for a gossiping algorithm — within each agent group, on a graph of its own — else
    the edgeless graph (PS's k is not a topology)."""
    from .topology import block_diagonal, build_graph, check_graph

    algo, n = cfg.algo, cfg.env.n_agents
    entry = combiner(algo.name)
    if not entry.gossips:
        return build_graph("knn", n, k=0)
    if entry.stochastic == "column" and algo.weights != "uniform":
        raise ConfigError(f"algo.weights={algo.weights} is a receiver's choice of weights; {algo.name} sends equal "
                          "shares 1/(out-degree+1) on the graph's edges (leave algo.weights=uniform)")
    groups = env_groups(cfg)
    parts = []
    for group in groups.groups:  # each group gossips on its own graph of algo.topology (one group: the job's)
        size, what = len(group.agents), "" if groups.single else f"group '{group.name}' of {len(group.agents)}: "
        if algo.topology == "knn" and not 0 <= algo.k <= size - 1:
            raise ConfigError(f"{what}algo.k must be in [0, {size - 1}] for n={size} agents, got k={algo.k}")
        try:
            graph = build_graph(algo.topology, size, k=algo.k, degree=algo.degree, weights=algo.weights,
                                seed=cfg.train.seed)
            if entry.stochastic == "column":
                graph = graph.push_weights()
            check_graph(graph, entry.stochastic, algo.name)
        except ConfigError as err:
            if groups.single:
                raise
            raise type(err)(f"{what}{err}") from None
        parts.append(graph)
    return block_diagonal(parts, parts[0].name)


def env_groups(cfg):
    """The job's agent groups (groups.AgentGroups): algo.groups over the environment's own (EnvEntry.groups)."""
    from . import groups

    groups.check_spec(cfg.algo.groups)
    entry, arg = env(cfg.env.name)
    names = None
    if cfg.algo.groups == "env" and entry.groups is not None:
        names = entry.groups.load()(arg, cfg.env.n_agents, cfg.env.kwargs or {})
    found = groups.resolve(cfg.algo.groups, cfg.env.n_agents, tuple(names) if names is not None else None)
    if entry.spaces is not None:
        groups.group_spaces(found, entry.spaces.load()(arg, cfg.env.kwargs or {}))
    return found


# ---- critic placements ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CriticEntry(Lazy):
    """impl: a class built as cls(fabric, state_dim=, seed=, algo=, agent_id=, T=, B=, hidden=, ...) with
    prepare / epoch / state_dict / load_state_dict / saved_params / offline_advantages (marl/critic.py).

    per_agent: one critic per agent, combined like the actor (rows = agents, an agent id may be appended to its
               input); else one critic on rank 0 with a value head per agent. Preflight's memory estimate and the
               α–β prediction count critics and their messages by it.
    doc: one line for --help-config."""

    per_agent: bool = False
    doc: str = ""


CRITICS: Registry[CriticEntry] = Registry("critic placement")
CRITICS.register("central", CriticEntry("decnode.marl.critic:CentralCritic", per_agent=False,
                                        doc="one critic on rank 0"))
CRITICS.register("local", CriticEntry("decnode.marl.critic:LocalCritics", per_agent=True,
                                      doc="one per agent, combined like the actor"))


def critic(name: str) -> CriticEntry:
    return CRITICS.get(name)


# ---- environments ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvEntry(Lazy):
    """impl: factory(arg, n_agents, *, backend, local_ratio, max_cycles, reward) -> envs.EnvFactory, where arg is
    what follows ':' in env.name ("" without). Capabilities (splittable, has_win) are the env class's own, read from
    EnvFactory.cls before any environment is built, so they are not repeated here.

    maps: the names allowed after ':' and the agents each fixes (SMAC maps); None: the name takes no ':' part.
    map_kind: what a map is called in messages.
    title: the env's name in messages; min_agents: the least agent count it plays.
    requires: modules that must be importable (found without importing them); extra: the pyproject extra that
              installs them. check: a further check(env_name) raising ConfigError (e.g. StarCraft II's SC2PATH).
    coordinator_bytes: memory rank 0 needs beyond a process (JAX), for preflight's estimate.
    groups: groups(arg, n_agents, kwargs) -> a group name per agent (consecutive agents of one name form a group:
            unit types, roles), or None (one group); None here: every agent in one group.
    agents: agents(arg, kwargs) -> the agent count, for an env whose ':' part names what to build (any string,
            not a map): the PettingZoo adapter.
    spaces: spaces(arg, kwargs) -> every agent's (observation size, action count), where they are cheap to know
            before any process starts (the groups are then checked against them at config time)."""

    maps: Mapping[str, int] | None = None
    map_kind: str = "map"
    title: str = ""
    min_agents: int = 1
    requires: tuple[str, ...] = ()
    extra: str | None = None
    check: Lazy | None = None
    coordinator_bytes: int = 0
    groups: Lazy | None = None
    agents: Lazy | None = None
    spaces: Lazy | None = None


def _spell_env(name: str, entry: EnvEntry) -> str:
    if entry.agents is not None:
        return f"{name}:<module>:<factory>"
    return f"{name}:<map>" if entry.maps is not None else name


ENVS: Registry[EnvEntry] = Registry("environment", spell=_spell_env)
_SMAC_MAPS = MappingProxyType(dict(SMAC_MAPS))
ENVS.register("simple_spread", EnvEntry("decnode.envs:spread_factory", title="Simple Spread", min_agents=2))
ENVS.register("smax", EnvEntry("decnode.envs:smax_factory", maps=_SMAC_MAPS, map_kind="SMAC map", title="SMAX",
                               requires=("jax", "jaxmarl"), extra="smax", coordinator_bytes=500 * 1024**2,
                               groups=Lazy("decnode.smac_maps:map_groups")))
ENVS.register("smac", EnvEntry("decnode.envs:smac_factory", maps=_SMAC_MAPS, map_kind="SMAC map",
                               title="SMAC", check=Lazy("decnode.envs.smac:check_installed")))
ENVS.register("pettingzoo", EnvEntry("decnode.envs:pettingzoo_factory", title="PettingZoo",
                                     requires=("pettingzoo",), groups=Lazy("decnode.envs.pettingzoo:spec_groups"),
                                     agents=Lazy("decnode.envs.pettingzoo:spec_agents"),
                                     spaces=Lazy("decnode.envs.pettingzoo:spec_spaces")))


def split_env_name(name: str) -> tuple[str, str]:
    """'smax:5m_vs_6m' -> ('smax', '5m_vs_6m'); 'simple_spread' -> ('simple_spread', ''). The one place an env
    name is split."""
    kind, _, arg = str(name).partition(":")
    return kind, arg


def env(name: str) -> tuple[EnvEntry, str]:
    """The entry of env.name and what follows its ':'; an unknown kind is one ConfigError line."""
    kind, arg = split_env_name(name)
    if kind not in ENVS:
        raise ConfigError(f"unknown environment '{name}' (known: {', '.join(ENVS.spelled())})")
    return ENVS.get(kind), arg


def env_agents(name: str, kwargs: Mapping | None = None) -> int | None:
    """The agent count env.name fixes (a SMAC map's, a PettingZoo env's with its keyword arguments `kwargs`), None
    when the job chooses it; a bad name or map raises."""
    entry, arg = env(name)
    if entry.agents is not None:
        if not arg:
            raise ConfigError(f"env.name {split_env_name(name)[0]} needs ':<module>:<factory>', e.g. "
                              "pettingzoo:mpe2.simple_speaker_listener_v4:parallel_env")
        return entry.agents.load()(arg, dict(kwargs or {}))
    if entry.maps is None:
        if arg:
            raise ConfigError(f"env.name {split_env_name(name)[0]} takes no ':<map>', got '{name}'")
        return None
    if arg not in entry.maps:
        raise ConfigError(f"unknown {entry.map_kind} '{arg}' (supported: {', '.join(entry.maps)})")
    return entry.maps[arg]


__all__ = ["COMBINERS", "CRITICS", "ENVS", "CombinerEntry", "CriticEntry", "EnvEntry", "combiner", "critic", "env",
           "env_agents", "env_groups", "job_graph", "run_label", "split_env_name", "topology_k", "topology_label"]
