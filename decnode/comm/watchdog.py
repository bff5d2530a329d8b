"""Hang reports: who waits on whom, once a wait is older than `run.hang_warning_s`, and who is to blame at the timeout.

Before each blocking wait the fabric writes what it waits for into `Watchdog.current` (one tuple: a few attribute
writes, no I/O). A daemon thread per rank looks at that slot now and then and, once the wait is older than the
threshold, publishes it in the job's c10d TCPStore; the first rank to publish claims the report (compare_set) and
prints ONE table of every published wait. At a timeout the fabric asks `verdict()` which rank everybody waits on:
follow the waits (A on B, B on C) to a rank that others wait on and that reports no wait itself — frozen, or stuck
outside communication.

Why the TCPStore and not files in the run directory: under torchrun and our launcher (c10d rendezvous,
TORCHELASTIC_USE_AGENT_STORE=True) MASTER_ADDR:MASTER_PORT is the store the elastic agent hosts, so it outlives a
frozen worker (rank 0 included) and every host reaches it; the thread opens its own client connection, so it never
contends with (or blocks) the process group's. Pure stdlib plus torch's TCPStore.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from datetime import timedelta

from ..elastic import attempt

# The words by which the launcher recognises a diagnosis (the line to end a failed job with).
DIAGNOSES = ("stopped answering", "wait on each other", "faults config")


def is_diagnosis(message: str) -> bool:
    return any(words in message for words in DIAGNOSES)


def _store_from_env():
    """A client of the job's TCPStore (the elastic agent's, or rank 0's when started without one)."""
    from torch.distributed import TCPStore

    return TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                    timeout=timedelta(seconds=10))


