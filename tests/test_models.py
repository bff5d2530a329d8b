"""Equivalence tests for the per-agent batched models (float64 where exact comparisons matter)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from decnode.nn import native
from decnode.nn.gru import gru_native, gru_reference, gru_sequence
from decnode.nn.models import (
    AgentGRU,
    RecurrentNet,
    categorical_sample,
    entropy,
    flatten_parameters,
    log_prob,
    masked_logits,
)

IN, OUT, H = 5, 4, 16


def make_net(A: int, seed: int = 0, out_gain: float = 1.0) -> RecurrentNet:
    return RecurrentNet(A, IN, OUT, hidden=H, out_gain=out_gain, generator=torch.Generator().manual_seed(seed)).double()


def random_resets(T: int, M: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(T, M, generator=g) < 0.2


def perturb_rows(net: RecurrentNet, A: int) -> torch.Tensor:
    """Make agent rows differ (they start identical) and return the flat params."""
    params, _ = flatten_parameters(net, A)
    with torch.no_grad():
        params.add_(0.1 * torch.randn(params.shape, generator=torch.Generator().manual_seed(7), dtype=params.dtype))
    return params


def gru_pair(in_dim: int, hidden: int) -> tuple[AgentGRU, nn.GRU]:
    torch.manual_seed(0)
    ref = nn.GRU(in_dim, hidden).double()
    ours = AgentGRU(1, in_dim, hidden).double()
    with torch.no_grad():
        ours.w_ih.copy_(ref.weight_ih_l0.T.unsqueeze(0))
        ours.w_hh.copy_(ref.weight_hh_l0.T.unsqueeze(0))
        ours.b_ih.copy_(ref.bias_ih_l0.view(1, 1, -1))
        ours.b_hh.copy_(ref.bias_hh_l0.view(1, 1, -1))
    return ours, ref


def test_agent_gru_matches_nn_gru_without_resets() -> None:
    ours, ref = gru_pair(IN, H)
    T, M = 7, 3
    x = torch.randn(T, M, IN, dtype=torch.float64)
    h0 = torch.randn(1, M, H, dtype=torch.float64)
    ref_out, ref_h = ref(x, h0)
    out, h = ours(x.unsqueeze(0), h0, torch.zeros(T, M, dtype=torch.bool))
    torch.testing.assert_close(out[0], ref_out)
    torch.testing.assert_close(h, ref_h)


def test_agent_gru_resets_equal_separate_segments() -> None:
    ours, ref = gru_pair(IN, H)
    T, M = 9, 2
    x = torch.randn(T, M, IN, dtype=torch.float64)
    h0 = torch.randn(1, M, H, dtype=torch.float64)
    reset = torch.zeros(T, M, dtype=torch.bool)
    reset[3, 0] = reset[7, 0] = reset[5, 1] = True
    out, _ = ours(x.unsqueeze(0), h0, reset)
    for m in range(M):
        starts = [0] + [t for t in range(T) if reset[t, m]] + [T]
        for s, e in zip(starts[:-1], starts[1:]):
            h_init = h0[:, m : m + 1] if s == 0 else torch.zeros(1, 1, H, dtype=torch.float64)
            seg, _ = ref(x[s:e, m : m + 1], h_init)
            torch.testing.assert_close(out[0, s:e, m], seg[:, 0])


def test_net_agents_are_independent() -> None:
    A, T, M = 3, 6, 4
    big = make_net(A)
    params = perturb_rows(big, A)
    x = torch.randn(A, T, M, IN, dtype=torch.float64)
    h0 = torch.randn(A, M, H, dtype=torch.float64)
    reset = random_resets(T, M, 1)
    out, hT = big(x, h0, reset)
    for a in range(A):
        small = make_net(1)
        p1, _ = flatten_parameters(small, 1)
        with torch.no_grad():
            p1.copy_(params[a : a + 1])
        o, h = small(x[a : a + 1], h0[a : a + 1], reset)
        torch.testing.assert_close(out[a : a + 1], o)
        torch.testing.assert_close(hT[a : a + 1], h)
    # perturbing agent 1's row moves only agent 1's outputs
    with torch.no_grad():
        params[1] += 0.05
    out2, _ = big(x, h0, reset)
    torch.testing.assert_close(out2[[0, 2]], out[[0, 2]], rtol=0, atol=0)
    assert not torch.allclose(out2[1], out[1])


def test_forward_equals_repeated_step() -> None:
    A, T, M = 2, 8, 3
    net = make_net(A)
    perturb_rows(net, A)
    x = torch.randn(A, T, M, IN, dtype=torch.float64)
    h0 = torch.randn(A, M, H, dtype=torch.float64)
    reset = random_resets(T, M, 2)
    out, hT = net(x, h0, reset)
    h = h0
    for t in range(T):
        o, h = net.step(x[:, t], h, reset[t])
        torch.testing.assert_close(o, out[:, t])
    torch.testing.assert_close(h, hT)


def test_chunked_forward_equals_full_forward() -> None:
    A, T, M, L = 2, 20, 3, 5
    net = make_net(A)
    x = torch.randn(A, T, M, IN, dtype=torch.float64)
    h0 = torch.zeros(A, M, H, dtype=torch.float64)
    reset = random_resets(T, M, 3)
    reset[0] = True
    full, _ = net(x, h0, reset)
    for s in range(0, T, L):
        # hidden state the full pass had at the chunk start (what a rollout stores for recurrent PPO)
        h_start = h0 if s == 0 else net(x[:, :s], h0, reset[:s])[1]
        chunk, _ = net(x[:, s : s + L], h_start, reset[s : s + L])
        torch.testing.assert_close(chunk, full[:, s : s + L])


def test_init_does_not_depend_on_block_size() -> None:
    p1, _ = flatten_parameters(make_net(1, seed=3, out_gain=0.01), 1)
    p4, _ = flatten_parameters(make_net(4, seed=3, out_gain=0.01), 4)
    for a in range(4):
        torch.testing.assert_close(p4[a], p1[0], rtol=0, atol=0)
    p_other, _ = flatten_parameters(make_net(1, seed=4), 1)
    assert not torch.equal(p_other, p1)


def test_init_orthogonal_and_zero_bias() -> None:
    net = make_net(2, out_gain=0.01)
    w = net.fc2.weight[0]  # [in, out] = transposed orthogonal * sqrt(2)
    torch.testing.assert_close(w.T @ w, 2.0 * torch.eye(H, dtype=torch.float64), atol=1e-5, rtol=0)
    assert torch.all(net.fc1.bias == 0) and torch.all(net.gru.b_hh == 0)
    assert net.out.weight.abs().max() <= 0.01 + 1e-12


# pytest resets warning filters per test, undoing the module-level ignore in decnode.nn.models
@pytest.mark.filterwarnings("ignore:grad and param do not obey the gradient layout contract")
def test_flatten_parameters_views_and_grads() -> None:
    A, T, M = 2, 4, 3
    net = make_net(A)
    params, grads = flatten_parameters(net, A)
    n_params = sum(p.numel() for p in net.parameters())
    assert params.shape == grads.shape == (A, n_params // A) and params.is_contiguous()
    x = torch.randn(A, T, M, IN, dtype=torch.float64)
    h0 = torch.zeros(A, M, H, dtype=torch.float64)
    reset = torch.zeros(T, M, dtype=torch.bool)

    def loss_fn() -> torch.Tensor:
        out, _ = net(x, h0, reset)
        return (out**2).sum()

    plist = list(net.parameters())
    expected = torch.autograd.grad(loss_fn(), plist)
    loss_fn().backward()
    for p, g in zip(plist, expected):
        # still a view of grads, not a fresh tensor autograd swapped in
        assert p.grad.untyped_storage().data_ptr() == grads.untyped_storage().data_ptr()
        torch.testing.assert_close(p.grad, g)
    flat_expected = torch.cat([g.reshape(A, -1) for g in expected], dim=1)
    torch.testing.assert_close(grads, flat_expected)

    loss_fn().backward()  # accumulates in place
    torch.testing.assert_close(grads, 2 * flat_expected)

    grads.zero_()
    assert all(torch.all(p.grad == 0) for p in plist)

    before, _ = net(x, h0, reset)
    with torch.no_grad():
        params.sub_(0.01 * flat_expected)  # an SGD step on the flat tensor
    after, _ = net(x, h0, reset)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(net.fc1.bias.reshape(A, -1), params[:, IN * H : IN * H + H])


def test_the_cpp_kernel_builds_here() -> None:
    """Every machine this project runs on has a compiler: a kernel that silently fell back would hide here."""
    assert native.gru_ops() is not None, native.build_error


KERNELS = {"python": gru_sequence, "c++": gru_native}


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("A", [1, 3])
def test_gru_kernel_matches_step_loop(A: int, kernel: str) -> None:
    """The hand-written backwards against autograd of the plain step loop: outputs, h_T and every gradient,
    with episode starts at t = 0 and mid-sequence (a zeroed state passes no gradient back)."""
    T, M = 9, 5
    g = torch.Generator().manual_seed(11)

    def rand(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()

    gi, h0, w_hh, b_hh = rand(A, T, M, 3 * H), rand(A, M, H), rand(A, H, 3 * H, scale=0.3), rand(A, 1, 3 * H)
    reset = random_resets(T, M, 5)
    reset[0, 0] = reset[4, 1] = reset[T - 1, 2] = True
    keep = (~reset).double().unsqueeze(-1)
    w_out, w_last = torch.randn(A, T, M, H, generator=g, dtype=torch.float64), torch.randn(A, M, H, generator=g, dtype=torch.float64)
    results = []
    for run in (gru_reference, KERNELS[kernel]):
        hs = run(gi, h0, keep, w_hh, b_hh)
        loss = (hs * w_out).sum() + (hs[:, -1] * w_last).sum()
        results.append((hs.detach(), *torch.autograd.grad(loss, (gi, h0, w_hh, b_hh))))
        with torch.no_grad():
            torch.testing.assert_close(run(gi, h0, keep, w_hh, b_hh), hs, rtol=0, atol=1e-12)
    for name, ref, ours in zip(["h", "gi", "h0", "w_hh", "b_hh"], *results):
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-10, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("A", [1, 10])
def test_cpp_kernel_in_float32_is_as_close_to_float64_as_the_step_loop(A: int) -> None:
    """The C++ kernel's float32 exp is its own polynomial: its error against the float64 recurrence must stay at
    the float32 step loop's (a bad coefficient shows up here). T = 25, as in training."""
    T, M = 25, 32
    g = torch.Generator().manual_seed(3)
    gi64, h0 = 2 * torch.randn(A, T, M, 3 * H, generator=g, dtype=torch.float64), torch.randn(A, M, H, generator=g, dtype=torch.float64)
    w64, b64 = 0.5 * torch.randn(A, H, 3 * H, generator=g, dtype=torch.float64), torch.randn(A, 1, 3 * H, generator=g, dtype=torch.float64)
    reset = random_resets(T, M, 2)
    keep64 = (~reset).double().unsqueeze(-1)
    w_out = torch.randn(A, T, M, H, generator=g, dtype=torch.float64)

    def run(fn, dtype):
        args = [x.to(dtype).requires_grad_() for x in (gi64, h0, w64, b64)]
        hs = fn(args[0], args[1], keep64.to(dtype), args[2], args[3])
        return [hs, *torch.autograd.grad((hs * w_out.to(dtype)).sum(), args)]

    exact = run(gru_reference, torch.float64)
    for name, ref, loop, ours in zip(["h", "gi", "h0", "w_hh", "b_hh"], exact, run(gru_reference, torch.float32),
                                     run(gru_native, torch.float32)):
        loop_err, our_err = ((x.double() - ref).abs().max().item() for x in (loop, ours))
        scale = ref.abs().max().item()
        # (2e-6 relative: ∂b_hh sums T·M = 800 terms one after another, where torch sums pairwise)
        assert our_err <= max(4 * loop_err, 2e-6 * scale), f"{name}: c++ {our_err:.2e}, step loop {loop_err:.2e}"


