"""What torch's elastic agent (ours or torchrun's) gives a worker: which attempt it is, and a fresh namespace in
the agent's store for each attempt.

The agent keeps one TCP store for the whole job, so after a restart the keys the dead attempt's process group
left there (every rank's address) are still in it: the new workers would read them and connect to dead ports.
"""

from __future__ import annotations

import os
from datetime import timedelta


def attempt() -> int:
    """0 for the first attempt of a job, n after the n-th restart (0 outside an elastic agent)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def max_restarts() -> int:
    """How many restarts the agent allows this job (0 outside an elastic agent)."""
    return int(os.environ.get("TORCHELASTIC_MAX_RESTARTS", "0") or 0)


def group_store(timeout: timedelta) -> dict:
    """Keyword arguments for init_process_group: the timeout, and this attempt's own prefix in the agent's store
    (without an agent store to share, env:// as before)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {"timeout": timeout}
    import torch.distributed as dist

    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          int(os.environ["WORLD_SIZE"]), is_master=False, timeout=timeout)
    return {"timeout": timeout, "store": dist.PrefixStore(f"decnode/attempt_{attempt()}", store),
            "rank": int(os.environ["RANK"]), "world_size": int(os.environ["WORLD_SIZE"])}
