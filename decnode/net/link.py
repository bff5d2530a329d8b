"""One rank's side of the network: what the transport (comm/transport.py) asks on every send, receive and
collective. Behind it: the simulated clock and its emulation (profile.py) and the injected faults (faults.py), so a
new link parameter or fault kind changes this layer only; the transport stays the same.

Without a network profile (or with one process) the link has no clock: it stamps nothing and joins nothing, and
the transport sends no extra message. Pure Python: the transport moves the numbers it returns (a message's stamp
in its header, the clocks to join in one all-reduce).
"""

from __future__ import annotations

import time
from contextlib import nullcontext

from .faults import Faults, make_faults
from ..extensions import critic
from .compute import section_rows
from .profile import PRESETS, Emulator, NetProfile, NodeClock, job_profile

Stamp = tuple[float, float, float]  # a message's departure and arrival on the simulated clock, its host arrival


class Link:
    """This rank's clock (None without a profile), emulator (net.mode emulate) and faults (None without any)."""

    def __init__(self, profile: NetProfile | None = None, rank: int = 0, world: int = 1, seed: int = 0,
                 faults: Faults | None = None, rows: dict | None = None):
        self.profile, self.rank, self.faults = profile or PRESETS["loopback"], rank, faults
        active = self.profile.active and world > 1
        self.clock = NodeClock(self.profile, rank, seed, rows=rows or {}) if active else None
        self.emulator = Emulator(self.profile) if active and self.profile.mode == "emulate" else None

    @classmethod
    def for_job(cls, cfg, rank: int, world: int) -> "Link":
        """The link of a training job's rank: the job's profile (net.*) and its faults (faults:)."""
        rows = section_rows(rank, cfg.env.n_agents, cfg.algo.agents_per_process, critic(cfg.algo.critic).per_agent)
        return cls(job_profile(cfg), rank, world, cfg.train.seed, make_faults(cfg, rank, world), rows)

    def begin_iteration(self, iteration: int) -> None:
        """Once per iteration (counted from 1): a straggler draw on the clock, then the faults of this iteration."""
        if self.clock is not None:
            self.clock.begin_iteration()
        if self.faults is not None:
            self.faults.at_iteration(iteration, self)

    def transport(self):
        """Around a communication call: its CPU is the transport's, not compute, on the simulated clock."""
        return self.clock.transport() if self.clock is not None else nullcontext()

    # ---- point-to-point ----------------------------------------------------------------------------------------
    def send(self, peer: int, nbytes: int) -> Stamp | None:
        """The stamp of a message of nbytes to peer (None without a clock): when it leaves this node's link and
        when it arrives, after what the faults do to it."""
        if self.clock is None:
            return None
        depart, arrive = self.clock.send(nbytes)
        host = self.emulator.send(nbytes) if self.emulator else 0.0
        if self.faults is not None:
            depart, arrive, host = self.faults.shift(self.rank, peer, depart, arrive, host)
        return depart, arrive, host

    def drops(self, peer: int) -> bool:
        """Whether the message to peer is lost (never sent: the receiver's timeout names the fault)."""
        return self.faults is not None and self.faults.drops(self.rank, peer)

    def arrived(self, peer: int, sent_wall: float) -> None:
        """A message from peer is here (sent at the sender's time.time() sent_wall): a delayed link holds it."""
        if self.faults is not None:
            self.faults.hold(peer, self.rank, sent_wall)

    def receive(self, messages: list[tuple[Stamp, object]]) -> list[tuple[object, float | None]]:
        """Complete the receives of one call, each (its stamp, a key): the clock takes them in order of arrival,
        then (emulate) the host waits for the last. Returns (key, simulated arrival or None) in that order."""
        if self.clock is None:
            return [(key, None) for _, key in messages]
        done = []
        for (depart, arrive, _), key in sorted(messages, key=lambda m: m[0][1]):
            self.clock.receive(depart, arrive)
            done.append((key, arrive))
        if self.emulator and messages:
            self.emulator.hold_until(max(stamp[2] for stamp, _ in messages))
        return done

    # ---- collectives ------------------------------------------------------------------------------------------
    def join(self) -> list[float] | None:
        """What this rank contributes to the all-reduce (max) a collective starts from: its clock and host time;
        None without a clock (then nothing is joined)."""
        return None if self.clock is None else [self.clock.advance(), time.monotonic()]

    def joined(self, latest: float, host: float, cost: float) -> None:
        """The collective started when its last participant joined (the maxima of `join`) and took `cost`."""
        self.clock.collective(latest, cost)
        if self.emulator:
            self.emulator.hold_until(host + cost)

    def explain(self, peer: int | None) -> str | None:
        """The fault that explains a wait on peer timing out, if any."""
        return self.faults.explain(peer, self.rank) if self.faults is not None else None
