"""`python -m decnode.topology --n N`: the kNN ring's spectral gap for every k (decnode-topology describes any graph)."""

from __future__ import annotations

import argparse

from . import check_topology, mixing_matrix, spectral_gap


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
