"""How the cost of a training iteration grows with the number of agents N, and with how they are placed.

    python benchmarks/scale.py                                  # the full grid: 24 jobs, about 25-40 min here
    python benchmarks/scale.py --n 3 5 --maps 5m_vs_6m --iterations 4 --warmup 1     # a quick look
    python benchmarks/scale.py --n 27 --placements N --maps     # Simple Spread N=27 in 27 processes only
    python benchmarks/scale.py --load benchmarks/results/scale.json --markdown       # the README's table again

For Simple Spread with N in --n (k = min(4, N-1)) and for the SMAX maps in --maps (their own k and agent count),
each placement is one real `decnode.run` job: 1 process holding all N agents, a block split (the divisor of N
nearest sqrt(N): 10 -> 2x5, 20 -> 4x5, 27 -> 3x9; none when N is prime) and N processes of one agent.
Per job: the median seconds per iteration (rank 0's sections from metrics.jsonl, warm-up and last iteration
left out), the peak resident memory of every process (timing.json's peak_rss_mb, ru_maxrss: the largest and the
sum, an upper bound on the job's peak; the launcher's own process is not counted) and the communication share of
the iterations' wall-clock, averaged over ranks. The table's "vs linear" is (s/it / s/it at the smallest N) /
(N / smallest N) for the same env family and placement kind: 1.0 is linear, below 1 sub-linear; the last lines
fit cost ∝ N^x (least squares of log s/it on log N) over the Simple Spread rows of each placement kind.
Results are saved to --out after every job, so an interrupted grid keeps what it measured.

Time on this 2-core machine (shared with other work, so timings are noisy): the default grid is 24 jobs of 6
iterations. Measured in short runs: a Simple Spread job at N <= 5 takes 3-10 s, N=27 in 27 processes ~100 s of
start-up plus ~4.4 s/it; SMAX adds ~20-50 s of JAX start-up per job, 5m_vs_6m runs at 2-3.3 s/it and 27m_vs_30m
in one process at ~14 s/it. Extrapolated: ~7 min for Simple Spread and ~18 min for SMAX (27m_vs_30m in 27
processes alone ~5 min), so about 25 min on a quiet machine, 40 on a busy one. Peak memory stays under ~9 GiB
(27 processes at ~280 MiB each; under SMAX rank 0 alone holds JAX, ~0.9-2.2 GiB).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import jobs  # noqa: E402  (benchmarks/jobs.py)

SMAX_AGENTS = {"5m_vs_6m": 5, "10m_vs_11m": 10, "27m_vs_30m": 27, "6h_vs_8z": 6}


def block(n: int) -> int | None:
    """Process count of the in-between split: the divisor of n nearest sqrt(n), None for a prime n."""
    divisors = [d for d in range(2, n) if n % d == 0]
    return min(divisors, key=lambda d: abs(d - math.sqrt(n))) if divisors else None


def placements(n: int, kinds: list[str]) -> list[tuple[str, int]]:
    procs = {"1": 1, "block": block(n), "N": n}
    seen, out = set(), []
    for kind in kinds:
        p = procs[kind]
        if p is not None and p not in seen:  # N=1 would repeat "1"; a prime N has no block
            seen.add(p)
            out.append((kind, p))
    return out


def run_job(env: str, n: int, kind: str, nproc: int, args: argparse.Namespace) -> dict:
    row = {"env": env, "n": n, "kind": kind, "processes": nproc, "agents_per_process": n // nproc}
    config = [] if env == "simple_spread" else ["--config", f"configs/smac_{env.removeprefix('smax:')}.yaml"]
    k = min(4, n - 1) if env == "simple_spread" else None  # SMAX maps keep their config's k
    row["k"] = k
    row.update(jobs.run([*config, "--nproc", str(nproc), "--agents-per-process", str(n // nproc), "--algo", args.algo,
                         *(["--k", str(k)] if k is not None else []), "--iterations", str(args.iterations),
                         *jobs.BARE, *jobs.SHORT_FINAL_EVAL, *args.extra], args.warmup, args.timeout))
    return row


def derived(rows: list[dict]) -> None:
    """Add ratio and vs-linear to each row: against the smallest N of the same env family and placement kind."""
    ok = [r for r in rows if "seconds_per_iteration" in r]
    for r in ok:
        family = [q for q in ok if _family(q) == _family(r) and q["kind"] == r["kind"]]
        base = min(family, key=lambda q: q["n"])
        r["ratio"] = r["seconds_per_iteration"] / base["seconds_per_iteration"]
        r["vs_linear"] = r["ratio"] / (r["n"] / base["n"])
        r["ratio_base_n"] = base["n"]


def _family(r: dict) -> str:
    return "spread" if r["env"] == "simple_spread" else "smax"


def exponents(rows: list[dict]) -> dict[str, tuple[float, list[int]]]:
    """cost ∝ N^x per placement kind: least squares slope of log(s/it) on log(N), Simple Spread rows."""
    out = {}
    for kind in ("1", "block", "N"):
        pts = [(math.log(r["n"]), math.log(r["seconds_per_iteration"])) for r in rows
               if r["env"] == "simple_spread" and r["kind"] == kind and "seconds_per_iteration" in r]
        xs = [x for x, _ in pts]
        if len(set(xs)) < 2:
            continue
        mx, my = statistics.mean(xs), statistics.mean(y for _, y in pts)
        slope = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x in xs)
        out[kind] = (slope, sorted(round(math.exp(x)) for x in xs))
    return out


HEADER = ["env", "N", "procs × agents", "s/it", "s/it/agent", "ratio", "vs linear", "max MiB/proc", "total MiB",
          "comm %"]
KIND = {"1": "1 process", "block": "blocks", "N": "N processes"}


def cells(r: dict) -> list[str]:
    name = "spread" if r["env"] == "simple_spread" else r["env"].removeprefix("smax:")
    head = [name, str(r["n"]), f"{r['processes']} × {r['agents_per_process']}"]
    if "error" in r:
        return head + [f"failed: {r['error'][:90]}"] + [""] * (len(HEADER) - 4)
    s, mem = r["seconds_per_iteration"], r["peak_rss_mib"]
    return head + [f"{s:.3f}", f"{s / r['n']:.4f}", f"{r['ratio']:.2f}", f"{r['vs_linear']:.2f}",
                   f"{max(mem):.0f}", f"{sum(mem):.0f}", f"{100 * r['comm_share']:.0f}"]


def table(rows: list[dict], markdown: bool) -> str:
    derived(rows)
    body = [cells(r) for r in sorted(rows, key=lambda r: (_family(r) != "spread", r["n"], r["env"], r["processes"]))]
    failed = lambda c: c[3].startswith("failed")  # noqa: E731
    if markdown:
        lines = ["| " + " | ".join(HEADER) + " |", "|---" * 3 + "|---:" * (len(HEADER) - 3) + "|"]
        lines += ["| " + " | ".join(c) + " |" for c in body]
    else:
        widths = [max([len(h)] + [len(c[i]) for c in body if not failed(c)]) for i, h in enumerate(HEADER)]

        def fmt(c: list[str]) -> str:  # text columns left, figures right; a failed row's error runs on unaligned
            cols = c[:4] if failed(c) else c
            return "  ".join(x.ljust(w) if i < 3 or failed(c) else x.rjust(w)
                             for i, (x, w) in enumerate(zip(cols, widths))).rstrip()
        lines = [fmt(HEADER), "-" * len(fmt(HEADER))] + [fmt(c) for c in body]
    notes = ["ratio: s/it over the smallest N's s/it, same env family (Simple Spread or SMAX) and placement kind "
             "(1 process, blocks, N processes); vs linear: ratio / (N / smallest N), 1.00 = linear in N."]
    for kind, (x, ns) in exponents(rows).items():
        notes.append(f"Simple Spread, {KIND[kind]} (N = {', '.join(map(str, ns))}): cost ∝ N^{x:.2f}")
    sep = "\n\n" if markdown else "\n"
    return "\n".join(lines) + sep + sep.join(notes)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="*", default=[3, 5, 10, 20, 27], help="Simple Spread agent counts")
    p.add_argument("--maps", nargs="*", default=list(SMAX_AGENTS), choices=list(SMAX_AGENTS),
                   help="SMAX maps (no value: none)")
    p.add_argument("--placements", nargs="+", default=["1", "block", "N"], choices=["1", "block", "N"])
    p.add_argument("--algo", default="decpg", choices=["decpg", "ps", "ps_entropy"])
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2, help="first iterations left out of the median")
    p.add_argument("--timeout", type=float, default=1800, help="seconds before a job is stopped, recorded as failed")
    p.add_argument("--extra", nargs="*", default=[], help="more decnode.run arguments for every job, each as "
                   "--extra=ARG (e.g. --extra=--no-preflight)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scale.json"))
    p.add_argument("--load", metavar="JSON", help="print the table of saved results; run nothing")
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown (for the README)")
    args = p.parse_args()
    if args.iterations < args.warmup + 2:
        p.error("--iterations must be at least --warmup + 2 (the warm-up and the last iteration are left out)")
    if args.load:
        print(table(json.loads(Path(args.load).read_text())["rows"], args.markdown))
        return
    jobs = [("simple_spread", n, kind, procs) for n in args.n for kind, procs in placements(n, args.placements)]
    jobs += [(f"smax:{m}", SMAX_AGENTS[m], kind, procs) for m in args.maps
             for kind, procs in placements(SMAX_AGENTS[m], args.placements)]
    out, rows, start = Path(args.out), [], time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    for i, (env, n, kind, procs) in enumerate(jobs, 1):
        print(f"[{i}/{len(jobs)}] {env} N={n}: {procs} × {n // procs} ...", end=" ", flush=True)
        r = run_job(env, n, kind, procs, args)
        rows.append(r)
        mem = r.get("peak_rss_mib", [])
        print(r.get("error") or f"{r['seconds_per_iteration']:.3f} s/it, peak {max(mem):.0f} MiB/proc, "
              f"{sum(mem):.0f} MiB total", f"({r['job_seconds']:.0f} s)", flush=True)
        out.write_text(json.dumps({"args": {k: v for k, v in vars(args).items() if k != "load"}, "rows": rows,
                                   "elapsed_s": round(time.monotonic() - start, 1)}, indent=1))
    print(f"\n{args.algo}, {args.iterations} iterations ({args.warmup} warm-up), {time.monotonic() - start:.0f} s; "
          f"saved {out}\n")
    print(table(rows, args.markdown))


if __name__ == "__main__":
    main()
