"""The built-in graphs, one file each; each registers itself in topology.registry.TOPOLOGIES on import."""

from . import complete, exp, exp1peer, file, knn, random_regular, ring, torus  # noqa: F401
