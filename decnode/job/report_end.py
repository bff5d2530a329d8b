"""The end of a run, once its last checkpoint and models.pt are written (trainer.py): the final evaluation of the
averaged model (eval.json), then every rank's timing, memory, CPU time, simulated clock and trace gathered on rank 0,
written (timing.json, trace.json) and said on the console.
"""

from __future__ import annotations

import json
import resource
from pathlib import Path

from ..net.profile import format_clock_table
from ..comm.wire import job_links
from ..timing import Section
from .trace import write_trace


def finish(trainer, logger, run_dir: Path, start: int, stopped: bool, sim_total: dict, trace,
           oversubscribed: list[str]) -> dict:
    """Every rank calls this (it evaluates and gathers); rank 0 (`logger`) writes and prints. `start`: the
    iteration this process began at; `sim_total`: its simulated seconds by kind; `trace`: its recorded timeline;
    `oversubscribed`: the warnings cores.py gave (the simulated table is then marked unreliable). The summary."""
    fabric, rec = trainer.fabric, trainer.rec
    summary = {"iterations": trainer.iteration, "env_steps": trainer.env_steps, "stopped": stopped,
               "signal": trainer.stop.signum,
               "final_eval_reward": trainer.last_eval, "n_agents": trainer.n, "processes": fabric.world}
    if not stopped:  # the paper's headline: the averaged model on the train and the perturbed test env
        with rec.section(Section.EVAL):
            summary["generalisation"] = trainer.evaluate_train_and_test()
        if trainer.coordinator:
            with trainer.writing("eval.json"):
                (Path(run_dir) / "eval.json").write_text(json.dumps(
                    {"run_dir": str(run_dir), "iteration": trainer.iteration,
                     "modes": {"average": summary["generalisation"]}}, indent=1))
    # Peak resident memory of every process (ru_maxrss is in KiB on Linux): what a job of this size needs.
    # CPU seconds (user + system, all threads) say how much work a rank did, where wall-clock also counts waiting.
    usage = resource.getrusage(resource.RUSAGE_SELF)
    reports = fabric.gather_objects((rec.snapshot(), usage.ru_maxrss / 1024, sim_total, trace,
                                     usage.ru_utime + usage.ru_stime, fabric.wire.report()))
    if logger is not None:
        _record(trainer, logger, run_dir, start, summary, reports, trace is not None, oversubscribed)
    return summary


def _record(trainer, logger, run_dir, start, summary, reports, traced, oversubscribed) -> None:
    """Rank 0: timing.json (through the logger) and trace.json, then the console's end-of-run lines."""
    fabric, clock = trainer.fabric, trainer.fabric.link.clock
    timing, memory = [r[0] for r in reports], [round(r[1], 1) for r in reports]
    summary["peak_rss_mb"] = memory
    summary["cpu_seconds"] = [round(r[4], 2) for r in reports]
    summary["wire"] = job_links([r[5] for r in reports])  # bytes per link and stream (comm/wire.py)
    if clock is not None:
        summary["simulated"] = {"profile": vars(fabric.link.profile), "ranks": [r[2] for r in reports]}
    if traced:
        with trainer.writing("trace.json"):
            write_trace(Path(run_dir) / "trace.json", [r[3] for r in reports], fabric.link.profile.name if clock else None)
    print(logger.finish(timing, summary), flush=True)  # timing.json holds the summary as it is here
    if clock is not None:
        summary["simulated"]["unreliable"] = oversubscribed
        print(format_clock_table(fabric.link.profile, summary["simulated"]["ranks"], trainer.iteration - start,
                                 unreliable=bool(oversubscribed)), flush=True)
    if fabric.device.type == "cpu":
        print(f"peak memory per process: rank 0 {memory[0]:.0f} MB, others up to {max(memory[1:], default=0):.0f} "
              f"MB; sum over processes {sum(memory):.0f} MB (an upper bound on the job's peak)", flush=True)
    else:  # the device threads share one process
        threads = f"{fabric.world} device thread" + ("s" if fabric.world > 1 else "")
        print(f"peak memory of the process holding the {threads}: {memory[0]:.0f} MB", flush=True)
    if "generalisation" in summary:
        g = summary["generalisation"]
        print(f"averaged model, deterministic: train {g['train']['return']:.3f} ({g['train']['episodes']} episodes)"
              f"  test {g['test']['return']:.3f} ({g['test']['episodes']} episodes)  gap {g['gap']:.3f}", flush=True)
    if summary["stopped"]:
        print(f"stopped at iteration {trainer.iteration}; continue with --resume {run_dir}", flush=True)
