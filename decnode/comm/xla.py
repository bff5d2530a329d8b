"""The Fabric on XLA devices: one device holds one block of agents, each device is a thread of one process.

torch_xla runs a host's devices (4 CPU devices with PJRT_DEVICE=CPU CPU_NUM_DEVICES=4, or a TPU host's chips) as
one thread each under `torch_xla.launch`. Agents' tensors live on the device as lazy tensors: a call records
its collective in the step's graph and `sync()` runs the graph. DecPG's gossip is one `xm.collective_permute`
per device shift of the kNN graph (topology.shift_plan) followed by the local weighted sum — P @ Θ, as the gloo
gossip computes it; PS's mean is one `xm.all_reduce`. What the coordinator (device 0's thread, which steps
the environments) exchanges with the agents goes through host memory that the threads share.

Measured on CPU devices (torch_xla 2.9.0), and why the code is shaped so:
- every thread must trace the same graph, so per-device values (the rows, the weights) enter as data, never
  as Python constants, and `sync()` holds one lock so the threads reuse one compiled program; `sync()` and
  everything that reads a device value to the host (to_coordinator, gather_rows, broadcast) are collective
  calls: every device thread makes them, in the same order;
- ranks come from `xr.global_ordinal()` (torch.distributed's rank is 0 in every thread);
- a gloo group made from the device threads hangs, so the host side uses a threading barrier instead;
- the environment needs XLA_ENABLE_PARAM_ALIASING=0 and gets XLA_THREAD_POOL_SIZE=64 on a 2-core host (the
  Makefile's test-xla target says what deadlocked without them).
torch_xla is imported inside functions: decnode imports in a venv without it.
"""

from __future__ import annotations

import threading

import torch

from .api import AgentBlocks
from .transport import P2P_STREAMS, CommError
from .wire import WireCount
from ..net.link import Link
from ..timing import Recorder, Section
from ..topology import Graph, build_graph, shift_plan, shift_refusal

_SYNC_LOCK = threading.Lock()  # one thread at a time traces and launches the step's graph
_BOARDS: dict[int, "HostBoard"] = {}
_BOARDS_LOCK = threading.Lock()


def available() -> bool:
    import importlib.util
    return importlib.util.find_spec("torch_xla") is not None


class HostBoard:
    """Host memory the device threads of one process share: a slot per name, and a barrier with a timeout."""

    def __init__(self, world: int, timeout_s: float):
        self.world, self.timeout_s = world, timeout_s
        self.barrier = threading.Barrier(world, timeout=timeout_s)
        self.slots: dict[str, object] = {}
        self.failure: str | None = None  # the first device thread's error, said by every thread that waited on it

    def fail(self, rank: int, err: BaseException) -> None:
        """A device thread gives up: the others stop at their next wait, naming it, instead of timing out."""
        if self.failure is None:
            self.failure = f"device thread {rank} failed: {str(err) or type(err).__name__}"
        self.barrier.abort()

    def wait(self, rank: int, what: str, context: str) -> None:
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            if self.failure is not None:
                raise CommError(f"rank {rank}: stopped in {what} during {context}: {self.failure}") from None
            raise CommError(f"rank {rank}: {what} timed out after {self.timeout_s:.0f}s during {context} "
                            "(a device thread stopped or is stuck)") from None


def _board(world: int, timeout_s: float) -> HostBoard:
    """The process's board for `world` threads; a new one after a broken barrier (a failed earlier launch)."""
    with _BOARDS_LOCK:
        board = _BOARDS.get(world)
        if board is None or board.barrier.broken:
            board = _BOARDS[world] = HostBoard(world, timeout_s)
        return board


class XlaPending:
    """A recorded collective: `wait()` returns its lazy result (on the device; `sync()` computes it)."""

    def __init__(self, out: torch.Tensor):
        self._out = out

    def wait(self) -> torch.Tensor:
        return self._out


