"""Run directories: created by decnode, marked with a manifest, and only ever cleared of decnode's own files.

`.decnode-run.json` marks a directory decnode created and lists the file patterns decnode writes into it
(`WRITES`). `.decnode-run.lock` is the lock of the job that uses it (dirlock.py): one job per run directory. `--overwrite` deletes a run directory's contents only when the manifest is there and every entry
matches those patterns; anything else is refused in one line naming what would be lost. A run that never got
past setup (no checkpoint, no model, no logged iteration) is replaced by the same command without --overwrite.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import dirlock, metricsfile
from ..cli import check_output
from ..config import ConfigError, read_file

MANIFEST = ".decnode-run.json"
CONFIG, MODELS = "config.yaml", "models.pt"  # the resolved config that trains; the final models (trainer.py)
LOCK = ".decnode-run.lock"  # held by the job using the directory (dirlock.py); never deleted by --overwrite
# Everything decnode writes into a run directory: training (trainer, logger, checkpoint), decnode-eval's default
# output, decnode-landscape, decnode-plot's default RUN_DIR/plots.
WRITES = (MANIFEST, LOCK, "config.yaml", "metrics.jsonl", "timing.json", "trace.json", "models.pt", "models.pt.tmp",
          "checkpoint.pt", "checkpoint.pt.tmp", "models.pt.sha256", "models.pt.sha256.tmp", "checkpoint.pt.sha256",
          "checkpoint.pt.sha256.tmp", "processes.json", "topology.json", "eval.json", "landscape.npz", "landscape_*.png",
          "tb/events.out.tfevents.*", "plots/*.png", "config.yaml.tmp", "attempts/*.json", "attempts/*.json.tmp")
TRAINED = ("checkpoint.pt", "models.pt")
# What decnode's other commands leave in a directory they write into (outputs.py): the record of the files they
# wrote, and the staging folder of a command that was killed. Decnode's in every run directory, whatever its
# manifest's version.
OUTPUTS_MANIFEST, STAGING = ".decnode-outputs.json", ".decnode-tmp-"
TOOL_WRITES = (OUTPUTS_MANIFEST, f"{STAGING}*/*", f"plots/{OUTPUTS_MANIFEST}", f"plots/{STAGING}*/*")


def _manifest(run_dir: Path) -> dict | None:
    try:
        data = json.loads((run_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("writes"), list):
        return None
    # the manifest, the lock and the tools' files are ours too (manifests written before the lock existed do not
    # list it)
    data["writes"] = [MANIFEST, LOCK, *TOOL_WRITES, *(p for p in data["writes"] if isinstance(p, str) and p != LOCK)]
    return data


def _entries(run_dir: Path) -> list[tuple[str, bool]]:
    """(relative posix path, is a real directory) for everything below run_dir; symlinks are not followed."""
    out = []
    for root, dirs, files in os.walk(run_dir):
        rel_root = Path(root).relative_to(run_dir)
        for name in dirs:
            path = Path(root) / name
            out.append(((rel_root / name).as_posix(), not path.is_symlink()))
        out.extend(((rel_root / name).as_posix(), False) for name in files)
    return out


def foreign(run_dir: Path, patterns) -> list[str]:
    """What is in run_dir that decnode did not write (directories shown with a trailing /)."""
    containers = {p.rsplit("/", i)[0] for p in patterns for i in range(1, p.count("/") + 1)}
    lost = []
    for rel, is_dir in _entries(run_dir):
        if is_dir:
            if not any(fnmatch.fnmatchcase(rel, c) for c in containers):
                lost.append(rel + "/")
        elif not any(fnmatch.fnmatchcase(rel, p) for p in patterns):
            lost.append(rel)
    # a directory already listed covers what is below it
    return sorted(r for r in lost if not any(r != d and r.startswith(d) for d in lost if d.endswith("/")))


def _names(paths: list[str], limit: int = 4) -> str:
    more = f", … ({len(paths) - limit} more)" if len(paths) > limit else ""
    return ", ".join(paths[:limit]) + more


def has_trained(run_dir: Path) -> bool:
    if any((run_dir / name).exists() for name in TRAINED):
        return True
    metrics = run_dir / metricsfile.NAME
    return metrics.is_file() and metrics.stat().st_size > 0


def read_config(run_dir: Path) -> dict:
    """The run's config.yaml as a dict (not validated: callers take what they need); ConfigError, one line."""
    return read_file(Path(run_dir) / CONFIG)


