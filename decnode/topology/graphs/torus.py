"""torus: a 2-D grid of r rows × c columns with wrap-around; agent i = a·c + b hears (a±1, b) and (a, b±1) mod the
sides. `torus` takes the factor pair of n closest to square with both sides ≥ 2 (16 → 4×4, 12 → 3×4); `torus:RxC`
names the shape. A side of 2 has one neighbour along it (a+1 ≡ a−1), so a 2×c torus has 3 neighbours per agent.
Undirected and regular: uniform weights are already doubly stochastic.
"""

from __future__ import annotations

import re

import numpy as np

from ..api import GraphError
from ..registry import TOPOLOGIES, TopologyEntry

USE = "use torus:RxC with r, c ≥ 2 and r·c = n, or another graph (ring, exp)"


def shape(n: int, arg: str | None) -> tuple[int, int]:
    """(rows, cols) of the torus of n agents: `arg` "RxC" when given, else the factor pair closest to square."""
    if arg is not None:
        found = re.fullmatch(r"\s*(\d+)\s*[x×X]\s*(\d+)\s*", arg)
        if not found:
            raise GraphError(f"topology torus:{arg}: the shape must be RxC (two integers, e.g. torus:4x4); {USE}")
        r, c = int(found[1]), int(found[2])
        if r < 2 or c < 2:
            raise GraphError(f"topology torus:{arg}: both sides must be ≥ 2 (a side of 1 is a ring); {USE}")
        if r * c != n:
            raise GraphError(f"topology torus:{arg} has {r}×{c} = {r * c} nodes, but the run has n={n} agents; {USE}")
        return r, c
    sides = [r for r in range(2, int(np.sqrt(n)) + 1) if n % r == 0]
    if not sides:
        why = "is prime" if n > 3 else "is below 4"
        raise GraphError(f"topology torus needs n = r×c with r, c ≥ 2, but n={n} {why}; {USE}")
    return sides[-1], n // sides[-1]


def neighbours(r: int, c: int) -> np.ndarray:
    """A[i, j]: agent i receives from j, its four grid neighbours with wrap-around (fewer on a side of 2)."""
    A = np.zeros((r * c, r * c), dtype=bool)
    for a in range(r):
        for b in range(c):
            for da, db in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                A[a * c + b, (a + da) % r * c + (b + db) % c] = True
    return A


def build(a) -> list:
    return [neighbours(*shape(a.n, a.arg))]


def layout(a) -> np.ndarray:
    """Node positions for a drawing: the grid itself (row a at the top)."""
    r, c = shape(a.n, a.arg)
    return np.array([(i % c, -(i // c)) for i in range(a.n)], dtype=float)


TOPOLOGIES.register("torus", TopologyEntry(build, "2-D wrap-around grid r×c (closest to square, or torus:RxC): 4 "
                                                  "neighbours, undirected", arg="RxC", layout=layout))
