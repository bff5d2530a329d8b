"""complete: everyone hears everyone (uniform weights: the exact average every round)."""

import numpy as np

from ..registry import TOPOLOGIES, TopologyEntry

TOPOLOGIES.register("complete", TopologyEntry(lambda a: [~np.eye(a.n, dtype=bool)], "every agent hears every other"))
