"""Start n worker processes on this machine through torch's elastic launcher API (what torchrun uses).

We do not manage processes by hand: the elastic agent spawns the workers, watches them, and stops every
other worker when one dies. This module turns its outcome into one line a researcher can act on.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import metricsfile
from ..config import ConfigError
from .restart import PEER_LOST
from ..comm.watchdog import is_diagnosis

# Seconds the other workers of a failed job get to exit before SIGKILL. torch 2.13 gives them a fixed 30 s, twice
# over: torch.multiprocessing's ProcessContext.join (grace_period None: SIGTERM, 30 s, SIGKILL) when the agent polls a
# failed worker, and LocalElasticAgent._stop_workers (_shutdown() with its default). LaunchConfig.shutdown_timeout
# and torchrun's --shutdown_timeout apply only when the launcher gets a signal, where workers checkpoint first and
# need the time. A frozen worker (SIGSTOP) ignores SIGTERM: without this the job would end 30 s after the timeout.
FAILURE_GRACE_S = 1

# What torchrun's agent sets for every worker. MARKERS alone decide that we are meant to be one (MASTER_ADDR and
# MASTER_PORT are often set in a cluster's shell profile); once one of them is set, all of TORCHRUN_VARS must be.
MARKERS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID")
TORCHRUN_VARS = (*MARKERS, "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class WorkerEnv:
    rank: int
    world_size: int
    local_rank: int
    run_id: str


def torchrun_env(environ=None) -> WorkerEnv | None:
    """This process's place in a torchrun job, None when not started by torchrun; ConfigError (one line) for a
    partial or malformed set of torchrun's variables (e.g. RANK=1 left in the shell)."""
    environ = os.environ if environ is None else environ
    present = [v for v in MARKERS if v in environ]
    if not present:
        return None
    missing = [v for v in TORCHRUN_VARS if v not in environ]
    if missing:
        raise ConfigError(f"{', '.join(present)} set but not {', '.join(missing)}: a torchrun worker needs them all; "
                          f"start through torchrun, or unset {', '.join(present)}")
    values = {}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_PORT"):
        text = environ[name].strip()
        if not text.isdigit() or len(text) > 9:
            raise ConfigError(f"{name}={environ[name]!r} is not a non-negative integer (torchrun's variables are "
                              "malformed; start through torchrun, or unset them)")
        values[name] = int(text)
    rank, world, local, local_world = (values[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"))
    problems = [f"WORLD_SIZE={world} < 1" if world < 1 else "", f"RANK={rank} ≥ WORLD_SIZE={world}" if rank >= world else "",
                f"LOCAL_RANK={local} ≥ LOCAL_WORLD_SIZE={local_world}" if local >= local_world else "",
                f"LOCAL_WORLD_SIZE={local_world} > WORLD_SIZE={world}" if local_world > world else "",
                f"MASTER_PORT={values['MASTER_PORT']} is not a port" if not 0 < values["MASTER_PORT"] < 65536 else "",
                "TORCHELASTIC_RUN_ID is empty" if not environ["TORCHELASTIC_RUN_ID"].strip() else "",
                "MASTER_ADDR is empty" if not environ["MASTER_ADDR"].strip() else ""]
    problems = [p for p in problems if p]
    if problems:
        raise ConfigError(f"inconsistent torchrun variables: {'; '.join(problems)}")
    return WorkerEnv(rank, world, local, environ["TORCHELASTIC_RUN_ID"].strip())


def quiet_launcher_logs(verbose: bool) -> None:
    """torch's elastic agent logs a warning per worker on every stop (ten "Closing process … via signal SIGINT"
    lines above our one); our own messages say what happened, so show its logs only with --verbose."""
    # CRITICAL, not ERROR: a worker's death is an ERROR with a traceback, which our line (or restart line) says,
    # and formatting it imports ~2.5 s of torch modules just before that line.
    level = logging.INFO if verbose else logging.CRITICAL
    # torch gives each of its modules' loggers its own level when it imports them: set every one imported so far
    # (the caller imports the launcher first) and, through LOGLEVEL, the ones imported later.
    os.environ.setdefault("LOGLEVEL", logging.getLevelName(level))
    if not verbose:  # multiprocessing's tracker warns about the launcher's semaphore when a stop interrupts it
        os.environ.setdefault("PYTHONWARNINGS", "ignore:resource_tracker:UserWarning")
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher", "torch.multiprocessing")):
            logging.getLogger(name).setLevel(level)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def checkpoint_iteration(run_dir: Path) -> int | None:
    from .checkpoint import CheckpointError, load
    try:
        return load(run_dir)["iteration"]
    except CheckpointError:
        return None


def _signal(failure) -> str:
    name = failure.signal_name()
    return "" if name in ("", "<N/A>", "NA") else name


def root_cause(err):
    """(rank, failure) that most likely started it. A rank killed from outside (SIGKILL, SIGSEGV, …) makes its
    peers fail a moment later with a communication error, and either may be recorded first; SIGTERM is what
    the launcher itself sends while shutting the rest down."""
    failures = sorted(err.failures.items())
    for pick in (lambda f: _signal(f) not in ("", "SIGTERM"), lambda f: _signal(f) != ""):
        chosen = [(rank, f) for rank, f in failures if pick(f)]
        if chosen:
            return chosen[0]
    return err.get_first_failure()


def _fault_note(cfg: dict, rank: int) -> str:
    kills = [f for f in cfg.get("faults", []) if f.get("kind") == "kill" and f.get("rank") == rank]
    return f" (the faults config kills it at iteration {kills[0]['iteration']})" if kills else ""


class _ShortFailureGrace:
    """While a job runs, the workers left after a failure get FAILURE_GRACE_S, not 30 s (two of torch's methods
    wrapped, and restored afterwards; if a torch version lacks one, its own grace stays)."""

    def __enter__(self):
        from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent
        from torch.multiprocessing.spawn import ProcessContext

        join, stop = ProcessContext.__dict__.get("join"), LocalElasticAgent.__dict__.get("_stop_workers")
        self._saved = [(cls, name, f) for cls, name, f in ((ProcessContext, "join", join),
                                                          (LocalElasticAgent, "_stop_workers", stop)) if f]
        if join is not None:  # the grace is spent twice: before SIGTERM and before SIGKILL
            ProcessContext.join = lambda pc, timeout=None, grace_period=None: join(
                pc, timeout, FAILURE_GRACE_S / 2 if grace_period is None else grace_period)
        if stop is not None:
            LocalElasticAgent._stop_workers = lambda agent, group: agent._shutdown(timeout=FAILURE_GRACE_S)
        return self

    def __exit__(self, *exc):
        for cls, name, f in self._saved:
            setattr(cls, name, f)


def _last_line(text: str) -> None:
    """The job's closing line on stderr, from column 0: a worker killed mid-update may have left rank 0's progress
    bar on the line ("\\r" starts a line for readers and terminals alike; a terminal also clears the rest)."""
    print(f"\r{chr(27) + '[K' if sys.stderr.isatty() else ''}{text}", file=sys.stderr, flush=True)


# A survivor of a peer's death lingers this long before it exits. The agent polls its workers every monitor_interval
# (0.5 s) and records only the first failed one it finds, lowest rank first when several are down: a survivor that
# exited at once (rank 0's "Connection closed by peer") was named instead of the rank that was killed.
PEER_GRACE_S = 1.0


def _recorded(worker, *payload):
    """worker(*payload) under torch's @record, so an exception's words reach the one-line report below."""
    from torch.distributed.elastic.multiprocessing.errors import record

    try:
        return record(worker)(*payload)
    except Exception as err:
        if PEER_LOST.search(f"{type(err).__name__}: {str(err).strip()}"):
            time.sleep(PEER_GRACE_S)
        raise


def _recorded_error(failure) -> tuple[str, str]:
    """(exception type, its message's last line) that a worker recorded through @record; ("", "") if none."""
    message = failure.message
    kind = ""
    if isinstance(message, dict):  # recorded by the worker (torch's @record): "ErrorType: words"
        kind, _, message = str(message.get("message", "")).partition(": ")
    message = message.strip().splitlines()[-1] if isinstance(message, str) and message.strip() else ""
    if message.startswith("To enable traceback"):  # torch's placeholder when nothing was recorded
        message = ""
    return kind, message


def launch(n_procs: int, worker, payload: tuple, run_dir: Path, prog: str = "decnode-run",
           verbose: bool = False, max_restarts: int = 0) -> int:
    """Run worker(*payload) (a module-level function) on n_procs local processes; returns the CLI's exit code.

    prog names the command in the messages. Only decnode-run (training) checkpoints, so only its messages
    mention iterations and --resume; for other tools (decnode-eval, decnode-landscape) a stop is a failure.
    max_restarts: how often the agent starts every worker again after a failure (restart.py).
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    training = prog == "decnode-run"
    quiet_launcher_logs(verbose)
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=n_procs, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint=f"127.0.0.1:{_free_port()}", max_restarts=max_restarts,
                          monitor_interval=0.5, start_method="spawn")
    try:
        with _ShortFailureGrace():
            elastic_launch(config, _recorded)(worker, *payload)
        return 0
    except SignalException as err:
        name = signal.Signals(err.sigval).name
        if not training:
            print(f"{prog}: {name} received; stopped before finishing", file=sys.stderr, flush=True)
            return 1
        it = checkpoint_iteration(run_dir)
        print(f"{prog}: {name} received; checkpoint at iteration {it} in {run_dir}; "
              f"continue with --resume {run_dir}", file=sys.stderr, flush=True)
        return 0 if it is not None else 1
    except ChildFailedError as err:
        restarts = (" (no restart: --max-restarts 0)" if not max_restarts else
                    f", after {max_restarts} restart{'s' if max_restarts > 1 else ''} (--max-restarts {max_restarts})")
        restarts = restarts if training else ""
        for failure in err.failures.values():  # a full or read-only run directory: its line says it all
            kind, message = _recorded_error(failure)
            if kind == "RunDirWriteError":
                used = f" (after {max_restarts} restart{'s' if max_restarts > 1 else ''})" if max_restarts else ""
                _last_line(f"{prog}: error: {message}{used}")
                return 1
        rank, failure = root_cause(err)
        if failure.signal_name() not in ("", "<N/A>", "NA"):
            how = f"died ({failure.signal_name()}){_fault_note(payload[0], rank) if training else ''}"
        else:
            how = f"failed (exit code {failure.exitcode})"
        message = _recorded_error(failure)[1]
        if message.startswith("Signal "):  # torch's "Signal 9 (SIGKILL) received by PID …": said by "died (…)"
            message = ""
        # A timeout diagnosed by a worker (who everybody waited on, or the fault behind it) is the line to end with.
        diagnosed = [m for m in (_recorded_error(f)[1] for f in err.failures.values()) if is_diagnosis(m)]
        where = resume = ""
        if training:
            it, saved = metricsfile.last_iteration(run_dir), checkpoint_iteration(run_dir)
            where = f" during iteration {it + 1}" if it is not None else " during setup"
            resume = f"; last checkpoint: iteration {saved}, continue with --resume {run_dir}" if saved else ""
        what = (diagnosed[0] + restarts if diagnosed else
                f"rank {rank} {how}{where}{restarts}{': ' + message if message else ''}")
        _last_line(f"{prog}: error: {what}{resume}")
        return 1
