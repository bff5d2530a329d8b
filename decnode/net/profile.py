"""What a message would cost between real nodes: network profiles, the α–β cost of each call, a per-node clock.

A profile gives every link a latency α (seconds), a bandwidth β (bits per second) and a jitter, and every node a
compute speed (a slowdown factor per rank, plus stragglers: with probability p an iteration runs s× slower).
What the clock charges as compute is `compute`: measured (the rank's CPU time, below) or model (fixed seconds per
call of each compute section and agent row, `compute_s`: two runs' clocks agree exactly, whatever the host's load —
what bounded-staleness gossip decides arrival by).

`NodeClock` is the time one rank would see on such a cluster — a discrete-event simulation driven by the real
run: compute advances it by the rank's own CPU time (not wall time, which ten processes on two cores inflate)
times its slowdown; a message leaves at max(sender's clock, the sender's link free again), occupies the link for
bytes/β and arrives α later; a receive completes at max(receiver's clock, arrival); a collective completes, from
its latest participant, after the cost of the algorithm gloo runs (e.g. ring all-reduce: 2(n−1) steps of size/n).
Pure Python, no torch: a rank's Link (link.py) stamps the real messages with these numbers.
"""

from __future__ import annotations

import math
import random
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from .. import yamlio
from ..config import ConfigError
from ..registry import Registry
from .compute import COMPUTE, COMPUTE_S, parse_costs

MODES = ("simulate", "emulate")  # emulate: the same delays also as real waits on the real messages


@dataclass(frozen=True)
class NetProfile:
    name: str = "loopback"
    latency_s: float = 0.0  # α: one way, per message
    bandwidth_bit_s: float = math.inf  # β: per link (each node has one, shared by its outgoing messages)
    jitter_s: float = 0.0  # uniform extra latency in [0, jitter_s)
    speed: tuple[float, ...] = (1.0,)  # per-rank compute slowdown (1: this host's CPU), cycled over the ranks
    straggler_p: float = 0.0  # probability that a rank's iteration is straggler_slowdown× slower
    straggler_slowdown: float = 1.0
    mode: str = "simulate"
    compute: str = "measured"  # or "model": fixed costs (compute_s) instead of CPU time
    compute_s: tuple[tuple[str, float], ...] = tuple(COMPUTE_S.items())

    def costs(self) -> dict[str, float] | None:
        """compute: model — seconds per call and agent row by section; None when compute is measured."""
        return dict(self.compute_s) if self.compute == "model" else None

    @property
    def active(self) -> bool:
        """Whether the profile costs anything (its values, never its name): a profile that costs nothing runs no
        clock, stamps nothing and sends no extra messages."""
        return (self.latency_s > 0 or self.bandwidth_bit_s != math.inf or self.jitter_s > 0
                or any(s != 1 for s in self.speed) or (self.straggler_p > 0 and self.straggler_slowdown != 1))

    def to_spec(self) -> dict:
        """Every key of the profile, as make_profile reads it back: what a run records in its config."""
        spec = {f.name: getattr(self, f.name) for f in fields(self)}
        spec["speed"] = list(self.speed)
        spec["compute_s"] = dict(self.compute_s)
        return spec

    def slowdown(self, rank: int) -> float:
        return self.speed[rank % len(self.speed)]

    def wire_s(self, nbytes: float) -> float:
        """Seconds a message of nbytes occupies a link."""
        return 8.0 * nbytes / self.bandwidth_bit_s

    # ---- what gloo's algorithms cost on this network (also the α–β model's predictions) ----------------------
    def p2p_s(self, nbytes: float) -> float:
        return self.latency_s + self.wire_s(nbytes)

    def allreduce_s(self, n: int, nbytes: float) -> float:
        """Ring all-reduce: reduce-scatter then all-gather, 2(n−1) steps each moving size/n per link."""
        return 0.0 if n <= 1 else 2 * (n - 1) * (self.latency_s + self.wire_s(nbytes / n))

    def broadcast_s(self, n: int, nbytes: float) -> float:
        """Binomial tree: ⌈log₂ n⌉ rounds of a whole message."""
        return 0.0 if n <= 1 else math.ceil(math.log2(n)) * self.p2p_s(nbytes)

    def gather_s(self, n: int, nbytes_each: float) -> float:
        """Gather or scatter through the root's one link: n−1 messages in a row, overlapping their latency."""
        return 0.0 if n <= 1 else self.latency_s + (n - 1) * self.wire_s(nbytes_each)


