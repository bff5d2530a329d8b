"""What the job's processes say to each other without agents to place: sums, broadcasts, gathers, and the framed
point-to-point messages that the Fabric (fabric.py) builds its gossip and exchange on.

With one process every call is local. With several they are gloo collectives and posted isend/irecv; every wait
carries a timeout and is watched (watchdog.py), so a dead or frozen peer becomes an error naming it. Every point-to-
point message carries a header (frames.py). Every send, receive and collective also goes through the rank's Link
(net/link.py): with a network profile a message carries its sender's simulated stamp and every collective joins the
ranks' clocks, so each rank knows the time a real node would see; injected faults act there too. Evaluation and the
analysis tools use `Collectives` alone.
"""

from __future__ import annotations

import os
import pickle
import secrets
import time
from collections import defaultdict
from contextlib import contextmanager
from datetime import timedelta

import torch
import torch.distributed as dist

from ..elastic import group_store
from .frames import SENT, STAMP, Frames, mismatch, pack
from ..net.link import Link
from ..timing import Recorder, Section
from .watchdog import Watchdog
from .wire import CLOCK, OBJECTS, WireCount

# The point-to-point streams. gloo matches a receive by (peer, tag) alone, so two streams in flight between the
# same ranks (the actor's and the critic's gossip under DecPG with local critics) must never share a tag: a
# stream's tag is its place here. Its name is also the timing section it is booked under.
P2P_STREAMS = (Section.GOSSIP, Section.GOSSIP_CRITIC, Section.STEP_EXCHANGE, Section.REWARD_SCATTER)


def stream_tag(name: str) -> int:
    if name not in P2P_STREAMS:
        raise ValueError(f"'{name}' is not a point-to-point stream: add it to collectives.P2P_STREAMS "
                         f"({', '.join(P2P_STREAMS)})")
    return 1 + P2P_STREAMS.index(name)


