"""Injected failures (config `faults:`), to check that every one ends in a correct recovery or a named error.

    faults:
      - {kind: kill, rank: 2, iteration: 5}                  # rank 2 SIGKILLs itself as iteration 5 starts
      - {kind: stall, rank: 1, iteration: 3, seconds: 6}     # rank 1 sleeps 6 s as iteration 3 starts
      - {kind: drop, link: [0, 1], iteration: 4}             # messages 0 → 1 are not sent from iteration 4 on
      - {kind: delay, link: [1, 2], iteration: 2, seconds: 0.5}   # 1 → 2 arrive 0.5 s late from iteration 2 on
      - {kind: link_down, link: [0, 1], iteration: 2, seconds: 3} # with --net: 0 → 1 down for 3 simulated seconds

Links are between ranks and must carry messages: a gossip edge of the kNN graph between the two ranks' agents, or
rank 0's per-step exchange with a rank. Faults fire only in a job's first attempt (TORCHELASTIC_RESTART_COUNT
absent or 0), so that an automatically restarted job recovers; a --resume runs only the faults given again.
The trainer calls one hook per iteration (Fabric.begin_iteration → at_iteration); the fabric asks `drops`,
`link_down` when sending, `hold` after receiving and `explain` when a receive times out.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time

from ..config import Config, ConfigError
from ..elastic import attempt
from ..extensions import combiner
from .profile import load_profile
from ..topology import block_plan, mixing_matrix

KEYS = {"kill": ("rank", "iteration"), "stall": ("rank", "iteration", "seconds"), "drop": ("link", "iteration"),
        "delay": ("link", "iteration", "seconds"), "link_down": ("link", "iteration", "seconds")}


def _links(cfg: Config, world: int) -> set[tuple[int, int]]:
    """(src, dst) rank pairs that carry point-to-point messages in this job."""
    links = set()
    if cfg.run.exchange == "p2p":
        links |= {(0, r) for r in range(1, world)} | {(r, 0) for r in range(1, world)}
    if combiner(cfg.algo.name).gossips and world > 1:
        P = mixing_matrix(cfg.env.n_agents, cfg.algo.k)
        for dst in range(world):
            links |= {(src, dst) for src in block_plan(P, world, dst).recv}
    return links


def describe(entry: dict) -> str:
    """One fault in words, for the list of what a resume changes."""
    kind, it = entry.get("kind"), entry.get("iteration")
    who = f"link {entry['link'][0]}→{entry['link'][1]}" if "link" in entry else f"rank {entry.get('rank')}"
    seconds = f" for {entry['seconds']:g} s" if "seconds" in entry and kind != "delay" else ""
    delay = f" by {entry['seconds']:g} s" if kind == "delay" else ""
    return f"{kind} {who}{delay}{seconds} at iteration {it}"


def validate(cfg: Config, world: int, done: int = 0) -> list[dict]:
    """Every entry of cfg.faults checked against the job (`done`: the iterations a resumed run has behind it);
    ConfigError (one line) naming the entry otherwise — in particular for a fault that could never fire."""
    out = []
    links = None
    last = min(cfg.train.iterations, cfg.run.stop_after or cfg.train.iterations)
    for i, entry in enumerate(cfg.faults):
        where = f"faults[{i}]"
        kind = entry.get("kind")
        if kind not in KEYS:
            raise ConfigError(f"{where}: unknown kind {kind!r} (known: {', '.join(KEYS)})")
        need = set(KEYS[kind])
        unknown = sorted(set(entry) - need - {"kind"})
        if unknown:
            raise ConfigError(f"{where}: {kind} takes {', '.join(KEYS[kind])}, not '{unknown[0]}'")
        missing = [k for k in KEYS[kind] if k not in entry]
        if missing:
            raise ConfigError(f"{where}: {kind} needs {', '.join(missing)}")
        for key in ("rank", "iteration"):
            value = entry.get(key, 0)
            if key in need and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"{where}: {key} must be an integer, got {value!r}")
        if "seconds" in need:
            s = entry["seconds"]
            if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s) or s < 0:
                raise ConfigError(f"{where}: seconds must be a finite number ≥ 0, got {s!r}")
        it = entry["iteration"]
        if not 1 <= it <= cfg.train.iterations:
            raise ConfigError(f"{where}: iteration {it} is not in 1…{cfg.train.iterations} "
                              "(train.iterations): it would never fire")
        if it <= done:
            raise ConfigError(f"{where}: iteration {it} is already done (the run resumes after iteration {done}): it "
                              f"would never fire; name an iteration in {done + 1}…{cfg.train.iterations}")
        if it > last:  # a resume runs only the faults given again: this one would be lost
            raise ConfigError(f"{where}: iteration {it} is after run.stop_after={cfg.run.stop_after}, where this job "
                              f"stops: it would never fire; name an iteration in {done + 1}…{last}")
        if "rank" in need and not 0 <= entry["rank"] < world:
            raise ConfigError(f"{where}: rank {entry['rank']} is not in the job's ranks 0…{world - 1}")
        if "link" in need:
            link = entry["link"]
            if (not isinstance(link, list) or len(link) != 2 or
                    any(isinstance(r, bool) or not isinstance(r, int) for r in link)):
                raise ConfigError(f"{where}: link must be [sender rank, receiver rank], got {link!r}")
            links = _links(cfg, world) if links is None else links
            if tuple(link) not in links:
                raise ConfigError(f"{where}: link {link[0]}→{link[1]} carries no messages in this job: not an edge of "
                                  f"the kNN graph (k={cfg.algo.k}, {world} processes) nor rank 0's exchange with a rank")
        if kind == "delay" and entry["seconds"] >= cfg.run.timeout_s:
            raise ConfigError(f"{where}: a delay of {entry['seconds']:g} s is not below run.timeout_s="
                              f"{cfg.run.timeout_s:g} (drop the link instead)")
        if kind == "link_down" and not load_profile(cfg.net.profile).active:
            raise ConfigError(f"{where}: link_down needs a network profile (--net): it delays messages on the "
                              "simulated clock")
        out.append({**entry, "index": i})
    return out


def make_faults(cfg: Config, rank: int, world: int) -> "Faults | None":
    """This rank's Faults, or None when there are none to inject (then the fabric pays nothing)."""
    entries = validate(cfg, world) if cfg.faults and attempt() == 0 else []
    return Faults(entries, rank) if entries else None