def test_cpp_kernel_propagates_nan() -> None:
    """The trainer stops on a NaN loss or parameter: the kernel's exp clamp must not turn a NaN into a number."""
    A, T, M = 2, 3, 4
    gi = torch.randn(A, T, M, 3 * H)
    gi[1, 0, 2, 5] = float("nan")
    hs = gru_native(gi, torch.zeros(A, M, H), torch.ones(T, M, 1), torch.randn(A, H, 3 * H), torch.zeros(A, 1, 3 * H))
    assert hs[1, :, 2].isnan().any() and not hs[0].isnan().any()


def test_without_a_compiler_the_python_kernel_runs_after_one_warning(tmp_path) -> None:
    """A machine without a working C++ compiler still trains: one warning naming the cause, then the Python kernel."""
    import subprocess
    import sys

    code = ("import warnings, torch\n"
            "from decnode.nn import native\n"
            "from decnode.nn.gru import recurrence, gru_sequence\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    assert recurrence('native', torch.device('cpu')) is gru_sequence\n"
            "    assert recurrence('native', torch.device('cpu')) is gru_sequence\n"
            "print(len(w), w[0].message)\n")
    env = {**__import__("os").environ, "CXX": "/bin/false", "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    count, message = out.stdout.split(" ", 1)
    assert count == "1" and "C++ GRU kernel could not be built" in message and "Python kernel" in message


@pytest.mark.parametrize("kernel", KERNELS)
def test_gru_kernel_refuses_a_second_backward_through_one_graph(kernel: str) -> None:
    """Its saved derivatives are recycled after the first backward: a second one must fail loudly, not reuse them."""
    A, T, M = 2, 4, 3
    gi = torch.randn(A, T, M, 3 * H, requires_grad=True)
    hs = KERNELS[kernel](gi, torch.zeros(A, M, H), torch.ones(T, M, 1), torch.randn(A, H, 3 * H), torch.zeros(A, 1, 3 * H))
    hs.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="retain_graph"):
        hs.sum().backward()


