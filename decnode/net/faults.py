"""Injected failures (config `faults:`), to check that every one ends in a correct recovery or a named error.

    faults:
      - {kind: kill, rank: 2, iteration: 5}                  # rank 2 SIGKILLs itself as iteration 5 starts
      - {kind: stall, rank: 1, iteration: 3, seconds: 6}     # rank 1 sleeps 6 s as iteration 3 starts
      - {kind: drop, link: [0, 1], iteration: 4}             # messages 0 → 1 are not sent from iteration 4 on
      - {kind: delay, link: [1, 2], iteration: 2, seconds: 0.5}   # 1 → 2 arrive 0.5 s late from iteration 2 on
      - {kind: link_down, link: [0, 1], iteration: 2, seconds: 3} # with --net: 0 → 1 down for 3 simulated seconds

Each kind is an entry of FAULT_KINDS: the keys it takes, what it refuses beyond their common checks, and what it
does when its iteration starts — once (kill, stall), or from then on to every message of its link (an `Effect`:
drop, delay, link_down). A new kind is one class here plus one line in FAULT_KINDS.

Links are between ranks and must carry messages: a gossip edge of the kNN graph between the two ranks' agents, or
rank 0's per-step exchange with a rank. Faults fire only in a job's first attempt (TORCHELASTIC_RESTART_COUNT
absent or 0), so that an automatically restarted job recovers; a --resume runs only the faults given again.
The rank's Link (link.py) calls `at_iteration` once per iteration, `shift` and `drops` when sending, `hold` after
receiving and `explain` when a receive times out.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time

from ..config import Config, ConfigError
from ..elastic import attempt
from ..registry import Registry
from ..extensions import combiner, job_graph, topology_label
from .profile import load_profile
from ..topology import block_plan


class Effect:
    """What a fired link fault does from then on to every message of its link (src, dst); each hook is asked
    only for that link's messages. The default does nothing."""

    def __init__(self, entry: dict):
        self.entry, self.link = entry, tuple(entry["link"])

    def drops(self) -> bool:
        """Whether the sender skips the message (its receiver then times out)."""
        return False

    def shift(self, depart: float, arrive: float, host: float) -> tuple[float, float, float]:
        """The sender's stamp of a message: departure and arrival on the simulated clock, host arrival (emulate)."""
        return depart, arrive, host

    def hold(self, sent_wall: float) -> None:
        """On the receiver, after the message arrived really: hold it (sent_wall: the sender's time.time())."""

    def explain(self) -> str | None:
        """Why a wait may time out because of this fault, or None."""
        return None


class FaultKind:
    """One kind of fault: `keys` an entry takes (checked in `validate` by name: rank, iteration, seconds, link),
    `check` what the kind refuses beyond them, `start` what it does as its iteration starts on a rank."""

    keys: tuple[str, ...] = ()

    def check(self, entry: dict, cfg: Config, where: str) -> None:
        """Refuse (ConfigError, one line starting with `where`) an entry this kind cannot honour."""

    def start(self, entry: dict, link) -> Effect | None:
        """Fire on this rank's Link (link.rank, link.clock); an Effect if the fault lasts on a link."""
        return None

    def phrase(self, entry: dict) -> str:
        """The entry's amount in words, after who it strikes (describe)."""
        return f" for {entry['seconds']:g} s" if "seconds" in entry else ""


def _announce(entry: dict, rank: int, what: str) -> None:
    print(f"\ndecnode: faults[{entry['index']}]: rank {rank} {what} as iteration {entry['iteration']} starts",
          file=sys.stderr, flush=True)


class Kill(FaultKind):
    keys = ("rank", "iteration")

    def start(self, entry, link):
        if entry["rank"] == link.rank:
            _announce(entry, link.rank, "kills itself (SIGKILL)")
            os.kill(os.getpid(), signal.SIGKILL)


class Stall(FaultKind):
    keys = ("rank", "iteration", "seconds")

    def start(self, entry, link):
        if entry["rank"] == link.rank:
            _announce(entry, link.rank, f"stalls for {entry['seconds']:g} s")
            time.sleep(entry["seconds"])


class Dropped(Effect):
    def drops(self):
        return True

    def explain(self):
        f = self.entry
        return f"the faults config drops link {f['link'][0]}→{f['link'][1]} from iteration {f['iteration']} " \
               f"(faults[{f['index']}])"


class Drop(FaultKind):
    keys = ("link", "iteration")

    def start(self, entry, link):
        return Dropped(entry)


class Delayed(Effect):
    def hold(self, sent_wall):
        """A delayed link: the message is seen `seconds` after it was sent."""
        delay = self.entry["seconds"]
        if delay:
            wait = sent_wall + delay - time.time()
            if wait > 0:
                time.sleep(wait)


class Delay(FaultKind):
    keys = ("link", "iteration", "seconds")

    def check(self, entry, cfg, where):
        if entry["seconds"] >= cfg.run.timeout_s:
            raise ConfigError(f"{where}: a delay of {entry['seconds']:g} s is not below run.timeout_s="
                              f"{cfg.run.timeout_s:g} (drop the link instead)")

    def start(self, entry, link):
        return Delayed(entry)

    def phrase(self, entry):
        return f" by {entry['seconds']:g} s"


