"""The communication fabric: every message the algorithm sends goes through `Fabric`.

A process holds a block of consecutive agents (rows of an [a, D] tensor). With one process the fabric touches
no torch.distributed at all: gossip is the local product P @ Θ and an all-reduce is a mean over rows — the
paper's single-worker setting and our reference. With several processes the same calls become gloo
point-to-point messages and collectives. Every wait carries a timeout, so a dead peer becomes an error.
`Collectives` is the part that needs no agents (sums, broadcasts, gathers): what evaluation and the analysis
tools use. With a network profile (net.py) every message also carries its sender's simulated clock and every
collective joins the ranks' clocks, so each rank knows the time a real node would see.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from contextlib import contextmanager, nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist

from .elastic import group_store
from .frames import MAGIC, SENT, STAMP, Frames, mismatch
from .net import PRESETS, Emulator, NetProfile, NodeClock
from .timing import Recorder, Section
from .topology import block_plan, mixing_matrix
from .watch import Watchdog

# The point-to-point streams. gloo matches a receive by (peer, tag) alone, so two streams in flight between the
# same ranks (the actor's and the critic's gossip under DecPG with local critics) must never share a tag: a
# stream's tag is its place here. Its name is also the timing section it is booked under.
P2P_STREAMS = (Section.GOSSIP, Section.GOSSIP_CRITIC, Section.STEP_EXCHANGE, Section.REWARD_SCATTER)


def stream_tag(name: str) -> int:
    if name not in P2P_STREAMS:
        raise ValueError(f"'{name}' is not a point-to-point stream: add it to comm.P2P_STREAMS "
                         f"({', '.join(P2P_STREAMS)})")
    return 1 + P2P_STREAMS.index(name)


class CommError(RuntimeError):
    """A peer did not answer in time or a transfer failed; the message names the rank and the call."""


class GossipHandle:
    """An in-flight gossip round: `wait()` returns P @ Θ for the local rows (a persistent buffer)."""

    def __init__(self, fabric: "Fabric", state: dict, works: list, timer_name: str, stamps: list):
        self._fabric, self._state, self._works, self._name, self._stamps = fabric, state, works, timer_name, stamps

    def wait(self) -> torch.Tensor:
        st = self._state
        with self._fabric.recorder.section(self._name):
            with self._fabric.transport():
                self._fabric._wait_all(self._works, self._name)
                self._fabric._arrived(self._stamps)
            torch.matmul(st["weights"], st["buf"], out=st["out"])
        st["in_flight"] = False
        return st["out"]


class PendingReduce:
    """An in-flight all-reduce: `wait()` returns the reduced persistent buffer (times `scale`)."""

    def __init__(self, group: "Collectives", buf: torch.Tensor, work, name: str, scale: float, sim=None):
        self._group, self._buf, self._work, self._name, self._scale, self._sim = group, buf, work, name, scale, sim

    def wait(self) -> torch.Tensor:
        if self._work is not None:
            with self._group.recorder.section(self._name), self._group.transport():
                self._group._wait_all([self._work], self._name)
                self._group._joined(self._sim)
            self._work = None
        return self._buf.mul_(self._scale) if self._scale != 1.0 else self._buf


class Collectives:
    """Sums, broadcasts and gathers among the job's processes; with one process each is local."""

    def __init__(self, rank: int = 0, world: int = 1, timeout_s: float = 300.0, recorder: Recorder | None = None,
                 net: NetProfile | None = None, seed: int = 0):
        self.rank, self.world = rank, world
        self.timeout = timedelta(seconds=timeout_s)
        self.recorder = recorder or Recorder()
        self.distributed = world > 1
        self._sum_buffers: dict[tuple, torch.Tensor] = {}
        self.context = "setup"  # what the job is doing, for error messages (e.g. "iteration 12")
        # A network profile: every message and collective also advances this node's simulated clock (net.py).
        self.net = net or PRESETS["loopback"]
        active = self.net.active and self.distributed
        self.clock = NodeClock(self.net, rank, seed) if active else None
        self.emulator = Emulator(self.net) if active and self.net.mode == "emulate" else None
        self.recorder.clock = self.clock
        self._sequence: dict[tuple, int] = defaultdict(int)  # messages per (src, dst, tag): both ends agree on ids
        self.frames = Frames()  # every p2p message travels with a header (frames.py)
        self.iteration = -1  # what the job is doing, as a number: -1 during setup (message headers)
        self.watch = None  # watch.Watchdog: hang reports (set by open_fabric in a multi-process job)
        self.faults = None  # faults.Faults: injected failures (set by open_fabric when the config has some)

    def begin_iteration(self, iteration: int) -> None:
        """The trainer's one hook per iteration (counted from 1, as metrics.jsonl does)."""
        self.iteration, self.context = iteration, f"iteration {iteration}"
        if self.clock is not None:
            self.clock.begin_iteration()
        if self.faults is not None:
            self.faults.at_iteration(self)

    def transport(self):
        """Around a communication call: its CPU is the transport's, not compute, on the simulated clock."""
        return self.clock.transport() if self.clock is not None else nullcontext()

    def _wait_all(self, works: list, what: str, nbytes: int = 0) -> None:
        """Wait on works, each a Work or (peer rank, Work, bytes); failures name the peer when it is known, and a
        timeout names the rank everybody waits on (watch.py) or the fault that explains it (faults.py)."""
        watch = self.watch
        for item in works:
            peer, work, size = item if isinstance(item, tuple) else (None, item, nbytes)
            if watch is not None:
                watch.begin(what, peer, size, self.iteration)
            with_peer = f" with rank {peer}" if peer is not None else ""
            try:
                ok = work.wait(self.timeout)
            except RuntimeError as err:
                if "Timed out" in str(err):  # gloo's way of saying ok is False
                    raise CommError(self._timed_out(what, peer)) from None
                known = watch.awaited_verdict() if watch is not None else None  # a peer left diagnosing a hang?
                raise CommError(known or f"rank {self.rank}: {what}{with_peer} failed during {self.context} "
                                f"(is rank {peer if peer is not None else '?'} alive?): "
                                f"{str(err).splitlines()[0]}") from None
            if ok is False:
                raise CommError(self._timed_out(what, peer))
        if watch is not None:
            watch.end()

    def _timed_out(self, what: str, peer: int | None) -> str:
        seconds = self.timeout.total_seconds()
        plain = f"rank {self.rank}: {what}{f' with rank {peer}' if peer is not None else ''} timed out after " \
                f"{seconds:.0f}s during {self.context}"
        fault = self.faults.explain(peer, self.rank) if self.faults is not None else None
        if self.watch is None:
            return f"{plain}: {fault}" if fault else plain
        verdict = f"{plain}: {fault}" if fault else self.watch.verdict(what, peer, seconds, self.iteration)
        return self.watch.share(verdict) or plain  # the first rank's verdict: every rank ends with the same line

    # ---- the simulated network: clocks joined by collectives, stamps on point-to-point messages --------------
    def _join_start(self, cost: float):
        """Post the all-reduce (max) of every rank's clock that a collective starts from; None without a profile."""
        if self.clock is None:
            return None
        clocks = torch.tensor([self.clock.advance(), time.monotonic()], dtype=torch.float64)
        return clocks, dist.all_reduce(clocks, op=dist.ReduceOp.MAX, async_op=True), cost

    def _joined(self, sim) -> None:
        """A collective finished: it started when its last participant joined and took `cost` from there."""
        if sim is None:
            return
        clocks, work, cost = sim
        self._wait_all([work], "clock", 16)
        latest, host = clocks.tolist()
        self.clock.collective(latest, cost)
        if self.emulator:
            self.emulator.hold_until(host + cost)

    def _next(self, src: int, dst: int, tag: int) -> tuple[int, int]:
        """(sequence number, flow id) of the next message from src to dst on tag: both ends count alike."""
        key = (src, dst, tag)
        self._sequence[key] += 1
        return self._sequence[key], ((src * 65536 + dst) * 4096 + tag) * 2**24 + self._sequence[key]

    def _isend(self, x: torch.Tensor, peer: int, tag: int, stamps: list, rows=None) -> list:
        """isend x (or x[rows]) in a frame whose header says what it is and, with a profile, carries its stamp:
        when it leaves this node's link and when it arrives."""
        seq, flow = self._next(self.rank, peer, tag)
        frame = self.frames.get(peer, tag, True, x if rows is None else x[: len(rows)])
        if rows is None:
            frame.payload.copy_(x)
        else:
            torch.index_select(x, 0, rows, out=frame.payload)
        frame.ints[:4] = (MAGIC, self.iteration, tag, seq)
        frame.floats[SENT] = time.time()
        depart = None
        if self.clock is not None:
            nbytes = x.numel() * x.element_size()
            depart, arrive = self.clock.send(nbytes)
            host = self.emulator.send(nbytes) if self.emulator else 0.0
            if self.faults is not None:
                depart, arrive, host = self.faults.link_down(self.rank, peer, depart, arrive, host)
            frame.floats[STAMP] = (depart, arrive, host)
        self.recorder.flow(True, flow, depart)  # before the receiver can see it
        if self.faults is not None and self.faults.drops(self.rank, peer):
            return []  # the receiver's timeout names the fault
        return [(peer, dist.isend(frame.raw, dst=peer, tag=tag), frame.raw.numel())]

    def _irecv(self, x: torch.Tensor, peer: int, tag: int, stamps: list) -> list:
        """Post the receive of a frame; `_arrived` checks its header and copies its payload into x."""
        seq, flow = self._next(peer, self.rank, tag)
        frame = self.frames.get(peer, tag, False, x)
        stamps.append((True, frame, flow, peer, tag, seq, x))
        return [(peer, dist.irecv(frame.raw, src=peer, tag=tag), frame.raw.numel())]

    def _arrived(self, stamps: list) -> None:
        """After the real waits: check every frame's header, unpack it, and (with a profile) complete the receive on
        the simulated clock when the last message arrives."""
        received = []
        for _, frame, flow, peer, tag, seq, dest in stamps:
            problem = mismatch(frame, self.iteration, tag, seq, P2P_STREAMS)
            if problem:
                raise CommError(f"rank {self.rank}: {P2P_STREAMS[tag - 1]} from rank {peer} {problem}")
            dest.copy_(frame.payload)
            if self.faults is not None:
                self.faults.hold(peer, self.rank, float(frame.floats[SENT]))
            received.append((frame.floats[STAMP].tolist(), flow))
        if self.clock is None:
            for _, flow in received:
                self.recorder.flow(False, flow)
            return
        for (depart, arrive, _), flow in sorted(received, key=lambda r: r[0][1]):
            self.clock.receive(depart, arrive)
            self.recorder.flow(False, flow, arrive)
        if self.emulator and received:
            self.emulator.hold_until(max(stamp[2] for stamp, _ in received))

    # ---- collectives -----------------------------------------------------------------------------------------
    def allreduce_sum(self, x: torch.Tensor, name: str = Section.ALLREDUCE) -> torch.Tensor:
        """Elementwise sum of x over ranks (every rank gets it) in a persistent buffer."""
        return self.allreduce_sum_start(x, name).wait()

    def allreduce_sum_start(self, x: torch.Tensor, name: str = Section.ALLREDUCE,
                            scale: float = 1.0) -> PendingReduce:
        key = (tuple(x.shape), x.dtype, name)
        buf = self._sum_buffers.get(key)
        if buf is None:
            buf = self._sum_buffers[key] = torch.empty_like(x)
        buf.copy_(x)
        work = sim = None
        if self.distributed:
            nbytes = buf.numel() * buf.element_size()
            with self.recorder.section(name), self.transport():
                work = dist.all_reduce(buf, async_op=True)
                sim = self._join_start(self.net.allreduce_s(self.world, nbytes))
            self.recorder.count(name, nbytes=nbytes, messages=1)
        return PendingReduce(self, buf, work, name, scale, sim)

    def gather_rows(self, x: torch.Tensor, name: str = Section.GATHER) -> torch.Tensor | None:
        """Rows of every rank stacked [n, ...] on rank 0 (None elsewhere)."""
        if not self.distributed:
            return x.clone()
        with self.recorder.section(name, nbytes=x.numel() * x.element_size(), messages=1), self.transport():
            out = [torch.empty_like(x) for _ in range(self.world)] if self.rank == 0 else None
            sim = self._join_start(self.net.gather_s(self.world, x.numel() * x.element_size()))
            self._wait_all([dist.gather(x.contiguous(), out, dst=0, async_op=True)], name)
            self._joined(sim)
        return torch.cat(out) if self.rank == 0 else None

    def broadcast(self, x: torch.Tensor, src: int = 0, name: str = Section.BROADCAST) -> torch.Tensor:
        if self.distributed:
            with self.recorder.section(name, nbytes=x.numel() * x.element_size(), messages=1), self.transport():
                sim = self._join_start(self.net.broadcast_s(self.world, x.numel() * x.element_size()))
                self._wait_all([dist.broadcast(x, src=src, async_op=True)], name)
                self._joined(sim)
        return x

    def gather_objects(self, obj) -> list | None:
        """Small Python objects of every rank on rank 0 (end-of-run reports)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self, name: str = Section.WAIT) -> None:
        if self.distributed:
            with self.recorder.section(name), self.transport():
                sim = self._join_start(self.net.allreduce_s(self.world, 4))
                self._wait_all([dist.barrier(async_op=True)], name)
                self._joined(sim)


class Fabric(Collectives):
    """The collectives plus what needs the agents: gossip over the kNN ring, the mean over all agents, and the
    per-step exchange between rank 0 (the environments) and each rank's block of agents."""

    def __init__(self, n_agents: int, k: int, rank: int = 0, world: int = 1, timeout_s: float = 300.0,
                 recorder: Recorder | None = None, exchange: str = "p2p", net: NetProfile | None = None,
                 seed: int = 0):
        if n_agents % world:
            raise ValueError(f"{n_agents} agents cannot be split evenly over {world} processes")
        super().__init__(rank, world, timeout_s, recorder, net, seed)
        self.n_agents = n_agents
        self.per_process = n_agents // world
        self.agents = range(rank * self.per_process, (rank + 1) * self.per_process)
        # How rank 0 and the agents swap observations and actions each step: posted point-to-point messages, or
        # scatter/gather collectives (benchmarks/comm.py measures both; they are close here).
        self.exchange = exchange
        self.P = mixing_matrix(n_agents, k)
        self.plan = block_plan(self.P, world, rank)
        self._gossip_state: dict[str, dict] = {}

    def rows_of(self, rank: int) -> range:
        return range(rank * self.per_process, (rank + 1) * self.per_process)

    # ---- DSGD mixing -----------------------------------------------------------------------------------------
    def gossip_start(self, x: torch.Tensor, name: str = Section.GOSSIP) -> GossipHandle:
        """Post one mixing round of the local rows x [a, D] on stream `name` (one of P2P_STREAMS); x may be
        changed as soon as this returns. Each stream has its own tag and buffers, so several may be in flight."""
        st = self._gossip_state.get(name) or self._make_gossip_state(name, x.shape[1], x.dtype)
        if st["in_flight"]:
            raise RuntimeError(f"gossip stream '{name}' posted again before its previous round was waited on")
        if (x.shape[1], x.dtype) != st["key"]:
            raise ValueError(f"gossip stream '{name}' carries rows of {st['key']}, got {(x.shape[1], x.dtype)}: "
                             "give a differently sized vector its own stream")
        tag = st["tag"]
        with self.recorder.section(name), self.transport():
            st["buf"][: self.per_process].copy_(x)
            works, stamps = [], []
            for peer, (lo, hi) in st["recv_slices"].items():
                works += self._irecv(st["buf"][lo:hi], peer, tag, stamps)
            for peer, rows in st["send_rows"].items():
                works += self._isend(x, peer, tag, stamps, rows)
            self.recorder.count(name, nbytes=st["send_bytes"], messages=len(st["send_rows"]))
        st["in_flight"] = True
        return GossipHandle(self, st, works, name, stamps)

    def gossip(self, x: torch.Tensor, name: str = Section.GOSSIP) -> torch.Tensor:
        return self.gossip_start(x, name).wait()

    def _make_gossip_state(self, name: str, dim: int, dtype: torch.dtype) -> dict:
        # Allocated once per stream: no model-sized allocation per round.
        plan = self.plan
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
        self._gossip_state[name] = st
        return st

    # ---- parameter sharing -----------------------------------------------------------------------------------
    def allreduce_mean(self, x: torch.Tensor, name: str = Section.ALLREDUCE) -> torch.Tensor:
        """Mean over all n agents of the rows x [a, D] -> [D] (a persistent buffer)."""
        return self.allreduce_mean_start(x, name).wait()

    def allreduce_mean_start(self, x: torch.Tensor, name: str = Section.ALLREDUCE) -> PendingReduce:
        """Post the mean over all agents' rows; x may change as soon as this returns. `.wait()` -> [D]."""
        return self.allreduce_sum_start(x.sum(dim=0) if x.shape[0] > 1 else x[0], name, scale=1 / self.n_agents)

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
                sim = self._join_start(self.net.gather_s(self.world, like.numel() * like.element_size()))
                self._wait_all([dist.scatter(like, chunks, src=0, async_op=True)], name)
                self._joined(sim)
            return like
        stamps = []
        with self.recorder.section(name), self.transport():
            if self.rank == 0:
                works = [w for r in range(1, self.world)
                         for w in self._isend(full[self.rows_of(r).start: self.rows_of(r).stop], r, tag, stamps)]
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
                sim = self._join_start(self.net.gather_s(self.world, local.numel() * local.element_size()))
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
            self._wait_all(self._isend(local.contiguous(), 0, tag, stamps), name)
            return None


