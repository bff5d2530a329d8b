"""Per-rank recorder of where the wall-clock goes: named compute sections and communication calls.

Sections nest; each one records *exclusive* time (its children are subtracted), so the categories of one rank
add up to at most its wall-clock and the remainder is honest "other" time.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Tally:
    seconds: float = 0.0
    calls: int = 0
    bytes: int = 0
    messages: int = 0

    def add(self, other: "Tally") -> None:
        self.seconds += other.seconds
        self.calls += other.calls
        self.bytes += other.bytes
        self.messages += other.messages


@dataclass
class Recorder:
    tallies: dict[str, Tally] = field(default_factory=lambda: defaultdict(Tally))
    started: float = field(default_factory=time.perf_counter)
    _child_time: list[float] = field(default_factory=list)
    clock: Any = None  # the simulated node's clock (net.NodeClock) when a network is simulated
    # While tracing (trace.py): sections as (name, host start, host end, simulated start, simulated end) and message
    # ends as (is_send, flow id, host time, simulated time); host times are perf_counter, shared by local processes.
    sections: list | None = None
    flows: list | None = None
    sent: list | None = None  # while tracing: bytes put on the wire as (host time, stream, bytes) (comm/wire.py)

    def start_trace(self) -> None:
        self.sections, self.flows, self.sent = [], [], []

    def stop_trace(self) -> dict | None:
        out = None if self.sections is None else {"sections": self.sections, "flows": self.flows, "sent": self.sent}
        self.sections = self.flows = self.sent = None
        return out

    def flow(self, is_send: bool, flow_id: int, simulated: float | None = None, late: int = 0) -> None:
        """One end of a message, drawn as an arrow between the sender's and the receiver's sections; `late`: the
        rounds between its sending and its mixing (bounded staleness), at its receiving end."""
        if self.flows is not None:
            self.flows.append((is_send, flow_id, time.perf_counter(), simulated, late))

    @contextmanager
    def section(self, name: str, nbytes: int = 0, messages: int = 0):
        """Time a block as `name`; nested blocks are charged to themselves, not to their parent."""
        self._child_time.append(0.0)
        tracing = self.sections is not None
        sim0 = self.clock.advance() if tracing and self.clock is not None else None
        t0 = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - t0
            if self.clock is not None:
                self.clock.charge(name)  # compute: model — the section's fixed cost (net/profile.py)
            if tracing and self.sections is not None:
                sim1 = self.clock.advance() if self.clock is not None else None
                self.sections.append((name, t0, t0 + elapsed, sim0, sim1))
            children = self._child_time.pop()
            tally = self.tallies[name]
            tally.seconds += elapsed - children
            tally.calls += 1
            tally.bytes += nbytes
            tally.messages += messages
            if self._child_time:
                self._child_time[-1] += elapsed

    def count(self, name: str, nbytes: int = 0, messages: int = 0) -> None:
        """Add traffic to `name` without timing (for bytes posted in one call and waited on in another)."""
        tally = self.tallies[name]
        tally.bytes += nbytes
        tally.messages += messages

    def wall(self) -> float:
        return time.perf_counter() - self.started

    def snapshot(self) -> dict[str, dict[str, float]]:
        out = {name: vars(t).copy() for name, t in sorted(self.tallies.items())}
        out["wall"] = {"seconds": self.wall(), "calls": 1, "bytes": 0, "messages": 0}
        return out

    def seconds(self) -> dict[str, float]:
        return {name: t.seconds for name, t in self.tallies.items()}


def delta_seconds(now: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Seconds spent per section between two `Recorder.seconds()` readings."""
    return {k: round(v - before.get(k, 0.0), 6) for k, v in now.items() if v - before.get(k, 0.0) > 0}


