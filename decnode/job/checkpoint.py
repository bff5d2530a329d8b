"""Checkpoints: one file per run, written atomically by rank 0, holding every rank's state.

Rank 0 gathers each rank's per-agent state (parameters, samplers, hidden states, local critics) with one
gather of Python objects and stores it by agent id, so a run may resume on a different number of processes.
It adds its own coordinator state (environments, central critic, counters) and writes
`checkpoint.pt` through a temporary file and a rename, so a crash mid-write leaves the previous one intact.

Integrity. Every run file decnode writes with torch.save (checkpoint.pt, models.pt) gets a digest file beside it,
`<name>.sha256` in sha256sum's format, and says inside that it has one (the DIGESTED key). `load_file` is the one
way decnode reads such a file: the zip's own CRC-32 of every entry (torch.load checks none), the sha256 against
the digest file (what a CRC misses: a changed entry whose CRC was recomputed, a file swapped for another), then
torch.load of the very bytes that were checked. A file without a digest file is accepted only when it does not
say it has one, i.e. it predates digests; it is then checked by its CRCs alone.

The two renames. The digest file cannot be replaced in the same instant as the file it verifies, so it lists both
digests while the file is replaced: digest file := {new, old}; file := new; digest file := {new}. A crash at any
point leaves a file that its digest file vouches for, and never one that no write produced.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import re
import zipfile
from pathlib import Path

from .rundir import replace_atomically, temporary

CHECKPOINT = "checkpoint.pt"
DIGEST_SUFFIX = ".sha256"
DIGESTED = "digest"  # key every file atomic_save writes holds: "sha256", its digest file is beside it
# What a resume may change (and says it changed): None, the whole section. Every other key is what the run is:
# decnode-run refuses a resume that changes one, decnode-eval and -landscape a models.pt whose run disagrees on one.
RESUMABLE = {"train": ("iterations",), "eval": None, "run": None, "net": None, "algo": ("agents_per_process",)}
NOT_COMPARED = ("per_algo", "faults")  # folded into the train keys already; faults belong to the attempt that ran them
_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")  # sha256sum's line: digest, a space, ' ' or '*' (binary), the name


class CheckpointError(RuntimeError):
    """A missing, corrupt or incompatible checkpoint or run file; the message is one line."""


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


class _Hashing:
    """The file torch.save writes to, hashing every byte on its way to disk."""

    def __init__(self, f):
        self.f, self.sha = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _write_digests(path: Path, digests: list[str]) -> None:
    sidecar = digest_path(path)
    text = "".join(f"{d}  {path.name}\n" for d in dict.fromkeys(digests))
    replace_atomically(sidecar, text)


def _listed(path: Path, text: bytes | None) -> list[str] | None:
    """The digests a digest file's text lists for `path` (None: there is no digest file); CheckpointError when
    it is not one."""
    if text is None:
        return None
    try:
        lines = [_LINE.fullmatch(line) for line in text.decode().splitlines() if line.strip()]
    except UnicodeDecodeError:
        lines = [None]
    if not lines or not all(m and Path(m[2]).name == path.name for m in lines):
        raise CheckpointError(f"{digest_path(path)} is not a digest file for {path.name} (expected lines as "
                              f"sha256sum writes them): cannot verify {path}")
    return [m[1] for m in lines]


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _current_digests(path: Path) -> list[str]:
    """The digest(s) under which the file now at `path` verifies, kept in the digest file while it is replaced:
    its digest file's one line, else (no digest file yet, or a replacement that stopped half-way) its own hash."""
    with contextlib.suppress(CheckpointError, OSError):
        listed = _listed(path, _read_or_none(digest_path(path)))
        if listed is not None and len(listed) == 1:
            return listed
    with contextlib.suppress(OSError):
        return [hashlib.sha256(path.read_bytes()).hexdigest()]
    return []


def atomic_save(obj: dict, path: Path) -> None:
    """torch.save through `path`.tmp and a rename, with its digest file (see the module's docstring): a failed
    write (a full or read-only disk, an OSError naming why) removes the temporary files and leaves the previous
    `path` and its digest file as they were."""
    import torch  # here, not at the top: the CLI checks its input before paying for torch's import

    tmp = temporary(path)
    try:
        with open(tmp, "wb") as f:
            out = _Hashing(f)
            try:
                torch.save({**obj, DIGESTED: "sha256"}, out)
            except RuntimeError as err:  # torch's writer swallows the failed write's reason: give the OSError back
                if isinstance(err.__context__, OSError):
                    raise err.__context__ from None
                raise
        new = out.sha.hexdigest()
        _write_digests(path, [new, *_current_digests(path)])  # both files verify while path is replaced
        replace_atomically(path)  # syncs tmp, renames it over path
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    # The new file is in place and its digest listed: dropping the old digest may fail (a full disk) harmlessly.
    with contextlib.suppress(OSError):
        _write_digests(path, [new])


