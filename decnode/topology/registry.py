"""The topology registry: a graph is a builder plus one line here (README "Extending decnode").

A builder takes the run's GraphArgs and returns one [n, n] array per round of its period: boolean edges
(A[i, j]: agent i receives from j ≠ i), weighted by algo.weights, or float mixing weights it chose itself (a weight
matrix read from a file). build_graph turns them into a Graph (api.py) and checks nothing: check_graph does, for the
algorithm that will gossip on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..registry import Registry
from .api import Graph, GraphError
from .weights import mixing


@dataclass(frozen=True)
class GraphArgs:
    """n: agents; k: the kNN ring's k; degree: random_regular's d; seed: the run's seed; arg: what follows the
    name after ':' (file:PATH's path, torus:RxC's shape), or None."""

    n: int
    k: int = 4
    degree: int = 3
    seed: int = 0
    arg: str | None = None


@dataclass(frozen=True)
class TopologyEntry:
    """build: GraphArgs -> [arrays per round]; doc: one line for --help and decnode-topology; arg: what may follow
    ':' in the name (None: nothing may); layout: GraphArgs -> [n, 2] node positions for decnode-topology --draw
    (None: a circle)."""

    build: Callable[[GraphArgs], list]
    doc: str
    arg: str | None = None
    layout: Callable[[GraphArgs], np.ndarray] | None = None


TOPOLOGIES: Registry[TopologyEntry] = Registry("topology")


def split_spec(spec: str) -> tuple[str, str | None]:
    name, sep, arg = str(spec).partition(":")
    return name, (arg if sep else None)


def build_graph(spec: str, n: int, k: int = 4, degree: int = 3, weights: str = "uniform", seed: int = 0) -> Graph:
    """The Graph named by spec ("knn", "exp1peer", "file:PATH", ...) for n agents; an unknown name or a bad argument
    is one GraphError line."""
    name, arg = split_spec(spec)
    entry = TOPOLOGIES.get(name)
    if arg is not None and entry.arg is None:
        raise GraphError(f"topology {name} takes no argument after ':', got {spec!r}")
    if arg == "" and entry.arg is not None:
        raise GraphError(f"topology {name} needs {entry.arg} after ':', got {spec!r}")
    phases = []
    for A in entry.build(GraphArgs(n=n, k=k, degree=degree, seed=seed, arg=arg)):
        A = np.asarray(A)
        if A.shape != (n, n):
            raise GraphError(f"topology {spec} has {A.shape[0]} nodes, but the run has n={n} agents")
        phases.append(mixing(A, weights, spec) if A.dtype == bool else A.astype(np.float64))
    return Graph(spec, tuple(phases), k=k if name == "knn" else None)
