// The per-agent GRU recurrence (decnode/nn/gru.py's equations) as two C++ loops, one per direction.
//
// Why by hand: eager torch runs each step's ~12 elementwise ops one by one, each a pass over memory behind a
// Python call and a dispatch (70 % of a recurrence at A = 10, 75 % at A = 1, where the GEMMs are tiny); the
// libraries that fuse them are not available here (TorchScript's CPU fuser needs LLVM, torch.compile took 63 s
// to compile). Here a step is one baddbmm for the hidden projection and ONE fused pass over [A, M, H] that
// computes the gates, the new state and the local derivatives the backward needs.
//
// Layouts (float or double, contiguous): gi [A, T, M, 3H] (x W_ih + b_ih, gates r, z, n), h0 [A, M, H],
// keep [T, M] (0 where an episode starts), w_hh [A, H, 3H], b_hh [A, 1, 3H].
// hps [T, A, M, H]: the state entering each step after its reset (what W_hh multiplies; the backward's ∂W_hh).
// coef [T, A, M, 5, H]: per step ∂h/∂ of [hp directly (= z), gh_n, pre-σ r, pre-σ z, pre-tanh n].
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

// exp for float in plain arithmetic the compiler can vectorise (libm's expf is a call per element): Cephes'
// range reduction and polynomial, about 1 ulp. NaN stays NaN (comparisons with NaN are false, so no clamp).
inline float exp_f(float x) {
  x = x > 88.0f ? 88.0f : x;
  x = x < -87.0f ? -87.0f : x;
  // k = round(x / ln 2) by the 1.5·2²³ trick (std::floor is a call the vectoriser refuses)
  float k = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - k * 0.693359375f + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_f(-x)); }
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
// tanh(a) = 2σ(2a) − 1 for float (one exp); double keeps libm's tanh (the float64 tests' reference precision)
inline float tanh_(float a) { return 2.0f * sigmoid(2.0f * a) - 1.0f; }
inline double tanh_(double a) { return std::tanh(a); }

// Agents in parallel when a step is big enough to pay for waking a thread (A = 10 at M = 32, H = 64 is).
template <typename F>
void over_agents(int64_t A, int64_t per_agent, const F& body) {
  if (A > 1 && A * per_agent >= 8192) {
    at::parallel_for(0, A, 1, [&](int64_t a0, int64_t a1) { for (int64_t a = a0; a < a1; ++a) body(a); });
  } else {
    for (int64_t a = 0; a < A; ++a) body(a);
  }
}

void check(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, "gru: ", name, " must have ", dim, " dimensions, got ", t.sizes());
  TORCH_CHECK(t.is_contiguous() && t.device().is_cpu(), "gru: ", name, " must be a contiguous CPU tensor");
}

// One step for one sequence row: the gates, the new state and (SAVE) the local derivatives; no branch inside the
// j loop, so the compiler vectorises it (exp_f included).
template <typename S, bool SAVE>
inline void step_row(const S* __restrict__ g_in, const S* __restrict__ g_h, const S* __restrict__ hp,
                     S* __restrict__ h_out, S* __restrict__ hp_next, S k_next, S* __restrict__ c, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const S r = sigmoid(g_in[j] + g_h[j]);
    const S z = sigmoid(g_in[H + j] + g_h[H + j]);
    const S ghn = g_h[2 * H + j];
    const S n = tanh_(g_in[2 * H + j] + r * ghn);  // b_hn sits inside the reset product, as in nn.GRU
    const S h = n + z * (hp[j] - n);
    h_out[j] = h;
    hp_next[j] = h * k_next;
    if (SAVE) {
      const S dn = (S(1) - z) * (S(1) - n * n);
      c[j] = z;
      c[H + j] = dn * r;
      c[2 * H + j] = dn * ghn * r * (S(1) - r);
      c[3 * H + j] = (hp[j] - n) * z * (S(1) - z);
      c[4 * H + j] = dn;
    }
  }
}

// -> out [A, T, M, H]; fills hps and, when coef is defined (numel > 0), coef.
at::Tensor forward(const at::Tensor& gi, const at::Tensor& h0, const at::Tensor& keep, const at::Tensor& w_hh,
                   const at::Tensor& b_hh, at::Tensor hps, at::Tensor coef) {
  check(gi, "gi", 4); check(h0, "h0", 3); check(keep, "keep", 2); check(hps, "hps", 4);
  const int64_t A = gi.size(0), T = gi.size(1), M = gi.size(2), H = gi.size(3) / 3;
  const bool save = coef.numel() > 0;
  if (save) check(coef, "coef", 5);
  auto out = at::empty({A, T, M, H}, gi.options());
  auto gh = at::empty({A, M, 3 * H}, gi.options());
  auto scratch = at::empty({A, M, H}, gi.options());
  hps[0].copy_(h0 * keep[0].view({1, M, 1}));
  AT_DISPATCH_FLOATING_TYPES(gi.scalar_type(), "decnode_gru_forward", [&] {
    using S = scalar_t;
    const S* GI = gi.data_ptr<S>();
    const S* K = keep.data_ptr<S>();
    S* OUT = out.data_ptr<S>();
    S* HP = hps.data_ptr<S>();
    S* C = save ? coef.data_ptr<S>() : nullptr;
    const S* GH = gh.data_ptr<S>();
    S* SCRATCH = scratch.data_ptr<S>();
    for (int64_t t = 0; t < T; ++t) {
      at::baddbmm_out(gh, b_hh, hps[t], w_hh);
      over_agents(A, M * H, [&](int64_t a) {
        for (int64_t m = 0; m < M; ++m) {
          const S* g_in = GI + ((a * T + t) * M + m) * 3 * H;
          const S* g_h = GH + (a * M + m) * 3 * H;
          const S* hp = HP + ((t * A + a) * M + m) * H;
          S* h_out = OUT + ((a * T + t) * M + m) * H;
          // (the last step's next state goes to a scratch row: no branch in the loop)
          S* hp_next = t + 1 < T ? HP + (((t + 1) * A + a) * M + m) * H : SCRATCH + (a * M + m) * H;
          const S k_next = t + 1 < T ? K[(t + 1) * M + m] : S(0);
          if (save) {
            step_row<S, true>(g_in, g_h, hp, h_out, hp_next, k_next, C + ((t * A + a) * M + m) * 5 * H, H);
          } else {
            step_row<S, false>(g_in, g_h, hp, h_out, hp_next, k_next, nullptr, H);
          }
        }
      });
    }
  });
  return out;
}