def _zip_problem(data: bytes) -> str | None:
    """What is wrong with the zip archive torch.save wrote, checking every entry's CRC-32; None when intact."""
    if not data:
        return "it is empty (0 bytes)"
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            bad = archive.testzip()
    except Exception:  # noqa: BLE001 - zipfile raises several kinds for a damaged directory
        return f"it is not a complete zip archive ({len(data)} bytes; cut short, or not written by decnode)"
    return f"its entry {bad} is damaged (CRC-32 mismatch)" if bad else None


def load_file(path: Path) -> object:
    """The object in a run file decnode wrote with atomic_save (checkpoint.pt, models.pt), verified by the zip's
    CRCs and the digest file; CheckpointError (one line naming the file and what is wrong) otherwise."""
    import torch

    path = Path(path)
    sidecar = digest_path(path)
    try:
        for _ in range(3):  # a writer replacing both meanwhile (see the module's docstring): read them again
            before = _read_or_none(sidecar)
            data = path.read_bytes()
            text = _read_or_none(sidecar)
            if text == before:
                break
    except OSError as err:
        raise CheckpointError(f"cannot read {err.filename or path}: {err.strerror or err}") from None
    problem = _zip_problem(data)
    if problem:
        raise CheckpointError(f"{path} is corrupt or unreadable: {problem}")
    digests = _listed(path, text)
    actual = hashlib.sha256(data).hexdigest()
    if digests is not None and actual not in digests:
        raise CheckpointError(f"{path} is corrupt or was changed: its sha256 {actual[:12]}… differs from the "
                              f"{digests[0][:12]}… that {sidecar.name} recorded when decnode wrote it")
    try:
        obj = torch.load(io.BytesIO(data), weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"{path} is corrupt or unreadable: {str(err).splitlines()[0][:120]}") from None
    if digests is None and isinstance(obj, dict) and DIGESTED in obj:
        raise CheckpointError(f"{path} cannot be verified: its digest file {sidecar.name} is missing (if you trust "
                              f"the file: sha256sum {path.name} > {sidecar.name}, in {path.parent})")
    return obj


def has_digest(path: Path) -> bool:
    """Whether the file has a digest file (False: it predates them and was checked by its CRCs only)."""
    return digest_path(Path(path)).is_file()


def load(run_dir: Path) -> dict:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"no checkpoint in {run_dir} (expected {path.name})")
    state = load_file(path)
    if not isinstance(state, dict) or not {"iteration", "agents", "config"} <= set(state):
        raise CheckpointError(f"checkpoint {path} is not a decnode checkpoint")
    return state


def identity_change(saved: dict, new: dict) -> tuple[str, str, object, object] | None:
    """The first key of config dict `new`, in its order, that RESUMABLE does not allow to change and whose value
    differs from `saved`'s, as (section, key, saved value, new value); None when they are the same run."""
    for section, values in new.items():
        allowed = RESUMABLE.get(section, ())
        if section in NOT_COMPARED or allowed is None:
            continue
        for key, value in values.items():
            old = (saved.get(section) or {}).get(key)
            if key not in allowed and old != value:
                return section, key, old, value
    return None


def cat_rows(per_rank: list):
    """Merge the per-agent (`rows`) states of every rank, in rank order, into one keyed by agent: tensors with an
    agent axis are concatenated and lists extended; a 0-d tensor or other value (shared by all rows, e.g. a value
    normaliser's debiasing term) is taken from rank 0."""
    import torch

    first = per_rank[0]
    if isinstance(first, dict):
        return {key: cat_rows([part[key] for part in per_rank]) for key in first}
    if isinstance(first, torch.Tensor) and first.dim() > 0:
        return torch.cat(per_rank)
    if isinstance(first, list):
        return [x for part in per_rank for x in part]
    return first


def take_rows(state, rows: range):
    """The inverse of cat_rows for one rank: the slice of every per-agent entry that belongs to `rows`."""
    import torch

    if isinstance(state, dict):
        return {key: take_rows(value, rows) for key, value in state.items()}
    if isinstance(state, torch.Tensor) and state.dim() > 0 or isinstance(state, list):
        return state[rows.start: rows.stop]
    return state
