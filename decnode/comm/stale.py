"""Bounded-staleness gossip (issue 27): which of a round's messages a node mixes is decided by its simulated clock.

Physically every round is exchanged as in synchronous gossip (all receives and sends posted, all waited on), so
nothing can deadlock and the host's scheduling decides nothing. On the simulated clock a message whose stamped
arrival is at or before the receiver's time is mixed in its round; a later one is held — its share, the sender's
column of the round's matrix times its rows — and added in the first later round by whose time it has arrived. A
message τ rounds old is waited for (the clock's receive: the only waiting). τ = 0 waits for every message, and
then the mix is the synchronous one bit for bit (a held message's rows are zeroed, and adding 0 is exact).

Push-sum sends shares (column-stochastic), so a share added late is exact: no mass is lost, Σw = n once all are
in. What is still held at the end of an iteration is waited for and added then (`flush`): the next rollout
synchronises every node with rank 0 anyway, and a checkpoint (taken between iterations) holds nothing in flight,
so a resume is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Held:
    round: int  # the gossip round it was sent in
    stamp: list  # (departure, arrival, host arrival) on the simulated clock
    flow: int  # its trace flow id
    share: torch.Tensor  # [local agents, D]: what it adds to this rank's rows


class StalenessTally:
    """The staleness of the messages mixed since the last `window()`: rounds between sending and mixing (both the
    simulated clock's rule here and real arrival, arrival.py, count it so)."""

    def __init__(self):
        self.total = self.count = self.max = 0

    def window(self) -> tuple[int, int, int]:
        """(sum, count, max) of the staleness of the messages mixed since the last call."""
        out = (self.total, self.count, self.max)
        self.total = self.count = self.max = 0
        return out

    def _mixed(self, staleness: int) -> None:
        self.total += staleness
        self.count += 1
        self.max = max(self.max, staleness)


class Staleness(StalenessTally):
    """A rank's held messages per stream, the rule that mixes them, and the iteration's staleness statistics."""

    def __init__(self, tau: int, clock):
        super().__init__()
        self.tau, self.clock = tau, clock
        self.held: dict[str, list[Held]] = {}

    def settle(self, name: str, t: int, fresh: list, rows: list, weights: torch.Tensor, buf: torch.Tensor,
               complete) -> list[torch.Tensor]:
        """Round t of stream `name` has physically arrived: fresh [(stamp, flow)] with its rows (lo, hi) of buf.
        Completes on the clock what is mixed now — first what is τ rounds old (waiting for it), then whatever has
        arrived by then — zeroes the rows of this round's held messages in buf, keeps their shares, and returns
        the shares of earlier rounds' messages mixed now (to add to weights @ buf, in this order)."""
        held = self.held.get(name, [])
        # (round, stamp, flow, fresh index or the Held)
        candidates = [(t, stamp, flow, i) for i, (stamp, flow) in enumerate(fresh)] + \
                     [(h.round, h.stamp, h.flow, h) for h in held]
        due = [c for c in candidates if t - c[0] >= self.tau]
        complete([(c[1], c[2]) for c in due], {c[2]: t - c[0] for c in due})
        now = self.clock.advance()
        early = [c for c in candidates if t - c[0] < self.tau and c[1][1] <= now]
        # arrived already: no time passes, only their trace ends (marked with the rounds they are late)
        complete([(c[1], c[2]) for c in early], {c[2]: t - c[0] for c in early})
        mixed = {id(c) for c in due + early}
        keep, shares = [], []
        for c in candidates:
            if id(c) in mixed:
                self._mixed(t - c[0])
                if isinstance(c[3], Held):
                    shares.append(c[3].share)
            elif isinstance(c[3], Held):
                keep.append(c[3])
            else:
                lo, hi = rows[c[3]]
                keep.append(Held(t, c[1], c[2], weights[:, lo:hi] @ buf[lo:hi]))
                buf[lo:hi].zero_()
        self.held[name] = keep
        return shares

    def flush(self, name: str, t: int, complete) -> list[torch.Tensor]:
        """Wait for every message still held on `name` (t: the round it counts as mixed in); their shares."""
        held = self.held.pop(name, [])
        complete([(h.stamp, h.flow) for h in held], {h.flow: t - h.round for h in held})
        for h in held:
            self._mixed(t - h.round)
        return [h.share for h in held]

    def in_flight(self, name: str) -> torch.Tensor | None:
        """The sum of the shares held on `name` (mass in flight, for checks), None if none."""
        held = self.held.get(name, [])
        return sum(h.share for h in held) if held else None