class CommError(RuntimeError):
    """A peer did not answer in time or a transfer failed; the message names the rank and the call."""


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
                 link: Link | None = None, watch: Watchdog | None = None):
        """`link`: this rank's side of the network (net/link.py; default: no simulated network, no faults);
        `watch`: the hang watchdog of a multi-process job (process_group makes it)."""
        self.link = link or Link(rank=rank)
        if self.link.rank != rank:
            raise ValueError(f"the link of rank {self.link.rank} given to rank {rank}")
        self.rank, self.world = rank, world
        self.timeout = timedelta(seconds=timeout_s)
        self.recorder = recorder or Recorder()
        self.distributed = world > 1
        self._sum_buffers: dict[tuple, torch.Tensor] = {}
        self.context = "setup"  # what the job is doing, for error messages (e.g. "iteration 12")
        self.recorder.clock = self.link.clock  # sections are also timed on the simulated clock (trace.json)
        self._sequence: dict[tuple, int] = defaultdict(int)  # messages per (src, dst, tag): both ends agree on ids
        self.frames = Frames()  # every p2p message travels with a header (frames.py)
        self.iteration = -1  # what the job is doing, as a number: -1 during setup (message headers)
        self.job_id = 0  # every frame carries it; process_group draws one per job (an attempt after a restart: anew)
        self.watch = watch
        self.wire = WireCount(rank, world, P2P_STREAMS, self.recorder)  # the bytes this rank puts on each link (wire.py)

    def begin_iteration(self, iteration: int) -> None:
        """The trainer's one hook per iteration (counted from 1, as metrics.jsonl does)."""
        self.iteration, self.context = iteration, f"iteration {iteration}"
        self.link.begin_iteration(iteration)

    # Where the agents' tensors live, and the two calls a lazy device (xla.XlaFabric) needs: on the CPU
    # every operation has already run, so both are free.
    device = torch.device("cpu")

    def sync(self, name: str = Section.DEVICE) -> None:
        """Run the work recorded so far (a collective call on XLA devices); nothing to do on the CPU."""

    def to_host(self, x: torch.Tensor) -> torch.Tensor:
        """x as a host tensor (the same tensor on the CPU)."""
        return x

    def transport(self):
        """Around a communication call: its CPU is the transport's, not compute, on the simulated clock."""
        return self.link.transport()

    def _wait_all(self, works: list, what: str, nbytes: int = 0, behind: tuple | None = None) -> None:
        """Wait on works, each a Work or (peer rank, Work, bytes); failures name the peer when it is known, and a
        timeout names the rank everybody waits on (watchdog.py) or the fault that explains it (net/faults.py).
        `behind`: (rounds, τ) when the wait is for a message that many rounds old under bounded staleness."""
        watch = self.watch
        for item in works:
            peer, work, size = item if isinstance(item, tuple) else (None, item, nbytes)
            if watch is not None:
                watch.begin(what, peer, size, self.iteration, behind)
            with_peer = f" with rank {peer}" if peer is not None else ""
            try:
                ok = work.wait(self.timeout)
            except RuntimeError as err:
                if "timed out" in str(err).lower():  # gloo's way of saying ok is False ("Operation timed out!" too)
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
        fault = self.link.explain(peer)
        if self.watch is None:
            return f"{plain}: {fault}" if fault else plain
        verdict = f"{plain}: {fault}" if fault else self.watch.verdict(what, peer, seconds, self.iteration)
        return self.watch.share(verdict) or plain  # the first rank's verdict: every rank ends with the same line

    # ---- the simulated network: clocks joined by collectives, stamps on point-to-point messages --------------
    def _join_start(self, cost: float):
        """Post the all-reduce (max) of every rank's clock that a collective starts from; None without a profile."""
        mine = self.link.join()
        if mine is None:
            return None
        clocks = torch.tensor(mine, dtype=torch.float64)
        self.wire.collective(CLOCK, 16)
        return clocks, dist.all_reduce(clocks, op=dist.ReduceOp.MAX, async_op=True), cost

    def _joined(self, sim) -> None:
        """A collective finished: it started when its last participant joined and took `cost` from there."""
        if sim is None:
            return
        clocks, work, cost = sim
        self._wait_all([work], "clock", 16)
        self.link.joined(*clocks.tolist(), cost)

    def _next(self, src: int, dst: int, tag: int) -> tuple[int, int]:
        """(sequence number, flow id) of the next message from src to dst on tag: both ends count alike."""
        key = (src, dst, tag)
        self._sequence[key] += 1
        return self._sequence[key], ((src * 65536 + dst) * 4096 + tag) * 2**24 + self._sequence[key]

    def _isend(self, x: torch.Tensor, peer: int, tag: int, rows=None, slot: int = 0) -> list:
        """isend x (or x[rows]) in a frame whose header says what it is and, with a profile, carries its stamp:
        when it leaves this node's link and when it arrives."""
        seq, flow = self._next(self.rank, peer, tag)
        frame = self.frames.get(peer, tag, True, x if rows is None else x[: len(rows)], slot)
        if rows is None:
            frame.payload.copy_(x)
        else:
            torch.index_select(x, 0, rows, out=frame.payload)
        frame.ints[:4] = pack(self.iteration, tag, self.job_id, seq)
        frame.floats[SENT] = time.time()
        # The bytes that travel: the rows sent, not the whole block they were taken from (a gossip round sends
        # each peer only the rows it needs).
        stamp = self.link.send(peer, frame.payload.numel() * frame.payload.element_size())
        if stamp is not None:
            frame.floats[STAMP] = stamp
        self.recorder.flow(True, flow, None if stamp is None else stamp[0])  # before the receiver can see it
        if self.link.drops(peer):
            return []  # the receiver's timeout names the fault
        self.wire.sent(peer, tag, frame.raw.numel())
        return [(peer, dist.isend(frame.raw, dst=peer, tag=tag), frame.raw.numel())]

    def _irecv(self, x: torch.Tensor, peer: int, tag: int, stamps: list, slot: int = 0) -> list:
        """Post the receive of a frame; `_arrived` checks its header and copies its payload into x."""
        seq, flow = self._next(peer, self.rank, tag)
        frame = self.frames.get(peer, tag, False, x, slot)
        stamps.append((True, frame, flow, peer, tag, seq, x))
        return [(peer, dist.irecv(frame.raw, src=peer, tag=tag), frame.raw.numel())]

    def _arrived(self, stamps: list, late: dict | None = None) -> None:
        """After the real waits: check every frame's header, unpack it, and (with a profile) complete the receive on
        the simulated clock when the last message arrives. `late`: flow id → rounds late (bounded staleness)."""
        self._complete(self._unpack(stamps), late)

    def _unpack(self, stamps: list) -> list:
        """Check every frame's header and copy its payload out; returns [(its stamp, flow id)] in posting order."""
        received = []
        for _, frame, flow, peer, tag, seq, dest in stamps:
            problem = mismatch(frame, self.iteration, tag, seq, P2P_STREAMS, self.job_id)
            if problem:
                raise CommError(f"rank {self.rank}: {P2P_STREAMS[tag - 1]} from rank {peer} {problem}")
            dest.copy_(frame.payload)
            self.link.arrived(peer, float(frame.floats[SENT]))
            received.append((frame.floats[STAMP].tolist(), flow))
        return received

    def _complete(self, received: list, late: dict | None = None) -> None:
        """The receives of [(stamp, flow id)] on the simulated clock (in order of arrival), and their trace ends —
        where they are mixed, so a late message's arrow ends in the round that added it (`late`: flow → rounds)."""
        late = late or {}
        for flow, arrive in self.link.receive(received):
            rounds = late.get(flow, 0)
            if rounds and arrive is not None:  # on the simulated clock too: mixed now, though it arrived earlier
                arrive = max(arrive, self.link.clock.advance())
            self.recorder.flow(False, flow, arrive, rounds)

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
                self.wire.collective(name, nbytes)
                sim = self._join_start(self.link.profile.allreduce_s(self.world, nbytes))
            self.recorder.count(name, nbytes=nbytes, messages=1)
        return PendingReduce(self, buf, work, name, scale, sim)

    def gather_rows(self, x: torch.Tensor, name: str = Section.GATHER) -> torch.Tensor | None:
        """Rows of every rank stacked [n, ...] on rank 0 (None elsewhere)."""
        if not self.distributed:
            return x.clone()
        with self.recorder.section(name, nbytes=x.numel() * x.element_size(), messages=1), self.transport():
            out = [torch.empty_like(x) for _ in range(self.world)] if self.rank == 0 else None
            self.wire.collective(name, 0 if self.rank == 0 else x.numel() * x.element_size())
            sim = self._join_start(self.link.profile.gather_s(self.world, x.numel() * x.element_size()))
            self._wait_all([dist.gather(x.contiguous(), out, dst=0, async_op=True)], name)
            self._joined(sim)
        return torch.cat(out) if self.rank == 0 else None

    def broadcast(self, x: torch.Tensor, src: int = 0, name: str = Section.BROADCAST) -> torch.Tensor:
        if self.distributed:
            with self.recorder.section(name, nbytes=x.numel() * x.element_size(), messages=1), self.transport():
                sim = self._join_start(self.link.profile.broadcast_s(self.world, x.numel() * x.element_size()))
                self.wire.collective(name, x.numel() * x.element_size() if self.rank == src else 0)
                self._wait_all([dist.broadcast(x, src=src, async_op=True)], name)
                self._joined(sim)
        return x

    def gather_objects(self, obj) -> list | None:
        """Small Python objects of every rank on rank 0 (end-of-run reports)."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world if self.rank == 0 else None
        # torch gathers the pickles' sizes (int64), then the pickles padded to the largest: counted, this rank's
        # pickle and its size, a lower bound (pickling twice costs a little, at checkpoints and the run's end only)
        self.wire.collective(OBJECTS, 0 if self.rank == 0 else len(pickle.dumps(obj)) + 8)
        dist.gather_object(obj, out, dst=0)
        return out

    def barrier(self, name: str = Section.WAIT) -> None:
        if self.distributed:
            with self.recorder.section(name), self.transport():
                sim = self._join_start(self.link.profile.allreduce_s(self.world, 4))
                self._wait_all([dist.barrier(async_op=True)], name)
                self.wire.collective(name, 0)  # no payload (gloo's own notifications are not counted)
                self._joined(sim)


def world_from_env() -> tuple[int, int]:
    """(rank, world size) as torchrun / our launcher set them; (0, 1) when run as a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


