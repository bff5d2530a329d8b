"""A communication graph as the rest of decnode sees it: one mixing matrix per round of a period (numpy only).

Row i of a round's matrix W says whom agent i listens to in that round: θᵢ ← Σⱼ Wᵢⱼ θⱼ. A static graph has a period
of one; a time-varying one (exp1peer) cycles through its matrices, round t using W_{t mod period}. A gossip round is
one mixing step; the trainer counts them the same way on every rank, so no message says which round it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..registry import ConfigError

TOL = 1e-9  # how far a row or column sum may be from 1 (weights read from a file are rounded decimals)


class GraphError(ConfigError):
    """A graph a run cannot use; the message is one line naming the node (and the round) at fault."""


def spectral_gap(P: np.ndarray) -> float:
    """1 − (second-largest eigenvalue modulus) of a stochastic P."""
    moduli = np.sort(np.abs(np.linalg.eigvals(P)))[::-1]
    return max(0.0, float(1.0 - moduli[1])) if len(moduli) > 1 else 1.0


def in_neighbours(P: np.ndarray, i: int) -> list[tuple[int, float]]:
    """[(j, Pᵢⱼ)] for every j ≠ i that agent i receives from."""
    return [(int(j), float(P[i, j])) for j in np.flatnonzero(P[i]) if j != i]


def out_neighbours(P: np.ndarray, i: int) -> list[tuple[int, float]]:
    """[(r, Pᵣᵢ)] for every r ≠ i that receives agent i's parameters."""
    return [(int(r), float(P[r, i])) for r in np.flatnonzero(P[:, i]) if r != i]