def world_from_env() -> tuple[int, int]:
    """(rank, world size) as torchrun / our launcher set them; (0, 1) when run as a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@contextmanager
def _process_group(timeout_s: float, build, hang_warning_s: float | None = None):
    """Create the process group (if several processes) with an explicit timeout, yield build(rank, world), and
    always tear the group down. A multi-process group also gets its hang watchdog (watch.py; default threshold:
    a quarter of the timeout)."""
    rank, world = world_from_env()
    if world > 1:  # under an elastic agent: in this attempt's own namespace of its store (elastic.py)
        dist.init_process_group("gloo", **group_store(timedelta(seconds=timeout_s)))
    group = build(rank, world)
    if world > 1:
        group.watch = Watchdog(rank, world, hang_warning_s or timeout_s / 4, P2P_STREAMS)
    ok = False
    try:
        yield group
        ok = True
    finally:
        if world > 1:
            try:
                if ok:
                    group.barrier()  # nobody leaves while a peer still needs its messages
            finally:
                group.watch.close()
                dist.destroy_process_group()


def open_fabric(n_agents: int, k: int, timeout_s: float, recorder: Recorder | None = None, exchange: str = "p2p",
                net: NetProfile | None = None, seed: int = 0, hang_warning_s: float | None = None, faults=None):
    """The training job's Fabric over this process group (context manager); `net`: the network to simulate,
    `faults`: a faults.Faults to inject."""
    def build(rank, world):
        fabric = Fabric(n_agents, k, rank, world, timeout_s, recorder, exchange, net, seed)
        fabric.faults = faults
        return fabric
    return _process_group(timeout_s, build, hang_warning_s)


def open_collectives(timeout_s: float, recorder: Recorder | None = None):
    """Collectives over this process group, for jobs without agents to place (context manager)."""
    return _process_group(timeout_s, lambda rank, world: Collectives(rank, world, timeout_s, recorder))