@pytest.mark.filterwarnings("ignore:grad and param do not obey the gradient layout contract")
def test_gru_kernel_gradients_accumulate_into_flat_grads() -> None:
    """Through the whole net: the kernel's parameter gradients equal the step loop's, land in the flat grads
    buffer's views and add up over two backward passes."""
    A, T, M = 3, 10, 4
    x = torch.randn(A, T, M, IN, dtype=torch.float64)
    h0 = torch.randn(A, M, H, dtype=torch.float64)
    reset = random_resets(T, M, 8)
    reset[0] = True
    flat = {}
    for impl in ("reference", "kernel", "native"):
        net = make_net(A)
        params, grads = flatten_parameters(net, A)
        with torch.no_grad():  # rows differ, the same way for both
            params.add_(0.1 * torch.randn(params.shape, generator=torch.Generator().manual_seed(7), dtype=params.dtype))
        net.gru.impl = impl
        for _ in range(2):
            out, hT = net(x, h0, reset)
            ((out**2).sum() + hT.sum()).backward()
        for p in net.parameters():
            assert p.grad.untyped_storage().data_ptr() == grads.untyped_storage().data_ptr()
        flat[impl] = grads.clone()
        # one pass of autograd through the step loop, for the same parameters
        net.gru.impl = "reference"
        out, hT = net(x, h0, reset)
        once = torch.autograd.grad((out**2).sum() + hT.sum(), list(net.parameters()))
        torch.testing.assert_close(grads, 2 * torch.cat([g.reshape(A, -1) for g in once], dim=1), rtol=0, atol=1e-10)
    torch.testing.assert_close(flat["kernel"], flat["reference"], rtol=0, atol=1e-10)
    torch.testing.assert_close(flat["native"], flat["reference"], rtol=0, atol=1e-10)


