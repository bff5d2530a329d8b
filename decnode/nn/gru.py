"""The per-agent GRU recurrence as ONE autograd node, with its backward written out.

Autograd of the plain step loop records ~15 nodes per step and runs each step's small elementwise ops one by
one in both directions. Here the forward runs under no_grad and, while each step's values are in cache, stores
the step's local derivatives (step-major, in a buffer reused across calls); a backward step is then one
broadcast multiply (all gate gradients and the direct path at once), one baddbmm for ∂h_{t-1} and one that
accumulates ∂W_hh while the step's gradient is still hot. ∂W_ih, ∂b_ih and ∂x come from the caller's single
input-projection baddbmm through the returned ∂gi. Bulk passes over all T steps were tried and lost: this is
memory-bound, not dispatch-bound (README, "Speed").

Equations (nn.GRU's, gate order r, z, n), with hp = h_{t-1} zeroed where an episode starts:
    gh = hp W_hh + b_hh;  r, z = σ(gi_rz + gh_rz);  n = tanh(gi_n + r ⊙ gh_n);  h = n + z ⊙ (hp − n)
`gru_reference` is the step loop left to autograd; tests hold the others equal to it.

`gru_native` runs the same recurrence in C++ (gru_native.cpp, built by decnode.nn.native): one baddbmm and one fused,
vectorised pass per step instead of ~12 eager ops behind Python calls. It is what CPU placements run; this
file's Python kernel (`gru_sequence`) is the fallback where no C++ compiler is found.
"""

from __future__ import annotations

import threading

import torch
from torch import Tensor

from . import native


def gru_reference(gi: Tensor, h0: Tensor, keep: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    """gi [A, T, M, 3H] (= x W_ih + b_ih), h0 [A, M, H], keep [T, M, 1] (0 where reset) -> h per step [A, T, M, H]."""
    h = h0
    outs = []
    # unbind once: indexing gi[:, t] in the loop makes autograd add T zero-padded copies of gi's full gradient
    for t, gi_t in enumerate(gi.unbind(1)):
        h = h * keep[t]
        gh = torch.baddbmm(b_hh, h, w_hh)
        i_r, i_z, i_n = gi_t.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)  # b_hn sits inside the reset product, as in nn.GRU
        h = (1.0 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs, dim=1)


def _forward(gi: Tensor, h0: Tensor, keep: Tensor, w_hh: Tensor, b_hh: Tensor, resets: list[bool], coef: Tensor | None):
    """The recurrence under no_grad -> hs [A, T+1, M, H] (slot 0: h0 after its reset, slot t+1: h after step t).

    With `coef` [T, A, M, 6, H], also fills in each step's local derivatives of h while that step's values are
    still in cache (bulk passes over all T afterwards cost more than the whole step loop: memory bound):
    slots [r, z = ∂h/∂hp directly, ∂h/∂gh_n, ∂h/∂(pre-σ r), ∂h/∂(pre-σ z), ∂h/∂(pre-tanh n)]; r and z are
    the gates themselves, written there by the sigmoid (slot 0 is not needed by the backward)."""
    A, T, M, H3 = gi.shape
    H = H3 // 3
    hs = gi.new_empty(A, T + 1, M, H)
    h = torch.mul(h0, keep[0], out=hs[:, 0]) if resets[0] else hs[:, 0].copy_(h0)
    # per-step views made once, in C++ (slicing in the loop costs more Python than some of the ops)
    if coef is not None:
        slots = [coef[..., :2, :].flatten(3).unbind(0), coef[..., 3:5, :].unbind(0)]
        slots += [c.unbind(0) for c in coef[..., 2:, :].unbind(3)]
    steps = zip(gi[..., : 2 * H].unbind(1), gi[..., 2 * H :].unbind(1), hs[:, 1:].unbind(1),
                *(slots if coef is not None else []))
    one = gi.new_ones(())
    for t, (gi_rz, gi_n, h_out, *c) in enumerate(steps):
        hp = h * keep[t] if resets[t] and t > 0 else h  # (a multiply by ones is skipped: same value)
        gh = torch.baddbmm(b_hh, hp, w_hh)
        rz = torch.add(gi_rz, gh[..., : 2 * H], out=c[0] if c else None).sigmoid_()
        r, z, h_n = rz[..., :H], rz[..., H:], gh[..., 2 * H :]
        # tanh(a) = 2σ(2a) − 1: torch's CPU tanh is ~6x slower than its sigmoid (72 vs 12 µs a step here)
        n = torch.addcmul(gi_n, r, h_n).mul_(2.0).sigmoid_()
        n = torch.add(n, n).sub_(1.0)
        h = torch.lerp(n, hp, z, out=h_out)  # n + z (hp − n) = (1 − z) n + z hp
        if c:
            rz_pair, gh_n, pre_r, pre_z, pre_n = c[1:]
            dn = torch.addcmul(one, n, n, value=-1.0)  # 1 − n²
            dn = torch.addcmul(dn, z, dn, value=-1.0, out=pre_n)  # (1 − z)(1 − n²)
            torch.mul(dn, r, out=gh_n)
            torch.mul(dn, h_n, out=pre_r)
            torch.sub(hp, n, out=pre_z)
            rz_pair.mul_(torch.addcmul(rz, rz, rz, value=-1.0).view(A, M, 2, H))  # σ' = σ (1 − σ)
    return hs


