"""The paper's noise metrics (A.5) across real processes, in ONE all-reduce per iteration.

For rows xᵢ (one per agent) the inter-agent variance (1/n) Σᵢ ‖xᵢ − x̄‖² equals (1/n) Σᵢ ‖xᵢ‖² − ‖x̄‖², so each
rank only contributes Σ of its rows and Σ of their squared norms. Applied to gradients it is the inter-agent
gradient disagreement Dₘ, to updates Δθᵢ the update variance Vₘ, to parameters the consensus distance. Sums are
taken in float64 so the subtraction does not lose the (small) variance.
"""

from __future__ import annotations

import torch

from ..comm.api import Fabric
from ..groups import AgentGroups
from ..timing import Section


def agent_variance_and_sums(fabric: Fabric, rows: dict[str, torch.Tensor], scalars: list[float],
                            groups: AgentGroups | None = None) -> tuple[dict, list]:
    """rows: name -> local rows [a, D]; scalars: per-rank numbers to sum over ranks. Returns
    ({name: (1/n) Σᵢ ‖xᵢ − x̄‖²}, [summed scalars]).

    groups (agent groups, each with its own network): x̄ is the mean of agent i's group, so the value is the
    within-group variance pooled over the groups, (1/n) Σ_g Σ_{i∈g} ‖xᵢ − x̄_g‖², and out["groups"] gives each
    group's own (1/n_g) Σ_{i∈g} ‖xᵢ − x̄_g‖². The same one all-reduce carries G sums per quantity."""
    if groups is not None:
        return _grouped(fabric, rows, scalars, groups)
    parts, dims = [], []
    for x in rows.values():
        x = x.double()
        parts += [x.sum(0)]
        dims.append(x.shape[1])
    squares = [x.double().pow(2).sum() for x in rows.values()]
    vec = torch.cat([*parts, torch.stack(squares) if squares else torch.zeros(0, dtype=torch.float64),
                     torch.tensor(scalars, dtype=torch.float64)])
    total = fabric.allreduce_sum(vec, name=Section.STATS)
    n, out, offset = fabric.n_agents, {}, 0
    sums = []
    for d in dims:
        sums.append(total[offset: offset + d])
        offset += d
    for i, name in enumerate(rows):
        mean_sq = total[offset + i].item() / n
        variance = mean_sq - (sums[i] / n).pow(2).sum().item()
        out[name] = _above_rounding(variance, mean_sq)
    offset += len(rows)
    return out, total[offset:].tolist()


def _above_rounding(variance: float, mean_sq: float) -> float:
    # Below ~1e-12 of the magnitude the difference is float64 rounding (identical PS replicas), not variance.
    return variance if variance > 1e-12 * mean_sq else 0.0


def _grouped(fabric: Fabric, rows: dict[str, torch.Tensor], scalars: list[float], groups: AgentGroups):
    index = groups.index()
    G, block = len(groups.groups), fabric.rows_of(fabric.rank)
    local = torch.as_tensor(index[block.start: block.stop])
    parts = []
    for x in rows.values():
        x = x.double()
        sums = torch.zeros(G, x.shape[1], dtype=torch.float64).index_add_(0, local, x)
        squares = torch.zeros(G, dtype=torch.float64).index_add_(0, local, x.pow(2).sum(1))
        parts += [sums.reshape(-1), squares]
    vec = torch.cat([*parts, torch.tensor(scalars, dtype=torch.float64)])
    total = fabric.allreduce_sum(vec, name=Section.STATS)
    counts = [len(g.agents) for g in groups.groups]
    out, per_group, offset = {}, {g.name: {} for g in groups.groups}, 0
    for name, x in rows.items():
        D = x.shape[1]
        sums = total[offset: offset + G * D].reshape(G, D)
        squares = total[offset + G * D: offset + G * D + G]
        offset += G * D + G
        pooled = 0.0
        for g, group in enumerate(groups.groups):
            mean_sq = squares[g].item() / counts[g]
            variance = mean_sq - (sums[g] / counts[g]).pow(2).sum().item()
            per_group[group.name][name] = _above_rounding(variance, mean_sq)
            pooled += counts[g] * per_group[group.name][name]
        out[name] = pooled / fabric.n_agents
    out["groups"] = per_group
    return out, total[offset:].tolist()
