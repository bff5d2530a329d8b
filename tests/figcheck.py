"""What a saved figure shows (conftest's saved_figures fixture gives the Figure): curves and bars against the numbers
in the runs' own files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.container import BarContainer


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def assert_curve(ax, label: str, runs: list[Path], key: str, log: bool = False) -> str:
    """ax draws the series `label`: `key` of the runs' metrics.jsonl, its median over the runs at the env steps all
    of them logged (on a log axis only where it is positive), and for two or three runs a band from the smallest
    to the largest run's value (the exact 95% bootstrap interval of such a median: test_analysis's
    test_median_band); for one run no band. Returns the series' legend entry."""
    per_run = [{m["env_steps"]: m[key] for m in metrics(r) if m.get(key) is not None} for r in runs]
    steps = np.array(sorted(set.intersection(*(set(p) for p in per_run))), dtype=float)
    values = np.array([[p[s] for s in steps] for p in per_run])
    assert steps.size, f"{key}: no step logged by every run, so nothing to check"
    median = np.median(values, axis=0)
    keep = median > 0 if log else np.ones(steps.size, bool)
    if not keep.any():  # nothing a log axis can show: an empty entry that says so
        [line] = [line for line in ax.get_lines() if line.get_label() == f"{label}: ≡ 0, not shown"]
        assert len(line.get_xdata()) == 0
        return line.get_label()
    [line] = [line for line in ax.get_lines() if line.get_label() == label]
    assert list(line.get_xdata()) == list(steps[keep]), (label, key)
    assert list(line.get_ydata()) == pytest.approx(list(median[keep]), rel=1e-12), (label, key)
    assert ax.get_xlabel() == "environment steps" and ax.get_yscale() == ("log" if log else "linear")
    bands = [c for c in ax.collections if tuple(c.get_facecolor()[0][:3]) == to_rgb(line.get_color())]
    low, high = values[:, keep].min(axis=0), values[:, keep].max(axis=0)
    if len(runs) == 1:
        assert not bands, label
    elif len(runs) <= 3 and (not log or (low > 0).all()):  # (a log axis leaves a band reaching 0 open)
        [band] = bands
        verts = band.get_paths()[0].vertices
        for x, lo, hi in zip(steps[keep], low, high):
            assert set(verts[verts[:, 0] == x][:, 1]) == {lo, hi}, (label, key, x)
    return label


def bar_series(ax) -> list[BarContainer]:
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def bars(container: BarContainer) -> tuple[list[float], list[float]]:
    """Heights and error-bar half-lengths of one bar series drawn with yerr."""
    segments = container.errorbar.lines[2][0].get_segments()
    return [b.get_height() for b in container], [(seg[1][1] - seg[0][1]) / 2 for seg in segments]
