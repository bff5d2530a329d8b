"""Agent groups' actors over one block of rows: each group its own network shape, all of them in one [A, D] tensor.

Group g's agents run RecurrentNet(·, obs_dim_g, n_actions_g) on the first obs_dim_g features of the (zero-padded)
observations, and its logits are padded with MASKED_LOGIT up to the job's largest action count, so the acting loop,
the PPO loss and the sampler see one [A, …, K] tensor whatever the groups. The parameters of every group are views
of one `params` [A, D] whose width D is the job's largest group's parameter count (the same on every rank, so the
combiners gossip and all-reduce rows as they always do); a smaller group's tail columns stay zero — its gradient
there is zero and a mix of zeros is zero — and cost only their bytes on the wire. With one group the actor is a
plain RecurrentNet, bit for bit as before groups existed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .models import MASKED_LOGIT, RecurrentNet, flatten_parameters


@dataclass(frozen=True)
class GroupShape:
    """Group `index`'s agents that a block holds: its rows of the block, observation size and action count."""

    index: int
    rows: slice
    obs_dim: int
    n_actions: int


def group_seed(seed: int, group: int) -> int:
    """θ₀ of group g draws from its own generator (group 0: the run's seed itself, as a one-group run does)."""
    return seed if group == 0 else (seed * 1_000_003 + 104_729 * group) % (2**63 - 1)


def width(obs_dim: int, n_actions: int, hidden: int) -> int:
    """The flat parameter count of one agent's actor of this shape."""
    return sum(p[0].numel() for p in RecurrentNet(1, obs_dim, n_actions, hidden).parameters())


class GroupedNet(nn.Module):
    """The groups' RecurrentNets over a block of A rows; the same calls as RecurrentNet (forward, step,
    initial_state)."""

    def __init__(self, shapes: list[GroupShape], A: int, n_out: int, hidden: int, out_gain: float = 1.0,
                 seed: int | None = None):
        super().__init__()
        self.shapes, self.A, self.n_out, self.hidden = shapes, A, n_out, hidden
        self.nets = nn.ModuleList(
            RecurrentNet(s.rows.stop - s.rows.start, s.obs_dim, s.n_actions, hidden, out_gain=out_gain,
                         generator=None if seed is None else torch.Generator().manual_seed(group_seed(seed, s.index)))
            for s in shapes)

    def initial_state(self, M: int) -> Tensor:
        return torch.zeros(self.A, M, self.hidden)

    def forward(self, x: Tensor, h0: Tensor, reset: Tensor, return_hiddens: bool = False):
        """x [A, T, M, in ≥ every group's obs_dim], h0 [A, M, H], reset [T, M] -> (logits [A, T, M, n_out], h)."""
        outs, hs = [], []
        for s, net in zip(self.shapes, self.nets):
            out, h = net(x[s.rows, ..., : s.obs_dim], h0[s.rows], reset, return_hiddens)
            outs.append(F.pad(out, (0, self.n_out - s.n_actions), value=MASKED_LOGIT))
            hs.append(h)
        return torch.cat(outs), torch.cat(hs)

    def step(self, x: Tensor, h: Tensor, reset: Tensor) -> tuple[Tensor, Tensor]:
        """One acting step: x [A, M, in], h [A, M, H], reset [M] -> (logits [A, M, n_out], h)."""
        out, h = self.forward(x.unsqueeze(1), h, reset.unsqueeze(0))
        return out.squeeze(1), h


def flatten_grouped(net: GroupedNet, D: int) -> tuple[Tensor, Tensor]:
    """flatten_parameters for a GroupedNet: every group's parameters become views of its rows' first columns of one
    params [A, D] (and their grads of grads [A, D]); the columns past a group's own count are zeros."""
    params = torch.zeros(net.A, D)
    grads = torch.zeros(net.A, D)
    for s, sub in zip(net.shapes, net.nets):
        off = 0
        for p in sub.parameters():
            n = p[0].numel()
            if off + n > D:
                raise ValueError(f"group {s.index}'s actor has more than D={D} parameters")
            # a slice of rows and columns of a row-major [A, D]: each row's columns stay contiguous, so .view splits them
            params[s.rows, off: off + n].copy_(p.detach().reshape(-1, n))
            p.data = params[s.rows, off: off + n].view(p.shape)
            p.grad = grads[s.rows, off: off + n].view(p.shape)
            off += n
    return params, grads


def actor_net(shapes: list[GroupShape] | None, A: int, obs_dim: int, n_actions: int, hidden: int, D: int | None,
              out_gain: float = 0.01, seed: int | None = None) -> tuple[nn.Module, Tensor, Tensor]:
    """(net, params [A, D], grads [A, D]) for a block of A actors: a plain RecurrentNet when `shapes` is None (one
    group), else the groups' GroupedNet padded to the job's width D."""
    if shapes is None:
        net = RecurrentNet(A, obs_dim, n_actions, hidden, out_gain=out_gain,
                           generator=None if seed is None else torch.Generator().manual_seed(seed))
        return (net, *flatten_parameters(net, A))
    net = GroupedNet(shapes, A, n_actions, hidden, out_gain=out_gain, seed=seed)
    return (net, *flatten_grouped(net, D))