class XlaFabric(AgentBlocks):
    """The Fabric protocol (api.py: gossip, allreduce_mean, to_agents/to_coordinator, the collectives) on XLA devices.
    Call it from inside a device thread of `torch_xla.launch`; agents' rows [a, D] are tensors on `device`.

    `host`: where torch_xla runs one process per device (a TPU VM's chips), the host side (the coordinator's
    exchange, gathers, broadcasts, the statistics' sums) goes over a gloo comm.Fabric of those processes instead
    of the shared memory of threads. Written for TPU VMs and never run: CPU devices cannot be split over processes
    (each process then sees a world of one), and there is no TPU here."""

    def __init__(self, n_agents: int, graph: Graph | int, timeout_s: float = 300.0, recorder: Recorder | None = None,
                 host=None):
        import torch_xla
        import torch_xla.core.xla_model as xm
        import torch_xla.runtime as xr
        self.rank, self.world = xr.global_ordinal(), xr.world_size()
        if n_agents % self.world:
            raise ValueError(f"{n_agents} agents cannot be split evenly over {self.world} XLA devices")
        self.device = torch_xla.device()
        self._real_device = xm.xla_real_devices([self.device])  # e.g. CPU:2: what wait_device_ops names
        self.host = host
        if xr.process_count() > 1 and (host is None or xr.addressable_runtime_device_count() != 1):
            raise ValueError(f"torch_xla runs {xr.process_count()} processes here: the XLA placement needs either "
                             "one process holding every device, or one device per process with a host fabric")
        self.recorder = host.recorder if host is not None else recorder or Recorder()
        self.distributed = self.world > 1
        self.context, self.iteration = "setup", -1
        self.link = Link()  # no simulated network and no faults on XLA devices (config.py refuses both)
        # the host fabric's count (its messages and collectives); the devices' own collectives are not counted
        self.wire = host.wire if host is not None else WireCount(self.rank, self.world, P2P_STREAMS,
                                                                                   self.recorder)
        self.n_agents = n_agents
        self.per_process = n_agents // self.world
        self.agents = self.rows_of(self.rank)
        self.graph = graph if isinstance(graph, Graph) else build_graph("knn", n_agents, k=graph)
        refused = shift_refusal(self.graph)
        if refused:
            raise ValueError(refused)
        self.P = self.graph.phases[0]
        self.plan = shift_plan(self.P, self.world)
        # Shift s: device q sends to q − s, so device r receives the rows of device r + s.
        self._pairs = [[[q, (q - s) % self.world] for q in range(self.world)] for s in self.plan.shifts]
        # None: the whole block goes (no gather in the graph)
        self._rows = [None if rows == list(range(self.per_process)) else
                      torch.tensor(rows, dtype=torch.long, device=self.device) for rows in self.plan.rows]
        self._weights: dict[torch.dtype, torch.Tensor] = {}
        self.board = _board(self.world if host is None else 1, timeout_s)  # the device threads of this process

    def begin_iteration(self, iteration: int) -> None:
        self.iteration, self.context = iteration, f"iteration {iteration}"

    def sync(self, name: str = Section.DEVICE) -> None:
        """Run this device's pending graph; every device thread calls it once per step (a collective call).
        Its time is booked under `name` (Section.DEVICE): launching the graph, then waiting for this device to
        finish it (`wait_device_ops` on this device only: the no-argument form waits on every device, and
        deadlocked here), so the timing table shows the device's compute and collectives, not tracing.

        The lock makes the threads trace and compile one after another, so all but the first reuse the first
        one's compiled program. The barrier after it keeps the steps in lockstep: a device's next sync waits
        for its previous graph, which waits in its collectives for every device, so a thread that ran ahead
        into step s+1 while holding the lock would keep a slower thread from ever launching step s (seen here).
        """
        import torch_xla
        import torch_xla.core.xla_model as xm
        with self.recorder.section(name):
            with _SYNC_LOCK:
                torch_xla.sync()
            xm.wait_device_ops(devices=self._real_device)
        self.board.wait(self.rank, "sync", self.context)

    # ---- DSGD mixing -----------------------------------------------------------------------------------------
    def gossip_start(self, x: torch.Tensor, name: str = Section.GOSSIP) -> XlaPending:
        """Record one mixing round of the local rows x [a, D] (on the device). The graph captures x's value
        now, so the caller may change x in place afterwards, as with the gloo fabric."""
        import torch_xla.core.xla_model as xm
        weights = self._weights.get(x.dtype)
        if weights is None:  # the same on every device (circulant P), so it may be data of one shared graph
            weights = self._weights[x.dtype] = torch.as_tensor(self.plan.weights, dtype=x.dtype).to(self.device)
        with self.recorder.section(name):  # tracing time only: the device runs it at sync()
            parts = [x]
            for pairs, rows in zip(self._pairs, self._rows):
                parts.append(xm.collective_permute(x if rows is None else torch.index_select(x, 0, rows), pairs))
            out = weights @ torch.cat(parts) if len(parts) > 1 else weights @ x
        nbytes = sum(len(r) for r in self.plan.rows) * x.shape[1] * x.element_size()
        self.recorder.count(name, nbytes=nbytes, messages=len(self._pairs))
        return XlaPending(out)

    # ---- parameter sharing and sums --------------------------------------------------------------------------
    def allreduce_sum_start(self, x: torch.Tensor, name: str = Section.ALLREDUCE,
                            scale: float = 1.0) -> XlaPending:
        """The sum over devices of x: on the devices for a device tensor (lazy), through host memory for a host
        tensor (the per-iteration statistics, in float64, which a TPU does not have)."""
        import torch_xla.core.xla_model as xm
        if x.device.type == "cpu":
            return XlaPending(self._host_sum(x, name) * scale)
        with self.recorder.section(name):
            out = xm.all_reduce(xm.REDUCE_SUM, x, scale=scale) if self.distributed else x * scale
        self.recorder.count(name, nbytes=x.numel() * x.element_size(), messages=1)
        return XlaPending(out)

    def allreduce_sum(self, x: torch.Tensor, name: str = Section.ALLREDUCE) -> torch.Tensor:
        return self.allreduce_sum_start(x, name).wait()

    # ---- host side: coordinator <-> agents, gathers, broadcasts ----------------------------------------------
    def to_host(self, x: torch.Tensor) -> torch.Tensor:
        """x on the host; for a device tensor a collective call (every device runs its pending graph, then this
        one copies its value out)."""
        if x.device.type == "cpu":
            return x
        self.sync()
        return x.cpu()

    def to_agents(self, full: torch.Tensor | None, like: torch.Tensor,
                  name: str = Section.STEP_EXCHANGE) -> torch.Tensor:
        """Device 0's thread gives each device its agents' slice of the host tensor full [n, ...]; returns the
        local slice copied into `like` (a local-sized tensor on the device, or on the host)."""
        if self.host is not None:
            return like.copy_(self.host.to_agents(full, torch.empty(like.shape, dtype=like.dtype), name))
        with self.recorder.section(name):
            if self.rank == 0:
                self.board.slots[name] = full
            self.board.wait(self.rank, name, self.context)
            rows = self.agents
            like.copy_(self.board.slots[name][rows.start: rows.stop])
            self.board.wait(self.rank, name, self.context)  # nobody publishes the next step's tensor before all read
        return like

    def to_coordinator(self, local: torch.Tensor, full: torch.Tensor | None,
                       name: str = Section.STEP_EXCHANGE) -> torch.Tensor | None:
        """Every device's rows local [a, ...] into device 0's host tensor full [n, ...] (None elsewhere)."""
        host = self.to_host(local)
        if self.host is not None:
            return self.host.to_coordinator(host, full, name)
        with self.recorder.section(name):
            if self.rank == 0:
                self.board.slots[name] = full
            self.board.wait(self.rank, name, self.context)
            rows = self.agents
            self.board.slots[name][rows.start: rows.stop].copy_(host)
            self.board.wait(self.rank, name, self.context)
        return full if self.rank == 0 else None

    def gather_rows(self, x: torch.Tensor, name: str = Section.GATHER) -> torch.Tensor | None:
        """Rows of every device stacked [world·len(x), ...] on the host of device 0 (None elsewhere)."""
        host = self.to_host(x)
        if self.host is not None:
            return self.host.gather_rows(host, name)
        with self.recorder.section(name):
            self.board.slots[f"{name}/{self.rank}"] = host
            self.board.wait(self.rank, name, self.context)
            out = torch.cat([self.board.slots[f"{name}/{r}"] for r in range(self.world)]) if self.rank == 0 else None
            self.board.wait(self.rank, name, self.context)
        return out

    def broadcast(self, x: torch.Tensor, src: int = 0, name: str = Section.BROADCAST) -> torch.Tensor:
        """x of device `src` copied into every device's x (host or device tensors)."""
        host = self.to_host(x)  # on every device: a sync is a collective call
        if self.host is not None:
            self.host.broadcast(host, src, name)  # in place; host is a copy when x lives on the device
            return x if host is x else x.copy_(host)
        with self.recorder.section(name):
            if self.rank == src:
                self.board.slots[name] = host
            self.board.wait(self.rank, name, self.context)
            if self.rank != src:
                x.copy_(self.board.slots[name])
            self.board.wait(self.rank, name, self.context)
        return x

    def _host_sum(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """Summed in rank order on every device, so every device gets the same bits."""
        if self.host is not None:
            return self.host.allreduce_sum(x, name).clone()
        parts = self._exchange_objects(x, name)
        out = parts[0].clone()
        for part in parts[1:]:
            out += part
        return out

    def _exchange_objects(self, obj, name: str) -> list:
        with self.recorder.section(name):
            self.board.slots[f"{name}/{self.rank}"] = obj
            self.board.wait(self.rank, name, self.context)
            out = [self.board.slots[f"{name}/{r}"] for r in range(self.world)]
            self.board.wait(self.rank, name, self.context)  # nobody overwrites a slot before all have read it
        return out

    def gather_objects(self, obj) -> list | None:
        """Small Python objects of every device on device 0 (end-of-run reports, checkpoints' rows)."""
        if self.host is not None:
            return self.host.gather_objects(obj)
        out = self._exchange_objects(obj, Section.GATHER)
        return out if self.rank == 0 else None

    def barrier(self, name: str = Section.WAIT) -> None:
        if self.host is not None:
            return self.host.barrier(name)
        with self.recorder.section(name):
            self.board.wait(self.rank, name, self.context)
