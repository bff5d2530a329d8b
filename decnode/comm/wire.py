"""Bytes on the wire: what this rank puts on each link (this rank → peer), per stream, counted where the transport
sends (transport.py). Pure Python; one list or dict add per message, nothing allocated per message.

Point-to-point: the whole frame gloo sends, payload plus the frame header (frames.HEADER_BYTES), on the link to the
peer it is addressed to. Collectives: gloo's algorithm is opaque (a ring all-reduce sends 2(W−1)/W of the buffer
per rank, a binomial-tree broadcast has inner ranks forward it, ...), so a collective is counted as the payload this
rank hands to gloo that must leave it — an all-reduce's whole buffer on every rank, a broadcast's on its source only,
a gather's or scatter's rows of every rank but the root (the root: the W−1 chunks it scatters) — booked under the
collective's name, with no link (`"collective"`). With 2 ranks that is exactly what gloo's algorithms send. Not
counted: gloo's own headers and handshakes, the rendezvous store and the watchdog's store traffic, TCP/IP (the
README's "Simulating real nodes" section compares the count with the kernel's interface counters).

metrics.jsonl: each rank's bytes per stream during the iteration (the trainer starts a window when the iteration
begins and reads it before the statistics' all-reduce, which carries the sums: `window` / `job_bytes`; what runs
between iterations — evaluation, checkpoints — is only in timing.json, so a resumed run logs what an uninterrupted
one does). timing.json: every rank's `report()`.
"""

from __future__ import annotations

import time

from ..timing import Recorder, Section
from .frames import HEADER_BYTES

# The streams a metrics line names, in the order their sums travel in the per-iteration all-reduce (every rank
# must agree); anything else (a new stream) is summed under "other". "clock": the simulated clock's joins (with a
# network profile); "objects": pickled objects gathered on rank 0 (checkpoints, end-of-run reports).
CLOCK, OBJECTS = "clock", "objects"
METRIC_STREAMS = (Section.STEP_EXCHANGE, Section.REWARD_SCATTER, Section.GOSSIP, Section.GOSSIP_CRITIC,
                  Section.ALLREDUCE, Section.ALLREDUCE_CRITIC, Section.STATE_BROADCAST, Section.STATS, Section.EVAL,
                  Section.BROADCAST, Section.GATHER, CLOCK, OBJECTS, "other")


class WireCount:
    """The bytes and messages this rank sent: point-to-point by (peer, stream tag), collectives by name."""

    def __init__(self, rank: int, world: int, p2p_streams: tuple, recorder: Recorder | None = None):
        """recorder: while it traces (trace.json), every count is also a point of its byte counters."""
        self.rank, self.world, self.p2p_streams, self.recorder = rank, world, p2p_streams, recorder
        # [peer][tag] (tag = 1 + index in p2p_streams; slot 0 unused): plain lists, so a message adds to an int
        self._bytes = [[0] * (len(p2p_streams) + 1) for _ in range(world)]
        self._messages = [[0] * (len(p2p_streams) + 1) for _ in range(world)]
        self._collective: dict[str, list[int]] = {}  # name -> [bytes, calls]
        self._last = [0] * len(METRIC_STREAMS)  # by_stream() at the previous window()

    def sent(self, peer: int, tag: int, nbytes: int) -> None:
        """One framed point-to-point message of nbytes (header included) to peer on stream `tag`."""
        self._bytes[peer][tag] += nbytes
        self._messages[peer][tag] += 1
        if self.recorder is not None and self.recorder.sent is not None:
            self.recorder.sent.append((time.perf_counter(), self.p2p_streams[tag - 1], nbytes))

    def collective(self, name: str, nbytes: int) -> None:
        """One collective call under `name`, this rank handing gloo nbytes that must leave it (see above)."""
        tally = self._collective.get(name)
        if tally is None:
            tally = self._collective[name] = [0, 0]
        tally[0] += nbytes
        tally[1] += 1
        if nbytes and self.recorder is not None and self.recorder.sent is not None:
            self.recorder.sent.append((time.perf_counter(), name, nbytes))

    # ---- readings ------------------------------------------------------------------------------------------------
    def by_stream(self) -> dict[str, int]:
        """Total bytes this rank sent per stream (point-to-point and collective calls of the same name add up)."""
        out: dict[str, int] = {}
        for tag, name in enumerate(self.p2p_streams, start=1):
            total = sum(row[tag] for row in self._bytes)
            if total:
                out[name] = total
        for name, (nbytes, _) in self._collective.items():
            if nbytes:
                out[name] = out.get(name, 0) + nbytes
        return out

    def total(self) -> int:
        return sum(self.by_stream().values())

    def window(self) -> list[float]:
        """Bytes per METRIC_STREAMS sent since the previous call (the first: since the rank started), as floats
        for the trainer's all-reduce."""
        streams = self.by_stream()
        now = [streams.pop(name, 0) for name in METRIC_STREAMS[:-1]]
        now.append(sum(streams.values()))  # "other"
        delta = [float(a - b) for a, b in zip(now, self._last)]
        self._last = now
        return delta

    def report(self) -> dict:
        """timing.json: {"links": {"SRC->DST": {stream: {"bytes", "messages"}}}, "collectives": {name: {"bytes",
        "calls"}}, "streams": {stream: bytes}, "total": bytes} of this rank."""
        links = {}
        for peer, row in enumerate(self._bytes):
            per = {name: {"bytes": row[tag], "messages": self._messages[peer][tag]}
                   for tag, name in enumerate(self.p2p_streams, start=1) if self._messages[peer][tag]}
            if per:
                links[f"{self.rank}->{peer}"] = per
        return {"links": links,
                "collectives": {name: {"bytes": b, "calls": c} for name, (b, c) in sorted(self._collective.items())},
                "streams": self.by_stream(), "total": self.total()}


def job_bytes(sums: list[float]) -> dict:
    """The metrics line's entry from window() summed over ranks: the job's total and its non-zero streams."""
    streams = {name: int(v) for name, v in zip(METRIC_STREAMS, sums) if v}
    return {"total": sum(streams.values()), "streams": streams}


def job_links(reports: list[dict]) -> dict:
    """timing.json's job-wide entry from every rank's report(): bytes per link and stream, per stream, in total."""
    links = {link: {name: t["bytes"] for name, t in per.items()} for r in reports for link, per in r["links"].items()}
    streams: dict[str, int] = {}
    for r in reports:
        for name, nbytes in r["streams"].items():
            streams[name] = streams.get(name, 0) + nbytes
    return {"links": links, "streams": streams, "total": sum(streams.values()),
            "collectives": [r["collectives"] for r in reports],  # by rank
            "counted": f"point-to-point: payload + the {HEADER_BYTES}-byte frame header, per link; collectives: the "
                       "payload each rank hands to gloo (gloo's algorithm is opaque), no link"}
