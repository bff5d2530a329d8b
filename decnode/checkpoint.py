"""Checkpoints: one file per run, written atomically by rank 0, holding every rank's state.

Rank 0 gathers each rank's per-agent state (parameters, samplers, hidden states, local critics) with one
gather of Python objects and stores it by agent id, so a run may resume on a different number of processes.
It adds its own coordinator state (environments, central critic, counters) and writes
`checkpoint.pt` through a temporary file and a rename, so a crash mid-write leaves the previous one intact.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CHECKPOINT = "checkpoint.pt"
# What a resumed run must agree on with the checkpoint; anything else may change (e.g. iterations).
IDENTITY_KEYS = {"env": ("name", "n_agents", "n_envs", "episode_length"),
                 "algo": ("name", "k", "critic", "mix_every"), "train": ("hidden", "seed")}


class CheckpointError(RuntimeError):
    """A missing, corrupt or incompatible checkpoint; the message is one line."""


def atomic_save(obj, path: Path) -> None:
    """torch.save through `path`.tmp and a rename: a failed write (a full or read-only disk, an OSError naming
    why) removes the temporary file and leaves the previous `path` as it was."""
    import torch  # here, not at the top: the CLI checks its input before paying for torch's import

    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            try:
                torch.save(obj, f)
            except RuntimeError as err:  # torch's writer swallows the failed write's reason: give the OSError back
                if isinstance(err.__context__, OSError):
                    raise err.__context__ from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def load(run_dir: Path) -> dict:
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"no checkpoint in {run_dir} (expected {path.name})")
    import torch

    try:
        state = torch.load(path, weights_only=False)
    except Exception as err:  # noqa: BLE001 - any unreadable file is reported the same way
        raise CheckpointError(f"checkpoint {path} is corrupt or unreadable: {str(err).splitlines()[0][:120]}") from None
    if not isinstance(state, dict) or not {"iteration", "agents", "config"} <= set(state):
        raise CheckpointError(f"checkpoint {path} is not a decnode checkpoint")
    return state


def check_compatible(saved_config: dict, config: dict) -> None:
    """One-line error when a resume would change what the run is (agents, topology, algorithm, env)."""
    for section, keys in IDENTITY_KEYS.items():
        for key in keys:
            old, new = saved_config[section][key], config[section][key]
            if old != new:
                raise CheckpointError(f"cannot resume: {section}.{key} was {old!r} in the checkpoint, now {new!r}")


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