def test_categorical_sample_masks_and_matches_softmax() -> None:
    A, M, K = 2, 4000, 5
    g = torch.Generator().manual_seed(123)
    logits = torch.tensor([[0.5, -1.0, 2.0, 0.0, 1.0], [3.0, 0.0, 0.3, -0.5, 0.1]]).view(A, 1, K).expand(A, M, K)
    avail = torch.tensor([[True, True, True, True, True], [False, True, True, True, True]]).view(A, 1, K).expand(A, M, K)
    ml = masked_logits(logits, avail)
    counts = torch.zeros(A, K)
    for _ in range(5):  # 20000 draws per agent
        acts = categorical_sample(ml, torch.rand(A, M, K, generator=g))
        assert acts.shape == (A, M) and acts.dtype == torch.int64
        assert not avail.gather(-1, acts.unsqueeze(-1)).logical_not().any()
        counts += torch.nn.functional.one_hot(acts, K).sum(1)
    total = counts.sum(-1, keepdim=True)
    probs = torch.softmax(ml[:, 0], -1)
    assert torch.all(counts[1, 0] == 0)
    # chi-square over available actions: dof <= 4, p=1e-3 critical value ~18.5
    chi2 = ((counts - total * probs) ** 2 / (total * probs).clamp(min=1e-12)).masked_fill(~avail[:, 0], 0).sum(-1)
    assert torch.all(chi2 < 18.5), chi2


