"""The simulated cluster checked against emulated hosts: seconds per iteration and communication time, measured on
network-namespace hosts (launch/netns_hosts.sh: each host its own cores, tbf-capped links, a straggler slowed for
real by a CPU quota) against the per-node clock (--net) of the same job on loopback. Root only.

For each cell (a graph, a link rate, a straggler on or off): (a) HOSTS namespace hosts × 1 rank, AGENTS agents
each, tbf at the rate, HOST_SLOWDOWN=1:F when the straggler is on; no profile: rank 0's host timing per
iteration. (b) The same job over loopback with --net FILE, FILE a profile with bandwidth_bit_s = the rate,
latency_s = half the round trip (a) measured, and speed F for the rank that ran on the slowed host
(processes.json of (a)): rank 0's simulated seconds per iteration and its wire + waiting. The first iteration
(warm-up) is left out; evaluation is off.

    python benchmarks/netns.py [--graphs k=1 k=2 k=3 torus exp1peer] [--rates 100mbit 1gbit] [--slowdown 2] [--iterations 8]
                               [--md results/netns_validation.md]

A cell misses when either error is over 10 %; the table then says which term differs most: compute (simulated
CPU time × speed against the host's iteration minus its communication), or communication.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from decnode.job.metricsfile import records  # noqa: E402
# Every section the host spends in a message or collective (its waiting for the peer included, as in the clock).
COMM = ("step_exchange", "reward_scatter", "state_broadcast", "gossip", "gossip_critic", "allreduce",
        "allreduce_critic", "stats", "broadcast", "gather", "wait")
UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}
TARGET = 0.10


def bits_per_s(rate: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)bit", rate)
    if not match:
        raise SystemExit(f"netns.py: a rate looks like 100mbit or 1gbit, got '{rate}'")
    return float(match[1]) * UNITS[match[2]]


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        return re.search(r"Model name:\s*(.+)", out)[1].strip()
    except (OSError, TypeError, subprocess.SubprocessError):
        return platform.processor() or "unknown CPU"


def steady(run: Path) -> list[dict]:
    """Rank 0's iterations after the first (warm-up)."""
    return records(run)[1:]