// One backward step for one sequence row: ∂h (from the output and the step after) times the saved derivatives.
template <typename S>
inline void back_row(const S* __restrict__ d_out, const S* __restrict__ cy, S k, const S* __restrict__ c,
                     S* __restrict__ g, S* __restrict__ dir, S* __restrict__ dgi, S* __restrict__ db, int64_t H) {
  for (int64_t j = 0; j < H; ++j) {
    const S dh = d_out[j] + k * cy[j];
    const S gr = dh * c[2 * H + j], gz = dh * c[3 * H + j], gn = dh * c[H + j];
    dir[j] = dh * c[j];
    g[j] = gr; g[H + j] = gz; g[2 * H + j] = gn;
    dgi[j] = gr; dgi[H + j] = gz; dgi[2 * H + j] = dh * c[4 * H + j];
    db[j] += gr; db[H + j] += gz; db[2 * H + j] += gn;
  }
}

// dout [A, T, M, H] -> (d_gi [A, T, M, 3H], d_h0 [A, M, H], d_w_hh [A, H, 3H], d_b_hh [A, 1, 3H]).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> backward(
    const at::Tensor& dout_in, const at::Tensor& hps, const at::Tensor& coef, const at::Tensor& keep,
    const at::Tensor& w_hh) {
  auto dout = dout_in.contiguous();
  check(hps, "hps", 4); check(coef, "coef", 5); check(keep, "keep", 2);
  const int64_t T = coef.size(0), A = coef.size(1), M = coef.size(2), H = coef.size(4);
  auto opts = dout.options();
  auto d_gi = at::empty({A, T, M, 3 * H}, opts);
  auto d_w = at::zeros({A, H, 3 * H}, opts);
  auto d_b = at::zeros({A, 1, 3 * H}, opts);
  auto dgh = at::empty({A, M, 3 * H}, opts);  // ∂ of this step's hidden projection, gates r, z, n
  auto direct = at::empty({A, M, H}, opts);
  auto carry = at::zeros({A, M, H}, opts);  // ∂ of the state entering the step after (before its reset)
  auto w_t = w_hh.transpose(1, 2);
  AT_DISPATCH_FLOATING_TYPES(dout.scalar_type(), "decnode_gru_backward", [&] {
    using S = scalar_t;
    const S* DOUT = dout.data_ptr<S>();
    const S* C = coef.data_ptr<S>();
    const S* K = keep.data_ptr<S>();
    S* DGI = d_gi.data_ptr<S>();
    S* DGH = dgh.data_ptr<S>();
    S* DIR = direct.data_ptr<S>();
    const S* CARRY = carry.data_ptr<S>();
    S* DB = d_b.data_ptr<S>();
    for (int64_t t = T - 1; t >= 0; --t) {
      over_agents(A, M * H, [&](int64_t a) {
        S* db = DB + a * 3 * H;
        for (int64_t m = 0; m < M; ++m) {
          const S* d_out = DOUT + ((a * T + t) * M + m) * H;
          const S* cy = CARRY + (a * M + m) * H;
          const S k = t + 1 < T ? K[(t + 1) * M + m] : S(0);  // nothing flows back through a zeroed state
          const S* c = C + ((t * A + a) * M + m) * 5 * H;
          S* g = DGH + (a * M + m) * 3 * H;
          S* dir = DIR + (a * M + m) * H;
          S* dgi = DGI + ((a * T + t) * M + m) * 3 * H;
          back_row(d_out, cy, k, c, g, dir, dgi, db, H);
        }
      });
      at::baddbmm_out(carry, direct, dgh, w_t);  // ∂hp = direct + ∂gh W_hhᵀ
      d_w.baddbmm_(hps[t].transpose(1, 2), dgh);  // accumulated while this step's ∂gh is in cache
    }
  });
  auto d_h0 = carry * keep[0].view({1, M, 1});
  return {d_gi, d_h0, d_w, d_b};
}

}  // namespace

TORCH_LIBRARY(decnode_gru, m) {
  m.def("forward(Tensor gi, Tensor h0, Tensor keep, Tensor w_hh, Tensor b_hh, Tensor(a!) hps, Tensor(b!) coef) -> Tensor",
        &forward);
  m.def("backward(Tensor dout, Tensor hps, Tensor coef, Tensor keep, Tensor w_hh) -> (Tensor, Tensor, Tensor, Tensor)",
        &backward);
}
