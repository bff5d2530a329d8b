"""Emulated hosts vs the simulated clock: communication per iteration on tbf-capped links, measured, against
what the per-node clock (--net) says for the same bandwidth and the measured round trip. Root only.

For each rate: (a) 2 namespace hosts × 1 rank (launch/netns_hosts.sh), tbf at the rate, no profile: the host
timing of rank 0's communication sections per iteration; (b) the same job on loopback with --net FILE, FILE a
profile with bandwidth_bit_s = the rate and latency_s = half the round trip (a) measured: rank 0's simulated wire
+ waiting per iteration. The model is wide (train.hidden 512: ≈ 9 MB per gossip message) and the rollout short
(1 env × 10 steps) so that bandwidth, not this shared host's CPU, sets the communication time; the first
iteration (warm-up) and evaluation iterations are left out.

    python benchmarks/netns.py [--iterations 6] [--hidden 512] [--rates 100mbit 1gbit]
"""

from __future__ import annotations

import argparse
import os
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


def bits_per_s(rate: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)bit", rate)
    if not match:
        raise SystemExit(f"netns.py: a rate looks like 100mbit or 1gbit, got '{rate}'")
    return float(match[1]) * UNITS[match[2]]


def per_iteration(run: Path) -> list[dict]:
    """Rank 0's iterations after the first, without evaluation (its episodes are compute and messages mixed)."""
    lines = records(run)
    return [m for m in lines[1:] if m.get("eval_reward") is None]


def run(cmd: list[str], env: dict, timeout: float) -> str:
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        sys.exit(f"netns.py: {' '.join(cmd[:3])} ... exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout + done.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--rates", nargs="+", default=["100mbit", "1gbit"])
    ap.add_argument("--keep", metavar="DIR", help="keep the run directories here (default: a temporary directory)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("netns.py: skipped: needs root to build network namespaces (launch/netns_hosts.sh)")
        return
    job = ["--k", "1", "--iterations", str(args.iterations), "--set", f"train.hidden={args.hidden}",
           "--set", "env.n_envs=1", "--set", "env.episode_length=10", "--set", "eval.interval=0",
           "--set", "eval.episodes=1", "--set", "eval.test_episodes=1", "--set", "run.tensorboard=false",
           "--set", "run.checkpoint_interval=0"]
    env = dict(os.environ, PYTHON=sys.executable,
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    rows = []
    with tempfile.TemporaryDirectory(prefix="decnode-netns-") as scratch:
        tmp = args.keep or scratch
        Path(tmp).mkdir(parents=True, exist_ok=True)
        for rate in args.rates:
            beta = bits_per_s(rate)
            hosts = Path(tmp, f"hosts-{rate}")
            out = run([str(REPO / "launch" / "netns_hosts.sh"), "2", "1", rate, *job, "--out", str(hosts)], env, 600)
            rtt_us = float(re.search(r"round trip \S+ <-> \S+: (\d+) µs", out)[1])
            profile = Path(tmp, f"{rate}.yaml")
            # preset: a base to override (its name would otherwise be taken for one); α: half the round trip.
            profile.write_text(f"preset: ethernet\nname: netns-{rate}\njitter_s: 0\n"
                               f"latency_s: {rtt_us / 2 * 1e-6:.9f}\nbandwidth_bit_s: {beta:.0f}\n")
            sim = Path(tmp, f"sim-{rate}")
            run([sys.executable, "-m", "decnode.run", "--nproc", "2", *job, "--net", str(profile), "--out", str(sim)],
                env, 600)
            measured = per_iteration(hosts)
            simulated = per_iteration(sim)
            m_comm = statistics.mean(sum(m["timing"].get(s, 0.0) for s in COMM) for m in measured)
            m_gossip = statistics.mean(m["timing"].get("gossip", 0.0) for m in measured)
            m_stats = statistics.mean(m["timing"].get("stats", 0.0) for m in measured)
            m_iter = statistics.mean(sum(m["timing"].values()) for m in measured)
            s_comm = statistics.mean(m["sim"]["wire"] + m["sim"]["waiting"] for m in simulated)
            s_wire = statistics.mean(m["sim"]["wire"] for m in simulated)
            s_iter = statistics.mean(m["sim"]["seconds"] for m in simulated)
            rows.append((rate, rtt_us, m_comm, s_comm, s_wire, m_gossip, m_stats, m_iter, s_iter))
            print(f"{rate}: done ({len(measured)} iterations compared)", flush=True)
    print(f"\n2 hosts × 1 rank, DecPG k=1, hidden {args.hidden}; rank 0, seconds per iteration "
          f"(mean over iterations 2..{args.iterations} without evaluation)")
    heads = ("link", "RTT", "measured comm", "simulated comm", "ratio", "sim wire", "gossip", "stats",
             "measured it", "sim it")
    print("".join(f"{h:>15}" if k else f"{h:<9}" for k, h in enumerate(heads)))
    for rate, rtt, mc, sc, sw, mg, ms, mi, si in rows:
        print(f"{rate:<9}{rtt:>13.0f}µs{mc:>14.3f}s{sc:>14.3f}s{mc / sc:>15.2f}{sw:>14.3f}s{mg:>14.3f}s{ms:>14.3f}s"
              f"{mi:>14.3f}s{si:>14.3f}s")
    print("ratio: measured / simulated communication (target: within 25%, 0.75–1.25). measured comm: rank 0's host "
          "time in messages and collectives, waiting for the peer included (of which gossip and the statistics "
          "all-reduce); simulated comm: its clock's wire + waiting; measured it: the sum of rank 0's sections; "
          "sim it: its simulated iteration.")


if __name__ == "__main__":
    main()