def run(cmd: list[str], env: dict, timeout: float) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        sys.exit(f"netns.py: {' '.join(cmd[:3])} ... exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout + done.stderr


def graph_args(graph: str) -> list[str]:
    """decnode-run's flags for a cell's graph: "k=2" is the kNN ring of k = 2, anything else a --topology name."""
    return ["--k", graph[2:]] if graph.startswith("k=") else ["--topology", graph]


def cell_name(cell: dict) -> str:
    return f"{cell['graph'].replace('=', '')}-{cell['rate']}-{'slow' if cell['slow'] > 1 else 'even'}"


def on_hosts(cell: dict, job: list[str], env: dict, tmp: Path, hosts: int) -> tuple[Path, dict]:
    """The cell's job on namespace hosts; its run directory and what the script measured of the links."""
    name = cell_name(cell)
    real = tmp / f"hosts-{name}"
    host_env = dict(env, GLOO_PING="1", **({"HOST_SLOWDOWN": f"1:{cell['slow']:g}"} if cell["slow"] > 1 else {}))
    out = run([str(REPO / "launch" / "netns_hosts.sh"), str(hosts), "1", cell["rate"], *job,
               *graph_args(cell["graph"]), "--out", str(real)], host_env, 900)
    links = {"rtt_us": float(re.search(r"round trip \S+ <-> \S+: (\d+) µs", out)[1]),
             "gloo_us": float(re.search(r"gloo one way \S+ -> \S+: (\d+) µs", out)[1])}
    return real, links


def simulated(cell: dict, job: list[str], env: dict, tmp: Path, hosts: int, alpha_s: float, speed: list,
              tag: str = "") -> Path:
    """The same job over loopback with the per-node clock of a profile: α, the cell's rate, per-rank speed."""
    name = cell_name(cell) + tag
    profile, sim = tmp / f"{name}.yaml", tmp / f"sim-{name}"
    # preset: a base to override (its name would otherwise be taken for one).
    # An uncapped veth moves gigabytes per second: 100 Gbit/s prices its bytes at about nothing, as they cost.
    beta = 1e11 if cell["rate"] == "none" else bits_per_s(cell["rate"])
    rate = f"bandwidth_bit_s: {beta:.0f}\n"
    profile.write_text(f"preset: ethernet\nname: netns-{name}\njitter_s: 0\nlatency_s: {alpha_s:.9f}\n{rate}"
                       f"speed: {speed}\n")
    run([sys.executable, "-m", "decnode.run", "--nproc", str(hosts), *job, *graph_args(cell["graph"]), "--net",
         str(profile), "--out", str(sim)], env, 900)
    return sim


def host_comm(run_dir: Path) -> tuple[float, float]:
    """Rank 0's measured communication and iteration, seconds per steady iteration."""
    m = steady(run_dir)
    return (statistics.mean(sum(x["timing"].get(k, 0.0) for k in COMM) for x in m),
            statistics.mean(sum(x["timing"].values()) for x in m))


def sim_comm(run_dir: Path) -> float:
    return statistics.mean(x["sim"]["wire"] + x["sim"]["waiting"] for x in steady(run_dir))


def calibrate_alpha(graph: str, job: list[str], env: dict, tmp: Path, hosts: int) -> dict:
    """α for these hosts as decnode's messages see them, fitted once on an uncapped link: the simulated
    communication is linear in α (slope: the latencies on rank 0's path per iteration), so two simulated runs
    place the α at which it equals the measured one. The gloo ping-pong's one way is the floor."""
    cell = dict(graph=graph, rate="none", slow=1.0)
    real, links = on_hosts(cell, job, env, tmp, hosts)
    measured = host_comm(real)[0]
    a0, a1 = links["gloo_us"] * 1e-6, links["gloo_us"] * 1e-6 + 1e-3
    s0 = sim_comm(simulated(cell, job, env, tmp, hosts, a0, [1.0], "-a0"))
    s1 = sim_comm(simulated(cell, job, env, tmp, hosts, a1, [1.0], "-a1"))
    slope = (s1 - s0) / (a1 - a0)
    alpha = max(a0, a0 + (measured - s0) / slope) if slope > 0 else a0
    return dict(links, alpha_s=alpha, latencies=slope, measured=measured, s0=s0)


def measure(cell: dict, job: list[str], env: dict, tmp: Path, hosts: int, alpha_s: float | None = None) -> dict:
    """One cell: the emulated hosts, then the simulated clock given α (default: the gloo one way the script
    measured between the pinned hosts) and the rate and slowdown the hosts had."""
    real, links = on_hosts(cell, job, env, tmp, hosts)
    procs = json.loads((real / "processes.json").read_text())
    speed = [1.0] * len(procs)
    for p in procs:  # torchrun's rendezvous decides which host holds which rank
        if p["host"] == "decnode-h1":
            speed[p["rank"]] = cell["slow"]
    alpha = alpha_s if alpha_s is not None else links["gloo_us"] * 1e-6
    sim = simulated(cell, job, env, tmp, hosts, alpha, speed)
    m_comm, m_iter = host_comm(real)
    s = steady(sim)
    s_comm = sim_comm(sim)
    s_iter = statistics.mean(x["sim"]["seconds"] for x in s)
    threads = sorted({p["threads"] * p.get("row_threads", 1) for p in procs})
    return dict(cell, **links, alpha_s=alpha, m_iter=m_iter, s_iter=s_iter, m_comm=m_comm, s_comm=s_comm,
                m_compute=m_iter - m_comm, s_compute=statistics.mean(x["sim"]["compute"] for x in s),
                s_wire=statistics.mean(x["sim"]["wire"] for x in s), threads=threads,
                cores=[p["cores"] for p in sorted(procs, key=lambda p: p["rank"])])


def verdict(row: dict) -> str:
    e_it, e_comm = row["s_iter"] / row["m_iter"] - 1, row["s_comm"] / row["m_comm"] - 1
    if max(abs(e_it), abs(e_comm)) <= TARGET:
        return "within 10 %"
    d_compute, d_comm = row["s_compute"] - row["m_compute"], row["s_comm"] - row["m_comm"]
    term = "compute" if abs(d_compute) > abs(d_comm) else "communication"
    return f"misses: {term} ({'+' if (d_compute if term == 'compute' else d_comm) > 0 else '−'}" \
           f"{abs(d_compute if term == 'compute' else d_comm) * 1e3:.0f} ms simulated)"


def table(rows: list[dict], hosts: int, agents: int, args, cpu: str, fit: dict) -> str:
    head = ("| graph | link | straggler | gloo µs | s/it measured | s/it simulated | error | comm measured | "
            "comm simulated | error | compute measured | compute simulated | verdict |")
    lines = [f"{hosts} namespace hosts × 1 rank × {agents} agents (Simple Spread, n = {hosts * agents}), DecPG on the "
             f"graph of each row (k=K: the kNN ring), {args.iterations} iterations (the first left out), each host pinned to its own core(s); "
             f"rank 0, seconds per iteration. CPU: {cpu}.", "",
             f"The profile of each cell: β = the cell's tbf rate, speed = the straggler's factor on the rank that ran "
             f"on host 1, α = {fit['alpha_s'] * 1e6:.0f} µs fitted once on an uncapped link ({args.graphs[0]}, no "
             f"straggler: {fit['measured'] * 1e3:.1f} ms measured communication per iteration; the gloo one way "
             f"between the pinned hosts is {fit['gloo_us']:.0f} µs, their TCP round trip {fit['rtt_us']:.0f} µs).",
             "", head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        e_it, e_comm = r["s_iter"] / r["m_iter"] - 1, r["s_comm"] / r["m_comm"] - 1
        lines.append(f"| {r['graph']} | {r['rate']} | {'host 1 ' + format(r['slow'], 'g') + '×' if r['slow'] > 1 else 'off'}"
                     f" | {r['gloo_us']:.0f} | {r['m_iter']:.3f} | {r['s_iter']:.3f} | {100 * e_it:+.1f} % | "
                     f"{r['m_comm']:.3f} | {r['s_comm']:.3f} | {100 * e_comm:+.1f} % | {r['m_compute']:.3f} | "
                     f"{r['s_compute']:.3f} | {verdict(r)} |")
    errors_it = [abs(r["s_iter"] / r["m_iter"] - 1) for r in rows]
    errors_comm = [abs(r["s_comm"] / r["m_comm"] - 1) for r in rows]
    worst = max(rows, key=lambda r: max(abs(r["s_iter"] / r["m_iter"] - 1), abs(r["s_comm"] / r["m_comm"] - 1)))
    lines += ["", f"Mean absolute error: seconds per iteration {100 * statistics.mean(errors_it):.1f} %, "
                  f"communication {100 * statistics.mean(errors_comm):.1f} % (target ≤ 10 %). Worst cell: {worst['graph']}"
                  f", {worst['rate']}, straggler {'on' if worst['slow'] > 1 else 'off'} "
                  f"({100 * (worst['s_iter'] / worst['m_iter'] - 1):+.1f} % per iteration, "
                  f"{100 * (worst['s_comm'] / worst['m_comm'] - 1):+.1f} % communication).",
              f"Threads per process: {sorted({t for r in rows for t in r['threads']})}; cores per rank in the first "
              f"cell: {rows[0]['cores']}."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--graphs", nargs="+", default=["k=1", "k=2", "k=3", "torus", "exp1peer"],
                    help="k=K (the kNN ring) or a --topology name per row group; the first is α's fit")
    ap.add_argument("--rates", nargs="+", default=["100mbit", "1gbit"])
    ap.add_argument("--slowdown", type=float, default=2.0, help="the straggler's factor (1: no straggler cells)")
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--agents", type=int, default=2, help="agents per host")
    ap.add_argument("--md", metavar="FILE", help="also write the table to FILE (markdown)")
    ap.add_argument("--keep", metavar="DIR", help="keep the run directories here (default: a temporary directory)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("netns.py: skipped: needs root to build network namespaces (launch/netns_hosts.sh)")
        return
    cores = len(os.sched_getaffinity(0))
    hosts = 4 if cores >= 4 else 2  # one core (at least) per host: shared cores would time-share the hosts
    job = ["--agents-per-process", str(args.agents), "--iterations", str(args.iterations),
           "--set", f"env.n_agents={hosts * args.agents}", "--set", "eval.interval=0",
           "--set", "eval.episodes=1", "--set", "eval.test_episodes=1", "--set", "run.tensorboard=false",
           "--set", "run.checkpoint_interval=0"]
    env = dict(os.environ, PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    cells = [dict(graph=graph, rate=rate, slow=slow) for rate in args.rates
             for slow in ([1.0, args.slowdown] if args.slowdown > 1 else [1.0]) for graph in args.graphs]
    rows = []
    with tempfile.TemporaryDirectory(prefix="decnode-netns-") as scratch:
        tmp = Path(args.keep or scratch)
        tmp.mkdir(parents=True, exist_ok=True)
        fit = calibrate_alpha(args.graphs[0], job, env, tmp, hosts)
        print(f"α fitted on an uncapped link ({args.graphs[0]}): {fit['alpha_s'] * 1e6:.0f} µs (gloo one way "
              f"{fit['gloo_us']:.0f} µs, TCP round trip {fit['rtt_us']:.0f} µs; {fit['latencies']:.0f} latencies per "
              f"iteration on rank 0's path)", flush=True)
        for cell in cells:
            rows.append(measure(cell, job, env, tmp, hosts, fit["alpha_s"]))
            r = rows[-1]
            print(f"{r['graph']} {r['rate']} slow {r['slow']:g}: s/it {r['m_iter']:.3f} measured, {r['s_iter']:.3f} "
                  f"simulated; comm {r['m_comm']:.3f} / {r['s_comm']:.3f}", flush=True)
    text = table(rows, hosts, args.agents, args, cpu_name(), fit)
    print("\n" + text)
    if args.md:
        command = "python benchmarks/netns.py " + " ".join(sys.argv[1:])
        Path(args.md).write_text(f"# The simulated cluster against emulated hosts\n\nMade by `{command}`.\n\n{text}\n")


if __name__ == "__main__":
    main()
