"""trace.json: a few iterations of every rank as a timeline, in Chrome's trace-event format (Perfetto, chrome://tracing).

Two timelines, each with one row per rank: "host" is this machine's wall-clock (perf_counter, shared by the
processes of one host), "simulated" is the per-node clock of the network profile (net/profile.py), when one is set.
Sections are complete events ("X", nested as they ran); each point-to-point message is a flow arrow from the
section that sent it to the one that received it. The bytes each rank put on the wire (comm/wire.py) are counter
events ("C"), one counter per rank with a series per stream, cumulative from the start of the trace.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..timing import GROUPS

HOST, SIMULATED = 0, 1  # trace "processes": one per timeline


def chrome_trace(per_rank: list[dict], profile_name: str | None = None) -> dict:
    """per_rank: Recorder.stop_trace() of every rank. Times in µs from the earliest host event."""
    starts = [h0 for r in per_rank for _, h0, *_ in r["sections"]] + [f[2] for r in per_rank for f in r["flows"]]
    origin = min(starts, default=0.0)
    events = [{"ph": "M", "name": "process_name", "pid": HOST, "args": {"name": "host wall-clock"}}]
    if profile_name:
        events.append({"ph": "M", "name": "process_name", "pid": SIMULATED,
                       "args": {"name": f"simulated cluster ({profile_name})"}})
    for rank, trace in enumerate(per_rank):
        for pid in (HOST, SIMULATED) if profile_name else (HOST,):
            events.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": rank, "args": {"name": f"rank {rank}"}})
        for name, h0, h1, s0, s1 in trace["sections"]:
            cat = GROUPS.get(name, name)
            events.append({"ph": "X", "name": name, "cat": cat, "pid": HOST, "tid": rank,
                           "ts": (h0 - origin) * 1e6, "dur": (h1 - h0) * 1e6})
            if profile_name and s0 is not None:
                events.append({"ph": "X", "name": name, "cat": cat, "pid": SIMULATED, "tid": rank,
                               "ts": s0 * 1e6, "dur": (s1 - s0) * 1e6})
        for is_send, flow, host, sim, *late in trace["flows"]:
            # A flow end binds to the slice that encloses it ("bp": "e"); a start binds to its enclosing slice. A
            # receive ends where the message was mixed: under bounded staleness a late one in a later round's slice,
            # marked there by an instant event saying how many rounds late.
            common = {"name": "message", "cat": "message", "id": flow, "tid": rank, "ph": "s" if is_send else "f"}
            if not is_send:
                common["bp"] = "e"
            rounds = late[0] if late else 0
            for pid, ts in ((HOST, (host - origin) * 1e6),) + (((SIMULATED, sim * 1e6),)
                                                              if profile_name and sim is not None else ()):
                events.append({**common, "pid": pid, "ts": ts})
                if rounds:
                    events.append({"ph": "i", "s": "t", "name": f"late message ({rounds} round{'s' * (rounds > 1)})",
                                   "cat": "late", "pid": pid, "tid": rank, "ts": ts, "args": {"flow": flow}})
        totals: dict[str, int] = {}
        for host, stream, nbytes in trace.get("sent", ()):
            totals[stream] = totals.get(stream, 0) + nbytes
            events.append({"ph": "C", "name": f"bytes sent by rank {rank}", "pid": HOST, "tid": rank,
                           "ts": (host - origin) * 1e6, "args": dict(totals)})
    return {"traceEvents": events, "displayTimeUnit": "ms"}


def write_trace(path: Path, per_rank: list[dict], profile_name: str | None = None) -> None:
    Path(path).write_text(json.dumps(chrome_trace(per_rank, profile_name)))
