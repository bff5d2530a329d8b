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
    # Agent groups (groups.AgentGroups) when a job has more than one, set by the trainer: PS then averages within
    # each group (group_mean_start); None — one group, every mean is over all n agents.
    groups = None

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

    def group_sums_start(self, x: torch.Tensor, name: str = Section.ALLREDUCE) -> "GroupSums":
        """Post the sum over each group's agents of the rows x [a, D]: one all-reduce of [G, D] (every rank adds
        its rows into their groups' rows; G = 1 without groups). `.wait()` -> [G, D] group means, the same on
        every rank. One collective for all groups — G·D values, where an all-reduce per group among its own ranks
        would move D_g each but pay G latencies and need a process group per group."""
        index = self.groups.index() if self.groups is not None else [0] * self.n_agents
        G = max(index) + 1
        local = torch.as_tensor(index[self.rows_of(self.rank).start: self.rows_of(self.rank).stop])
        sums = torch.zeros(G, x.shape[1], dtype=x.dtype, device=x.device)
        sums.index_add_(0, local.to(x.device), x)
        counts = torch.bincount(torch.as_tensor(index), minlength=G).to(x.dtype).to(x.device)
        return GroupSums(self.allreduce_sum_start(sums.reshape(-1), name), G, counts, local.to(x.device))

    def group_mean_start(self, x: torch.Tensor, name: str = Section.ALLREDUCE) -> "GroupSums":
        """group_sums_start; `.wait_rows()` -> [a, D], each local row's group mean."""
        return self.group_sums_start(x, name)


class GroupSums:
    """An in-flight per-group all-reduce (AgentBlocks.group_sums_start)."""

    def __init__(self, pending: Pending, G: int, counts: torch.Tensor, local: torch.Tensor):
        self._pending, self.G, self._counts, self._local = pending, G, counts, local

    def wait(self) -> torch.Tensor:
        """[G, D]: each group's mean."""
        total = self._pending.wait()
        return total.reshape(self.G, -1) / self._counts.unsqueeze(1)

    def wait_rows(self) -> torch.Tensor:
        """[a, D]: the mean of each local row's group."""
        return self.wait().index_select(0, self._local)

