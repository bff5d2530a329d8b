"""A sweep file and its cells: the grid expanded, every cell composed and validated with decnode's own config
machinery before anything runs (bad input is one line). decnode-sweep (command.py) runs the cells."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ... import yamlio
from ...job import preflight
from ...cli import check_output
from ...config import ConfigError, compose, from_dict, read_file, resolve
from ...extensions import env_agents

KEYS = ("config", "overlays", "out", "processes", "set", "grid", "seeds")
# A cell's name is a file name (configs/<name>.yaml, logs/<name>.log, cells/<name>/): longer names are shortened
# to this, or to what the filesystem allows with room for those suffixes.
NAME_MAX = 245
SUFFIX_ROOM = 10


@dataclass
class Cell:
    name: str
    values: dict  # dotted key -> value, in grid order (then train.seed)
    cfg: object
    procs: int
    config_file: Path = None
    run_dir: Path = None
    proc: subprocess.Popen | None = field(default=None, repr=False)
    started: float = 0.0


def _nest(key, value, where: str) -> dict:
    parts = key.split(".") if isinstance(key, str) else []
    if len(parts) < 2 or not all(parts):
        raise ConfigError(f"{where}: '{key}' is not a dotted config key (section.key, e.g. train.lr)")
    for part in reversed(parts):
        value = {part: value}
    return value


def _layer(values: dict, where: str) -> dict:
    out: dict = {}
    for key, value in values.items():
        out = yamlio.merge(out, _nest(key, value, where))
    return out


def _label(value) -> str:
    text = {True: "true", False: "false", None: "null"}[value] if value is None or isinstance(value, bool) else str(value)
    text = text.replace("e+", "e")  # 1e+30 -> 1e30: sanitising the + to - would read as 1e-30
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def cell_name(values: dict, limit: int = NAME_MAX) -> str:
    """key-value_key-value… of the grid values; beyond `limit` characters (ASCII: bytes), its start and a digest of
    the whole, so that names that differ only past the limit stay apart."""
    name = "_".join(f"{_label(k.split('.')[-1])}-{_label(v)}" for k, v in values.items())
    if len(name) <= limit:
        return name
    return f"{name[:limit - 17].rstrip('._-')}-{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def fs_limits(out: Path) -> tuple[int, int]:
    """(NAME_MAX, PATH_MAX) in bytes of the filesystem the sweep directory is (or will be) made on."""
    here = next(p for p in (out, *out.parents) if os.path.exists(p))  # os.path: False for a name too long
    try:
        return os.pathconf(here, "PC_NAME_MAX"), os.pathconf(here, "PC_PATH_MAX")
    except (OSError, ValueError):
        return 255, 4096  # Linux's


def _run_file_bytes() -> int:
    """The longest path decnode writes below a run directory (rundir.WRITES): TensorBoard's
    tb/events.out.tfevents.<time>.<host>.<pid>.<n>, with room for its numbers; the others are shorter."""
    return len("tb/events.out.tfevents.") + len(os.fsencode(socket.gethostname())) + 40


def check_dir_name(path: Path, out: Path) -> None:
    """The sweep directory's path is one the filesystem takes: each part within NAME_MAX, the whole within PATH_MAX."""
    name_max, path_max = fs_limits(out)
    size = len(os.fsencode(str(out)))
    if size >= path_max:
        raise ConfigError(f"{path}: sweep directory {str(out)[:40]}…: its path is {size} bytes, beyond this "
                          f"filesystem's {path_max - 1}; choose a shorter out: or --out")
    long = [part for part in out.parts if len(os.fsencode(part)) > name_max]
    if long:
        raise ConfigError(f"{path}: sweep directory {out}: the name {long[0][:40]}… is {len(os.fsencode(long[0]))} "
                          f"bytes, beyond this filesystem's {name_max}; choose a shorter out: or --out")


def check_paths(path: Path, out: Path, names: list[str]) -> None:
    """Every file a cell writes fits within the filesystem's PATH_MAX (its names were shortened to fit NAME_MAX);
    checked before anything is written, where a run would fail midway."""
    path_max = fs_limits(out)[1]
    for name in names:
        deepest = len(os.fsencode(str(out / "cells" / name))) + 1 + _run_file_bytes()
        if deepest >= path_max:  # PATH_MAX counts the terminating NUL
            raise ConfigError(f"{path}: cell {name}: its run directory's files would have paths of up to {deepest} "
                              f"bytes, beyond this filesystem's {path_max - 1}; choose a shorter out: or --out")


