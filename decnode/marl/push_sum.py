"""Push-sum gossip (Stochastic Gradient Push, Assran et al., ICML 2019): DSGD for graphs whose mixing cannot be
doubly stochastic — directed, irregular, time-varying; synchronous, or with bounded staleness (comm/stale.py: a late
share is added when it arrives)."""

from __future__ import annotations

import torch

from ..comm.api import Fabric, Pending
from ..timing import Section
from .combiners import Combiner, clip_rows_


class PushSum(Combiner):
    """Each agent i carries a numerator xᵢ [D] and a weight wᵢ (1 at the start) and trains on the de-biased
    parameters zᵢ = xᵢ / wᵢ — the `params` the trainer acts with and takes the gradient at. One step:

        x ← A_t x − η g(z),   w ← A_t w,   z ← x / w

    with A_t the column-stochastic matrix of gossip round t (the fabric's graph after Graph.push_weights: agent j
    keeps and sends equal shares 1/(out-degree_j(t) + 1)). What is conserved: a column-stochastic A_t keeps every
    column sum, so Σᵢ wᵢ = n exactly (up to rounding) and Σᵢ xᵢ / n — the mass — moves as SGD on the average,
    mean x ← mean x − η · mean g. Once the zᵢ agree (A_t's graph strongly connected over a period), they agree on
    that average. Between mixes (algo.mix_every=iteration) only x steps: x ← x − η g.

    On a regular undirected graph A_t is the uniform row-stochastic matrix DecPG mixes with, w stays 1 and z = x:
    the step is DecPG's, θ ← Pθ − η g, with the gossip of [x | w] posted before backward as DecPG posts θ's.

    x and w live here, as one [a, D + 1] tensor — exactly the message: one row of D + 1 values per agent and round.
    They are part of the checkpoint (state_dict, rows by agent), so a resumed run continues with the same x and w,
    not with z·w (which would not round back to x)."""

    streams = (Section.GOSSIP, Section.GOSSIP_CRITIC)

    def __init__(self, fabric: Fabric, name: str = Section.GOSSIP):
        super().__init__(fabric, name)
        self._handle: Pending | None = None
        self.xw: torch.Tensor | None = None  # [a, D + 1]: x | w, made from θ₀ at the first step (or a checkpoint)

    def _state(self, params: torch.Tensor) -> torch.Tensor:
        if self.xw is None:
            self.xw = torch.empty(params.shape[0], params.shape[1] + 1, dtype=params.dtype, device=params.device)
            self.xw[:, :-1].copy_(params)  # w = 1: z = x = θ₀
            self.xw[:, -1] = 1.0
        return self.xw

    def before_backward(self, params: torch.Tensor, mix: bool) -> None:
        xw = self._state(params)
        self._handle = self.fabric.gossip_start(xw, self.name) if mix else None

    def step(self, params: torch.Tensor, grads: torch.Tensor, lr: float, max_grad_norm: float) -> None:
        xw = self._state(params)
        clip_rows_(grads, max_grad_norm)
        if self._handle is not None:
            xw.copy_(self._handle.wait())
            self._handle = None
        x, w = xw[:, :-1], xw[:, -1:]
        x.sub_(grads, alpha=lr)
        torch.div(x, w, out=params)

    def finish(self, params: torch.Tensor) -> None:
        """Bounded staleness (algo.staleness): the shares still held at the iteration's end are waited for and added,
        so every iteration ends with Σw = n and nothing in flight (a checkpoint holds it all)."""
        late = self.fabric.gossip_flush(self.name)
        if late is not None:
            self.xw.add_(late)
            torch.div(self.xw[:, :-1], self.xw[:, -1:], out=params)

    def state_dict(self) -> dict:
        if self.xw is None:  # no step yet: x = θ and w = 1 follow from the parameters
            return {}
        return {"x": self.xw[:, :-1].cpu().clone(), "w": self.xw[:, -1].cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        if not state:
            self.xw = None
            return
        x, w = state["x"], state["w"]
        self.xw = torch.cat([x, w.unsqueeze(1)], dim=1).to(self.fabric.device)
