"""knn: the paper's ring of k nearest neighbours (algo.k), the default."""

from ..knn import adjacency
from ..registry import TOPOLOGIES, TopologyEntry

TOPOLOGIES.register("knn", TopologyEntry(lambda a: [adjacency(a.n, a.k)],
                                         "ring of the k nearest neighbours (algo.k; odd k adds one one-way edge)"))
