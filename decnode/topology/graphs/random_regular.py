"""random_regular: a random undirected d-regular graph (d = algo.degree) drawn from the run's seed: networkx's
random_regular_graph with seed s, then s+1, s+2, … until the graph is connected, so the same seed gives the same
graph on every process and every rerun. Regular, so uniform weights are already doubly stochastic.
"""

from __future__ import annotations

import numpy as np

from ..api import GraphError
from ..registry import TOPOLOGIES, TopologyEntry

TRIES = 1000  # d ≥ 3 connects at the first seed almost surely; d = 2 (a union of cycles) may need a few hundred


def draw(n: int, d: int, seed: int) -> np.ndarray:
    """A[i, j]: i and j are neighbours in the first connected d-regular graph from seed, seed+1, …"""
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 1 <= d < n:
        raise GraphError(f"topology random_regular: the degree must be an integer in [1, {n - 1}] for n={n} agents, "
                         f"got algo.degree={d!r}")
    if n * d % 2:
        raise GraphError(f"topology random_regular: n·d = {n}·{d} is odd, and a d-regular graph has n·d/2 edges; "
                         "use an even degree or an even n")
    if d == 1 and n > 2:
        raise GraphError(f"topology random_regular: degree 1 pairs the agents off, never connected for n={n} > 2; "
                         "use algo.degree ≥ 2")
    import networkx as nx  # here, not at the top: the graph API stays numpy-only for every other graph

    for attempt in range(TRIES):
        g = nx.random_regular_graph(d, n, seed=seed + attempt)
        if nx.is_connected(g):
            A = np.zeros((n, n), dtype=bool)
            for i, j in g.edges():
                A[i, j] = A[j, i] = True
            return A
    raise GraphError(f"topology random_regular: no connected {d}-regular graph on {n} nodes from seeds {seed} to "
                     f"{seed + TRIES - 1}; use a larger algo.degree")


TOPOLOGIES.register("random_regular", TopologyEntry(lambda a: [draw(a.n, a.degree, a.seed)],
                                                    "random d-regular, undirected (algo.degree; from the run's seed, "
                                                    "redrawn until connected)"))
