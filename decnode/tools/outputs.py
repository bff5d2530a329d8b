"""What decnode's tools write (reports, figures, evaluations, landscapes, profiles, overlays): decnode-run's rule,
for every command that writes — only a file decnode made is ever replaced or deleted; anything else is refused in
one line before anything is written.

decnode knows a file is its own when
  - a run directory's manifest (rundir.py) covers it: eval.json, landscape*, plots/*.png of a run;
  - `.decnode-outputs.json` in its directory lists it with the sha256 of what decnode wrote (figures, tables, JSON:
    formats without a place for a mark);
  - it is YAML a user is meant to keep, copy and commit (a --pick-lr overlay, a calibrated profile) and its first
    line names the tool and the sha256 of the lines below: the mark travels with the file, and no hidden file
    appears in the user's configs folder.
A file edited since decnode wrote it (its digest differs) is the user's. An output directory (decnode-report,
decnode-plot) is new, empty, or holds only decnode's files, like a run directory.

Files are written whole into a staging folder in their directory (same file system) and renamed into place, so a
crash leaves the previous file or the new one, never half of one; a staging folder a killed command left behind
is decnode's and is removed by the next write there.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

from ..job import rundir
from ..cli import check_output

MANIFEST, STAGING = rundir.OUTPUTS_MANIFEST, rundir.STAGING
_MARK = re.compile(rb"# written by (decnode-[^(\n]+) \(sha256 ([0-9a-f]{16}) of the lines below")
_MAX_MARKED = 1 << 20  # a marked file is a small YAML; do not hash a stray data file to find out


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def mark(text: str, prog: str) -> str:
    """`text` with decnode's first line: who wrote it and the digest of the lines below."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return (f"# written by {prog} (sha256 {digest} of the lines below; decnode replaces this file only while they "
            "are unchanged)\n" + text)


def _mark_state(path: Path) -> str | None:
    """'intact' or 'edited' for a file carrying decnode's mark, None for one without."""
    try:
        if path.stat().st_size > _MAX_MARKED:
            return None
        head, _, rest = path.read_bytes().partition(b"\n")
    except OSError:
        return None
    found = _MARK.match(head)
    if found is None:
        return None
    return "intact" if hashlib.sha256(rest).hexdigest()[:16] == found[2].decode() else "edited"


