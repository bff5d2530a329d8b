"""Communication graphs: the topology zoo, mixing weights, spectral gaps and per-round gossip plans (numpy only).

A run's graph is `build_graph(algo.topology, n, ...)` (registry.py): a Graph (api.py) with one mixing matrix per
round of its period. knn.py is the paper's ring; graphs/ holds one file per built-in graph; plans.py turns a round's
matrix into what each process sends and receives. `python -m decnode.topology --n 10` prints the kNN gaps.

May import: the root modules only (it is part of the root floor: config.py checks a topology without torch).
"""

from .api import STOCHASTIC, Graph, GraphError, block_diagonal, check_graph, in_neighbours, out_neighbours, spectral_gap
from .knn import check_topology, in_offsets, mixing_matrix
from .plans import BlockPlan, ShiftPlan, block_plan, shift_plan, shift_refusal
from .registry import TOPOLOGIES, GraphArgs, TopologyEntry, build_graph, split_spec
from .weights import WEIGHTS
from . import graphs  # noqa: F401  (registers the built-in graphs)

__all__ = ["STOCHASTIC", "Graph", "GraphError", "block_diagonal", "check_graph", "in_neighbours", "out_neighbours", "spectral_gap",
           "check_topology", "in_offsets", "mixing_matrix", "BlockPlan", "ShiftPlan", "block_plan", "shift_plan", "shift_refusal",
           "TOPOLOGIES", "GraphArgs", "TopologyEntry", "build_graph", "split_spec", "WEIGHTS"]