class Down(Effect):
    def __init__(self, entry: dict, start: float):
        super().__init__(entry)
        self.window = (start, start + entry["seconds"])  # on the sender's simulated clock

    def shift(self, depart, arrive, host):
        """A message that would leave while its link is down leaves when it is up again (simulated clock; with
        net.mode emulate also on the host's, through the stamp's host arrival)."""
        if not self.window[0] <= depart < self.window[1]:
            return depart, arrive, host
        shift = self.window[1] - depart
        return depart + shift, arrive + shift, host + shift if host else host


class LinkDown(FaultKind):
    keys = ("link", "iteration", "seconds")

    def check(self, entry, cfg, where):
        if not load_profile(cfg.net.profile).active:
            raise ConfigError(f"{where}: link_down needs a network profile (--net): it delays messages on the "
                              "simulated clock")

    def start(self, entry, link):
        if entry["link"][0] == link.rank and link.clock is not None:
            return Down(entry, link.clock.advance())


# The registry: a kind's name in a config → what it is. Anything that asks about a kind asks its entry.
FAULT_KINDS: Registry[FaultKind] = Registry("fault kind")
for _name, _kind in (("kill", Kill()), ("stall", Stall()), ("drop", Drop()), ("delay", Delay()),
                     ("link_down", LinkDown())):
    FAULT_KINDS.register(_name, _kind)


def _links(cfg: Config, world: int) -> set[tuple[int, int]]:
    """(src, dst) rank pairs that carry point-to-point messages in this job."""
    links = set()
    if cfg.run.exchange == "p2p":
        links |= {(0, r) for r in range(1, world)} | {(r, 0) for r in range(1, world)}
    if combiner(cfg.algo.name).gossips and world > 1:
        for P in job_graph(cfg).phases:  # a time-varying graph: a link of any round
            for dst in range(world):
                links |= {(src, dst) for src in block_plan(P, world, dst).recv}
    return links


def describe(entry: dict) -> str:
    """One fault in words, for the list of what a resume changes."""
    kind, it = FAULT_KINDS.find(entry.get("kind"), FaultKind()), entry.get("iteration")
    who = f"link {entry['link'][0]}→{entry['link'][1]}" if "link" in entry else f"rank {entry.get('rank')}"
    return f"{entry.get('kind')} {who}{kind.phrase(entry)} at iteration {it}"


def validate(cfg: Config, world: int, done: int = 0) -> list[dict]:
    """Every entry of cfg.faults checked against the job (`done`: the iterations a resumed run has behind it);
    ConfigError (one line) naming the entry otherwise — in particular for a fault that could never fire."""
    out = []
    links = None
    last = min(cfg.train.iterations, cfg.run.stop_after or cfg.train.iterations)
    for i, entry in enumerate(cfg.faults):
        where = f"faults[{i}]"
        name = entry.get("kind")
        kind = FAULT_KINDS.find(name)
        if kind is None:
            raise ConfigError(f"{where}: unknown kind {name!r} (known: {', '.join(FAULT_KINDS)})")
        need = set(kind.keys)
        unknown = sorted(set(entry) - need - {"kind"})
        if unknown:
            raise ConfigError(f"{where}: {name} takes {', '.join(kind.keys)}, not '{unknown[0]}'")
        missing = [k for k in kind.keys if k not in entry]
        if missing:
            raise ConfigError(f"{where}: {name} needs {', '.join(missing)}")
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
                                  f"the graph ({topology_label(vars(cfg.algo))}, {world} processes) nor rank 0's exchange with a rank")
        kind.check(entry, cfg, where)
        out.append({**entry, "index": i})
    return out


def make_faults(cfg: Config, rank: int, world: int) -> "Faults | None":
    """This rank's Faults, or None when there are none to inject (then the link pays nothing)."""
    entries = validate(cfg, world) if cfg.faults and attempt() == 0 else []
    return Faults(entries, rank) if entries else None


class Faults:
    """One rank's validated entries, and the effects of those that fired on a link."""

    def __init__(self, entries: list[dict], rank: int):
        self.entries, self.rank = entries, rank
        # (kind, src, dst) -> the effect of the latest such fault that fired on that link, in order of first firing
        self._effects: dict[tuple, Effect] = {}

    def at_iteration(self, iteration: int, link) -> None:
        """Fire the entries of this iteration, in the config's order, on this rank's Link."""
        for f in self.entries:
            if f["iteration"] == iteration:
                effect = FAULT_KINDS[f["kind"]].start(f, link)
                if effect is not None:
                    self._effects[(f["kind"], *effect.link)] = effect

    def _on(self, src: int, dst: int) -> list[Effect]:
        return [e for e in self._effects.values() if e.link == (src, dst)]

    def drops(self, src: int, dst: int) -> bool:
        return any(e.drops() for e in self._on(src, dst))

    def shift(self, src: int, dst: int, depart: float, arrive: float, host: float) -> tuple[float, float, float]:
        for e in self._on(src, dst):
            depart, arrive, host = e.shift(depart, arrive, host)
        return depart, arrive, host

    def hold(self, src: int, dst: int, sent_wall: float) -> None:
        for e in self._on(src, dst):
            e.hold(sent_wall)

    def explain(self, src: int | None, dst: int) -> str | None:
        """Why a wait on src timed out, if the faults config is the reason: a fault on that link itself, or one
        elsewhere that the wait may hang on (rank 0 waits for the actions of a rank whose observations it
        dropped)."""
        here = (e.explain() for e in self._on(src, dst))
        anywhere = (e.explain() for e in self._effects.values())
        return next((s for s in here if s), None) or next((s for s in anywhere if s), None)