class Faults:
    def __init__(self, entries: list[dict], rank: int):
        self.entries, self.rank = entries, rank
        self._dropped: dict[tuple, dict] = {}  # (src, dst) -> entry, from its iteration on
        self._delayed: dict[tuple, float] = {}
        self._down: dict[tuple, tuple] = {}  # (src, dst) -> (from, until) on the sender's simulated clock

    def at_iteration(self, fabric) -> None:
        it = fabric.iteration
        for f in self.entries:
            if f["iteration"] != it:
                continue
            kind = f["kind"]
            if kind in ("kill", "stall") and f["rank"] == self.rank:
                what = "kills itself (SIGKILL)" if kind == "kill" else f"stalls for {f['seconds']:g} s"
                print(f"\ndecnode: faults[{f['index']}]: rank {self.rank} {what} as iteration {it} starts",
                      file=sys.stderr, flush=True)
                if kind == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                time.sleep(f["seconds"])
            elif kind == "drop":
                self._dropped[tuple(f["link"])] = f
            elif kind == "delay":
                self._delayed[tuple(f["link"])] = f["seconds"]
            elif kind == "link_down" and f["link"][0] == self.rank and fabric.clock is not None:
                start = fabric.clock.advance()
                self._down[tuple(f["link"])] = (start, start + f["seconds"])

    def drops(self, src: int, dst: int) -> bool:
        return (src, dst) in self._dropped

    def explain(self, src: int | None, dst: int) -> str | None:
        """Why a wait on src timed out, if the faults config is the reason: the dropped link itself, or a dropped
        link elsewhere that the wait may hang on (rank 0 waits for the actions of a rank whose observations it
        dropped)."""
        f = self._dropped.get((src, dst)) or next(iter(self._dropped.values()), None)
        return None if f is None else (f"the faults config drops link {f['link'][0]}→{f['link'][1]} from iteration "
                                       f"{f['iteration']} (faults[{f['index']}])")

    def hold(self, src: int, dst: int, sent_wall: float) -> None:
        """A delayed link: the message is seen `seconds` after it was sent."""
        delay = self._delayed.get((src, dst))
        if delay:
            wait = sent_wall + delay - time.time()
            if wait > 0:
                time.sleep(wait)

    def link_down(self, src: int, dst: int, depart: float, arrive: float, host: float) -> tuple[float, float, float]:
        """A message that would leave while its link is down leaves when it is up again (simulated clock; with
        net.mode emulate also on the host's, through the stamp's host arrival)."""
        window = self._down.get((src, dst))
        if window is None or not window[0] <= depart < window[1]:
            return depart, arrive, host
        shift = window[1] - depart
        return depart + shift, arrive + shift, host + shift if host else host
