"""Mixing weights for a graph given by its edges (A[i, j]: agent i receives from j ≠ i).

uniform: the paper's rule, Wᵢⱼ = 1/(in-degree(i) + 1) for j = i and each in-neighbour: row-stochastic always, doubly
stochastic when every agent receives from as many as send to it (regular graphs). metropolis: Metropolis–Hastings,
Wᵢⱼ = 1/(1 + max(dᵢ, dⱼ)) on each edge and the rest on the diagonal: symmetric, hence doubly stochastic, for any
undirected graph. push (push-sum's shares, not an algo.weights choice: Graph.column_stochastic applies it): agent j
keeps and sends equal shares, Wᵢⱼ = 1/(out-degree(j) + 1) for i = j and each out-neighbour: column-stochastic always.
"""

from __future__ import annotations

import numpy as np

from .api import GraphError

WEIGHTS = ("uniform", "metropolis")


def uniform(A: np.ndarray) -> np.ndarray:
    W = A.astype(np.float64)
    np.fill_diagonal(W, 1.0)
    # 1.0 / (d + 1) per row, the same float as the kNN ring's P /= k + 1 (bit-for-bit today's matrix).
    return W / W.sum(axis=1, keepdims=True)


def push(A: np.ndarray) -> np.ndarray:
    W = A.astype(np.float64)
    np.fill_diagonal(W, 1.0)
    # The transpose of uniform's rule: on an undirected regular graph the very same floats (1.0 / (d + 1)).
    return W / W.sum(axis=0, keepdims=True)


def metropolis(A: np.ndarray, name: str) -> np.ndarray:
    asym = np.argwhere(A != A.T)
    if len(asym):
        i, j = asym[0]
        raise GraphError(f"topology {name}: Metropolis–Hastings weights need an undirected graph, but node {i} "
                         f"{'receives from' if A[i, j] else 'sends to'} node {j} one way only (algo.weights=uniform)")
    d = A.sum(axis=1)
    W = np.where(A, 1.0 / (1.0 + np.maximum(d[:, None], d[None, :])), 0.0)
    np.fill_diagonal(W, 1.0 - W.sum(axis=1))
    return W


def mixing(A: np.ndarray, rule: str, name: str) -> np.ndarray:
    if rule == "uniform":
        return uniform(A)
    if rule == "metropolis":
        return metropolis(A, name)
    raise GraphError(f"algo.weights must be one of {', '.join(WEIGHTS)}, got {rule!r}")