class Watchdog:
    """One per rank of a multi-process job. `begin`/`end` around each wait (main thread); `verdict` at a timeout."""

    def __init__(self, rank: int, world: int, warn_s: float, streams: tuple = (), store_factory=_store_from_env,
                 out=None):
        self.rank, self.world, self.warn_s = rank, world, warn_s
        self.current: tuple | None = None  # (call, peer, nbytes, iteration, started wall time, behind)
        self._tags = {name: 1 + i for i, name in enumerate(streams)}  # for the table: collectives.stream_tag
        self._out = out or sys.stderr
        run = os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("MASTER_PORT", "")
        self._prefix = f"decnode/watch/{run}/{attempt()}/"
        self._store, self._lock = None, threading.Lock()
        self._published, self._printing = None, False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(store_factory,), name="decnode-watchdog",
                                        daemon=True)
        self._thread.start()

    # ---- the main thread: a few attribute writes per wait ---------------------------------------------------------
    def begin(self, call: str, peer: int | None, nbytes: int, iteration: int | None,
              behind: tuple | None = None) -> None:
        """`behind`: (rounds, τ) when this waits for a message that many rounds old under bounded staleness."""
        self.current = (call, peer, nbytes, iteration, time.time(), behind)

    def end(self) -> None:
        self.current = None

    def close(self) -> None:
        self._stop.set()

    # ---- the daemon thread ----------------------------------------------------------------------------------------
    def _run(self, store_factory) -> None:
        try:
            store = store_factory()
        except Exception as err:  # noqa: BLE001 - no store, no reports; training goes on
            print(f"decnode: rank {self.rank}: hang reports off (no store: {str(err).splitlines()[0]})",
                  file=self._out, flush=True)
            return
        with self._lock:
            self._store = store
        period = min(max(self.warn_s / 4, 0.05), 5.0)  # publish within 1.25 × the threshold
        while not self._stop.wait(period):
            try:
                self._look()
            except Exception:  # noqa: BLE001 - the store went away (job ending): stop watching
                return

    def _look(self) -> None:
        wait = self.current
        if self._published is not None and wait is not self._published:  # that wait is over
            self._set(f"wait/{self.rank}", "")
            if self._printing:
                self._store.compare_set(self._prefix + "printer", str(self.rank), "")
                self._printing = False
            self._published = None
        if wait is None or wait is self._published or time.time() - wait[4] < self.warn_s:
            return
        self._set(f"wait/{self.rank}", json.dumps(wait))
        self._published = wait
        claimed = self._store.compare_set(self._prefix + "printer", "", str(self.rank))
        if claimed == str(self.rank).encode():
            self._printing = True
            self._stop.wait(min(self.warn_s / 2, 1.0))  # the others publish theirs meanwhile
            print(self.table(), file=self._out, flush=True)

    def _set(self, key: str, value: str) -> None:
        with self._lock:
            self._store.set(self._prefix + key, value)

    def reports(self) -> dict[int, tuple]:
        """Every rank's published wait (call, peer, nbytes, iteration, started)."""
        out = {}
        with self._lock:
            if self._store is None:
                return out
            for r in range(self.world):
                key = self._prefix + f"wait/{r}"
                if self._store.check([key]):
                    text = self._store.get(key).decode()
                    if text:
                        out[r] = tuple(json.loads(text))
        return out

    def share(self, verdict: str | None) -> str | None:
        """The job's verdict: the first one a rank published (so every rank ends with the same line); this rank's
        `verdict` (None: only read) goes in when there is none yet. None if the store is unreachable."""
        try:
            with self._lock:
                if self._store is None:
                    return verdict
                key = self._prefix + "verdict"
                if verdict is None:
                    return (self._store.get(key).decode() or None) if self._store.check([key]) else None
                return self._store.compare_set(key, "", verdict).decode()
        except Exception:  # noqa: BLE001 - the store is gone
            return verdict

    def awaited_verdict(self, patience_s: float = 2.0) -> str | None:
        """After a peer closed its connection: the verdict it may be about to publish (gloo closes a pair the moment
        a wait on it times out, before that rank has found whom to blame)."""
        deadline = time.monotonic() + patience_s
        while True:
            verdict = self.share(None)
            if verdict or time.monotonic() > deadline:
                return verdict
            time.sleep(0.1)

    # ---- who waits on whom ----------------------------------------------------------------------------------------
    def _waits_on(self, reports: dict, rank: int) -> set[int]:
        call, peer = reports[rank][0], reports[rank][1]
        if peer is not None:
            return {peer}
        # A collective waits on every rank that has not joined it.
        return {q for q in range(self.world) if q != rank and (q not in reports or reports[q][0] != call)}

    def _reach(self, reports: dict, start: int) -> set[int]:
        seen, todo = set(), [start]
        while todo:
            r = todo.pop()
            if r in seen:
                continue
            seen.add(r)
            if r in reports:
                todo += self._waits_on(reports, r)
        return seen

    def _blame(self, reports: dict, start: int) -> tuple[list[int], list[int]]:
        """(roots, waiters): the ranks the waits from `start` end at, and every reporting rank that waits on them."""
        roots = sorted(r for r in self._reach(reports, start) if r not in reports)
        waiters = sorted(r for r in reports if set(roots) & self._reach(reports, r))
        return roots, waiters

    @staticmethod
    def _only_stale(reports: dict, rank: int) -> bool:
        """Whether every wait on `rank` is for a message more than τ rounds old (bounded staleness)."""
        on = [w for w in reports.values() if w[1] == rank]
        return bool(on) and all(len(w) > 5 and w[5] for w in on)

    def table(self) -> str:
        reports, now = self.reports(), time.time()
        if not reports:
            return f"decnode: hang report: no wait older than {self.warn_s:g} s any more"
        start = min(reports)
        roots, _ = self._blame(reports, start)
        # A fresh line first: rank 0's progress bar may be mid-line on the same terminal.
        lines = [f"\ndecnode: hang report — waits older than {self.warn_s:g} s (run.hang_warning_s); who waits on whom:",
                 f"  {'rank':>4}  {'waits on':<12}{'call (stream)':<18}{'tag':>5}{'bytes':>10}{'iteration':>11}"
                 f"{'waited':>9}"]
        stale = {}  # waits for a message more than τ rounds old: waited-on rank → τ (bounded staleness)
        for r in range(self.world):
            if r in reports:
                call, peer, nbytes, iteration, started, *more = reports[r]
                on = f"rank {peer}" if peer is not None else "all (" + ", ".join(
                    map(str, sorted(self._waits_on(reports, r)))) + ")"
                behind = more[0] if more else None
                note = ""
                if behind:  # a slow neighbour the staleness bound makes this rank wait for, not a lost message
                    note = f"  waiting on rank {peer}, {behind[0]}+ rounds behind (staleness bound τ={behind[1]})"
                    stale[peer] = behind[1]
                lines.append(f"  {r:>4}  {on:<12}{call:<18}{self._tags.get(call, '-')!s:>5}{nbytes or '-'!s:>10}"
                             f"{iteration if iteration is not None else '-'!s:>11}{now - started:>8.1f}s{note}")
            elif any(r in self._waits_on(reports, w) for w in reports):
                why = (f"more than τ={stale[r]} rounds behind its neighbours: slow, or frozen if it stays so"
                       if self._only_stale(reports, r) else "frozen, or busy outside communication")
                lines.append(f"  {r:>4}  {'-':<12}(reports no wait: {why})")
        if roots and all(self._only_stale(reports, r) for r in roots):
            lines.append(f"  → everybody waits on rank{'s' if len(roots) > 1 else ''} {', '.join(map(str, roots))}, "
                         f"more than τ rounds behind (staleness bound τ={max(stale[r] for r in roots)}): a slow node "
                         "the bound makes its neighbours wait for")
        elif roots:
            lines.append(f"  → everybody waits on rank{'s' if len(roots) > 1 else ''} {', '.join(map(str, roots))}")
        else:  # every rank on the chain waits: a lost message, or a deadlock
            lines.append(f"  → ranks {', '.join(map(str, sorted(self._reach(reports, start))))} wait on each other")
        return "\n".join(lines)

    def verdict(self, call: str, peer: int | None, timeout_s: float, iteration: int | None) -> str | None:
        """At a timeout of this rank's wait: one sentence naming the rank everybody waits on, None if unknown."""
        try:
            reports = self.reports()
        except Exception:  # noqa: BLE001 - the store is gone: the caller says what it knows
            return None
        reports[self.rank] = (call, peer, 0, iteration, time.time() - timeout_s)
        roots, waiters = self._blame(reports, self.rank)
        if not roots:
            cycle = sorted(self._reach(reports, self.rank))
            return f"ranks {', '.join(map(str, cycle))} wait on each other (a deadlock) during iteration {iteration}"
        seconds = max(time.time() - reports[w][4] for w in waiters)
        its = [reports[w][3] for w in waiters if reports[w][3] is not None]
        who = f"rank{'s' if len(roots) > 1 else ''} {', '.join(map(str, roots))}"
        them = "ranks " + ", ".join(map(str, waiters)) if len(waiters) > 1 else f"rank {waiters[0]}"
        during = f" during iteration {min(its)}" if its else ""
        return f"{who} stopped answering{during} ({them} waited {seconds:.0f} s on {'them' if len(roots) > 1 else 'it'})"