@dataclass(frozen=True, eq=False)
class Graph:
    """name: the spec it was built from ("knn", "exp1peer", "file:ring.txt", ...); phases: the [n, n] float64
    mixing matrices of one period; k: the kNN k when the graph is the paper's ring (labels), else None."""

    name: str
    phases: tuple
    k: int | None = None
    parts: tuple = ()  # agent groups' own graphs, placed block-diagonally (block_diagonal); () for one graph

    @property
    def n(self) -> int:
        return self.phases[0].shape[0]

    @property
    def period(self) -> int:
        return len(self.phases)

    @property
    def time_varying(self) -> bool:
        return self.period > 1

    def matrix(self, t: int) -> np.ndarray:
        """The mixing matrix of gossip round t (counted from 0)."""
        return self.phases[t % self.period]

    @cached_property
    def union(self) -> np.ndarray:
        """Boolean [n, n]: i receives from j ≠ i in some round of the period."""
        A = np.zeros((self.n, self.n), dtype=bool)
        for W in self.phases:
            A |= W != 0
        np.fill_diagonal(A, False)
        return A

    @property
    def directed(self) -> bool:
        """Some round has an edge one way only."""
        return any(not np.array_equal(W != 0, (W != 0).T) for W in self.phases)

    @property
    def edgeless(self) -> bool:
        """No agent ever receives: independent learners (kNN with k = 0)."""
        return not self.union.any()

    @property
    def column_stochastic(self) -> bool:
        return all(np.allclose(W.sum(axis=0), 1.0, rtol=0, atol=TOL) for W in self.phases)  # as check_graph

    @property
    def doubly_stochastic(self) -> bool:
        """Columns and rows sum to 1 (a push-sum graph's columns do, its rows need not)."""
        return self.column_stochastic and all(np.allclose(W.sum(axis=1), 1.0, rtol=0, atol=TOL) for W in self.phases)

    def push_weights(self) -> "Graph":
        """The same edges, every round, with push-sum's column-stochastic shares (weights.push): agent j keeps and
        sends 1/(out-degree_j(t) + 1) of its mass. A graph's own weights (algo.weights, a file's matrix) are not
        kept: push-sum needs each sender's shares to sum to 1, which a receiver's choice of weights does not give."""
        from .weights import push  # (weights.py imports this module)

        phases = []
        for W in self.phases:
            A = W != 0
            np.fill_diagonal(A, False)
            phases.append(push(A))
        return Graph(self.name, tuple(phases), k=self.k)

    @property
    def circulant(self) -> bool:
        """Every round's matrix is circulant (row i is row 0 shifted by i): XLA devices run it as whole shifts."""
        n = self.n
        return all(np.array_equal(W[i], np.roll(W[0], i)) for W in self.phases for i in range(n))

    def gaps(self) -> list[float]:
        """The spectral gap of each round's matrix; of groups' graphs, the smallest group's (the whole block-diagonal
        matrix has one eigenvalue 1 per group: its gap is 0, which says nothing about mixing within each group)."""
        if self.parts:
            return [min(part.gaps()[t % part.period] for part in self.parts) for t in range(self.period)]
        return [spectral_gap(W) for W in self.phases]

    def period_gap(self) -> float:
        """The spectral gap of one period's product W_{p−1} ⋯ W_0 (a static graph: its own gap); of groups' graphs,
        the smallest group's."""
        if self.parts:
            return min(part.period_gap() for part in self.parts)
        prod = np.eye(self.n)
        for W in self.phases:
            prod = W @ prod
        return spectral_gap(prod)

    def round_gap(self) -> float:
        """The gap per round: a static graph's own; a time-varying graph's period product's, per round
        (1 − (1 − gap)^(1/period)), so graphs of different periods compare on one axis (a one-peer exponential graph
        that averages exactly in its period scores 1, as the complete graph does)."""
        return self.gaps()[0] if not self.time_varying else 1.0 - (1.0 - self.period_gap()) ** (1.0 / self.period)

    def in_degree(self) -> int:
        """The largest number of agents any agent receives from in one round."""
        return int(max(((W != 0).sum(axis=1) - (np.diag(W) != 0)).max() for W in self.phases))

    def diameter(self) -> int | None:
        """Longest shortest path (in hops, over the union of the period's edges); None if not strongly connected."""
        if self.parts:  # groups never talk to each other: the longest path within a group
            within = [part.diameter() for part in self.parts]
            return None if None in within else max(within)
        n, A = self.n, self.union
        if n > 256:  # one n×n product per hop is n⁴ on a ring: breadth-first search instead (networkx, with torch)
            import networkx as nx

            g = nx.from_numpy_array(A.T.astype(np.int8), create_using=nx.DiGraph)  # an edge j → i: j sends to i
            return nx.diameter(g) if nx.is_strongly_connected(g) else None
        reach = np.eye(n, dtype=bool)
        for hops in range(n):
            if reach.all():
                return hops
            reach = reach | (A.astype(np.float64) @ reach.astype(np.float64) > 0)  # j reaches i in one more hop
        return None

    def describe(self) -> dict:
        """What the manifest and `decnode-topology` say about the graph."""
        return {"topology": self.name, "n": self.n, "period": self.period, "directed": self.directed,
                "doubly_stochastic": self.doubly_stochastic, "in_degree": self.in_degree(),
                "diameter": self.diameter(), "spectral_gap": self.gaps(), "period_spectral_gap": self.period_gap(),
                "round_spectral_gap": self.round_gap()}


def block_diagonal(parts: list[Graph], name: str) -> Graph:
    """Agent groups' graphs side by side, group after group: one matrix per round of the periods' least common
    multiple, with no edge between groups (each group gossips on its own graph)."""
    if len(parts) == 1:
        return parts[0]
    period = int(np.lcm.reduce([p.period for p in parts]))
    n = sum(p.n for p in parts)
    phases = []
    for t in range(period):
        W, lo = np.zeros((n, n)), 0
        for part in parts:
            W[lo: lo + part.n, lo: lo + part.n] = part.matrix(t)
            lo += part.n
        phases.append(W)
    ks = {p.k for p in parts}
    return Graph(name, tuple(phases), k=ks.pop() if len(ks) == 1 else None, parts=tuple(parts))


