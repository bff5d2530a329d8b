"""Per-agent batched recurrent actor/critic networks.

Every tensor has a leading agent axis A: a process holding a block of A agents runs them all in one
bmm, while each agent keeps its OWN parameters. `flatten_parameters` then puts a block's parameters
(and gradients) into one contiguous [A, D] tensor, so the trainer can gossip / all-reduce / SGD-step
rows without copies.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .gru import recurrence

MASKED_LOGIT = -1e10  # what on-policy MAPPO writes into unavailable actions' logits

# Our .grad views are strided by D across the agent axis by design; autograd still accumulates into
# them in place (checked in tests) but warns once that the layout is "non-contract". Silence just that.
warnings.filterwarnings("ignore", message="grad and param do not obey the gradient layout contract")


def _orthogonal_rows(weight: Tensor, gain: float, generator: torch.Generator | None, transpose: bool) -> None:
    """Orthogonal-init agent 0's matrix and copy it to every row, so θ₀ does not depend on A.

    The matrix is drawn in PyTorch's [out, in] layout (as nn.Linear / nn.GRU would) and transposed into
    our [in, out] bmm layout, so the init matches the usual single-agent recipe.
    """
    with torch.no_grad():
        shape = weight.shape[1:][::-1] if transpose else weight.shape[1:]
        w0 = torch.empty(shape, dtype=weight.dtype)
        nn.init.orthogonal_(w0, gain=gain, generator=generator)
        weight.copy_((w0.T if transpose else w0).unsqueeze(0).expand_as(weight))


class AgentLinear(nn.Module):
    """A linear layer per agent: y[a] = x[a] @ W[a] + b[a]."""

    def __init__(self, A: int, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(A, in_dim, out_dim))
        self.bias = nn.Parameter(torch.zeros(A, 1, out_dim))

    def reset_parameters(self, gain: float, generator: torch.Generator | None = None) -> None:
        _orthogonal_rows(self.weight, gain, generator, transpose=True)
        with torch.no_grad():
            self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """x [A, M, in] -> [A, M, out]."""
        return torch.baddbmm(self.bias, x, self.weight)


class AgentGRU(nn.Module):
    """Single-layer GRU with per-agent weights; exactly nn.GRU's equations (gate order r, z, n).

    Hand-written because nn.GRU has no agent axis. Weights are stored transposed for bmm:
    w_ih [A, in, 3H], w_hh [A, H, 3H], biases [A, 1, 3H]. The recurrence is one autograd node for every A (also
    A = 1, where it beats torch's own GRU kernel, so all placements run the same code): decnode.nn.gru's C++ kernel,
    or its Python kernel where no compiler is found. impl = "kernel" forces the Python kernel and "reference" the
    plain step loop left to autograd (tests compare them).
    """

    impl = "native"

    def __init__(self, A: int, in_dim: int, hidden: int) -> None:
        super().__init__()
        self.hidden = hidden
        self.w_ih = nn.Parameter(torch.empty(A, in_dim, 3 * hidden))
        self.w_hh = nn.Parameter(torch.empty(A, hidden, 3 * hidden))
        self.b_ih = nn.Parameter(torch.zeros(A, 1, 3 * hidden))
        self.b_hh = nn.Parameter(torch.zeros(A, 1, 3 * hidden))

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        # on-policy's RNNLayer: orthogonal (gain 1) on the whole [3H, in] / [3H, H] matrices, zero biases
        _orthogonal_rows(self.w_ih, 1.0, generator, transpose=True)
        _orthogonal_rows(self.w_hh, 1.0, generator, transpose=True)
        with torch.no_grad():
            self.b_ih.zero_()
            self.b_hh.zero_()

    def forward(self, x: Tensor, h0: Tensor, reset: Tensor) -> tuple[Tensor, Tensor]:
        """x [A, T, M, in], h0 [A, M, H], reset [T, M] bool -> (out [A, T, M, H], h_T [A, M, H]).

        reset[t, m] zeroes sequence m's hidden state before step t (an episode starts at t).
        """
        A, T, M, _ = x.shape
        H = self.hidden
        # input projections do not depend on h: one bmm for all T steps
        gi = torch.baddbmm(self.b_ih, x.reshape(A, T * M, -1), self.w_ih).view(A, T, M, 3 * H)
        keep = (~reset.bool()).to(x.dtype).unsqueeze(-1)  # [T, M, 1]
        hs = recurrence(self.impl, x.device)(gi, h0, keep, self.w_hh, self.b_hh)
        return hs, hs[:, -1]


class RecurrentNet(nn.Module):
    """MLP(3) -> GRU -> MLP(2) with per-agent weights; the actor (out_gain 0.01) or critic (1.0) body."""

    def __init__(
        self,
        A: int,
        in_dim: int,
        out_dim: int,
        hidden: int = 64,
        out_gain: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.A, self.hidden = A, hidden
        self.fc1 = AgentLinear(A, in_dim, hidden)
        self.fc2 = AgentLinear(A, hidden, hidden)
        self.fc3 = AgentLinear(A, hidden, hidden)
        self.gru = AgentGRU(A, hidden, hidden)
        self.fc4 = AgentLinear(A, hidden, hidden)
        self.out = AgentLinear(A, hidden, out_dim)
        # fixed draw order from one generator => identical θ₀ for an agent whatever A is
        relu_gain = math.sqrt(2.0)
        for layer in (self.fc1, self.fc2, self.fc3):
            layer.reset_parameters(relu_gain, generator)
        self.gru.reset_parameters(generator)
        self.fc4.reset_parameters(relu_gain, generator)
        self.out.reset_parameters(out_gain, generator)

    def initial_state(self, M: int) -> Tensor:
        return torch.zeros(self.A, M, self.hidden)

    def forward(self, x: Tensor, h0: Tensor, reset: Tensor, return_hiddens: bool = False):
        """x [A, T, M, in], h0 [A, M, H], reset [T, M] -> (out [A, T, M, out], h_T [A, M, H]).

        With return_hiddens, h_T is replaced by the GRU state after every step [A, T, M, H] (chunk starts).
        """
        A, T, M, _ = x.shape
        y = x.reshape(A, T * M, -1)
        y = F.relu(self.fc1(y))
        y = F.relu(self.fc2(y))
        y = F.relu(self.fc3(y))
        hs, h = self.gru(y.view(A, T, M, -1), h0, reset)
        y = F.relu(self.fc4(hs.reshape(A, T * M, -1)))
        return self.out(y).view(A, T, M, -1), (hs if return_hiddens else h)

    def step(self, x: Tensor, h: Tensor, reset: Tensor) -> tuple[Tensor, Tensor]:
        """One acting step: x [A, M, in], h [A, M, H], reset [M] -> (out [A, M, out], h)."""
        out, h = self.forward(x.unsqueeze(1), h, reset.unsqueeze(0))
        return out.squeeze(1), h


def flatten_parameters(module: nn.Module, A: int) -> tuple[Tensor, Tensor]:
    """Move all of `module`'s parameters into one `params` [A, D] and their grads into `grads` [A, D].

    Each parameter (leading dim A) becomes a view of a column slice of `params`, and its .grad the same
    view of `grads`, so autograd accumulates in place into `grads`. Zero with `grads.zero_()`, never set
    .grad to None, and do not `.to()` the module afterwards (both would break the views).
    """
    plist = list(module.parameters())
    if not plist:
        raise ValueError("module has no parameters")
    for p in plist:
        if p.shape[0] != A:
            raise ValueError(f"parameter of shape {tuple(p.shape)} has no leading agent axis of size {A}")
    dtype, device = plist[0].dtype, plist[0].device
    D = sum(p[0].numel() for p in plist)
    params = torch.empty(A, D, dtype=dtype, device=device)
    grads = torch.zeros(A, D, dtype=dtype, device=device)
    off = 0
    for p in plist:
        n = p[0].numel()
        # slicing columns of a row-major [A, D] keeps each row's slice contiguous, so .view can split it
        params[:, off : off + n].copy_(p.detach().reshape(A, n))
        p.data = params[:, off : off + n].view(p.shape)
        p.grad = grads[:, off : off + n].view(p.shape)
        off += n
    return params, grads


def share_rows(part: nn.Module, whole: nn.Module, rows: slice) -> None:
    """Make `part` (the same architecture with fewer agent rows) train rows `rows` of `whole` in place: each of its
    parameters and gradients becomes a view of those rows of whole's, which flatten_parameters put in one [A, D]."""
    for p, w in zip(part.parameters(), whole.parameters(), strict=True):
        p.data, p.grad = w.data[rows], w.grad[rows]


def masked_logits(logits: Tensor, avail: Tensor | None) -> Tensor:
    """Unavailable actions get a huge negative logit (MAPPO's -1e10), so they get probability 0."""
    if avail is None:
        return logits
    return logits.masked_fill(~avail.bool(), MASKED_LOGIT)


def categorical_sample(logits: Tensor, uniforms: Tensor) -> Tensor:
    """Gumbel-max sample from logits [A, M, K] given uniforms [A, M, K] in [0, 1) -> actions int64 [A, M].

    Taking the randomness as input lets each agent draw it from its own generator, so the sample does
    not depend on how agents are split over processes. Pass masked logits.
    """
    tiny = torch.finfo(uniforms.dtype).tiny
    u = uniforms.clamp(tiny, 1.0 - torch.finfo(uniforms.dtype).eps)  # keep log(-log(u)) finite
    gumbel = -torch.log(-torch.log(u))
    return torch.argmax(logits + gumbel, dim=-1)


def log_prob(logits: Tensor, actions: Tensor) -> Tensor:
    """log π(a) for logits [..., K] (already masked) and int actions [...] -> [...]."""
    return F.log_softmax(logits, dim=-1).gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def entropy(logits: Tensor, avail: Tensor | None = None) -> Tensor:
    """Entropy of the masked categorical, [..., K] -> [...]; masked actions contribute exactly 0."""
    logits = masked_logits(logits, avail)
    logp = F.log_softmax(logits, dim=-1)
    plogp = logp.exp() * logp
    if avail is not None:
        plogp = plogp.masked_fill(~avail.bool(), 0.0)
    return -plogp.sum(-1)


def chunk_sequences(x: Tensor, length: int) -> Tensor:
    """Recurrent training on chunks (MAPPO's data_chunk_length): x [A, T, M, ...] -> [A, L, (T/L)·M, ...].

    Chunk c covers steps [c·L, (c+1)·L) of every sequence; chunks become extra batch entries.
    """
    A, T, M = x.shape[:3]
    rest = x.shape[3:]
    y = x.reshape(A, T // length, length, M, *rest).transpose(1, 2)
    return y.reshape(A, length, (T // length) * M, *rest)


def chunk_resets(reset: Tensor, length: int) -> Tensor:
    """reset [T, M] laid out like chunk_sequences: [L, (T/L)·M]."""
    return chunk_sequences(reset.unsqueeze(0), length)[0]


def chunk_start_states(h_before: Tensor, length: int) -> Tensor:
    """h_before [A, T, M, H] (the hidden state entering each step) -> [A, (T/L)·M, H] at every chunk start."""
    A, T, M, H = h_before.shape
    return h_before[:, ::length].reshape(A, (T // length) * M, H)
