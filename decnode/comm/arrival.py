"""Bounded staleness by real arrival (issue 27; no network profile, or net.mode=emulate): a node mixes the messages
that have really arrived and waits only for one τ rounds old. Not deterministic: what has arrived depends on the
host's scheduling (the simulate path, stale.py, is the deterministic one).

How a round travels. Every receive and send of a round is posted at once (fabric.gossip_start); a stream keeps up to
τ + 1 rounds of receives outstanding (a ring of τ + 1 frames per peer, frames.py `slot`) and τ + 2 of sends (a send
frame is reused only after its send completed). gloo delivers a (peer, tag)'s messages to its posted receives in
posting order (tested: tests/test_async.py), and each frame's sequence id still checks it. gloo's send/recv `Work`
has no `is_completed()` that turns true (it stays False until waited) nor a future, so each receive is waited on by a
thread of its own (peer, stream) — one per in-neighbour, in posting order — and "arrived" means that thread's wait
returned. The main thread waits (with the fabric's timeout, watched: watchdog.py) only on a message τ rounds old.

Push-sum sends shares (column-stochastic), so a share added late is exact: a message mixed in its own round lands in
its rows of the round's buffer (weights @ buf, as synchronous gossip); a later one is added as its sender's columns
of its round's matrix times its rows. What is outstanding at the iteration's end is waited for and added (`flush`),
so a checkpoint holds nothing in flight. τ = 0 waits for every message of the round: the synchronous mix bit for bit.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import torch

from .frames import STAMP
from .stale import StalenessTally


class Waiter:
    """A daemon thread that waits on the Works given to it, in order (a pool's threads would be joined at exit, so a
    failed job would linger until its waits time out)."""

    def __init__(self, name: str):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            item._run()

    def submit(self, work: "ThreadedWork") -> None:
        self._queue.put(work)

    def close(self) -> None:
        self._queue.put(None)


class ThreadedWork:
    """A gloo Work waited on by a Waiter; `wait(timeout)` as Work's (transport._wait_all takes it)."""

    def __init__(self, waiter: Waiter, work, timeout: timedelta):
        self._work, self._timeout, self._done, self._error = work, timeout, threading.Event(), None
        waiter.submit(self)

    def _run(self) -> None:
        try:
            self._work.wait(self._timeout)
        except BaseException as err:  # noqa: BLE001 - handed to the main thread's wait
            self._error = err
        self._done.set()

    def is_completed(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: timedelta) -> bool:
        if not self._done.wait(timeout.total_seconds()):
            raise RuntimeError("timed out waiting for a message (bounded staleness)")
        if self._error is not None:
            raise self._error
        return True


@dataclass
class Outstanding:
    round: int  # the gossip round it was sent in
    peer: int
    work: ThreadedWork
    nbytes: int
    entry: tuple  # transport._irecv's stamps entry (its frame, flow id, sequence, destination rows)
    weights: torch.Tensor  # [local agents, its rows]: its sender's columns of its round's matrix


class RealArrival(StalenessTally):
    """A rank's outstanding receives and sends per stream, the rule that mixes them, and the staleness statistics
    (window(): as stale.Staleness, for metrics.jsonl)."""

    def __init__(self, tau: int, emulated: bool = False):
        super().__init__()
        self.tau, self.emulated = tau, emulated
        self.recvs: dict[str, list[Outstanding]] = {}
        self.sends: dict[str, list[tuple[int, list]]] = {}  # per stream: (round, its send works)
        self._waiters: dict[tuple, Waiter] = {}

    def recv_slot(self, t: int) -> int:
        return t % (self.tau + 1)

    def send_slot(self, t: int) -> int:
        return t % (self.tau + 2)

    def sends_to_reuse(self, name: str, t: int) -> list:
        """The send works whose frames round t reuses (rounds ≤ t − τ − 2): the caller waits on them first."""
        keep, due = [], []
        for r, works in self.sends.get(name, []):
            (due if t - r >= self.tau + 2 else keep).append((r, works))
        self.sends[name] = keep
        return [w for _, works in due for w in works]

    def posted(self, name: str, t: int, recvs: list, stamps: list, weights: torch.Tensor, slices: list,
               sends: list, timeout: timedelta) -> None:
        """Round t of stream `name` is posted: recvs [(peer, Work, bytes)] with their stamps entries and rows."""
        self.sends.setdefault(name, []).append((t, sends))
        out = self.recvs.setdefault(name, [])
        for (peer, work, nbytes), entry, (lo, hi) in zip(recvs, stamps, slices):
            waiter = self._waiters.get((name, peer))
            if waiter is None:  # one per in-neighbour and stream: gloo completes its receives in order
                waiter = self._waiters[(name, peer)] = Waiter(f"decnode-recv-{name}-{peer}")
            out.append(Outstanding(t, peer, ThreadedWork(waiter, work, timeout), nbytes, entry, weights[:, lo:hi]))

    def due(self, name: str, t: int) -> list[Outstanding]:
        """The messages round t must wait for: τ rounds old or more."""
        return [o for o in self.recvs.get(name, []) if t - o.round >= self.tau]

    def _arrived(self, o: Outstanding, t: int) -> bool:
        if t - o.round >= self.tau:
            return True  # waited for
        if not o.work.is_completed():
            return False
        # emulate mode: the frame is here, but the emulated link delivers it at its stamped host time
        return not self.emulated or float(o.entry[1].floats[STAMP][2]) <= time.monotonic()

    def settle(self, name: str, t: int, unpack) -> list[torch.Tensor]:
        """After the due waits: the messages that have arrived are mixed — round t's into their rows of buf (unpack
        copies them there), earlier rounds' as shares (returned, to add to weights @ buf); round t's others leave
        zero rows in buf and stay outstanding. `unpack(entries)`: check, copy out and complete (trace, clock)."""
        keep, fresh, late = [], [], []
        for o in self.recvs.get(name, []):
            if not self._arrived(o, t):
                keep.append(o)
                if o.round == t:
                    o.entry[6].zero_()  # its rows of this round's buf
                continue
            self._mixed(t - o.round)
            (fresh if o.round == t else late).append(o)
        self.recvs[name] = keep
        scratch = [torch.empty_like(o.entry[6]) for o in late]  # the late rows land here, not in this round's buf
        unpack([o.entry for o in fresh] + [(*o.entry[:6], s) for o, s in zip(late, scratch)],
               {o.entry[2]: t - o.round for o in late})  # the trace marks these (flow id → rounds late)
        return [o.weights @ s for o, s in zip(late, scratch)]

    def flush(self, name: str) -> tuple[list[Outstanding], list]:
        """Everything outstanding on `name` (receives to wait for and add, sends to wait for)."""
        recvs, sends = self.recvs.pop(name, []), self.sends.pop(name, [])
        return recvs, [w for _, works in sends for w in works]

    def late_shares(self, recvs: list[Outstanding], t: int, unpack) -> list[torch.Tensor]:
        for o in recvs:
            self._mixed(t - o.round)
        scratch = [torch.empty_like(o.entry[6]) for o in recvs]
        unpack([(*o.entry[:6], s) for o, s in zip(recvs, scratch)], {o.entry[2]: t - o.round for o in recvs})
        return [o.weights @ s for o, s in zip(recvs, scratch)]

    def close(self) -> None:
        for waiter in self._waiters.values():
            waiter.close()
