"""The paper's noise metrics (A.5) across real processes, in ONE all-reduce per iteration.

For rows xᵢ (one per agent) the inter-agent variance (1/n) Σᵢ ‖xᵢ − x̄‖² equals (1/n) Σᵢ ‖xᵢ‖² − ‖x̄‖², so each
rank only contributes Σ of its rows and Σ of their squared norms. Applied to gradients it is the inter-agent
gradient disagreement Dₘ, to updates Δθᵢ the update variance Vₘ, to parameters the consensus distance. Sums are
taken in float64 so the subtraction does not lose the (small) variance.
"""

from __future__ import annotations

import torch

from ..comm.api import Fabric
from ..timing import Section


def agent_variance_and_sums(fabric: Fabric, rows: dict[str, torch.Tensor],
                            scalars: list[float]) -> tuple[dict, list]:
    """rows: name -> local rows [a, D]; scalars: per-rank numbers to sum over ranks. Returns
    ({name: (1/n) Σᵢ ‖xᵢ − x̄‖²}, [summed scalars])."""
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
        # Below ~1e-12 of the magnitude the difference is float64 rounding (identical PS replicas), not variance.
        out[name] = variance if variance > 1e-12 * mean_sq else 0.0
    offset += len(rows)
    return out, total[offset:].tolist()
