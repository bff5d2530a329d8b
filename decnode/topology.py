"""kNN ring topologies: mixing matrix, neighbour lists and spectral gap (numpy only).

n agents sit on a ring. Agent i mixes with itself and its in-neighbours i±1 … i±⌊k/2⌋; for odd k it also
receives from i+(k+1)/2 (a one-way edge, so it sends to i−(k+1)/2). Every weight is 1/(k+1), which makes the
matrix circulant and doubly stochastic. Row i of P says whom agent i listens to: θᵢ ← Σⱼ Pᵢⱼ θⱼ.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

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


def spectral_gap(P: np.ndarray) -> float:
    """1 − (second-largest eigenvalue modulus) of a doubly stochastic P."""
    moduli = np.sort(np.abs(np.linalg.eigvals(P)))[::-1]
    return float(1.0 - moduli[1]) if len(moduli) > 1 else 1.0


def in_neighbours(P: np.ndarray, i: int) -> list[tuple[int, float]]:
    """[(j, Pᵢⱼ)] for every j ≠ i that agent i receives from."""
    return [(int(j), float(P[i, j])) for j in np.flatnonzero(P[i]) if j != i]


def out_neighbours(P: np.ndarray, i: int) -> list[tuple[int, float]]:
    """[(r, Pᵣᵢ)] for every r ≠ i that receives agent i's parameters."""
    return [(int(r), float(P[r, i])) for r in np.flatnonzero(P[:, i]) if r != i]


@dataclass(frozen=True)
class BlockPlan:
    """What one process sends and receives in a gossip round when it holds a block of agents.

    Process r holds agents [r·a, (r+1)·a). Mixing inside the block is a local matrix product; rows needed from
    other blocks arrive by point-to-point messages. After a round, the process stacks its own rows and the rows
    received (in `recv` order) into a buffer and multiplies by `weights` [a, a + Σ len(rows)].
    """

    rank: int
    agents: range
    send: dict[int, list[int]]  # peer rank -> local row indices to send there
    recv: dict[int, list[int]]  # peer rank -> global agent ids arriving from there (in order)
    weights: np.ndarray


def block_plan(P: np.ndarray, n_procs: int, rank: int) -> BlockPlan:
    n = P.shape[0]
    if n % n_procs:
        raise ValueError(f"{n} agents cannot be split evenly over {n_procs} processes")
    a = n // n_procs
    block = lambda r: range(r * a, (r + 1) * a)  # noqa: E731
    mine = block(rank)
    send, recv = {}, {}
    for q in range(n_procs):
        if q == rank:
            continue
        # rows of mine that some agent of q listens to; rows of q that some agent of mine listens to
        out_rows = [j - mine.start for j in mine if any(P[i, j] > 0 for i in block(q))]
        in_rows = [j for j in block(q) if any(P[i, j] > 0 for i in mine)]
        if out_rows:
            send[q] = out_rows
        if in_rows:
            recv[q] = in_rows
    columns = list(mine) + [j for q in sorted(recv) for j in recv[q]]
    weights = P[np.ix_(list(mine), columns)]
    return BlockPlan(rank, mine, send, recv, weights)


@dataclass(frozen=True)
class ShiftPlan:
    """The gossip of a block plan as whole-device shifts, for collectives that move one tensor per device.

    P is circulant and every device holds a equal block of a rows, so what device r needs from device r+s
    (local rows `rows[s]` of that block) and the weights it mixes with do not depend on r: every device runs
    the same program. Shift s is the permutation "device q sends to q−s", one collective per shift.
    """

    shifts: list[int]        # device offsets s (1 ≤ s < W) that carry rows, increasing
    rows: list[list[int]]    # for each shift, the sender's local row indices it sends
    weights: np.ndarray      # [a, a + Σ len(rows)]: own rows first, then each shift's rows in order


def shift_plan(P: np.ndarray, n_devices: int) -> ShiftPlan:
    n = P.shape[0]
    if n % n_devices:
        raise ValueError(f"{n} agents cannot be split evenly over {n_devices} devices")
    a = n // n_devices
    mine = range(a)  # device 0's rows; any other device is the same up to a shift (circulant P)
    shifts, rows, columns = [], [], list(mine)
    for s in range(1, n_devices):
        needed = [j for j in range(s * a, (s + 1) * a) if any(P[i, j] > 0 for i in mine)]
        if needed:
            shifts.append(s)
            rows.append([j - s * a for j in needed])
            columns += needed
    return ShiftPlan(shifts, rows, P[np.ix_(list(mine), columns)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m decnode.topology", description="kNN ring spectral gaps")
    parser.add_argument("--n", type=int, default=10, help="number of agents")
    args = parser.parse_args(argv)
    try:
        check_topology(args.n, 0)
    except ValueError as err:
        parser.exit(2, f"decnode.topology: error: {err}\n")
    print(f"n = {args.n}")
    print(f"{'k':>3}  {'spectral gap':>12}  edges")
    for k in range(args.n):
        P = mixing_matrix(args.n, k)
        note = "independent learners" if k == 0 else ("fully connected" if k == args.n - 1 else "")
        note = note or ("one one-way edge per agent" if k % 2 else "")
        print(f"{k:>3}  {spectral_gap(P):>12.3f}  {note}")


if __name__ == "__main__":
    main()
