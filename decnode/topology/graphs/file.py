"""file:PATH: a graph read from a text file, in one of two formats (README "Topologies").

Edge list — one edge per line, node ids 0 … n−1 (every id up to the largest must belong to the run's n agents):
    i j       undirected: i and j hear each other
    i -> j    one way: j receives from i
  weighted by algo.weights (uniform: 1/(in-degree + 1); metropolis: Metropolis–Hastings, undirected graphs only).
Weight matrix — n lines of n numbers: row i holds the weights agent i gives each j (θᵢ ← Σⱼ Wᵢⱼ θⱼ), used as
  written (algo.weights does not apply); each row must sum to 1.
push_sum keeps a file's edges only and sends its own shares on them (Graph.push_weights).
A `#` starts a comment (to the end of the line). Blocks separated by blank lines are the rounds of a time-varying
graph's period (round t uses block t mod the number of blocks); each block is an edge list or a matrix on its own:
a block is a matrix when its first line holds more than two numbers or a number that is not an integer (a 2-node
matrix is written with decimals, `1.0 0.0`).

A bad line is one GraphError naming the file and its line number; a file written for another n names both counts.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from ..api import GraphError
from ..registry import TOPOLOGIES, TopologyEntry

EDGE = re.compile(r"^\s*(\S+)\s*->\s*(\S+)\s*$")  # i -> j
FORMATS = "expected 'i j' (undirected edge), 'i -> j' (j receives from i) or a row of n weights"


def blocks(path: Path, text: str) -> list[list[tuple[int, str]]]:
    """The file's rounds: [(line number, line without its comment)] per blank-line-separated block."""
    out, block = [], []
    for number, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0].strip()
        if body:
            block.append((number, body))
        elif not line.strip() and block:  # a blank line ends a round; a comment line does not
            out.append(block)
            block = []
    if block:
        out.append(block)
    if not out:
        raise GraphError(f"topology file:{path}: no edge or weight in the file; {FORMATS}")
    return out


def _node(path: Path, number: int, token: str, n: int) -> int:
    if not re.fullmatch(r"\d+", token):
        raise GraphError(f"topology file:{path} line {number}: node id {token!r} is not an integer in 0..{n - 1}")
    i = int(token)
    if i >= n:
        raise GraphError(f"topology file:{path} line {number}: node {i} is out of range: the run has n={n} agents "
                         f"(ids 0..{n - 1})")
    return i


def edges(path: Path, block: list[tuple[int, str]], n: int) -> np.ndarray:
    """A[i, j]: i receives from j ≠ i, from an edge-list block."""
    A = np.zeros((n, n), dtype=bool)
    for number, body in block:
        arrow = EDGE.match(body)
        tokens = [arrow[1], arrow[2]] if arrow else body.split()
        if len(tokens) != 2 or "->" in body and not arrow:
            raise GraphError(f"topology file:{path} line {number}: {FORMATS}, got {body!r:.60}")
        src, dst = (_node(path, number, t, n) for t in tokens)
        if src == dst:
            raise GraphError(f"topology file:{path} line {number}: an edge from node {src} to itself (every agent "
                             "keeps its own parameters; leave it out)")
        A[dst, src] = True
        if not arrow:
            A[src, dst] = True
    return A


def matrix(path: Path, block: list[tuple[int, str]], n: int) -> np.ndarray:
    """W from a weight-matrix block: one row of n numbers per line."""
    rows = []
    for number, body in block:
        try:
            row = [float(x) for x in body.split()]
        except ValueError:
            raise GraphError(f"topology file:{path} line {number}: {FORMATS}, got {body!r:.60}") from None
        if not all(math.isfinite(x) for x in row):
            raise GraphError(f"topology file:{path} line {number}: a weight is not finite: {body!r:.60}")
        if len(row) != len(rows[0] if rows else row):
            raise GraphError(f"topology file:{path} line {number}: {len(row)} weights, but the matrix's first row "
                             f"(line {block[0][0]}) has {len(rows[0])}")
        rows.append(row)
    size, width = len(rows), len(rows[0])
    if size != width:
        raise GraphError(f"topology file:{path}: the weight matrix of lines {block[0][0]}–{block[-1][0]} is "
                         f"{size}×{width}, not square")
    if size != n:
        raise GraphError(f"topology file:{path}: the weight matrix of lines {block[0][0]}–{block[-1][0]} is for "
                         f"{size} nodes, but the run has n={n} agents")
    return np.array(rows, dtype=np.float64)


def is_matrix(block: list[tuple[int, str]]) -> bool:
    """A block is a weight matrix when its first line holds more than two numbers or one that is not an integer
    (so a 2-node matrix is written with decimals: `0.5 0.5`); else it is an edge list."""
    tokens = block[0][1].split()
    return "->" not in block[0][1] and (len(tokens) > 2 or any(not re.fullmatch(r"\d+", t) for t in tokens))


def read(a) -> list:
    if a.arg is None:
        raise GraphError("topology file needs a path: file:PATH (an edge list or a weight matrix, README "
                         "\"Topologies\")")
    path = Path(a.arg).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GraphError(f"topology file:{a.arg}: no such file") from None
    except IsADirectoryError:
        raise GraphError(f"topology file:{a.arg} is a directory; name a file") from None
    except UnicodeDecodeError as err:
        raise GraphError(f"topology file:{a.arg} is not a text file ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise GraphError(f"topology file:{a.arg}: cannot read it ({err.strerror or err})") from None
    rounds = [(matrix if is_matrix(b) else edges)(path, b, a.n) for b in blocks(path, text)]
    named = [np.flatnonzero(A.any(axis=0) | A.any(axis=1)) for A in rounds if A.dtype == bool]
    last = max((int(ids.max()) for ids in named if ids.size), default=None)
    if last is not None and last + 1 < a.n:  # written for fewer agents (a node named nowhere: check_graph says so)
        raise GraphError(f"topology file:{path}: the edge list names nodes 0..{last} ({last + 1} nodes), but the run "
                         f"has n={a.n} agents")
    return rounds


TOPOLOGIES.register("file", TopologyEntry(read, "read from a file: an edge list ('i j', 'i -> j') or a weight matrix; "
                                                "blank-line-separated blocks are the rounds of a period", arg="PATH"))
