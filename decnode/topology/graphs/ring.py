"""ring: each agent with its two ring neighbours (kNN with k = 2; one neighbour when n = 2)."""

from ..knn import adjacency
from ..registry import TOPOLOGIES, TopologyEntry

TOPOLOGIES.register("ring", TopologyEntry(lambda a: [adjacency(a.n, min(2, a.n - 1))],
                                          "undirected ring: i ↔ i±1"))
