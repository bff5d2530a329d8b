"""The built-in graphs, one file each; each registers itself in topology.registry.TOPOLOGIES on import."""

from . import complete, exp, exp1peer, knn, ring  # noqa: F401
