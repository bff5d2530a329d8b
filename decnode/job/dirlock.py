"""One job per directory: an exclusive flock on a lock file in it, held for the job's life, with a record inside
of who holds it (pid, host, command, start, torchrun job id).

The kernel releases a flock when its process ends, however it ends, so a lock left by a dead job (SIGKILL, a
crash, the OOM killer) is free by itself. A job that ends normally deletes the lock file; one still there when a
job takes the lock was left by a job that died holding it, and the taker says so. A refused job names the live
holder from its record. Used for run directories (run.py: every job, whoever launches it) and sweep directories.

Deleting the file on release is safe because a taker checks, once it holds the flock, that the path still names
the file it locked (a job that opened the file just before it was deleted would otherwise lock a ghost).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..config import ConfigError

RETRY_S = 0.5  # a holder found busy is asked again for this long: a probe (holder()) holds it for microseconds


class Busy(ConfigError):
    """The directory is locked by a live job; the message names it in one line."""


def describe(record: dict | None) -> str:
    """' (pid 1234 on host n1, decnode-run since 2025-01-02T10:11:12)': what is known of a holder ('' if nothing:
    a lock taken by other means, or its record not written yet)."""
    if not record or "pid" not in record:
        return ""
    since = f", {record.get('prog', 'decnode')} since {record['since']}" if record.get("since") else ""
    return f" (pid {record['pid']} on host {record.get('host', '?')}{since})"


def _read(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _record(path: Path, settle_s: float = 0.0) -> dict | None:
    """The record in the lock file; a taker writes it just after locking, so a reader may wait `settle_s` for it."""
    deadline = time.monotonic() + settle_s
    while True:
        record = _read(path)
        if record is not None or time.monotonic() >= deadline:
            return record
        time.sleep(0.02)


def holder(directory: Path, name: str) -> dict | None:
    """The record of the live job holding directory's lock ({} if it has written none yet); None when nobody holds
    it. Changes nothing (a missing lock file is not created)."""
    path = Path(directory) / name
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file (or no directory): nobody holds it
        return None
    try:
        deadline = time.monotonic() + RETRY_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline:  # another probe or a taker holds it only for a moment
                    return _record(path, RETRY_S) or {}
                time.sleep(0.02)
                continue
            except OSError:
                return None  # a file system without flock: nothing to learn here (acquire() says so)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
    finally:
        os.close(fd)


class Lock:
    """A held lock; release() (also at exit) deletes the lock file, then unlocks."""

    def __init__(self, fd: int | None, path: Path, left_by: dict | None):
        self.fd, self.path = fd, path
        self.left_by = left_by  # the record of a job that died holding it, None if the lock was left cleanly

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self.fd)  # closing the last descriptor releases the flock
        self.fd = None
        with contextlib.suppress(ValueError):
            _HELD.remove(self)


_HELD: list[Lock] = []


@atexit.register
def release_all() -> None:
    """Release every lock this process holds (before it ends by a signal of its own, which skips atexit)."""
    for lock in list(_HELD):
        lock.release()


def acquire(directory: Path, name: str, prog: str, busy: str, job: str | None = None, attempt: int = 0,
            wait_s: float = 0.0) -> Lock:
    """Lock directory (created if missing) for this process until it exits; raises Busy (one line: `busy`, its
    "{holder}" replaced by describe(the holder's record)) when a live job holds it. `job`/`attempt`: a torchrun job's id and restart count, recorded so its
    other workers can tell that their own rank 0 holds it (wait_for); while a holder of the same job still exits,
    the taker waits up to `wait_s`."""
    directory, path = Path(directory), Path(directory) / name
    directory.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + RETRY_S
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            record = _record(path, RETRY_S if time.monotonic() >= deadline else 0.0)
            same_job = job is not None and record is not None and record.get("job") == job
            if time.monotonic() >= deadline + (wait_s if same_job else 0.0):
                raise Busy(busy.replace("{holder}", describe(record))) from None
            time.sleep(0.05)
            continue
        except OSError as err:  # e.g. a network file system without locks: run, but not silently
            os.close(fd)
            print(f"{prog}: cannot lock {directory} ({err.strerror or err}); running without a lock: make sure no "
                  "other job uses it", file=sys.stderr, flush=True)
            return Lock(None, path, None)
        try:
            same_file = os.path.samestat(os.fstat(fd), os.stat(path))
        except OSError:
            same_file = False
        if same_file:
            break
        os.close(fd)  # its holder released and deleted it after we opened it: lock the file that is there now
    left = _read(path)  # a record still there: its job died holding the lock (a job that ends deletes the file)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "prog": prog,
              "since": time.strftime("%Y-%m-%dT%H:%M:%S"), "job": job, "attempt": attempt}
    data = (json.dumps(record) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    lock = Lock(fd, path, left if left and not (job is not None and left.get("job") == job) else None)
    _HELD.append(lock)
    return lock


def wait_for(directory: Path, name: str, job: str, attempt: int, timeout_s: float) -> bool:
    """A torchrun worker other than rank 0: wait until its job's rank 0 (this attempt's) holds the lock, so no
    worker touches the directory of a job that may be refused. False after timeout_s."""
    path = Path(directory) / name
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        record = _read(path)
        if record and record.get("job") == job and record.get("attempt") == attempt:
            return True
        time.sleep(0.05)
    return False
