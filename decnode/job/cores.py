"""The cores a process may use, and whether the processes of one machine run more threads than it has cores.

Intra-op threads beyond a machine's cores spin-wait on one another: the work takes many times longer, and each
process's CPU time — the per-node clock's compute — counts that contention as work (issue 24: two emulated hosts
that each believed they had both cores reported 1.5–1.95 s of compute per iteration for 0.09–0.17 s of work). One
thread per process cannot spin against itself: ten single-threaded processes on two cores time-share the cores,
which CPU time leaves out, so only processes with more than one thread are ever the cause.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path


def allowed() -> list[int]:
    """The cores this process may run on (its affinity: a taskset, a cpuset, a SLURM allocation)."""
    if hasattr(os, "sched_getaffinity"):
        return sorted(os.sched_getaffinity(0))
    return list(range(os.cpu_count() or 1))


def intra_op_threads() -> int:
    """The cores this process may use divided among the job's processes on this host: one process gets them all;
    ten processes on two cores get one thread each (more would only fight over the cores)."""
    return max(1, len(allowed()) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def machine_id() -> str | None:
    """The same for every process under one kernel, whatever its namespaces: emulated hosts (network and UTS
    namespaces) are told apart by their hostnames but share this machine's cores."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _span(cores: set[int]) -> str:
    """0-3,6 style, as taskset writes it."""
    runs, out = sorted(cores), []
    start = prev = runs[0]
    for c in runs[1:] + [None]:
        if c is not None and c == prev + 1:
            prev = c
            continue
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
        if c is not None:
            start = prev = c
    return ",".join(out)


def oversubscribed(procs: list[dict]) -> list[str]:
    """One warning line per host whose machine runs more threads than the cores its processes may use, when some
    process there has more than one (so that fewer threads would fix it); [] otherwise. procs: processes.json's
    records (host, pid, machine, cores, threads, row_threads)."""
    machines: dict[str, dict[int, dict]] = defaultdict(dict)
    procs = [dict(p, threads=p["threads"] * p.get("row_threads", 1)) for p in procs]  # at once: rows × intra-op
    for p in procs:  # a pid once: device threads of one process (XLA) share its intra-op threads
        machines[p.get("machine") or p["host"]][p["pid"] if p.get("machine") else (p["host"], p["pid"])] = p
    lines = []
    for members in machines.values():
        cores = set().union(*(p["cores"] for p in members.values()))
        total = sum(p["threads"] for p in members.values())
        if total <= len(cores) or max(p["threads"] for p in members.values()) <= 1:
            continue
        fix = max(1, len(cores) // len(members))
        hosts = sorted({p["host"] for p in members.values()})
        for host in hosts:
            mine = [p for p in members.values() if p["host"] == host]
            others = [h for h in hosts if h != host]
            shared = f", with {', '.join(others)} on the same cores" if others else ""
            lines.append(
                f"decnode-run: warning: host {host} runs {len(mine)} process(es) with "
                f"{'/'.join(str(t) for t in sorted({p['threads'] for p in mine}))} intra-op threads each{shared}: "
                f"{total} threads on {len(cores)} cores ({_span(cores)}) spin against each other, and CPU time — the "
                f"simulated clock's compute — counts it as work; set run.threads={fix} (--set run.threads={fix})"
                + (", or give each host its own cores (taskset)" if others else ""))
    return lines
