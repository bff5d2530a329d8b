"""Restarts: when a rank dies, torch's elastic agent (ours with --max-restarts, or torchrun's) starts every worker
again, and they continue from the run directory's last checkpoint by themselves.

The agent tells a worker which attempt it is (TORCHELASTIC_RESTART_COUNT) but not what went wrong in the last
one, so every rank leaves a note per attempt in RUN_DIR/attempts/: written when it starts, completed when it
exits (its exception, if any) or when the agent's SIGTERM reaches it. The agent sends SIGTERM only to the ranks
still alive, so a rank that died from outside (SIGKILL, the OOM killer) is the one whose note stays bare; its
peers' CommErrors also name it. Rank 0 of the next attempt reads the notes of the last one and records the
restart on stdout and in metrics.jsonl (`restarts`, on the first line it logs after the restart).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import threading
import time
from pathlib import Path

from . import metricsfile
from .rundir import replace_atomically
from ..elastic import attempt, max_restarts

NOTES = "attempts"
# How a survivor's error reads when a peer went away: ours (comm/transport.py) or gloo's own words.
PEER_LOST = re.compile(r"^(CommError|DistBackendError)|Connection (closed|reset) by peer|Broken pipe")


def _job() -> str | None:
    """A short id shared by every attempt of this job (notes of earlier jobs in the same run dir stay apart)."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "").strip()
    return re.sub(r"[^A-Za-z0-9_-]", "_", run_id)[:12] or None


def _note(run_dir: Path, job: str, n: int, rank: int) -> Path:
    return Path(run_dir) / NOTES / f"{job}-{n}-rank{rank}.json"


def _write(path: Path, data: dict) -> None:
    """Best effort: the notes only explain a restart, so a full or read-only disk must not fail the run here
    (the writes that matter say so themselves)."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(exist_ok=True)
        replace_atomically(path, json.dumps(data))


class _Note:
    """One rank's note for this attempt; updated from the main thread and from the signal watcher."""

    def __init__(self, path: Path, data: dict):
        self.path, self.data, self.lock = path, data, threading.Lock()
        _write(path, data)

    def add(self, **items) -> None:
        with self.lock:
            self.data.update(items)
            _write(self.path, self.data)


def _watch_signals(note: _Note):
    """Mark the note when SIGTERM/SIGINT arrives, even while the main thread is stuck in a wait on a dead peer
    (Python runs its handlers only between bytecodes; the wakeup fd is written by the C handler at once).
    Returns the previous wakeup fd, to restore."""
    read, write = os.pipe()
    os.set_blocking(write, False)
    try:
        previous = signal.set_wakeup_fd(write)
    except ValueError:  # not the main thread
        os.close(read), os.close(write)
        return None

    def watch():
        while data := os.read(read, 64):
            names = [signal.Signals(b).name for b in data if b in (signal.SIGTERM, signal.SIGINT)]
            if names:
                note.add(signal=names[0])

    threading.Thread(target=watch, daemon=True, name="decnode-signal-note").start()
    return previous


@contextlib.contextmanager
def noted(run_dir: Path, rank: int, record: dict | None = None):
    """Around a worker's whole life: this attempt's note for `rank` (with rank 0's restart `record`)."""
    job = _job()
    if job is None or not max_restarts():  # nothing restarts this process: no note to leave
        yield
        return
    data = {"rank": rank, "pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
    note = _Note(_note(run_dir, job, attempt(), rank), {**data, **({"restart": record} if record else {})})
    previous = _watch_signals(note)
    try:
        yield
    except BaseException as err:
        note.add(error=f"{type(err).__name__}: {str(err).strip()}"[:2000])
        raise
    else:
        note.add(ended=time.time())
    finally:
        if previous is not None:
            signal.set_wakeup_fd(previous)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def cause(run_dir: Path, n: int, world: int) -> tuple[int | str, str]:
    """(rank, what happened to it) that ended attempt n; ("unknown", …) when the notes cannot tell."""
    job = _job()
    notes = {r: _read(_note(run_dir, job, n, r)) for r in range(world)} if job else {}
    errors = {r: note["error"] for r, note in notes.items() if note and "error" in note}
    # An exception other than a peer's disappearance is where it started (a bug, a full disk).
    own = [(r, e) for r, e in errors.items() if not PEER_LOST.search(e)]
    if own:
        rank, error = own[0]
        return rank, f"failed ({error.splitlines()[0][:300]})"
    # The hang watchdog's verdict (comm/watchdog.py) names the rank everybody waited on: frozen or stuck, then killed.
    hung = {int(m) for e in errors.values() for m in re.findall(r"rank (\d+) stopped answering", e)}
    if len(hung) == 1:
        return hung.pop(), "stopped answering"
    # A rank that never completed its note died without raising: killed from outside.
    silent = [r for r, note in notes.items() if not note or not {"error", "ended", "signal"} & set(note)]
    if len(silent) == 1:
        return silent[0], "died"
    # Otherwise the peers' errors may agree on one rank: dead if its note is bare, else hung (they timed out).
    named = {int(m) for e in errors.values() for m in re.findall(r"with rank (\d+)", e)}
    if len(named) == 1 and (not silent or named <= set(silent)):
        rank = named.pop()
        return rank, "died" if rank in silent else "stopped answering"
    return "unknown", "died or failed"


def record(run_dir: Path, world: int, checkpoint: int | None) -> dict:
    """Rank 0 of attempt n > 0, before anything is written: what ended attempt n − 1 and what is replayed."""
    n = attempt()
    rank, how = cause(run_dir, n - 1, world)
    logged = metricsfile.last_iteration(run_dir) or 0
    return {"restart": n, "job": _job(), "rank": rank, "how": how, "iteration": logged + 1,
            "checkpoint": checkpoint, "replayed": max(logged - (checkpoint or 0), 0)}


def unlogged(run_dir: Path, checkpoint: int | None) -> list[dict]:
    """This job's restart records that no line of metrics.jsonl kept (the lines after the checkpoint are cut,
    and an attempt may have died before logging anything), oldest first: rank 0 logs them next."""
    job = _job()
    notes = [_read(p) for p in Path(run_dir, NOTES).glob(f"{job}-*-rank0.json")] if job else []
    # ≤ this attempt: a later job given the same run id by hand overwrites only the notes it reaches
    records = [note["restart"] for note in notes if note and "restart" in note
               and note["restart"]["restart"] <= attempt()]
    records.sort(key=lambda r: r["restart"])
    kept = set()
    for data in metricsfile.records(run_dir):
        if data["iteration"] <= (checkpoint or 0):
            with contextlib.suppress(KeyError, TypeError, AttributeError):
                kept |= {(r["job"], r["restart"]) for r in data.get("restarts", [])}
    return [r for r in records if (r["job"], r["restart"]) not in kept]


def describe(rec: dict) -> str:
    """The console's line for a restart."""
    who = f"rank {rec['rank']}" if rec["rank"] != "unknown" else "a rank (unknown which)"
    start = (f"continuing from the checkpoint of iteration {rec['checkpoint']}" if rec["checkpoint"] is not None
             else "no checkpoint yet: starting over from iteration 0")
    n = rec["replayed"]
    return (f"restart {rec['restart']} of {max_restarts()}: {who} {rec['how']} during iteration {rec['iteration']}; "
            f"{start} ({n} finished iteration{'s' if n != 1 else ''} replayed)")