def test_log_prob_and_entropy_match_torch_categorical() -> None:
    logits = torch.randn(2, 3, 6, dtype=torch.float64)
    avail = torch.rand(2, 3, 6) < 0.7
    avail[..., 0] = True
    ml = masked_logits(logits, avail)
    dist = torch.distributions.Categorical(probs=torch.softmax(ml, -1))
    acts = dist.sample()
    torch.testing.assert_close(log_prob(ml, acts), dist.log_prob(acts))
    torch.testing.assert_close(entropy(logits, avail), dist.entropy())
    torch.testing.assert_close(entropy(logits), torch.distributions.Categorical(logits=logits).entropy())


@pytest.mark.parametrize("A", [1, 3])
def test_step_shapes(A: int) -> None:
    net = RecurrentNet(A, IN, OUT, hidden=H, generator=torch.Generator().manual_seed(0))
    o, h = net.step(torch.randn(A, 7, IN), net.initial_state(7), torch.zeros(7, dtype=torch.bool))
    assert o.shape == (A, 7, OUT) and h.shape == (A, 7, H)


@pytest.mark.parametrize("impl", ["reference", "kernel"])
def test_gru_backward_work_grows_linearly_with_the_sequence(impl: str) -> None:
    """The step loop's backward must not materialise a full-size gradient per step (indexing gi[:, t] did: T
    zero-filled copies of gi's gradient, O(T²) work that made the actors' update 2-3× slower). Counted, not timed:
    the elements zero-filled in one backward over T = 25 steps, against the size of gi = x W_ih."""
    import math

    from torch.profiler import profile

    A, T, M = 3, 25, 4
    gru = AgentGRU(A, H, H)
    gru.reset_parameters()
    gru.impl = impl
    x = torch.randn(A, T, M, H, requires_grad=True)
    out, _ = gru(x, torch.zeros(A, M, H), random_resets(T, M, 1))
    with profile(record_shapes=True) as prof:
        out.sum().backward()
    filled = sum(math.prod(e.input_shapes[0]) for e in prof.events()
                 if e.name in ("aten::fill_", "aten::zero_") and e.input_shapes and e.input_shapes[0])
    gi_size = A * T * M * 3 * H
    assert filled < 3 * gi_size, f"{filled} elements zero-filled in one backward; gi has {gi_size}"