def unreachable(A: np.ndarray) -> tuple[int, int] | None:
    """(i, j) with j's parameters never reaching i along edges A[receiver, sender], or None if strongly connected:
    the first such pair in (i, j) order. Strongly connected ⇔ every node reaches node 0 and node 0 reaches every
    node, so two breadth-first searches from node 0 decide it, in O(n²) (squaring a reachability matrix, n³ log n,
    took 33 s at n = 4000 before a refusal could be printed)."""
    A = A.astype(bool)

    def search(step) -> np.ndarray:
        seen = np.zeros(A.shape[0], dtype=bool)
        seen[0] = True
        frontier = seen.copy()
        while frontier.any():
            frontier = step(frontier) & ~seen
            seen |= frontier
        return seen

    reach_0 = search(lambda f: A[f, :].any(axis=0))  # the senders to the frontier reach node 0
    if not reach_0.all():
        return 0, int(np.flatnonzero(~reach_0)[0])
    from_0 = search(lambda f: A[:, f].any(axis=1))  # the receivers of the frontier hear from node 0
    if not from_0.all():
        return int(np.flatnonzero(~from_0)[0]), 0
    return None


STOCHASTIC = ("row", "doubly", "column")  # what an algorithm's mixing needs of every round's matrix


def check_graph(graph: Graph, stochastic: str | bool, algorithm: str) -> None:
    """Refuse, in one line naming the node at fault, a graph `algorithm` cannot gossip on: a negative weight, not
    strongly connected over one period (an edgeless graph is allowed: independent learners), or weights that are not
    what `stochastic` says it mixes with — "row" (θᵢ ← Σⱼ Wᵢⱼ θⱼ: each row sums to 1), "doubly" (also each column:
    DSGD keeps the average), "column" (push-sum: each sender's shares sum to 1; rows may not). True/False: "doubly"/
    "row"."""
    if isinstance(stochastic, bool):
        stochastic = "doubly" if stochastic else "row"
    if stochastic not in STOCHASTIC:
        raise ValueError(f"stochastic must be one of {', '.join(STOCHASTIC)}, got {stochastic!r}")
    where = lambda t: f" in round {t}" if graph.time_varying else ""  # noqa: E731
    for t, W in enumerate(graph.phases):
        if W.shape != (graph.n, graph.n):
            raise GraphError(f"topology {graph.name}: round {t}'s matrix is {W.shape}, expected {graph.n}×{graph.n}")
        neg = np.argwhere(W < 0)
        if len(neg):
            i, j = neg[0]
            raise GraphError(f"topology {graph.name}: node {i} gives node {j} a negative weight {W[i, j]:g}{where(t)}")
        rows = W.sum(axis=1)
        bad = np.flatnonzero(np.abs(rows - 1.0) > TOL)
        if len(bad) and stochastic != "column":
            raise GraphError(f"topology {graph.name}: node {bad[0]}'s weights sum to {rows[bad[0]]:.6g}{where(t)}, "
                             "not 1 (row-stochastic mixing: θᵢ ← Σⱼ Wᵢⱼ θⱼ)")
    if not graph.edgeless:
        missing = unreachable(graph.union)
        if missing is not None:
            i, j = missing
            over = " over one period" if graph.time_varying else ""
            raise GraphError(f"topology {graph.name} is not strongly connected{over}: node {j}'s parameters never "
                             f"reach node {i}")
    if stochastic == "row":
        return
    for t, W in enumerate(graph.phases):
        cols = W.sum(axis=0)
        bad = np.flatnonzero(np.abs(cols - 1.0) > TOL)
        if not len(bad):
            continue
        if stochastic == "column":
            raise GraphError(f"topology {graph.name}: {algorithm} needs column-stochastic weights, but node "
                             f"{bad[0]}'s shares sum to {cols[bad[0]]:.6g}{where(t)} (Graph.push_weights gives them)")
        hint = ("algo.weights=metropolis makes an undirected graph's weights doubly stochastic"
                if not graph.directed else "--algo push_sum accepts a directed graph")
        raise GraphError(f"topology {graph.name}: {algorithm} needs doubly stochastic weights, but the weights "
                         f"on node {bad[0]}'s parameters sum to {cols[bad[0]]:.6g}{where(t)}; {hint}")
