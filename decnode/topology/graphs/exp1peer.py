"""exp1peer: the one-peer exponential graph, time-varying. In round t agent i sends to i + 2^(t mod ⌈log₂ n⌉) only,
weights ½ and ½; for n a power of two, ⌈log₂ n⌉ rounds give the exact average (Ying et al., NeurIPS 2021)."""

import numpy as np

from ..registry import TOPOLOGIES, TopologyEntry
from .exp import hops


def rounds(a) -> list:
    out = []
    for h in hops(a.n) or [0]:
        A = np.zeros((a.n, a.n), dtype=bool)
        if h:
            for i in range(a.n):
                A[(i + h) % a.n, i] = True
        out.append(A)
    return out


TOPOLOGIES.register("exp1peer", TopologyEntry(rounds, "one-peer exponential, time-varying: in round t, i sends to "
                                                      "i+2^(t mod ⌈log₂n⌉) only"))
