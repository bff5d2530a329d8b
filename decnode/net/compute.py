"""What a node's compute costs on the simulated clock when `compute: model` (net/profile.py's NodeClock.charge):
fixed seconds per call of each compute section (the Recorder's names) and agent row, times the node's slowdown —
so two runs' clocks agree exactly, whatever the host's load. The defaults, a profile's own costs, and a finished
run's measured ones (its timing.json).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from .. import yamlio
from ..config import ConfigError
from ..extensions import critic
from ..timing import Section

COMPUTE = ("measured", "model")
# compute: model — seconds per call and agent row of each compute section (Recorder section names), charged when
# the section ends; env per agent of the job (rank 0 steps them all), the others per agent of the rank. Measured
# here by costs_from_run on a 4-iteration run (AMD EPYC, 2 cores, 3 processes of one thread; Simple Spread, B = 32,
# T = 25, hidden 64, central critic), rounded; a run's own: compute_s: RUN_DIR. Evaluation is not charged.
COMPUTE_S = {Section.ENV: 4.0e-5, Section.ACT: 3.0e-4, Section.CRITIC: 1.5e-2, Section.ACTOR_UPDATE: 1.2e-2,
             Section.ACTOR_STEP: 2.0e-4}


def section_rows(rank: int, n_agents: int, per_process: int, per_agent_critic: bool) -> dict[str, int]:
    """The rows each compute section of a rank works on: rank 0 steps every agent's environment; a central critic
    is one net on rank 0, local critics one per agent; acting and the actor's update, the rank's agents."""
    return {Section.ENV: n_agents if rank == 0 else 0, Section.ACT: per_process, Section.ACTOR_UPDATE: per_process,
            Section.ACTOR_STEP: per_process,
            Section.CRITIC: per_process if per_agent_critic else int(rank == 0)}


def _seconds(source: str, key: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ConfigError(f"{source}: net.compute_s.{key} must be a number of seconds ≥ 0, got {value!r}")
    return float(value)


def parse_costs(source: str, value) -> tuple[tuple[str, float], ...]:
    """compute_s: a mapping section → seconds per call and agent row (sections left out keep their default), or a
    run directory (or its timing.json) whose measured seconds per call and row become the costs."""
    if isinstance(value, str):
        return tuple(costs_from_run(Path(value), source).items())
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: net.compute_s must map compute sections ({', '.join(COMPUTE_S)}) to seconds, "
                          f"or name a run directory, got {value!r:.60}")
    unknown = sorted(set(value) - set(COMPUTE_S))
    if unknown:
        raise ConfigError(f"{source}: net.compute_s: '{unknown[0]}' is not a compute section ({', '.join(COMPUTE_S)})")
    return tuple({**COMPUTE_S, **{k: _seconds(source, k, v) for k, v in value.items()}}.items())


def costs_from_run(path: Path, source: str = "net.compute_s") -> dict[str, float]:
    """Seconds per call and agent row of each compute section, as a finished run measured them (its timing.json:
    every rank's exclusive seconds and calls; its config.yaml: agents per rank)."""
    run = path.parent if path.name == "timing.json" else path
    try:
        ranks = json.loads((run / "timing.json").read_text())["ranks"]
        cfg = yamlio.read(run / "config.yaml", "run config")
        n, per = cfg["env"]["n_agents"], cfg["algo"]["agents_per_process"]
        per_agent = critic(cfg["algo"]["critic"]).per_agent
    except (OSError, ValueError, KeyError, TypeError, yamlio.YamlError, ConfigError) as err:
        raise ConfigError(f"{source}: cannot read the costs of run '{run}' (its timing.json and config.yaml): "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    out = {}
    for section in COMPUTE_S:
        rows = [(t[section]["seconds"], t[section]["calls"] * section_rows(rank, n, per, per_agent)[section])
                for rank, t in enumerate(ranks) if t.get(section, {}).get("calls")]
        calls = sum(c for _, c in rows)
        out[section] = round(sum(s for s, c in rows if c) / calls, 9) if calls else 0.0
    return out
