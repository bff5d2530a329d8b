"""metrics.jsonl, rank 0's record of a run (one JSON line per iteration), and the one way every command reads it.

A line is complete when its newline was written. A crash or a full disk mid-write leaves the last line cut short:
every reader (the trainer's resume, decnode-plot, decnode-report, decnode-sweep, the launcher's messages) drops it
and says so in one line; a damaged line before the last is an error naming it. The trainer syncs the file to disk
before each checkpoint, so a checkpoint never outlives the lines of its iterations, and the checkpoint carries
its own iteration's line. A resume rewrites the file from the checkpoint's iteration: the lines after it go (those
iterations run again), a cut last line of the checkpoint's iteration itself is restored from the checkpoint, and
a file that lacks earlier iterations (deleted, emptied) is refused, so every iteration appears exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

NAME = "metrics.jsonl"


class MetricsError(ValueError):
    """metrics.jsonl cannot be read or continued; the message is one line naming the file."""


@dataclass
class Metrics:
    records: list[dict]  # one per iteration logged, in file order
    ends: list[int]  # the byte offset after each record's line
    cut: str | None = None  # the note when a cut-short last line was dropped


def _record(raw: bytes) -> dict | None:
    try:
        data = json.loads(raw)
    except ValueError:
        return None
    ok = isinstance(data, dict) and isinstance(data.get("iteration"), int) and not isinstance(data["iteration"], bool)
    return data if ok else None


def parse(data: bytes, path: Path) -> Metrics:
    records, ends, offset, cut = [], [], 0, None
    lines = data.split(b"\n")  # the last element: what follows the last newline (b"" for a complete file)
    for i, raw in enumerate(lines):
        offset += len(raw) + 1
        if not raw.strip():
            continue
        record = _record(raw) if i < len(lines) - 1 else None  # no newline after it: cut short
        if record is not None:
            records.append(record)
            ends.append(offset)
            continue
        if any(rest.strip() for rest in lines[i + 1:]):  # damaged, and not the last line: no crash does that
            raise MetricsError(f"{path}: line {i + 1} is not a metrics record (damaged or edited: "
                               f"{raw[:60].decode(errors='replace')!r})")
        after = f" after iteration {records[-1]['iteration']}" if records else ""
        cut = f"{path}: its last line{after} is cut short (a write interrupted by a crash or a full disk): dropped"
    return Metrics(records, ends, cut)


def read(run_dir: Path) -> Metrics:
    """The run's records (none when the file is missing); MetricsError for a damaged line that is not the last."""
    path = Path(run_dir) / NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return Metrics([], [])
    except OSError as err:
        raise MetricsError(f"cannot read {path}: {err.strerror or err}") from None
    return parse(data, path)


def records(run_dir: Path) -> list[dict]:
    """The records, for a reader that must not fail (a failure's message, a progress bar): [] when unreadable."""
    with contextlib.suppress(MetricsError):
        return read(run_dir).records
    return []


def last_iteration(run_dir: Path) -> int | None:
    """The last iteration logged; None when nothing is (or the file cannot be read)."""
    logged = records(run_dir)
    return logged[-1]["iteration"] if logged else None


def sync(run_dir: Path) -> None:
    """Force the file's lines to disk (before a checkpoint: a crash must not leave a checkpoint ahead of them)."""
    path = Path(run_dir) / NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Plan:
    """How a resume from the checkpoint of `iteration` rewrites the file."""
    keep: int  # bytes kept
    restore: str | None  # the checkpoint's own line, appended when the file lost it
    notes: list[str]


def plan_resume(run_dir: Path, iteration: int, line: str | None, start_again: str = "") -> Plan:
    """The rewrite that makes the file hold iterations 1..`iteration` once each (`line`: the checkpoint's own
    line, None in checkpoints older than it). MetricsError (one line, ending with `start_again`) when it cannot:
    iterations before the checkpoint's are missing and only a backup of the file has them."""
    run_dir, path = Path(run_dir), Path(run_dir) / NAME
    if iteration == 0:  # a restart before the first checkpoint: the file starts over
        return Plan(0, None, [])
    if not path.exists() and not (iteration == 1 and line):
        raise MetricsError(f"cannot resume {run_dir}: its {NAME} is missing, so iterations 1–{iteration} of the "
                           f"checkpoint would have no record; put the file back{start_again}")
    found = read(run_dir)
    notes = [found.cut] if found.cut else []
    kept = [i for i, r in enumerate(found.records) if r["iteration"] <= iteration]
    keep = found.ends[kept[-1]] if kept else 0
    last = found.records[kept[-1]]["iteration"] if kept else 0
    later = [r["iteration"] for r in found.records[len(kept):]]
    if later:
        notes.append(f"{NAME}: the lines of iterations {later[0]}–{later[-1]}, logged after the checkpoint, are "
                     "replaced as those iterations run again")
    restore = None
    saved = _record(line.encode()) if line else None
    if last == iteration - 1 and saved is not None and saved["iteration"] == iteration:
        restore = line
        notes.append(f"{NAME}: the line of iteration {iteration} restored from the checkpoint")
    elif last != iteration:
        raise MetricsError(f"cannot resume {run_dir}: its {NAME} ends at iteration {last} but the checkpoint is at "
                           f"iteration {iteration} (iterations {last + 1}–{iteration} have no record); put the "
                           f"complete file back{start_again}")
    return Plan(keep, restore, notes)


def rewind(run_dir: Path, plan: Plan) -> None:
    """Apply plan_resume's rewrite, in place (a full disk has no room for a copy)."""
    path = Path(run_dir) / NAME
    if not path.exists():
        path.touch()
    os.truncate(path, plan.keep)
    if plan.restore:
        with open(path, "ab") as f:
            f.write((plan.restore + "\n").encode())
