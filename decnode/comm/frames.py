"""The header every point-to-point message carries, and the persistent byte buffers it travels in.

gloo matches a receive by (peer, tag) alone, so a stale or reordered message on the same tag would be mixed in
silently. Each message therefore carries the iteration and stream it belongs to and its number among the messages
of its (sender, receiver, tag); the receiver refuses one that does not match, naming both. With a network profile
the header also holds the sender's simulated stamp (net/profile.py), so no second message is needed. Header and payload
travel as one uint8 buffer staged once per (peer, stream, direction, shape): no allocation per message.
"""

from __future__ import annotations

import torch

HEADER_BYTES = 64  # keeps the payload 64-byte aligned for every dtype
MAGIC = 0x64656E6F6465  # "denode": a buffer that is not a decnode frame at all
# int64 slots 0-3: magic, iteration (-1: setup) × 256 + tag, the job's id, sequence; float64 slots 4-7: the simulated
# stamp (departure, arrival, host arrival) and the sender's wall time at sending (delay faults hold from it).
INTS, STAMP, SENT = slice(0, 4), slice(4, 7), 7
TAGS = 256  # tags below this share a slot with the iteration


def pack(iteration: int, tag: int, job: int, sequence: int) -> tuple[int, int, int, int]:
    """The header's int64 slots."""
    return MAGIC, iteration * TAGS + tag, job, sequence


class Frame:
    """One staged message: `raw` is what gloo sends or receives, `payload` a view shaped like the data."""

    __slots__ = ("raw", "payload", "ints", "floats")

    def __init__(self, shape: tuple, dtype: torch.dtype):
        nbytes = torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size()
        self.raw = torch.zeros(HEADER_BYTES + nbytes, dtype=torch.uint8)
        self.payload = self.raw[HEADER_BYTES:].view(dtype).view(shape)
        self.ints = self.raw[:32].view(torch.int64).numpy()  # numpy views: setting a field costs ~a µs
        self.floats = self.raw[:HEADER_BYTES].view(torch.float64).numpy()


class Frames:
    """The persistent frames of one rank, keyed by (peer, tag, direction, shape, dtype, slot)."""

    def __init__(self):
        self._frames: dict[tuple, Frame] = {}

    def get(self, peer: int, tag: int, outgoing: bool, like: torch.Tensor, slot: int = 0) -> Frame:
        """`slot`: which of a ring of frames (bounded staleness keeps several rounds of a stream in flight)."""
        key = (peer, tag, outgoing, tuple(like.shape), like.dtype, slot)
        frame = self._frames.get(key)
        if frame is None:
            frame = self._frames[key] = Frame(tuple(like.shape), like.dtype)
        return frame


def mismatch(frame: Frame, iteration: int, tag: int, sequence: int, streams: tuple, job: int = 0) -> str | None:
    """Why a received frame is not the one expected, or None. `streams`: names by tag − 1 (collectives.P2P_STREAMS)."""
    magic, when_tag, got_job, got_seq = (int(v) for v in frame.ints[INTS])
    got_it, got_tag = divmod(when_tag, TAGS)

    def name(t):
        return streams[t - 1] if 1 <= t <= len(streams) else f"tag {t}"

    def when(it):
        return "setup" if it < 0 else f"iteration {it}"

    if magic != MAGIC:
        return "carried no decnode header (a foreign or corrupt message)"
    if got_job != job:  # gloo and the rendezvous store authenticate nobody: another job may reach these ports
        return (f"belongs to another job (job id {got_job:016x}; this job is {job:016x}): a stale job or a second "
                "job on the same address and ports reached this one")
    if got_it != iteration or got_tag != tag:
        return (f"carried {when(got_it)} (stream {name(got_tag)}), expected {when(iteration)} (stream {name(tag)}): "
                "a stale or reordered message")
    if got_seq != sequence:
        return (f"carried message #{got_seq} of its stream, expected #{sequence} (stream {name(tag)}): a reordered "
                "or lost message")
    return None
