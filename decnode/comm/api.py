"""What the learners may ask of a fabric, whichever carries it: `Fabric`, a typed protocol that the gloo fabric
(fabric.Fabric, one process per block of agents) and the XLA fabric (xla.XlaFabric, one device per block)
implement; and `AgentBlocks`, the lines both share (which rows a rank holds, the mean over all agents).

Type hints say `Fabric` from here; code that builds a fabric names the class it builds.
"""

from __future__ import annotations

from typing import Protocol

import torch

from ..net.link import Link
from ..timing import Recorder, Section
from .wire import WireCount


class Pending(Protocol):
    """An in-flight gossip round or reduction: `wait()` returns its result."""

    def wait(self) -> torch.Tensor: ...


class Fabric(Protocol):
    """Agents' rows [a, D] of one rank (its block `agents` of the n_agents), and every call that moves them."""

    rank: int
    world: int
    distributed: bool
    n_agents: int
    per_process: int
    stale: object | None  # bounded staleness (stale.Staleness or arrival.RealArrival): None, synchronous
    arrival: object | None
    agents: range
    device: torch.device
    recorder: Recorder
    link: Link  # the simulated network and faults (net/link.py); on XLA a link without either
    wire: WireCount  # the bytes this rank sent, per link and stream (wire.py)
    context: str
    iteration: int

    def rows_of(self, rank: int) -> range: ...
    def begin_iteration(self, iteration: int) -> None: ...
    def sync(self, name: str = Section.DEVICE) -> None: ...
    def to_host(self, x: torch.Tensor) -> torch.Tensor: ...
    def gossip_start(self, x: torch.Tensor, name: str = Section.GOSSIP) -> Pending: ...
    def gossip(self, x: torch.Tensor, name: str = Section.GOSSIP) -> torch.Tensor: ...
    def allreduce_sum_start(self, x: torch.Tensor, name: str = Section.ALLREDUCE, scale: float = 1.0) -> Pending: ...
    def allreduce_sum(self, x: torch.Tensor, name: str = Section.ALLREDUCE) -> torch.Tensor: ...
    def allreduce_mean_start(self, x: torch.Tensor, name: str = Section.ALLREDUCE) -> Pending: ...
    def allreduce_mean(self, x: torch.Tensor, name: str = Section.ALLREDUCE) -> torch.Tensor: ...
    def to_agents(self, full: torch.Tensor | None, like: torch.Tensor,
                  name: str = Section.STEP_EXCHANGE) -> torch.Tensor: ...
    def to_coordinator(self, local: torch.Tensor, full: torch.Tensor | None,
                       name: str = Section.STEP_EXCHANGE) -> torch.Tensor | None: ...
    def gather_rows(self, x: torch.Tensor, name: str = Section.GATHER) -> torch.Tensor | None: ...
    def broadcast(self, x: torch.Tensor, src: int = 0, name: str = Section.BROADCAST) -> torch.Tensor: ...
    def gather_objects(self, obj) -> list | None: ...
    def barrier(self, name: str = Section.WAIT) -> None: ...


class AgentBlocks:
    """What every fabric computes alike from its placement (n_agents in blocks of per_process consecutive rows)
    and its own gossip_start / allreduce_sum_start."""

    n_agents: int
    per_process: int
    # Bounded staleness (push-sum, algo.staleness), set by the trainer: decided by the simulated clock (stale.py) or
    # by real arrival (arrival.py); None — synchronous gossip, and always on XLA devices.
    stale = None
    arrival = None

    def rows_of(self, rank: int) -> range:
        return range(rank * self.per_process, (rank + 1) * self.per_process)

    def gossip(self, x: torch.Tensor, name: str = Section.GOSSIP) -> torch.Tensor:
        return self.gossip_start(x, name).wait()

    def allreduce_mean_start(self, x: torch.Tensor, name: str = Section.ALLREDUCE) -> Pending:
        """Post the mean over all n agents of the rows x [a, D]; x may change as soon as this returns.
        `.wait()` -> [D], the same on every rank."""
        return self.allreduce_sum_start(x.sum(dim=0) if x.shape[0] > 1 else x[0], name, scale=1 / self.n_agents)

    def allreduce_mean(self, x: torch.Tensor, name: str = Section.ALLREDUCE) -> torch.Tensor:
        """Mean over all n agents of the rows x [a, D] -> [D] (a persistent buffer on the gloo fabric)."""
        return self.allreduce_mean_start(x, name).wait()