# The preset registry: a name → its profile (α, β, jitter, ...). A new preset is one line here; --net, config files,
# --set and sweep files all look names up in it and list its names when one is unknown. Anything else comes from a
# YAML file with the same keys.
PRESETS: Registry[NetProfile] = Registry("network preset")
for _preset in (NetProfile(), NetProfile("datacenter", latency_s=10e-6, bandwidth_bit_s=25e9),
                NetProfile("ethernet", latency_s=100e-6, bandwidth_bit_s=1e9),
                NetProfile("wan", latency_s=20e-3, bandwidth_bit_s=100e6, jitter_s=2e-3),
                NetProfile("edge", latency_s=50e-3, bandwidth_bit_s=10e6, jitter_s=5e-3)):
    PRESETS.register(_preset.name, _preset)


def _number(source: str, key: str, value, low: float = 0.0, *, above: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{source}: net.{key} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value) and not (key == "bandwidth_bit_s" and value == math.inf):
        raise ConfigError(f"{source}: net.{key} must be finite, got {value}")
    if value < low or (above and value == low):
        raise ConfigError(f"{source}: net.{key} must be {'>' if above else '≥'} {low:g}, got {value:g}")
    return value


def make_profile(spec: dict, source: str = "net") -> NetProfile:
    """A profile from a mapping: an optional `preset` name (else the preset its `name` is, else loopback), then any
    of NetProfile's keys over it; `file` (where a recorded profile was read from) is information only."""
    if not isinstance(spec, dict):
        raise ConfigError(f"{source}: a network profile must be a mapping, got {type(spec).__name__}")
    spec = dict(spec)
    if not isinstance(spec.pop("file", ""), str):
        raise ConfigError(f"{source}: net.file (where a recorded profile was read from) must be a path")
    name = spec.get("name")
    preset = spec.pop("preset", name if isinstance(name, str) and name in PRESETS else "loopback")
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ConfigError(f"{source}: unknown network preset '{preset}' (known: {', '.join(PRESETS)})")
    base = PRESETS[preset]
    known = {f.name for f in fields(NetProfile)}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown network profile key '{unknown[0]}' (known: preset, {', '.join(known)})")
    values = {f.name: getattr(base, f.name) for f in fields(NetProfile)}
    # A changed preset gets a name of its own (a preset's name over other values is refused below).
    values["name"] = spec.pop("name", f"{preset}+" if spec else preset)
    if not isinstance(values["name"], str) or not values["name"].strip():
        raise ConfigError(f"{source}: net.name must be a non-empty text, got {values['name']!r}")
    for key, value in spec.items():
        if key == "mode":
            if value not in MODES:
                raise ConfigError(f"{source}: net.mode must be one of {', '.join(MODES)}, got {value!r}")
            values[key] = value
        elif key == "compute":
            if value not in COMPUTE:
                raise ConfigError(f"{source}: net.compute must be one of {', '.join(COMPUTE)}, got {value!r}")
            values[key] = value
        elif key == "compute_s":
            values[key] = parse_costs(source, value)
        elif key == "speed":
            speeds = value if isinstance(value, list) else [value]
            if not speeds:
                raise ConfigError(f"{source}: net.speed must be a number or a non-empty list of numbers")
            values[key] = tuple(_number(source, "speed", s, 0.0, above=True) for s in speeds)
        elif key == "straggler_p":
            values[key] = _number(source, key, value)
            if values[key] > 1:
                raise ConfigError(f"{source}: net.straggler_p must be in [0, 1], got {value}")
        elif key == "straggler_slowdown":
            values[key] = _number(source, key, value, 1.0)
        elif key == "bandwidth_bit_s":
            values[key] = _number(source, key, value, 0.0, above=True)
        else:
            values[key] = _number(source, key, value)
    profile = NetProfile(**values)
    named = PRESETS.find(profile.name)
    if named is not None:  # "loopback" over ethernet's values ran nothing; "ethernet" over other values misleads
        differ = [f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in profile.to_spec().items()
                  if k not in ("name", "mode", "compute") and v != named.to_spec()[k]]
        if differ:
            raise ConfigError(f"{source}: net.name '{profile.name}' is the preset's name, but this profile has "
                              f"{', '.join(differ)}: give it a name of its own (or leave name out)")
    return profile


def describe(spec) -> str:
    """How a message names a profile: the preset's name, the file, or the recorded profile's name."""
    if isinstance(spec, dict):
        return str(spec.get("file") or spec.get("name") or "the net.profile mapping")
    return str(spec)