def _listed(directory: Path) -> dict[str, list[str]]:
    """The directory's record: file name -> the digests decnode wrote under that name."""
    try:
        data = json.loads((directory / MANIFEST).read_text())
        files = data["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    if not isinstance(files, dict):
        return {}
    return {name: [d for d in digests if isinstance(d, str)] for name, digests in files.items()
            if isinstance(name, str) and isinstance(digests, list)}


def _state(path: Path, listed: dict | None = None) -> str:
    """'mine' (decnode wrote it and it is unchanged), 'edited' (decnode wrote it, someone changed it since) or
    'foreign' for an existing path."""
    if path.is_symlink() or not path.is_file():
        return "foreign"
    if rundir.covers(path):
        return "mine"
    listed = _listed(path.parent) if listed is None else listed
    if path.name in listed:
        return "mine" if _sha256(path) in listed[path.name] else "edited"
    return {"intact": "mine", "edited": "edited", None: "foreign"}[_mark_state(path)]


def listing(paths: list[str], limit: int = 4) -> str:
    return ", ".join(paths[:limit]) + (f", … ({len(paths) - limit} more)" if len(paths) > limit else "")


def check_files(paths) -> None:
    """ValueError (one line) unless every path can be written (cli.check_output) and is new or decnode's own."""
    taken = []
    for path in map(Path, paths):
        check_output(path)
        if path.exists() or path.is_symlink():
            state = _state(path)
            if state != "mine":
                taken.append(f"{path} " + ("was edited since decnode wrote it" if state == "edited" else
                                           "exists and decnode did not write it"))
    if taken:
        raise ValueError(f"{'; '.join(taken[:4])}: nothing is written (decnode replaces only its own files, "
                         f"unchanged); move {'it' if len(taken) == 1 else 'them'} or choose another output")


def check_dir(directory: Path) -> None:
    """ValueError (one line) unless `directory` can be created or is empty or holds only decnode's own files."""
    directory = Path(directory)
    check_output(directory, "directory")
    if not directory.is_dir():
        return
    listed, lost = _listed(directory), []
    for entry in sorted(directory.iterdir()):
        if entry.name == MANIFEST or (entry.name.startswith(STAGING) and entry.is_dir() and not entry.is_symlink()):
            continue
        if entry.is_dir() and not entry.is_symlink():
            lost.append(entry.name + "/")
        else:
            state = _state(entry, listed)
            if state != "mine":
                lost.append(entry.name + (" (edited since decnode wrote it)" if state == "edited" else ""))
    if lost:
        raise ValueError(f"output directory {directory} holds files decnode did not write ({listing(lost)}); nothing "
                         "is written: move them or choose another --out")


def _write_record(stage: Path, files: dict[str, list[str]]) -> None:
    """The directory's .decnode-outputs.json, through the staging folder: whole or as it was."""
    (stage / MANIFEST).write_text(json.dumps({"written_by": "decnode", "command": sys.argv, "files": files},
                                             indent=1) + "\n")
    os.replace(stage / MANIFEST, stage.parent / MANIFEST)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # someone else's process: alive
        return True
    return True


class Writer:
    """One command's files in one directory: staged in `directory/.decnode-tmp-<pid>/`, renamed into place when the
    `with` block ends without an error (nothing is replaced otherwise) and recorded in the directory's
    .decnode-outputs.json (record=False: files that carry their own mark). whole=True: the directory is the
    command's output (a report, a set of figures); files a previous run of it wrote that this one did not are
    removed, so a stale figure never passes for a current one. Check the paths (check_files, check_dir) first."""

    def __init__(self, directory: Path, whole: bool = False, record: bool = True):
        self.directory, self.whole, self.record = Path(directory), whole, record
        self.stage = self.directory / f"{STAGING}{os.getpid()}"
        self.written: list[Path] = []

    def __enter__(self) -> Writer:
        self.stage.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.commit()
        else:
            self._discard(self.stage)

    def path(self, name: str) -> Path:
        """Where to write `name` now (in the staging folder)."""
        return self.stage / name

    def text(self, name: str, text: str, prog: str | None = None) -> Path:
        """Stage a text file; with `prog`, marked as that tool's (see mark())."""
        path = self.path(name)
        path.write_text(mark(text, prog) if prog else text)
        return path

    def final(self, path: Path) -> Path:
        """The place of a staged path once committed."""
        return self.directory / Path(path).name

    def commit(self) -> list[Path]:
        staged = sorted(p.name for p in self.stage.iterdir() if p.is_file())
        old = _listed(self.directory) if self.record else {}
        new = {name: _sha256(self.stage / name) for name in staged}
        if self.record:  # first both digests, so that a crash between the renames leaves each file recognised
            _write_record(self.stage, {**old, **{n: [*old.get(n, []), d] for n, d in new.items()}})
        for name in staged:
            os.replace(self.stage / name, self.directory / name)
        if self.whole:
            for name in set(old) - set(new):
                path = self.directory / name
                if path.is_file() and not path.is_symlink() and _sha256(path) in old[name]:
                    path.unlink()
        if self.record:
            kept = {} if self.whole else {n: d for n, d in old.items() if (self.directory / n).is_file()}
            _write_record(self.stage, {**kept, **{n: [d] for n, d in new.items()}})
        self._discard(self.stage)
        for left in self.directory.glob(f"{STAGING}*"):  # staging folders of killed commands
            pid = left.name[len(STAGING):]
            if left.is_dir() and not left.is_symlink() and pid.isdigit() and not _alive(int(pid)):
                self._discard(left)
        self.written = [self.directory / name for name in staged]
        return self.written

    @staticmethod
    def _discard(stage: Path) -> None:
        """Remove a staging folder: only decnode's staged files are in it."""
        if stage.is_dir():
            for path in stage.iterdir():
                if path.is_file() or path.is_symlink():
                    path.unlink()
            try:
                stage.rmdir()
            except OSError:
                pass  # something else in there: left alone