def _grid_values(path: Path, data: dict) -> list[dict]:
    """The cells' grid values: a mapping is one product, a list of mappings the union of their products."""
    grid = data.get("grid")
    products = grid if isinstance(grid, list) else [grid]
    if grid is None or not products or any(not p for p in products):
        raise ConfigError(f"{path}: grid is empty (give `grid: {{section.key: [values, …]}}` or a list of those)")
    cells = []
    for i, product in enumerate(products):
        where = f"{path}: grid" + (f"[{i}]" if isinstance(grid, list) else "")
        if not isinstance(product, dict):
            raise ConfigError(f"{where} must be a mapping of dotted keys to lists of values, got {product!r:.60}")
        for key, options in product.items():
            _nest(key, None, where)
            if not isinstance(options, list) or not options:
                raise ConfigError(f"{where}.{key} must be a non-empty list of values, got {options!r:.60}")
            if any(isinstance(o, (dict, list)) for o in options):
                raise ConfigError(f"{where}.{key}: grid values must be scalars, got {options!r:.60}")
        cells += [dict(zip(product, combo)) for combo in itertools.product(*product.values())]
    seeds = data.get("seeds")
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool)
                                                                for s in seeds):
            raise ConfigError(f"{path}: seeds must be a non-empty list of integers, got {seeds!r:.60}")
        if any("train.seed" in c for c in cells):
            raise ConfigError(f"{path}: train.seed is in the grid and in seeds; give it once")
        cells = [{**c, "train.seed": s} for c in cells for s in seeds]
    return cells


def load_sweep(path: Path, out: Path | None = None) -> tuple[Path, list[Cell]]:
    """The sweep file, its directory and every cell, composed and resolved; ConfigError (one line) otherwise."""
    try:
        data = yamlio.read(path, "sweep file")
    except yamlio.YamlError as err:
        raise ConfigError(str(err)) from None
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise ConfigError(f"{path}: unknown key '{unknown[0]}' (known: {', '.join(KEYS)})")
    if not isinstance(data.get("config"), str) or not data["config"].strip():
        raise ConfigError(f"{path}: `config:` must name the base config file (relative to the sweep file)")
    here = path.parent
    overlays = data.get("overlays") or []
    if not isinstance(overlays, list) or not all(isinstance(o, str) and o.strip() for o in overlays):
        raise ConfigError(f"{path}: overlays must be a list of config files, got {overlays!r:.60}")
    fixed = data.get("set") or {}
    if not isinstance(fixed, dict):
        raise ConfigError(f"{path}: set must be a mapping of dotted keys to values, got {fixed!r:.60}")
    procs_spec = data.get("processes", 1)
    if procs_spec != "agents" and (not isinstance(procs_spec, int) or isinstance(procs_spec, bool) or procs_spec < 1):
        raise ConfigError(f"{path}: processes must be 1, an integer dividing the agents, or 'agents'; got "
                          f"{procs_spec!r:.40}")
    if out is None:
        given = data.get("out")
        if given is not None and (not isinstance(given, str) or not given.strip()):
            raise ConfigError(f"{path}: out must be a directory path, got {given!r:.40}")
        out = here / given if given else Path("runs") / "sweeps" / path.stem
    out = out.resolve()
    check_dir_name(path, out)
    try:
        check_output(out, "directory")
    except ValueError as err:
        raise ConfigError(f"{path}: sweep directory: {err}") from None
    try:
        lower = [(str(p), read_file(p)) for p in (here / data["config"], *(here / o for o in overlays))]
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    set_layer = _layer(fixed, f"{path}: set")
    limit = min(NAME_MAX, fs_limits(out)[0] - SUFFIX_ROOM)
    cells, seen = [], {}
    for values in _grid_values(path, data):
        name = cell_name(values, limit)
        key = frozenset((k, repr(v)) for k, v in values.items())
        if key in seen or name in (c.name for c in cells):
            raise ConfigError(f"{path}: cell {name} appears twice in the grid (duplicate cell or colliding names)")
        seen[key] = name
        cells.append(_make_cell(path, out, name, values, lower, set_layer, procs_spec))
    check_paths(path, out, [c.name for c in cells])
    return out, cells


def _make_cell(path, out, name, values, lower, set_layer, procs_spec) -> Cell:
    upper = [(f"{path}: set", set_layer), (f"{path}: cell {name}", _layer(values, f"{path}: cell {name}"))]
    try:
        cfg = compose(lower, upper)
        if procs_spec == "agents":
            procs = env_agents(cfg.env.name) or cfg.env.n_agents
            if procs is None:
                raise ConfigError("processes: agents needs env.n_agents (or a SMAC map)")
        else:
            procs = procs_spec
        cfg.run.out = str(out / "cells" / name)
        resolve(cfg, procs)
        preflight.check_dependencies(cfg)
    except ConfigError as err:
        text = str(err)
        raise ConfigError(text if text.startswith(str(path)) else f"{path}: cell {name}: {text}") from None
    return Cell(name, values, cfg, procs, out / "configs" / f"{name}.yaml", out / "cells" / name)


def cells_of(out: Path) -> list[Cell]:
    """Every cell of a sweep directory as the last sweep that ran or submitted it wrote them (sweep.yaml and
    configs/<cell>.yaml), whatever its sweep file says now: what a SLURM task runs and `--status DIR` shows."""
    summary = yamlio.parse((out / "sweep.yaml").read_text(), str(out / "sweep.yaml"))
    cells = []
    for c in summary["cells"]:
        config = Path(c["config"])
        cells.append(Cell(c["name"], c["values"], from_dict(read_file(config), str(config)), int(c["processes"]),
                          config, Path(c["run_dir"])))
    return cells
