"""The paper's kNN ring: agent i mixes with itself and its in-neighbours i±1 … i±⌊k/2⌋; for odd k it also
receives from i+(k+1)/2 (a one-way edge, so it sends to i−(k+1)/2). Every weight is 1/(k+1) (the uniform rule:
1/(in-degree + 1)), which makes the matrix circulant and doubly stochastic. Row i of P says whom agent i listens
to: θᵢ ← Σⱼ Pᵢⱼ θⱼ.
"""

from __future__ import annotations

import numpy as np


def check_topology(n: int, k: int) -> None:
    """Raise ValueError with a one-line message for an impossible (n, k)."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"the number of agents n must be an integer, got {n!r}")
    if n < 1:
        raise ValueError(f"the number of agents n must be at least 1, got n={n}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k must be an integer in [0, {n - 1}] for n={n}, got k={k!r}")
    if not 0 <= k <= n - 1:
        raise ValueError(f"k must be in [0, {n - 1}] for n={n} agents, got k={k}")


def in_offsets(n: int, k: int) -> list[int]:
    """Ring offsets d such that agent i receives from (i + d) mod n, excluding itself."""
    check_topology(n, k)
    offsets = []
    for d in range(1, k // 2 + 1):
        offsets += [d, -d]
    if k % 2 == 1:
        offsets.append((k + 1) // 2)
    return offsets


def mixing_matrix(n: int, k: int) -> np.ndarray:
    """The n×n kNN mixing matrix P (float64), asserted doubly stochastic."""
    P = np.zeros((n, n))
    for i in range(n):
        P[i, i] = 1.0
        for d in in_offsets(n, k):
            P[i, (i + d) % n] = 1.0
    P /= k + 1
    # The offsets are distinct mod n for k ≤ n−1, so every row holds exactly k+1 equal weights.
    assert np.allclose(P.sum(axis=0), 1.0) and np.allclose(P.sum(axis=1), 1.0), "P is not doubly stochastic"
    return P


def adjacency(n: int, k: int) -> np.ndarray:
    """A[i, j] = True when agent i receives from j ≠ i (the kNN ring)."""
    A = np.zeros((n, n), dtype=bool)
    for i in range(n):
        for d in in_offsets(n, k):
            A[i, (i + d) % n] = True
    return A
