"""Who sends which rows to whom in one gossip round, for a given mixing matrix and placement (numpy only).

A process holds a block of consecutive agents; a round of a time-varying graph has its own plan (one per phase).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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


def shift_refusal(graph) -> str | None:
    """Why the XLA placement cannot gossip on `graph` (one line), or None: devices move whole blocks by shifts,
    which one static circulant matrix maps to (topology.shift_plan)."""
    if graph.time_varying:
        return (f"run.device=xla gossips on static circulant graphs only; topology {graph.name} changes every round "
                "(the CPU placement runs it)")
    if not graph.circulant:
        return (f"run.device=xla gossips on circulant graphs only (knn, ring, exp, complete); topology {graph.name} "
                "is not (the CPU placement runs it)")
    return None
