"""The α–β prediction of one training iteration's communication (the model decnode-netmodel checks).

The prediction sums, along rank 0's critical path, the α–β cost (net/profile.py) of every message and collective
the trainer sends in one iteration — exactly the calls comm/fabric.py makes: per env step rank 0's W−1 observation
messages queued on its one link, then the actions back; the critic's scatter; per PPO epoch one gossip round on
the run's graph (algo.topology: each rank's rows to its out-neighbour ranks through its own link; a time-varying
graph averaged over its period) or one ring all-reduce of the [D] gradient; the stats all-reduce. A point-to-point
message costs its payload plus the frame header, the bytes the transport counts (comm/wire.py); `gossip_link_bytes`
gives those bytes per link. `overlap_s` is the compute a combine hides behind on the critical rank (DecPG: actor
backward and the critic's epoch; PS: the critic's epoch; with bounded staleness τ + 1 rounds of it), which the
simulated clock (a replay of the real run) also hides.
Calibration, the comparison with a real job, the bandwidth sweep and the CLI are tools/netmodel.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..config import Config
from ..extensions import combiner, critic, env_groups
from .profile import NetProfile

KINDS = ("step_exchange", "reward_scatter", "combine", "stats")
# What comm/ defines, restated (net/ sits below comm/; tests/test_wire.py checks they agree): the frame header of a
# point-to-point message (frames.HEADER_BYTES), the byte counters in the stats all-reduce (wire.METRIC_STREAMS)
FRAME_HEADER_BYTES, STATS_WIRE_SLOTS = 64, 14


# ---- sizes of what the trainer sends --------------------------------------------------------------------------
def job_shapes(cfg: Config) -> dict:
    """obs/state/action widths and parameter counts of the actor and critic rows (no process group needed)."""
    from ..envs import config_factory
    from ..envs.base import agent_spaces
    from ..nn.grouped import width
    from ..nn.models import RecurrentNet

    env, tr, n = cfg.env, cfg.train, cfg.env.n_agents
    e = config_factory(dataclasses.asdict(env), n)(1)
    count = lambda net: sum(p[0].numel() for p in net.parameters())  # noqa: E731 - one agent's row
    critic_in = e.state_dim + (n if env.state_agent_id else 0)
    local = critic(cfg.algo.critic).per_agent
    return {"obs_dim": e.obs_dim, "state_dim": e.state_dim, "n_actions": e.n_actions,
            # a row is the widest group's actor (groups: nn/grouped.py); one space: the actor itself
            "actor_params": max(width(od, k, tr.hidden) for od, k in set(agent_spaces(e))),
            "groups": len(env_groups(cfg).groups),  # PS's all-reduce and the stats carry a sum per group
            "critic_params": count(RecurrentNet(1, critic_in, 1 if local else n, tr.hidden))}


def _expected_max(base: np.ndarray, jitters: int, jitter_s: float, samples: int = 4096) -> float:
    """E[max_r (base_r + sum of `jitters` uniform [0, jitter_s) latencies)]: the last of W−1 round trips."""
    if jitter_s <= 0 or base.size == 0:
        return float(base.max(initial=0.0))
    rng = np.random.default_rng(0)
    draws = rng.uniform(0, jitter_s, (samples, base.size, jitters)).sum(-1)
    return float((base + draws).max(axis=1).mean())


# ---- gossip on the run's graph: bytes per link, as the transport counts them (comm/wire.py) --------------------
def job_graph(cfg: Config):
    """The run's communication graph, as the job builds it (extensions.job_graph: PS's has no edges)."""
    from ..extensions import job_graph as built

    return built(cfg)


def round_link_bytes(W: np.ndarray, world: int, row_bytes: list[int]) -> dict[tuple[int, int], int]:
    """{(src rank, dst rank): bytes} of one gossip round with mixing matrix W: one frame per stream (row_bytes: one
    row's payload per stream), each the rows the destination needs plus the frame header."""
    from ..topology import block_plan

    out = {}
    for r in range(world):
        for q, rows in block_plan(W, world, r).send.items():
            out[(r, q)] = sum(len(rows) * b + FRAME_HEADER_BYTES for b in row_bytes)
    return out


def gossip_link_bytes(graph, world: int, row_bytes: list[int], rounds: int = 1) -> dict[tuple[int, int], float]:
    """{(src, dst): bytes} of `rounds` gossip rounds on graph; a time-varying graph's rounds averaged over its
    period (exact for any `rounds` that is a multiple of the period)."""
    total: dict[tuple[int, int], float] = {}
    for W in graph.phases:
        for link, nbytes in round_link_bytes(W, world, row_bytes).items():
            total[link] = total.get(link, 0) + nbytes
    return {link: rounds * nbytes / graph.period for link, nbytes in sorted(total.items())}


def _gossip_s(p: NetProfile, graph, world: int, row_bytes: list[int]) -> float:
    """One round (averaged over a time-varying graph's period): every rank queues its frames for each out-neighbour
    rank on its link; the round ends when the last message (the tail of the busiest link) arrives, so the slowest
    rank's queue decides."""
    seconds = 0.0
    for W in graph.phases:
        queued: dict[int, int] = {}
        for (src, _), nbytes in round_link_bytes(W, world, row_bytes).items():
            queued[src] = queued.get(src, 0) + nbytes
        if queued:
            seconds += p.latency_s + p.jitter_s / 2 + p.wire_s(max(queued.values()))
    return seconds / graph.period


def gossip_row_bytes(cfg: Config, shapes: dict) -> list[int]:
    """One agent's row per gossip stream (float32): the actor's, and the local critics' (their own stream)."""
    local = critic(cfg.algo.critic).per_agent
    return [4 * shapes["actor_params"]] + ([4 * shapes["critic_params"]] if local else [])


def combine_rounds(cfg: Config) -> int:
    """Combine rounds per iteration: one per PPO epoch, or DecPG with algo.mix_every=iteration one; 0 without
    communication."""
    algo = combiner(cfg.algo.name)  # what one combine sends: gossip, all-reduce or nothing (extensions.py)
    E = cfg.train.ppo_epochs
    return 0 if algo.comm == "none" else E if not algo.gossips or cfg.algo.mix_every == "step" else 1


def predict_iteration_comm(cfg: Config, profile: NetProfile, n_procs: int, overlap_s: float = 0.0,
                           shapes: dict | None = None) -> dict:
    """Seconds of communication per iteration on rank 0's critical path, by kind, and their total.

    cfg must be resolved for n_procs (config.resolve). overlap_s: compute each combine round hides behind."""
    shapes = shapes or job_shapes(cfg)
    p, W, n = profile, n_procs, cfg.env.n_agents
    a, T, B, h = n // W, cfg.env.episode_length, cfg.env.n_envs, FRAME_HEADER_BYTES
    D, Dc, G = shapes["actor_params"], shapes["critic_params"], shapes.get("groups", 1)
    local = critic(cfg.algo.critic).per_agent
    out = dict.fromkeys(KINDS, 0.0)
    out["combine_raw"] = out["gossip_bytes"] = 0.0
    if W > 1:
        width = shapes["obs_dim"] + shapes["n_actions"] + 1
        obs, acts = 4 * a * B * width + h, 8 * a * B + h  # point-to-point messages: payload + frame header
        # rank r's observations leave r-th on rank 0's link; its actions come straight back on its own link
        base = np.arange(1, W) * p.wire_s(obs) + 2 * p.latency_s + p.wire_s(acts)
        out["step_exchange"] = T * _expected_max(base, 2, p.jitter_s)
        scatter = _expected_max(np.arange(1, W) * p.wire_s(4 * a * T * B + h) + p.latency_s, 1, p.jitter_s)
        if local:  # states and (dones, episode starts) by binomial-tree broadcast, rewards scattered
            scatter += p.broadcast_s(W, 4 * (T + 1) * B * shapes["state_dim"]) + p.broadcast_s(W, 8 * (T + 1) * B)
        out["reward_scatter"] = scatter
        algo = combiner(cfg.algo.name)
        rounds = combine_rounds(cfg)
        if algo.gossips:  # the critics' rows queue behind the actor's on the same links
            graph, rows = job_graph(cfg), gossip_row_bytes(cfg, shapes)
            one = _gossip_s(p, graph, W, rows)
            out["gossip_bytes"] = sum(gossip_link_bytes(graph, W, rows, rounds).values())
        else:
            # the critics' all-reduce runs beside the actor's (gloo: 2 threads per group): latencies overlap,
            # the links carry both
            one = p.allreduce_s(W, 4 * G * (D + (Dc if local else 0)))
        out["combine_raw"] = rounds * one
        # Bounded staleness (algo.staleness τ): a round's message may be mixed τ rounds later, so it hides behind
        # τ + 1 rounds of compute — but the last round's is waited for at the iteration's end, behind one.
        tau = cfg.algo.staleness if algo.staleness and rounds else 0
        out["combine"] = ((rounds - 1) * max(one - (tau + 1) * overlap_s, 0.0) + max(one - overlap_s, 0.0)) if tau \
            else rounds * max(one - overlap_s, 0.0)
        # marl/noise.py: Σ rows of ∇, Δθ, θ (float64), their 3 squared norms — per agent group —, 8 scalars, one NaN
        # flag per rank, the byte counters
        out["stats"] = p.allreduce_s(W, 8 * (3 * G * D + 3 * G + 8 + W + STATS_WIRE_SLOTS))
    out["total"] = sum(out[k] for k in KINDS)
    return out