class Section:
    """Every name the recorder books time under, one constant each, so the grouping below knows them all."""

    SETUP = "setup"
    ENV = "env"  # rank 0 stepping the environments
    ACT = "act"  # the agents choosing actions
    STEP_EXCHANGE = "step_exchange"  # observations out and actions back, once per env step
    REWARD_SCATTER = "reward_scatter"  # rewards or advantages (and episode flags) out, once per iteration
    CRITIC = "critic"
    CRITIC_SGD = "critic_sgd"
    STATE_BROADCAST = "state_broadcast"
    ACTOR_UPDATE = "actor_update"  # forward and backward (and posting the combine)
    ACTOR_STEP = "actor_step"  # finishing the combine's step (its wait is the gossip's or all-reduce's section)
    GOSSIP = "gossip"
    GOSSIP_CRITIC = "gossip_critic"
    ALLREDUCE = "allreduce"
    ALLREDUCE_CRITIC = "allreduce_critic"
    EVAL = "eval"
    STATS = "stats"
    BROADCAST = "broadcast"
    GATHER = "gather"
    WAIT = "wait"
    CHECKPOINT = "checkpoint"
    DEVICE = "device"  # XLA devices: running the recorded graph (its compute and its collectives), at sync()


# How sections fold into the categories a reader asks about (raw names stay in timing.json).
GROUPS = {Section.SETUP: "setup", Section.ENV: "rollout", Section.ACT: "rollout",
          Section.STEP_EXCHANGE: "step_exchange", Section.REWARD_SCATTER: "step_exchange",
          Section.CRITIC: "critic", Section.CRITIC_SGD: "critic", Section.STATE_BROADCAST: "critic",
          Section.ACTOR_UPDATE: "actor_update", Section.ACTOR_STEP: "actor_update", Section.GOSSIP: "gossip/allreduce",
          Section.GOSSIP_CRITIC: "gossip/allreduce", Section.ALLREDUCE: "gossip/allreduce",
          Section.ALLREDUCE_CRITIC: "gossip/allreduce", Section.EVAL: "eval", Section.STATS: "waiting",
          Section.BROADCAST: "waiting", Section.GATHER: "waiting", Section.WAIT: "waiting",
          Section.CHECKPOINT: "checkpoint", Section.DEVICE: "device"}
ORDER = ["setup", "rollout", "step_exchange", "actor_update", "gossip/allreduce", "device", "critic", "eval",
         "waiting", "checkpoint"]


def grouped(snapshot: dict[str, dict[str, float]]) -> dict[str, float]:
    """Seconds per category (plus 'wall') from one rank's Recorder.snapshot()."""
    out: dict[str, float] = {}
    for name, tally in snapshot.items():
        if name != "wall":
            group = GROUPS.get(name, name)
            out[group] = out.get(group, 0.0) + tally["seconds"]
    out["wall"] = snapshot["wall"]["seconds"]
    return out


def format_table(per_rank: list[dict[str, dict[str, float]]]) -> str:
    """One row per rank plus the sum over ranks; one column per category: seconds and % of that row's wall.

    Communication categories include the time spent waiting for the slowest peer to arrive. Short headers:
    exchange = messages with rank 0 (per step, and the per-iteration reward scatter), actor upd = PPO actor
    update, gossip/AR = gossip or all-reduce.
    """
    groups = [grouped(snap) for snap in per_rank]
    present = {g for snap in groups for g in snap if g != "wall"}
    columns = [g for g in ORDER if g in present] + sorted(present - set(ORDER)) + ["other"]
    rows = []
    for rank, snap in enumerate(groups):
        secs = {c: snap.get(c, 0.0) for c in columns[:-1]}
        secs["other"] = max(snap["wall"] - sum(secs.values()), 0.0)
        rows.append((f"rank {rank}", secs, snap["wall"]))
    total = {c: sum(r[1][c] for r in rows) for c in columns}
    rows.append(("all ranks", total, sum(r[2] for r in rows)))
    width = 13
    short = {"step_exchange": "exchange", "actor_update": "actor upd", "gossip/allreduce": "gossip/AR",
             "checkpoint": "ckpt"}
    header = f"{'':<10}" + "".join(f"{short.get(c, c):>{width}}" for c in columns) + f"{'wall':>10}"
    lines = [header, "-" * len(header)]
    for label, secs, wall in rows:
        cells = "".join(f"{secs[c]:>{width - 6}.1f}s {100 * secs[c] / wall if wall else 0:>3.0f}%" for c in columns)
        lines.append(f"{label:<10}{cells}{wall:>9.1f}s")
    lines.append("exchange: observations/actions (each step) and rewards/advantages (each iteration) with rank 0; "
                 "gossip/AR: DecPG gossip or PS all-reduce; waiting: other collectives. Communication time includes "
                 "waiting for the slowest peer.")
    return "\n".join(lines)
