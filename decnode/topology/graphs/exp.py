"""exp: the static exponential graph, i sends to i + 2⁰, i + 2¹, … (mod n): ⌈log₂ n⌉ out-neighbours, directed."""

import numpy as np

from ..registry import TOPOLOGIES, TopologyEntry


def hops(n: int) -> list[int]:
    """The distinct offsets 2^j mod n, j < ⌈log₂ n⌉ (an offset of n would be the agent itself)."""
    return sorted({2 ** j % n for j in range(max(1, int(np.ceil(np.log2(n))))) if 2 ** j % n} if n > 1 else set())


def static(a) -> list:
    A = np.zeros((a.n, a.n), dtype=bool)
    for i in range(a.n):
        for h in hops(a.n):
            A[(i + h) % a.n, i] = True  # i sends to i + h: row i + h receives from i
    return [A]


TOPOLOGIES.register("exp", TopologyEntry(static, "static exponential: i sends to i+2⁰, i+2¹, … (mod n), directed"))