def load_profile(spec) -> NetProfile:
    """`--net NAME|FILE` or config net.profile: a preset's name, a YAML file holding a profile mapping, or such a
    mapping itself (given inline, or recorded by a run: see record). A file or mapping that costs nothing is
    refused: it would run without simulation and say nothing (`--net loopback` is the way to ask for that)."""
    if isinstance(spec, str) and spec in PRESETS:
        return PRESETS[spec]
    if isinstance(spec, dict):
        source = f"net.profile ({describe(spec)})"
    else:
        path = Path(spec)
        if not path.exists():  # a typo of a preset's name as likely as a missing file
            raise ConfigError(f"--net: '{spec}' is neither a preset ({', '.join(PRESETS)}) nor a readable file")
        try:
            spec = yamlio.read(path, "network profile")
        except yamlio.YamlError as err:
            raise ConfigError(str(err)) from None
        if not spec:
            raise ConfigError(f"network profile {path} is empty: give a preset and/or keys (README 'Simulating "
                              "real nodes'), or use --net loopback for no simulation")
        source = str(path)
    profile = make_profile(spec, source)
    if not profile.active:
        raise ConfigError(f"{source}: profile '{profile.name}' costs nothing (no latency, bandwidth limit, jitter, "
                          "slowdown or straggler), so nothing would be simulated: give it a cost, or use --net loopback")
    return profile


def record(spec):
    """What a run keeps in its config for net.profile: a preset's name as it is; a file's content or a mapping,
    every key (and the file it came from), so that a resume depends neither on the file still being there nor on
    its edits, and compares key by key."""
    if isinstance(spec, str) and spec in PRESETS:
        return spec
    source = spec.get("file") if isinstance(spec, dict) else str(Path(spec).resolve())
    return {**({"file": source} if source else {}), **load_profile(spec).to_spec()}


def job_profile(cfg, n_procs: int | None = None) -> NetProfile:
    """The job's profile (net.profile, net.mode over it); ConfigError where it would silently do nothing: a mode
    without a profile, or a profile for one process (no message crosses a network; the clock needs peers)."""
    profile = load_profile(cfg.net.profile)
    mode, compute, tau = cfg.net.mode, cfg.net.compute, cfg.algo.staleness
    if not profile.active:
        for key, value in (("mode", mode), ("compute", compute)):
            if value is not None:
                raise ConfigError(f"net.{key}={value} needs a network profile (--net): loopback has no clock "
                                  f"(drop it, or --set net.{key}=null)")
        return profile  # algo.staleness: real arrival (comm/arrival.py)
    if n_procs == 1:
        raise ConfigError(f"--net {describe(cfg.net.profile)} needs 2 or more processes (--nproc): one process sends "
                          "no messages, so nothing would be simulated")
    profile = replace(profile, mode=mode or profile.mode, compute=compute or profile.compute)
    if tau and profile.mode == "simulate" and profile.compute != "model":
        raise ConfigError(f"algo.staleness={tau} needs net.compute=model (--set net.compute=model): with measured CPU "
                          "time the clock, and so which messages count as arrived, would differ from run to run")
    return profile


@dataclass
class ClockTally:
    """Simulated seconds of one rank, by what the node was doing."""

    compute: float = 0.0
    wire: float = 0.0  # a message or collective in transit (α + bytes/β, link queueing)
    waiting: float = 0.0  # for a slower peer to send or to join a collective


