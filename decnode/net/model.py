"""The α–β prediction of one training iteration's communication (the model decnode-netmodel checks).

The prediction sums, along rank 0's critical path, the α–β cost (net/profile.py) of every message and collective
the trainer sends in one iteration — exactly the calls comm/fabric.py makes: per env step rank 0's W−1 observation
messages queued on its one link, then the actions back; the critic's scatter; per PPO epoch one gossip round (each
rank's rows to its out-neighbour ranks through its own link) or one ring all-reduce of the [D] gradient; the stats
all-reduce. `overlap_s` is the compute a combine hides behind on the critical rank (DecPG: actor backward and the
critic's epoch; PS: the critic's epoch), which the simulated clock (a replay of the real run) also hides.
Calibration, the comparison with a real job, the bandwidth sweep and the CLI are tools/netmodel.py.
"""

from __future__ import annotations

import numpy as np

from ..config import Config
from ..extensions import combiner, critic
from .profile import NetProfile

KINDS = ("step_exchange", "reward_scatter", "combine", "stats")


# ---- sizes of what the trainer sends --------------------------------------------------------------------------
def job_shapes(cfg: Config) -> dict:
    """obs/state/action widths and parameter counts of the actor and critic rows (no process group needed)."""
    from ..envs import make_env
    from ..nn.models import RecurrentNet

    env, tr, n = cfg.env, cfg.train, cfg.env.n_agents
    e = make_env(env.name, n, 1, backend=env.backend, local_ratio=env.local_ratio, max_cycles=env.episode_length,
                 reward=env.reward)
    count = lambda net: sum(p[0].numel() for p in net.parameters())  # noqa: E731 - one agent's row
    critic_in = e.state_dim + (n if env.state_agent_id else 0)
    local = critic(cfg.algo.critic).per_agent
    return {"obs_dim": e.obs_dim, "state_dim": e.state_dim, "n_actions": e.n_actions,
            "actor_params": count(RecurrentNet(1, e.obs_dim, e.n_actions, tr.hidden)),
            "critic_params": count(RecurrentNet(1, critic_in, 1 if local else n, tr.hidden))}


def _expected_max(base: np.ndarray, jitters: int, jitter_s: float, samples: int = 4096) -> float:
    """E[max_r (base_r + sum of `jitters` uniform [0, jitter_s) latencies)]: the last of W−1 round trips."""
    if jitter_s <= 0 or base.size == 0:
        return float(base.max(initial=0.0))
    rng = np.random.default_rng(0)
    draws = rng.uniform(0, jitter_s, (samples, base.size, jitters)).sum(-1)
    return float((base + draws).max(axis=1).mean())


def _gossip_s(p: NetProfile, n_agents: int, k: int, world: int, row_bytes: float) -> float:
    """One round: every rank queues its rows for each out-neighbour rank on its link; the round ends when the
    last message (the tail of the busiest link) arrives, so the slowest rank's queue decides."""
    from ..topology import block_plan, mixing_matrix

    P = mixing_matrix(n_agents, k)
    queued = max(sum(len(rows) for rows in block_plan(P, world, r).send.values()) for r in range(world))
    return 0.0 if queued == 0 else p.latency_s + p.jitter_s / 2 + p.wire_s(queued * row_bytes)


def predict_iteration_comm(cfg: Config, profile: NetProfile, n_procs: int, overlap_s: float = 0.0,
                           shapes: dict | None = None) -> dict:
    """Seconds of communication per iteration on rank 0's critical path, by kind, and their total.

    cfg must be resolved for n_procs (config.resolve). overlap_s: compute each combine round hides behind."""
    shapes = shapes or job_shapes(cfg)
    p, W, n = profile, n_procs, cfg.env.n_agents
    a, T, B, E = n // W, cfg.env.episode_length, cfg.env.n_envs, cfg.train.ppo_epochs
    D, Dc = shapes["actor_params"], shapes["critic_params"]
    local = critic(cfg.algo.critic).per_agent
    out = dict.fromkeys(KINDS, 0.0)
    out["combine_raw"] = 0.0
    if W > 1:
        width = shapes["obs_dim"] + shapes["n_actions"] + 1
        obs, acts = 4 * a * B * width, 8 * a * B
        # rank r's observations leave r-th on rank 0's link; its actions come straight back on its own link
        base = np.arange(1, W) * p.wire_s(obs) + 2 * p.latency_s + p.wire_s(acts)
        out["step_exchange"] = T * _expected_max(base, 2, p.jitter_s)
        scatter = _expected_max(np.arange(1, W) * p.wire_s(4 * a * T * B) + p.latency_s, 1, p.jitter_s)
        if local:  # states and (dones, episode starts) by binomial-tree broadcast, rewards scattered
            scatter += p.broadcast_s(W, 4 * (T + 1) * B * shapes["state_dim"]) + p.broadcast_s(W, 8 * (T + 1) * B)
        out["reward_scatter"] = scatter
        algo = combiner(cfg.algo.name)  # what one combine sends: gossip, all-reduce or nothing (extensions.py)
        rounds = 0 if algo.comm == "none" else E if not algo.gossips or cfg.algo.mix_every == "step" else 1
        if algo.gossips:  # the critics' rows queue behind the actor's on the same links
            one = _gossip_s(p, n, cfg.algo.k, W, 4 * (D + (Dc if local else 0)))
        else:
            # the critics' all-reduce runs beside the actor's (gloo: 2 threads per group): latencies overlap,
            # the links carry both
            one = p.allreduce_s(W, 4 * (D + (Dc if local else 0)))
        out["combine_raw"] = rounds * one
        out["combine"] = rounds * max(one - overlap_s, 0.0)
        # marl/noise.py: Σ rows of ∇, Δθ, θ (float64), their 3 squared norms, 8 scalars, one NaN flag per rank
        out["stats"] = p.allreduce_s(W, 8 * (3 * D + 3 + 8 + W))
    out["total"] = sum(out[k] for k in KINDS)
    return out
