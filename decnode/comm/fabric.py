"""The communication fabric: every message the algorithm sends goes through `Fabric`.

A process holds a block of consecutive agents (rows of an [a, D] tensor). With one process the fabric touches
no torch.distributed at all: gossip is the local product P @ Θ and an all-reduce is a mean over rows — the
paper's single-worker setting and our reference. With several processes the same calls become gloo
point-to-point messages and collectives (transport.py: waits, timeouts, headers; the rank's Link from net/link.py:
the simulated clock and faults). The XLA twin (xla.py) implements the same protocol (api.py).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .api import AgentBlocks
from .arrival import RealArrival
from .stale import Staleness
from .transport import Collectives, process_group, stream_tag
from .watchdog import Watchdog
from ..net.link import Link
from ..timing import Recorder, Section
from ..topology import Graph, block_plan, build_graph


class GossipHandle:
    """An in-flight gossip round: `wait()` returns P @ Θ for the local rows (a persistent buffer)."""

    def __init__(self, fabric: "Fabric", state: dict, works: list, timer_name: str, stamps: list, round_: int):
        self._fabric, self._state, self._works, self._name, self._stamps = fabric, state, works, timer_name, stamps
        self._round = round_

    def wait(self) -> torch.Tensor:
        st, fabric = self._state, self._fabric
        late = ()
        with fabric.recorder.section(self._name):
            with fabric.transport():
                arrival = fabric.arrival
                if arrival is not None:  # real arrival (arrival.py): wait only for what is τ rounds old
                    for o in arrival.due(self._name, self._round):
                        fabric._wait_all([(o.peer, o.work, o.nbytes)], self._name,
                                         behind=(self._round - o.round, arrival.tau))
                    late = arrival.settle(self._name, self._round, fabric._arrived)
                else:
                    fabric._wait_all(self._works, self._name)
                    received = fabric._unpack(self._stamps)
                    if fabric.stale is None:
                        fabric._complete(received)
                    else:  # the simulated clock decides what is mixed now (stale.py)
                        late = fabric.stale.settle(self._name, self._round, received,
                                                   list(st["recv_slices"].values()), st["weights"], st["buf"],
                                                   fabric._complete)
            torch.matmul(st["weights"], st["buf"], out=st["out"])
            for share in late:
                st["out"].add_(share)
        st["in_flight"] = False
        return st["out"]


class Fabric(AgentBlocks, Collectives):
    """The collectives plus what needs the agents: gossip over the job's graph, the mean over all agents, and the
    per-step exchange between rank 0 (the environments) and each rank's block of agents (api.Fabric on gloo).

    `graph`: a topology.Graph, or an int k for the paper's kNN ring. Gossip round t mixes with the graph's matrix
    of round t (a time-varying graph changes whom it sends to each round); every rank counts rounds alike — per
    stream, from `rounds_per_iteration` × the iteration begun when the trainer sets it — so no message says which."""

    def __init__(self, n_agents: int, graph: Graph | int, rank: int = 0, world: int = 1, timeout_s: float = 300.0,
                 recorder: Recorder | None = None, exchange: str = "p2p", link: Link | None = None,
                 watch: Watchdog | None = None):
        if n_agents % world:
            raise ValueError(f"{n_agents} agents cannot be split evenly over {world} processes")
        super().__init__(rank, world, timeout_s, recorder, link, watch)
        self.n_agents = n_agents
        self.per_process = n_agents // world
        self.agents = range(rank * self.per_process, (rank + 1) * self.per_process)
        # How rank 0 and the agents swap observations and actions each step: posted point-to-point messages, or
        # scatter/gather collectives (benchmarks/comm.py measures both; they are close here).
        self.exchange = exchange
        self.graph = graph if isinstance(graph, Graph) else build_graph("knn", n_agents, k=graph)
        if self.graph.n != n_agents:
            raise ValueError(f"the graph has {self.graph.n} nodes, but the job has {n_agents} agents")
        self.P = self.graph.phases[0]
        self.plans = [block_plan(W, world, rank) for W in self.graph.phases]  # one per round of the period
        self.plan = self.plans[0]
        self.rounds_per_iteration: int | None = None  # gossip rounds of a stream per iteration (the trainer's)
        self._rounds: dict[str, int] = {}  # per stream: rounds posted since the iteration began (or ever)
        self._gossip_state: dict[tuple, dict] = {}
        self.stale: Staleness | None = None  # bounded-staleness gossip (stale.py): set by the trainer for push-sum
        self.arrival: RealArrival | None = None  # the same by real arrival (arrival.py): no profile, or emulate

    def gossip_flush(self, name: str) -> torch.Tensor | None:
        """Bounded staleness: wait for every message still held on stream `name` and return the sum of their shares
        (None if none), to be added to the rows they were sent to."""
        if self.arrival is not None:
            return self._arrival_flush(name)
        if self.stale is None or not self.stale.held.get(name):
            return None
        with self.recorder.section(name), self.transport():
            shares = self.stale.flush(name, self.gossip_round(name), self._complete)
            total = shares[0].clone()
            for share in shares[1:]:
                total.add_(share)
        return total

    def _arrival_flush(self, name: str) -> torch.Tensor | None:
        recvs, sends = self.arrival.flush(name)
        if not recvs and not sends:
            return None
        with self.recorder.section(name), self.transport():
            self._wait_all([(o.peer, o.work, o.nbytes) for o in recvs] + sends, name)
            shares = self.arrival.late_shares(recvs, self.gossip_round(name), self._arrived)
        if not shares:
            return None
        total = shares[0].clone()
        for share in shares[1:]:
            total.add_(share)
        return total

    def begin_iteration(self, iteration: int) -> None:
        super().begin_iteration(iteration)
        self._rounds.clear()

    def gossip_round(self, name: str) -> int:
        """The round the next gossip on stream `name` is: counted from the iteration when the trainer says how many
        rounds an iteration has (so a resumed job continues the period where it stopped), else since the start."""
        done = self._rounds.get(name, 0)
        if self.rounds_per_iteration is None:
            return done
        return max(self.iteration - 1, 0) * self.rounds_per_iteration + done

    # ---- DSGD mixing -----------------------------------------------------------------------------------------
    def gossip_start(self, x: torch.Tensor, name: str = Section.GOSSIP) -> GossipHandle:
        """Post one mixing round of the local rows x [a, D] on stream `name` (one of P2P_STREAMS); x may be
        changed as soon as this returns. Each stream has its own tag and buffers, so several may be in flight."""
        t = self.gossip_round(name)
        phase = t % self.graph.period
        st = self._gossip_state.get((name, phase)) or self._make_gossip_state(name, phase, x.shape[1], x.dtype)
        if any(s["in_flight"] for (stream, _), s in self._gossip_state.items() if stream == name):
            raise RuntimeError(f"gossip stream '{name}' posted again before its previous round was waited on")
        if (x.shape[1], x.dtype) != st["key"]:
            raise ValueError(f"gossip stream '{name}' carries rows of {st['key']}, got {(x.shape[1], x.dtype)}: "
                             "give a differently sized vector its own stream")
        tag, arrival = st["tag"], self.arrival
        with self.recorder.section(name), self.transport():
            if arrival is not None:  # the send frames this round reuses: their sends must be done (a receiver that
                # has not posted their receives is τ + 2 rounds behind)
                self._wait_all(arrival.sends_to_reuse(name, t), name, behind=(arrival.tau + 2, arrival.tau))
            recv_slot, send_slot = (arrival.recv_slot(t), arrival.send_slot(t)) if arrival is not None else (0, 0)
            st["buf"][: self.per_process].copy_(x)
            works, stamps, sends = [], [], []
            for peer, (lo, hi) in st["recv_slices"].items():
                works += self._irecv(st["buf"][lo:hi], peer, tag, stamps, recv_slot)
            for peer, rows in st["send_rows"].items():
                sends += self._isend(x, peer, tag, rows, send_slot)
            self.recorder.count(name, nbytes=st["send_bytes"], messages=len(st["send_rows"]))
            if arrival is not None:  # its waiters start now; the handle waits only for what is τ rounds old
                arrival.posted(name, t, works, stamps, st["weights"], list(st["recv_slices"].values()), sends,
                               self.timeout)
                works, stamps = [], []
            else:
                works += sends
        st["in_flight"] = True
        self._rounds[name] = self._rounds.get(name, 0) + 1
        return GossipHandle(self, st, works, name, stamps, t)

    def _make_gossip_state(self, name: str, phase: int, dim: int, dtype: torch.dtype) -> dict:
        # Allocated once per stream and round of the period: no model-sized allocation per round.
        plan = self.plans[phase]
        n_recv = sum(len(v) for v in plan.recv.values())
        st = {
            "tag": stream_tag(name),
            "key": (dim, dtype),
            "in_flight": False,
            "buf": torch.empty(self.per_process + n_recv, dim, dtype=dtype),
            "out": torch.empty(self.per_process, dim, dtype=dtype),
            "weights": torch.as_tensor(plan.weights, dtype=dtype),
            "recv_slices": {},
            "send_rows": {q: torch.as_tensor(rows, dtype=torch.long) for q, rows in plan.send.items()},
        }
        offset = self.per_process
        for q in sorted(plan.recv):
            st["recv_slices"][q] = (offset, offset + len(plan.recv[q]))
            offset += len(plan.recv[q])
        st["send_bytes"] = sum(len(r) for r in plan.send.values()) * dim * st["buf"].element_size()
        self._gossip_state[(name, phase)] = st
        return st

    # ---- coordinator <-> agents ------------------------------------------------------------------------------
    def to_agents(self, full: torch.Tensor | None, like: torch.Tensor,
                  name: str = Section.STEP_EXCHANGE) -> torch.Tensor:
        """Rank 0 sends each rank its agents' slice of full [n, ...]; returns the local slice [a, ...].

        `like` is a local-sized template (shape and dtype) that receiving ranks fill. `name` is the stream
        (P2P_STREAMS): the per-step exchange, or the per-iteration reward scatter.
        """
        tag = stream_tag(name)  # checked with one process too, so tests catch an unknown stream
        if not self.distributed:
            return full
        if self.exchange == "collective":
            with self.recorder.section(name), self.transport():
                chunks = list(full.split(self.per_process)) if self.rank == 0 else None
                sim = self._join_start(self.link.profile.gather_s(self.world, like.numel() * like.element_size()))
                self.wire.collective(name, like.numel() * like.element_size() * (self.world - 1) * (self.rank == 0))
                self._wait_all([dist.scatter(like, chunks, src=0, async_op=True)], name)
                self._joined(sim)
            return like
        stamps = []
        with self.recorder.section(name), self.transport():
            if self.rank == 0:
                works = [w for r in range(1, self.world)
                         for w in self._isend(full[self.rows_of(r).start: self.rows_of(r).stop], r, tag)]
                self.recorder.count(name, nbytes=(full.numel() - like.numel()) * full.element_size(),
                                    messages=self.world - 1)
                self._wait_all(works, name)
                return full[: self.per_process]
            self._wait_all(self._irecv(like, 0, tag, stamps), name)
            self._arrived(stamps)
            return like

    def to_coordinator(self, local: torch.Tensor, full: torch.Tensor | None,
                       name: str = Section.STEP_EXCHANGE) -> torch.Tensor | None:
        """Every rank sends its rows local [a, ...] to rank 0, which returns them stacked in full [n, ...].
        Same stream name as to_agents: the messages travel the other way, so they cannot be confused."""
        tag = stream_tag(name)  # checked with one process too, so tests catch an unknown stream
        if not self.distributed:
            return local
        if self.exchange == "collective":
            with self.recorder.section(name), self.transport():
                chunks = list(full.split(self.per_process)) if self.rank == 0 else None
                sim = self._join_start(self.link.profile.gather_s(self.world, local.numel() * local.element_size()))
                self.wire.collective(name, 0 if self.rank == 0 else local.numel() * local.element_size())  # wire.py
                self._wait_all([dist.gather(local.contiguous(), chunks, dst=0, async_op=True)], name)
                self._joined(sim)
            return full if self.rank == 0 else None
        stamps = []
        with self.recorder.section(name), self.transport():
            if self.rank == 0:
                full[: self.per_process].copy_(local)
                works = [w for r in range(1, self.world)
                         for w in self._irecv(full[self.rows_of(r).start: self.rows_of(r).stop], r, tag, stamps)]
                self._wait_all(works, name)
                self._arrived(stamps)
                return full
            self.recorder.count(name, nbytes=local.numel() * local.element_size(), messages=1)
            self._wait_all(self._isend(local.contiguous(), 0, tag), name)
            return None


def open_fabric(n_agents: int, graph: Graph | int, timeout_s: float, recorder: Recorder | None = None, exchange: str = "p2p",
                link=None, hang_warning_s: float | None = None):
    """The training job's Fabric over this process group (context manager). `link(rank, world)`: this rank's Link
    (net/link.py: the network to simulate, the faults to inject); none by default."""
    def build(rank, world, watch):
        return Fabric(n_agents, graph, rank, world, timeout_s, recorder, exchange,
                      link(rank, world) if link is not None else None, watch)
    return process_group(timeout_s, build, hang_warning_s)