@dataclass
class NodeClock:
    """The clock of one simulated node. Times are seconds since the job started on that node's clock."""

    profile: NetProfile
    rank: int
    seed: int = 0
    now: float = 0.0
    link_free: float = 0.0  # when this node's outgoing link has sent everything queued on it
    tally: ClockTally = field(default_factory=ClockTally)
    cpu: callable = time.process_time  # what "compute" is measured in: this process's CPU time
    rows: dict = field(default_factory=dict)  # compute: model — rows per section (section_rows; default 1)

    def __post_init__(self):
        self._cpu_mark = self.cpu()
        self._factor = self.profile.slowdown(self.rank)
        self._rng = random.Random(self.seed * 1_000_003 + self.rank)
        self._in_transport = 0
        self._costs = self.profile.costs()
        # Charges come from the thread that drives this node's messages: a row pool's overlapped critic epoch
        # (another core) would otherwise land before or after a send by the host's scheduling.
        self._owner = threading.get_ident()

    def charge(self, section: str) -> None:
        """compute: model — a compute section ended: its fixed cost × rows × slowdown (nothing when measured)."""
        if self._costs is None or threading.get_ident() != self._owner:
            return
        cost = self._costs.get(section, 0.0)
        if cost:
            spent = cost * self.rows.get(section, 1) * self._factor
            self.now += spent
            self.tally.compute += spent

    def snapshot(self) -> dict[str, float]:
        self.advance()
        return {"clock": self.now, "compute": self.tally.compute, "wire": self.tally.wire,
                "waiting": self.tally.waiting}

    def begin_iteration(self) -> None:
        """Draw whether this rank straggles this iteration (its own stream: placement-independent)."""
        self.advance()
        p = self.profile
        straggle = p.straggler_p > 0 and self._rng.random() < p.straggler_p
        self._factor = p.slowdown(self.rank) * (p.straggler_slowdown if straggle else 1.0)

    def advance(self) -> float:
        """Charge the CPU time used since the last call as compute (compute: model — nothing: `charge` does);
        returns the clock."""
        cpu = self.cpu()
        spent = 0.0 if self._in_transport or self._costs is not None else max(cpu - self._cpu_mark, 0.0) * self._factor
        self._cpu_mark = cpu
        self.now += spent
        self.tally.compute += spent
        return self.now

    @contextmanager
    def transport(self):
        """Inside a communication call: the CPU this process spends there (posting messages and their stamps,
        gloo's copies and reductions over this host's loopback, joining clocks) is not the node's compute — the
        profile's α + bytes/β prices the transfer. Counted as compute, it would run concurrently with the
        simulated wire and hide it (10 ranks on ethernet: two thirds of the communication vanished)."""
        self.advance()
        self._in_transport += 1
        try:
            yield
        finally:
            self.advance()
            self._in_transport -= 1

    def _jitter(self) -> float:
        return self._rng.random() * self.profile.jitter_s if self.profile.jitter_s else 0.0

    def send(self, nbytes: float) -> tuple[float, float]:
        """Post a message: (departure, arrival) on the simulated timeline. It waits for the messages already
        queued on this node's link, occupies it for bytes/β, and arrives α (+ jitter) after leaving the link."""
        self.advance()
        depart = max(self.now, self.link_free)
        self.link_free = depart + self.profile.wire_s(nbytes)
        return depart, self.link_free + self.profile.latency_s + self._jitter()

    def receive(self, depart: float, arrival: float) -> None:
        """Complete a receive of a message stamped (departure, arrival): the time until the sender even started
        is waiting for a slower peer, the rest is the wire."""
        self.complete(arrival, ready=depart)

    def complete(self, done: float, ready: float | None = None) -> None:
        """Block until `done` on the simulated timeline; the part before `ready` (the peer was not there yet)
        is waiting, the rest is communication."""
        self.advance()
        if done <= self.now:
            return
        ready = self.now if ready is None else min(max(ready, self.now), done)
        self.tally.waiting += ready - self.now
        self.tally.wire += done - ready
        self.now = done

    def collective(self, latest_start: float, cost: float) -> None:
        """A collective joined by every rank: it starts when the last participant joins (latest_start, from all
        ranks' clocks at posting) and takes `cost` from there."""
        self.complete(latest_start + cost, ready=latest_start)


class Emulator:
    """`net.mode: emulate`: the same profile as real waits, so the host wall-clock shows the network too.
    Processes on one host share CLOCK_MONOTONIC, so the sender's host time at sending is comparable."""

    def __init__(self, profile: NetProfile):
        self.profile = profile
        self.link_free = 0.0

    def send(self, nbytes: float) -> float:
        """Host time at which the message may be seen by its receiver."""
        depart = max(time.monotonic(), self.link_free)
        self.link_free = depart + self.profile.wire_s(nbytes)
        return self.link_free + self.profile.latency_s

    @staticmethod
    def hold_until(host_time: float) -> None:
        delay = host_time - time.monotonic()
        if delay > 0:
            time.sleep(delay)


def clock_delta(now: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Simulated seconds between two NodeClock.snapshot()s: the iteration time and its split."""
    return {("seconds" if k == "clock" else k): round(now[k] - before[k], 9) for k in now}


def format_clock_table(profile: NetProfile, per_rank: list[dict[str, float]], iterations: int,
                       unreliable: bool = False) -> str:
    """The simulated cluster beside the host's table: per rank, seconds per iteration split into compute, wire
    and waiting for slower peers, and the share of communication (wire + waiting). per_rank: clock_delta sums.
    unreliable: a host ran more threads than cores (cores.py), so CPU time overstated its compute."""
    p = profile
    head = (f"simulated cluster, profile '{p.name}' (α {p.latency_s * 1e6:.0f} µs, β {p.bandwidth_bit_s / 1e9:g} Gbit/s"
            f"{', jitter ' + format(p.jitter_s * 1e3, 'g') + ' ms' if p.jitter_s else ''}; mode {p.mode}): "
            f"seconds per iteration over {iterations} iterations")
    cols = ("compute", "wire", "waiting")
    lines = [head, f"{'':<10}" + "".join(f"{c:>12}" for c in cols) + f"{'comm share':>12}{'iteration':>12}",]
    per_it = max(iterations, 1)
    for rank, snap in enumerate(per_rank):
        total = snap["seconds"]
        share = (snap["wire"] + snap["waiting"]) / total if total else 0.0
        lines.append(f"{'rank ' + str(rank):<10}" + "".join(f"{snap[c] / per_it:>11.4f}s" for c in cols)
                     + f"{100 * share:>11.0f}%{total / per_it:>11.4f}s")
    if unreliable:
        lines.append("UNRELIABLE: a host ran more intra-op threads than it has cores (the warning above): its "
                     "compute includes the threads' contention")
    return "\n".join(lines)
