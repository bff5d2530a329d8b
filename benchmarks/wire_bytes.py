"""decnode's count of the bytes it sends (comm/wire.py) beside the kernel's interface counters, on namespace hosts.

    python benchmarks/wire_bytes.py [--per-host 1] [--agents-per-process 2] [--k 1] [--iterations 3]

Runs one small job on 2 hosts of launch/netns_hosts.sh (root; no rate cap) with NET_COUNTERS set, so the script
reads each host's eth0 tx/rx bytes and packets (/sys/class/net/eth0/statistics) just before the job starts and
after it ends. Prints, per host, what decnode counted leaving it (point-to-point frames to ranks on the other host;
with one rank per host every collective's payload too) against the kernel's tx_bytes, their ratio, and what TCP/IP
framing explains: 66 B per packet on a veth (Ethernet 14 + IPv4 20 + TCP 20 + timestamps 12; a veth has no
preamble or FCS, and TSO/GSO hands it up to 64 KiB per packet, so a packet is a segment as the kernel counted it,
pure ACKs included). The rest is what decnode does not count: the rendezvous store (torchrun's c10d TCPStore on
host 0, its keep-alives, the watchdog's reads), gloo's own handshakes and per-message headers, and, with several
ranks per host, the part of a collective gloo's algorithm routes between hosts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from netns import cpu_name, run  # noqa: E402

TCP_IP_BYTES = 66  # per packet on a veth: Ethernet 14 + IPv4 20 + TCP 20 + the timestamp option 12


def decnode_bytes(run_dir: Path) -> dict[int, dict]:
    """What decnode counted leaving each host (timing.json's wire, processes.json's placement)."""
    timing = json.loads((run_dir / "timing.json").read_text())
    hosts = {p["rank"]: int(p["host"].removeprefix("decnode-h"))
             for p in json.loads((run_dir / "processes.json").read_text())}
    wire, out = timing["wire"], {h: {"p2p": 0, "collective": 0} for h in set(hosts.values())}
    for link, streams in wire["links"].items():
        src, dst = map(int, link.split("->"))
        if hosts[src] != hosts[dst]:
            out[hosts[src]]["p2p"] += sum(streams.values())
    if len(hosts) == len(out):  # one rank per host: all of a collective's payload leaves the host
        for rank, per in enumerate(wire["collectives"]):
            out[hosts[rank]]["collective"] += sum(t["bytes"] for t in per.values())
    return out


def kernel_counters(path: Path) -> dict[int, dict]:
    """Each host's eth0 counters, after minus before."""
    seen: dict[str, dict[int, list[int]]] = {}
    for line in path.read_text().splitlines():
        phase, host, *values = line.split()
        seen.setdefault(phase, {})[int(host)] = [int(v) for v in values]
    keys = ("tx_bytes", "tx_packets", "rx_bytes", "rx_packets")
    return {h: dict(zip(keys, (a - b for a, b in zip(seen["after"][h], seen["before"][h])))) for h in seen["after"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-host", type=int, default=1, help="ranks per host (default 1)")
    parser.add_argument("--agents-per-process", type=int, default=2)
    parser.add_argument("--k", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("wire_bytes.py: needs root (launch/netns_hosts.sh makes network namespaces)")
    n = 2 * args.per_host * args.agents_per_process
    job = ["--agents-per-process", str(args.agents_per_process), "--k", str(args.k), "--iterations",
           str(args.iterations), "--set", f"env.n_agents={n}", "--set", "eval.interval=0", "--set",
           "eval.episodes=1", "--set", "eval.test_episodes=1", "--set", "run.tensorboard=false", "--set",
           "run.checkpoint_interval=0"]
    with tempfile.TemporaryDirectory(prefix="wire-bytes-") as tmp:
        counters, run_dir = Path(tmp) / "counters.txt", Path(tmp) / "run"
        env = dict(os.environ, PYTHON=os.environ.get("PYTHON", sys.executable), NET_COUNTERS=str(counters),
                   NETNS_TAG=f"w{os.getpid()}")
        run([str(REPO / "launch" / "netns_hosts.sh"), "2", str(args.per_host), "none", *job, "--out", str(run_dir)],
            env, 900)
        ours, kernel = decnode_bytes(run_dir), kernel_counters(counters)
    print(f"2 hosts × {args.per_host} rank(s), n={n}, DecPG k={args.k}, {args.iterations} iterations; "
          f"CPU: {cpu_name()}")
    rows = []
    for h in sorted(kernel):
        counted = ours[h]["p2p"] + ours[h]["collective"]
        k = kernel[h]
        framing = TCP_IP_BYTES * k["tx_packets"]
        rest = k["tx_bytes"] - counted - framing
        rows.append(dict(host=h, decnode=counted, **ours[h], **k, framing=framing, rest=rest,
                         ratio=k["tx_bytes"] / counted if counted else float("nan")))
        print(f"host {h}: decnode {counted:>11,} B (frames {ours[h]['p2p']:,} + collectives "
              f"{ours[h]['collective']:,})   kernel tx {k['tx_bytes']:>11,} B in {k['tx_packets']:,} packets   "
              f"kernel/decnode {rows[-1]['ratio']:.3f}   TCP/IP framing {framing:,} B   rest {rest:,} B "
              f"({100 * rest / k['tx_bytes']:.1f} %)")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "cpu": cpu_name(), "hosts": rows}, indent=1))


if __name__ == "__main__":
    main()
