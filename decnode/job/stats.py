"""One iteration's statistics, in the one all-reduce per iteration: losses, PPO's health metrics, the noise metrics
(paper A.5), the non-finite check, bytes, staleness and the stop flag (the trainer's, split from trainer.py)."""

from __future__ import annotations

import numpy as np
import torch

from ..comm.wire import job_bytes
from ..marl.noise import agent_variance_and_sums


class NonFiniteError(RuntimeError):
    """A loss or parameter became NaN or inf; the message names the rank, the quantity and the iteration."""


# What the non-finite check looks at, in order; its index travels in the per-iteration all-reduce.
WATCHED = ("policy loss", "actor parameters", "value loss", "critic parameters")


def nonfinite(trainer, first: dict, critic_batch, params: torch.Tensor) -> tuple[int, int]:
    """(index into WATCHED + 1, local row) of the first NaN/inf on this rank; (0, 0) if all is finite."""
    watched = [first["policy_loss"], params,
               critic_batch.losses[0] if critic_batch.losses else None,
               trainer.critic.net.params.cpu() if trainer.critic.net is not None else None]
    for code, x in enumerate(watched, start=1):
        if x is not None:
            bad = (~torch.isfinite(x)).reshape(x.shape[0], -1).any(dim=1)
            if bad.any():
                return code, int(bad.nonzero()[0])
    return 0, 0


def iteration_stats(trainer, first, last, critic_batch, theta_start, params, coord, lr) -> dict:
    """One all-reduce per iteration carries the losses, PPO's health metrics, the noise metrics (paper A.5),
    the non-finite check and the stop flag. Dₘ uses the first epoch's gradient (taken at θₘ); Vₘ the whole
    iteration's update θₘ₊₁ − θₘ; approx-KL and clip fraction the last epoch (the first one's ratio is 1)."""
    ev = critic_batch.explained_variance
    scalars = {"policy_loss": first["policy_loss"].sum().item(), "entropy": first["entropy"].sum().item(),
               "grad_norm": first["grad"].norm(dim=1).sum().item(), "approx_kl": last["approx_kl"].sum().item(),
               "clip_fraction": last["clip_fraction"].sum().item(),
               "value_loss": critic_batch.losses[0].sum().item() if critic_batch.losses else 0.0,
               "explained_variance": ev.sum().item() if ev is not None else 0.0, "stop": float(trainer.stop.flag)}
    # Which rank saw a NaN/inf, and where: one slot per rank, so every rank can name the culprit.
    code, row = nonfinite(trainer, first, critic_batch, params)
    flags = [0.0] * trainer.fabric.world
    flags[trainer.fabric.rank] = float(code + len(WATCHED) * row) if code else 0.0
    sent = trainer.fabric.wire.window()  # bytes per stream since the iteration began (comm/wire.py)
    stale = staleness_slots(trainer)
    variances, totals = agent_variance_and_sums(
        trainer.fabric, {"grad_disagreement": first["grad"], "update_variance": params - theta_start,
                      "consensus_distance": theta_start}, [*scalars.values(), *flags, *sent, *stale],
        groups=trainer.teams.groups if trainer.teams.grouped else None)
    sums = dict(zip(scalars, totals))
    raise_if_nonfinite(trainer, totals[len(scalars): len(scalars) + len(flags)])
    totals, stale_sums = totals[: len(totals) - len(stale)], totals[len(totals) - len(stale):]
    n, critic_rows = trainer.n, trainer.critic.total_rows
    out = {"iteration": trainer.iteration, "env_steps": trainer.env_steps, "lr": lr,
           **{key: sums[key] / n for key in ("policy_loss", "entropy", "grad_norm", "approx_kl", "clip_fraction")},
           "value_loss": sums["value_loss"] / critic_rows,
           "explained_variance": sums["explained_variance"] / critic_rows, **variances}
    if trainer.gossips:  # the spectral gap of each round this iteration mixed with (paper A.2)
        R, graph = len(trainer.mix_epochs), trainer.fabric.graph
        gaps = [trainer.graph_gaps[t % graph.period] for t in range((trainer.iteration - 1) * R, trainer.iteration * R)]
        out["spectral_gap"] = float(np.mean(gaps))
        if graph.time_varying:
            out["spectral_gap_rounds"], out["period_spectral_gap"] = gaps, trainer.period_gap
    if trainer.coordinator:
        rets = coord.episode_returns
        out["train_reward"] = float(np.mean(rets)) if rets else None
        if coord.episode_wins:
            out["train_win_rate"] = float(np.mean(coord.episode_wins))
    if stale:  # rounds between a message's sending and its mixing, over every message of every rank
        total, count, *maxima = stale_sums
        out["staleness_mean"] = total / count if count else None
        out["staleness_max"] = int(max(maxima))
    out["bytes"] = job_bytes(totals[len(scalars) + len(flags):])  # every rank's, summed
    out["stop"] = sums["stop"] > 0
    return out


def staleness_slots(trainer) -> list[float]:
    """Bounded staleness: this rank's (sum, count) of its messages' staleness and its maximum in its own slot
    (a sum of slots is every rank's maximum); [] without it."""
    stale = trainer.fabric.stale or trainer.fabric.arrival
    if stale is None:
        return []
    total, count, most = stale.window()
    maxima = [0.0] * trainer.fabric.world
    maxima[trainer.fabric.rank] = float(most)
    return [float(total), float(count), *maxima]


def raise_if_nonfinite(trainer, flags: list[float]) -> None:
    bad = [(rank, int(f)) for rank, f in enumerate(flags) if f]
    if not bad:
        return
    rank, value = bad[0]
    code, row = (value - 1) % len(WATCHED) + 1, (value - 1) // len(WATCHED)
    what = WATCHED[code - 1]
    if what != "critic parameters" or trainer.critic.per_agent:
        what += f" of agent {trainer.fabric.rows_of(rank)[row]}"
    others = f" (and on {len(bad) - 1} more of the {trainer.fabric.world} ranks)" if len(bad) > 1 else ""
    raise NonFiniteError(f"rank {rank}: {what} became NaN or inf in iteration {trainer.iteration}{others}; "
                         f"stopped without saving, so the last checkpoint is the last good state "
                         f"(a smaller train.lr or train.max_grad_norm may help)")