# Saved-derivative buffers (10 MB at N = 10) handed back after each backward: a fresh one per forward is fresh
# pages from the OS, ~2500 page faults per forward+backward, which cost more than the step loop saved.
_free: dict[tuple, list[Tensor]] = {}
_free_lock = threading.Lock()  # an actor block's row blocks run in threads (actor.py)


def _take(shape: tuple, like: Tensor) -> Tensor:
    with _free_lock:
        pool = _free.get((shape, like.dtype, like.device))
        if pool:
            return pool.pop()
    return like.new_empty(shape)


def _give(buf: Tensor) -> None:
    with _free_lock:
        pool = _free.setdefault((tuple(buf.shape), buf.dtype, buf.device), [])
        if len(pool) < 2:  # (a graph never backpropagated just lets its buffer go)
            pool.append(buf)


class _GRUSequence(torch.autograd.Function):
    @staticmethod
    def forward(ctx, gi, h0, keep, w_hh, b_hh, resets):
        A, T, M, H3 = gi.shape
        # step-major, so that each step's block is contiguous: written once in the forward, read once in the backward
        coef = _take((T, A, M, 6, H3 // 3), gi)
        hs = _forward(gi, h0, keep, w_hh, b_hh, resets, coef)
        ctx.save_for_backward(keep, w_hh)
        ctx.hs, ctx.coef, ctx.resets = hs, coef, resets  # hs whole: the caller only sees hs[:, 1:]
        return hs[:, 1:]

    @staticmethod
    def backward(ctx, dhs):
        keep, w_hh = ctx.saved_tensors
        hs, coef, resets = ctx.hs, ctx.coef, ctx.resets
        if coef is None:
            raise RuntimeError("the GRU's saved derivatives went to an earlier backward: retain_graph is not supported")
        T, A, M, _, H = coef.shape  # (slot 0, r, only served the forward)
        w_nrz = torch.cat([w_hh[..., 2 * H :], w_hh[..., : 2 * H]], dim=-1).transpose(1, 2)  # rows n, r, z
        d_gi = dhs.new_empty(A, T, M, 3 * H)
        # ∂W_hh, ∂b_hh (columns n, r, z) accumulate step by step while each step's gradient is still in cache:
        # one bmm over all steps at the end reads everything back from memory and was slower in the whole net
        d_w = dhs.new_zeros(A, H, 3 * H)
        d_b = dhs.new_zeros(A, 1, 3 * H)
        carry = None
        for t in range(T - 1, -1, -1):
            dh = dhs[:, t] if carry is None else dhs[:, t] + carry
            # gradients of [hp (direct), gh_n, pre-σ r, pre-σ z, pre-tanh n]: gh's are slots 1:4, gi's 2:5
            g = torch.mul(dh.unsqueeze(-2), coef[t, :, :, 1:]).view(A, M, 5 * H)
            carry = torch.baddbmm(g[..., :H], g[..., H : 4 * H], w_nrz)  # ∂hp
            hp = hs[:, t] * keep[t] if resets[t] and t > 0 else hs[:, t]
            d_w.baddbmm_(hp.transpose(1, 2), g[..., H : 4 * H])
            d_b.add_(g[..., H : 4 * H].sum(1, keepdim=True))
            d_gi[:, t] = g[..., 2 * H :]
            if resets[t]:
                carry = carry * keep[t]  # nothing flows through a zeroed state
        _give(coef)
        ctx.coef = None
        d_w = torch.cat([d_w[..., H:], d_w[..., :H]], dim=-1) if ctx.needs_input_grad[3] else None
        d_b = torch.cat([d_b[..., H:], d_b[..., :H]], dim=-1) if ctx.needs_input_grad[4] else None
        d_h0 = carry if ctx.needs_input_grad[1] else None
        return d_gi, d_h0, None, d_w, d_b, None


def gru_sequence(gi: Tensor, h0: Tensor, keep: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    """Same contract as `gru_reference`, one autograd node when gradients are wanted."""
    resets = (keep == 0).any(dim=1).flatten().tolist()
    if torch.is_grad_enabled() and any(x.requires_grad for x in (gi, h0, w_hh, b_hh)):
        return _GRUSequence.apply(gi, h0, keep, w_hh, b_hh, resets)
    return _forward(gi, h0, keep, w_hh, b_hh, resets, None)[:, 1:]


def _native_forward(gi: Tensor, h0: Tensor, keep: Tensor, w_hh: Tensor, b_hh: Tensor, coef: Tensor):
    """gru_native.cpp's forward -> (h per step, the states entering each step (pooled), keep as [T, M]); it fills
    `coef` with each step's local derivatives unless coef is empty."""
    A, T, M, H3 = gi.shape
    hps, keep = _take((T, A, M, H3 // 3), gi), keep.reshape(T, M).contiguous()
    out = native.gru_ops().forward(gi.contiguous(), h0.contiguous(), keep, w_hh, b_hh, hps, coef)
    return out, hps, keep


class _NativeGRU(torch.autograd.Function):
    """gru_native.cpp's forward (which saves each step's local derivatives) and backward, as one autograd node."""

    @staticmethod
    def forward(ctx, gi, h0, keep, w_hh, b_hh):
        A, T, M, H3 = gi.shape
        coef = _take((T, A, M, 5, H3 // 3), gi)
        out, hps, keep = _native_forward(gi, h0, keep, w_hh, b_hh, coef)
        ctx.save_for_backward(keep, w_hh)
        ctx.buffers = (hps, coef)
        return out

    @staticmethod
    def backward(ctx, dout):
        if ctx.buffers is None:
            raise RuntimeError("the GRU's saved derivatives went to an earlier backward: retain_graph is not supported")
        keep, w_hh = ctx.saved_tensors
        hps, coef = ctx.buffers
        d_gi, d_h0, d_w, d_b = native.gru_ops().backward(dout, hps, coef, keep, w_hh)
        _give(hps)
        _give(coef)
        ctx.buffers = None
        return d_gi, d_h0 if ctx.needs_input_grad[1] else None, None, d_w, d_b


def gru_native(gi: Tensor, h0: Tensor, keep: Tensor, w_hh: Tensor, b_hh: Tensor) -> Tensor:
    """Same contract as `gru_reference`, in C++ (needs `native.gru_ops()`, i.e. a compiler on first use)."""
    if torch.is_grad_enabled() and any(x.requires_grad for x in (gi, h0, w_hh, b_hh)):
        return _NativeGRU.apply(gi, h0, keep, w_hh, b_hh)
    out, hps, _ = _native_forward(gi, h0, keep, w_hh, b_hh, gi.new_empty(0))
    _give(hps)
    return out


def recurrence(impl: str, device: torch.device):
    """The recurrence to run: "native" (C++, falling back to "kernel" where it cannot be built), "kernel" (this
    file's Python kernel) or "reference" (the step loop). Off the CPU (an XLA device's lazy graph) always the step
    loop: the kernels are CPU cache optimisations, and XLA fuses the loop itself."""
    if impl == "reference" or device.type != "cpu":
        return gru_reference
    if impl == "native" and native.gru_ops() is not None:
        return gru_native
    return gru_sequence