@contextmanager
def process_group(timeout_s: float, build, hang_warning_s: float | None = None):
    """Create the process group (if several processes) with an explicit timeout, yield build(rank, world, watch),
    and always tear the group down. A multi-process group has a hang watchdog (watchdog.py; default threshold: a
    quarter of the timeout), None with one process."""
    rank, world = world_from_env()
    watch = None
    if world > 1:  # under an elastic agent: in this attempt's own namespace of its store (elastic.py)
        dist.init_process_group("gloo", **group_store(timedelta(seconds=timeout_s)))
        watch = Watchdog(rank, world, hang_warning_s or timeout_s / 4, P2P_STREAMS)
        # A random id per job (and per attempt after a restart), in every frame's header: a message from another
        # job that reached these ports (nothing authenticates gloo's sockets) is refused, naming both ids.
        job = torch.tensor([secrets.randbits(62) if rank == 0 else 0], dtype=torch.int64)
        dist.broadcast(job, src=0)
    group = build(rank, world, watch)
    if world > 1:
        group.job_id = int(job)
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
                watch.close()
                dist.destroy_process_group()


def open_collectives(timeout_s: float, recorder: Recorder | None = None):
    """Collectives over this process group, for jobs without agents to place (context manager)."""
    return process_group(timeout_s, lambda rank, world, watch: Collectives(rank, world, timeout_s, recorder,
                                                                           watch=watch))
