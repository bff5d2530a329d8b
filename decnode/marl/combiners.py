"""The only place DecPG and PS differ: how a block's gradients and parameters are combined into an SGD step.

Which class an algorithm uses, and what it communicates, is its entry in COMBINERS (decnode/extensions.py); a new
one is a Combiner subclass plus one registry line (README "Extending decnode").

All act on flat [a, D] rows (one per local agent). The update is plain SGD (no momentum) written out
directly, because DecPG's step θᵢ ← Σⱼ Pᵢⱼ θⱼ − η gᵢ is not an optimiser step on θᵢ alone.
"""

from __future__ import annotations

import torch

from ..comm.api import Fabric, Pending
from ..extensions import combiner
from ..timing import Section


def clip_rows_(grads: torch.Tensor, max_norm: float) -> torch.Tensor:
    """clip_grad_norm_ per row (each agent clips its own gradient); returns the pre-clip norms [a]."""
    norms = grads.norm(dim=1)
    grads.mul_((max_norm / (norms + 1e-6)).clamp(max=1.0).unsqueeze(1))
    return norms


class Combiner:
    """Hooks around backward: `before_backward`/`after_backward` may start communication that `step` finishes.
    `streams`: the timing section (and message stream) of its communication for the actor's rows and the local
    critics' rows; make_combiner passes one of them as `name`."""

    streams: tuple[str, str] = (Section.CRITIC_SGD, Section.CRITIC_SGD)

    def __init__(self, fabric: Fabric, name: str):
        self.fabric, self.name = fabric, name

    def before_backward(self, params: torch.Tensor, mix: bool) -> None:  # noqa: B027 - optional hook
        pass

    def after_backward(self, grads: torch.Tensor) -> None:  # noqa: B027 - optional hook
        pass

    def step(self, params: torch.Tensor, grads: torch.Tensor, lr: float, max_grad_norm: float) -> None:
        raise NotImplementedError

    def finish(self, params: torch.Tensor) -> None:  # noqa: B027 - optional hook
        """The iteration's last step is done: add what is still in flight (bounded staleness)."""

    def state_dict(self) -> dict:
        """State of its own the combiner carries across iterations, per agent (rows: tensors with an agent axis),
        for the checkpoint; {} — DecPG's and PS's — adds nothing to it."""
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027 - optional hook
        pass


class LocalSGD(Combiner):
    """Each row steps on its own clipped gradient: θᵢ ← θᵢ − η gᵢ (the central critic; DecPG between mixes)."""

    def step(self, params: torch.Tensor, grads: torch.Tensor, lr: float, max_grad_norm: float) -> None:
        clip_rows_(grads, max_grad_norm)
        params.sub_(grads, alpha=lr)


class DecPG(LocalSGD):
    """DSGD: θᵢ ← Σⱼ Pᵢⱼ θⱼ − η ∇Lᵢ(θᵢ). The gradient is taken at the pre-mix θᵢ and the mix uses the
    neighbours' pre-step θⱼ, so the gossip of θ runs while backward computes ∇Lᵢ."""

    streams = (Section.GOSSIP, Section.GOSSIP_CRITIC)

    def __init__(self, fabric: Fabric, name: str = Section.GOSSIP):
        super().__init__(fabric, name)
        self._handle: Pending | None = None

    def before_backward(self, params: torch.Tensor, mix: bool) -> None:
        self._handle = self.fabric.gossip_start(params, self.name) if mix else None

    def step(self, params: torch.Tensor, grads: torch.Tensor, lr: float, max_grad_norm: float) -> None:
        if self._handle is None:
            return super().step(params, grads, lr, max_grad_norm)
        clip_rows_(grads, max_grad_norm)
        mixed = self._handle.wait()
        self._handle = None
        torch.sub(mixed, grads, alpha=lr, out=params)


class ParameterSharing(Combiner):
    """One shared network (per agent group): the gradient averaged over all n agents (over the group's) by
    all-reduce, then one SGD step applied to every replica, so replicas stay bit-identical. The all-reduce is posted right after backward, so work
    placed between the hooks (rank 0's critic epoch) hides its latency."""

    streams = (Section.ALLREDUCE, Section.ALLREDUCE_CRITIC)

    def __init__(self, fabric: Fabric, name: str = Section.ALLREDUCE):
        super().__init__(fabric, name)
        self._pending = None

    def after_backward(self, grads: torch.Tensor) -> None:
        self._pending = self._start(grads)

    def _start(self, grads: torch.Tensor):
        # Agent groups: one network per group, so the mean is each group's (one all-reduce carries all of them).
        if self.fabric.groups is not None:
            return self.fabric.group_mean_start(grads, self.name)
        return self.fabric.allreduce_mean_start(grads, self.name)

    def step(self, params: torch.Tensor, grads: torch.Tensor, lr: float, max_grad_norm: float) -> None:
        pending = self._pending or self._start(grads)
        self._pending = None
        if self.fabric.groups is not None:
            means = pending.wait_rows()  # [a, D]: rows of one group get the same mean, clipped alike
            clip_rows_(means, max_grad_norm)
            params.sub_(means, alpha=lr)
            return
        mean = pending.wait()
        clip_rows_(mean.unsqueeze(0), max_grad_norm)
        params.sub_(mean.unsqueeze(0), alpha=lr)


def make_combiner(algo: str, fabric: Fabric, critic: bool = False) -> Combiner:
    """The algorithm's combiner for the actor's rows or (critic=True) the local critics', each on its own stream;
    an unknown algorithm is a ConfigError naming the known ones."""
    cls = combiner(algo).load()
    return cls(fabric, cls.streams[1 if critic else 0])