def temporary(path: Path) -> Path:
    """Where replace_atomically stages `path` (WRITES lists these names: a crash may leave one behind)."""
    return path.with_name(path.name + ".tmp")


def replace_atomically(path: Path, data: bytes | str | None = None) -> None:
    """Replace `path` whole or not at all: write `data` (str: UTF-8) to temporary(path) — None: the caller wrote
    that file already —, flush it to disk, rename it over `path`, then flush the directory, so that a crash of the
    machine can neither leave a cut file nor reorder this rename after the next one. A failure (an OSError saying
    why) removes the temporary file and leaves `path` as it was. Every file decnode replaces in place goes
    through here: readers, even other processes mid-run, see the old file or the new one."""
    tmp = temporary(Path(path))
    try:
        if data is not None:
            with open(tmp, "wb") as f:
                f.write(data.encode() if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
        else:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    with contextlib.suppress(OSError):  # not every platform or filesystem can sync a directory
        fd = os.open(Path(path).parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def clear(run_dir: Path, patterns) -> None:
    """Delete decnode's own files in run_dir (callers have checked there is nothing else), then its subfolders;
    the lock stays (this job holds it: deleting it would let another job lock a new one). The manifest goes last:
    a job killed half way leaves a directory that is still recognisably decnode's."""
    for rel, is_dir in sorted(_entries(run_dir), key=lambda e: (-e[0].count("/"), e[0] == MANIFEST)):
        path = run_dir / rel
        if rel == LOCK:
            continue
        if is_dir:
            path.rmdir()  # empty by now: only our containers are left, and their files went first
        elif any(fnmatch.fnmatchcase(rel, p) for p in patterns):
            path.unlink()


def check_out_path(run_dir: Path) -> None:
    """A run directory can be made here: not a file, not under a file, the nearest existing folder writable."""
    try:
        check_output(run_dir, "directory")
    except ValueError as err:
        raise ConfigError(f"run directory: {err}; choose another --out") from None


def prepare(run_dir: Path, overwrite: bool) -> str | None:
    """Check that a new run may use run_dir (raises ConfigError, changes nothing); returns a note for stdout
    when the directory will be replaced. Call create() afterwards."""
    check_out_path(run_dir)
    if not run_dir.exists() or not any(p.name != LOCK for p in run_dir.iterdir()):
        return None
    manifest = _manifest(run_dir)
    if manifest is None:
        listing = _names(sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir() if p.name != LOCK))
        raise ConfigError(f"{run_dir} is not empty and was not created by decnode (no {MANIFEST}); it holds "
                          f"{listing}: nothing is deleted, choose another --out")
    lost = foreign(run_dir, manifest["writes"])
    if lost:
        raise ConfigError(f"run directory {run_dir} holds files decnode did not write ({_names(lost)}); "
                          "nothing is deleted: move them or choose another --out")
    if not has_trained(run_dir):
        return f"replacing {run_dir}: a run that stopped during setup (no iteration logged, no checkpoint)"
    if not overwrite:
        raise ConfigError(f"run directory {run_dir} exists; pass --resume {run_dir} or --overwrite")
    return f"--overwrite: deleting decnode's files in {run_dir}"


def create(run_dir: Path) -> None:
    """Clear decnode's files (prepare() allowed it), make the directory and mark it as decnode's."""
    try:
        manifest = _manifest(run_dir) if run_dir.is_dir() else None
        if manifest is not None:
            clear(run_dir, manifest["writes"])
        run_dir.mkdir(parents=True, exist_ok=True)
        mark(run_dir)
    except OSError as err:
        raise ConfigError(f"cannot create run directory {run_dir}: {err.strerror or err}") from None


def _busy(run_dir: Path) -> str:
    return (f"run directory {run_dir} is in use by another job{{holder}}; nothing was changed: wait for it to end, "
            "or stop it")


def refuse_if_busy(run_dir: Path, job: str | None = None) -> None:
    """Busy (one line naming the live job) when a job other than `job` holds run_dir's lock; changes nothing."""
    record = dirlock.holder(run_dir, LOCK)
    if record is not None and not (job is not None and record.get("job") == job):
        raise dirlock.Busy(_busy(run_dir).replace("{holder}", dirlock.describe(record)))


def lock(run_dir: Path, job: str | None = None, attempt: int = 0, wait_s: float = 0.0) -> None:
    """Take run_dir's lock for this process's life, before anything in it is written or deleted (Busy if a live job
    holds it); a lock left by a job that died is taken over, said on stderr."""
    held = dirlock.acquire(run_dir, LOCK, "decnode-run", _busy(run_dir), job, attempt, wait_s)
    if held.left_by is not None:
        print(f"decnode-run: {run_dir} was locked by a job that died{dirlock.describe(held.left_by)}; taking it "
              "over", file=sys.stderr, flush=True)


@functools.cache
def git_commit() -> str | None:
    """The commit of the decnode code this process runs (`+dirty` when its tracked code differs from it); None when
    decnode is not a git checkout or git is missing. Results name the code that made them."""
    package = Path(__file__).resolve().parents[1]  # decnode/, above job/

    def git(*args):
        return subprocess.run(["git", "-C", str(package), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "--show-toplevel", "HEAD")
        lines = head.stdout.split()
        # An installed copy inside some other repository (a venv in a checkout) is not that repository's code.
        if head.returncode or len(lines) != 2 or Path(lines[0]).resolve() != package.parent:
            return None
        # What decides a run's numbers: the package, the configs and the dependencies (not, say, the README).
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "decnode", "configs", "pyproject.toml")
        return lines[1] + ("+dirty" if dirty.returncode or dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def mark(run_dir: Path) -> None:
    """Write the manifest (kept as it is if it is there: it records the run's first command and commit; a resume
    with other code adds its commit to resumed_git_commits)."""
    data = _manifest(run_dir)
    if data is not None:
        commit = git_commit()
        other_code = commit not in (data.get("git_commit"), *data.get("resumed_git_commits", []))
        # A run made by an older decnode: the files this one adds (e.g. digest files) are decnode's too.
        added = [p for p in WRITES if p not in data["writes"]]
        if other_code or added:
            if other_code:
                data["resumed_git_commits"] = [*data.get("resumed_git_commits", []), commit]
            data["writes"] = data["writes"][2 + len(TOOL_WRITES):] + added  # what _manifest() put first
            (run_dir / MANIFEST).write_text(json.dumps(data, indent=1) + "\n")
        return
    data = {"created_by": "decnode", "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": sys.argv,
            "git_commit": git_commit(), "writes": list(WRITES)}
    (run_dir / MANIFEST).write_text(json.dumps(data, indent=1) + "\n")


def covers(path: Path) -> bool:
    """Whether the manifest of a run directory holding `path` (in it, or in one of its folders) claims it."""
    path = Path(path)
    for run_dir in (path.parent, path.parent.parent):
        manifest = _manifest(run_dir)
        if manifest is not None:
            rel = path.relative_to(run_dir).as_posix()
            return any(fnmatch.fnmatchcase(rel, p) for p in manifest["writes"])
    return False


class RunDirWriteError(RuntimeError):
    """Writing into the run directory failed during a run (a full disk, a read-only mount, permissions); the
    message is one line saying what could not be written, why, and what is intact."""


# What to do about the usual reasons a write fails; anything else is named by its own words.
_FIXES = {errno.ENOSPC: "free space", errno.EDQUOT: "free space (disk quota)", errno.EROFS: "make it writable",
          errno.EACCES: "make it writable", errno.EPERM: "make it writable"}


@contextlib.contextmanager
def writing(run_dir: Path, what: str, checkpoint: int | None):
    """Around a write into run_dir during a run: an OSError becomes a RunDirWriteError naming `what`, the reason
    and the last checkpoint written (`checkpoint`, None before the first), which an atomic save left intact."""
    try:
        yield
    except OSError as err:
        fix = _FIXES.get(err.errno, "fix it")
        if checkpoint is not None:
            then = f"the checkpoint of iteration {checkpoint} is intact — {fix} and continue with --resume {run_dir}"
        else:
            then = f"no checkpoint was written yet — {fix} and start the run again (with --overwrite)"
        raise RunDirWriteError(f"could not write {what} to {run_dir}: {err.strerror or err}; {then}") from None
