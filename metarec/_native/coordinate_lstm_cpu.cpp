// One learned-optimizer step (coordinate-wise LSTM cell, LayerNorm, sigmoid heads, masked update)
// for every row of the fused row buffer, forward and backward, in ONE pass over the rows on the CPU.
//
// The same computation as metarec/learned_optim.py's FusedCoordinateLSTMStep (see there for the
// layout and the maths); built and loaded by metarec/native.py. Why a hand-written loop: the
// eager/compiled version streams ~150 numbers per row through memory in ~20 separate operations
// (gate matmuls per tensor, pointwise kernels, per-tensor sums), each re-reading the 10k-row
// buffers from the cache hierarchy; here a block of rows is read once, every intermediate stays
// in registers / L1, and the backward recomputes the activations instead of storing them.
//
// Rows: tensor k's rows for user 0, user 1, ... are contiguous (numels[k] each), tensors one after
// the other. Every block of rows below lies inside one (tensor, user) segment, so its LSTM
// weights and gate bias are fixed for the block.

#include <torch/library.h>
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

constexpr int NB = 8;  // rows per block: the per-row scalars (pre-processing, heads) are vectorised over it

using at::vec::Vectorized;

// exp_u20: ATen's faster exp (20 ULP) in float32, the one torch.compile's CPU kernels use too;
// in float64 it is the accurate exp
template <typename T>
inline Vectorized<T> vsig(Vectorized<T> v) {
  return (Vectorized<T>(T(1)) + v.neg().exp_u20()).reciprocal();
}

// tanh x = 1 - 2 / (exp(2x) + 1): one exp and one division, as the sigmoid
template <typename T>
inline Vectorized<T> vtanh(Vectorized<T> v) {
  const Vectorized<T> one(T(1));
  return one - Vectorized<T>(T(2)) / ((v + v).exp_u20() + one);
}

// f applied in place to n values, a vector at a time (the tail as a partial vector)
template <typename T, typename F>
inline void map_inplace(T* x, int n, F f) {
  using V = Vectorized<T>;
  int j = 0;
  for (; j + V::size() <= n; j += V::size()) f(V::loadu(x + j)).store(x + j);
  if (j < n) f(V::loadu(x + j, n - j)).store(x + j, n - j);
}

template <typename T>
inline void sigmoid_inplace(T* x, int n) { map_inplace(x, n, [](Vectorized<T> v) { return vsig(v); }); }

template <typename T>
inline void tanh_inplace(T* x, int n) { map_inplace(x, n, [](Vectorized<T> v) { return vtanh(v); }); }

// Andrychowicz et al.'s pre-processing of n values: (log|x|/p, sign x) if |x| >= e^-p, else (-1, e^p x).
template <typename T>
inline void preprocess_block(const T* x, int n, T thr, T scale, T p, T* a, T* b) {
  using V = Vectorized<T>;
  T buf[NB];
  for (int r = 0; r < n; ++r) buf[r] = std::abs(x[r]) + T(1e-20);
  // vector log of the block (n <= NB)
  for (int j = 0; j < n; j += V::size()) {
    int m = std::min<int>(V::size(), n - j);
    V::loadu(buf + j, m).log().store(buf + j, m);
  }
  for (int r = 0; r < n; ++r) {
    T v = x[r];
    bool small = std::abs(v) < thr;
    a[r] = small ? T(-1) : buf[r] / p;
    b[r] = small ? scale * v : T((v > T(0)) - (v < T(0)));
  }
}

// sum of a vector's lanes (pairwise, so no long dependency chain)
template <typename T>
inline T hsum(Vectorized<T> v) {
  constexpr int n = Vectorized<T>::size();
  alignas(64) T b[n];
  v.store(b);
  for (int w = n / 2; w >= 1; w /= 2)
    for (int i = 0; i < w; ++i) b[i] += b[i + w];
  return b[0];
}

struct Block {
  int64_t row, k, u;
  int n;
};

std::vector<Block> make_blocks(const std::vector<int64_t>& numels, int64_t users) {
  std::vector<Block> blocks;
  int64_t row = 0;
  for (int64_t k = 0; k < (int64_t)numels.size(); ++k)
    for (int64_t u = 0; u < users; ++u)
      for (int64_t s = 0; s < numels[k]; s += NB) {
        int n = (int)std::min<int64_t>(NB, numels[k] - s);
        blocks.push_back({row + s, k, u, n});
        if (s + n >= numels[k]) row += numels[k];
      }
  return blocks;
}

// Activations of one block of rows (forward, and recomputed by the backward).
template <typename T, int H>
struct Acts {
  static constexpr int G = 4 * H;
  T g[NB], x[4][NB];
  alignas(64) T z[NB][G];  // after the nonlinearities: i, f, o (sigmoid), tg (tanh)
  alignas(64) T cn[NB][H], tc[NB][H], hhat[NB][H], hn[NB][H];
  T rstd[NB], a0[NB], a1[NB], lr[NB], fg[NB];
};

// Per row, what the backward needs: the gates after their nonlinearities (4H), tanh(c') (H), the
// normalised h (H), the 4 inputs, the clamped gradient, 1/std, lr and forget: 6H + 8 numbers.
template <int H>
constexpr int saved_width() { return 6 * H + 8; }

template <typename T, int H>
inline void save_row(const Acts<T, H>& A, int r, T* __restrict__ out) {
  for (int j = 0; j < 4 * H; ++j) out[j] = A.z[r][j];
  for (int j = 0; j < H; ++j) out[4 * H + j] = A.tc[r][j];
  for (int j = 0; j < H; ++j) out[5 * H + j] = A.hhat[r][j];
  T* t = out + 6 * H;
  t[0] = A.x[0][r]; t[1] = A.x[1][r]; t[2] = A.x[2][r]; t[3] = A.x[3][r];
  t[4] = A.g[r]; t[5] = A.rstd[r]; t[6] = A.lr[r]; t[7] = A.fg[r];
}

template <typename T, int H>
inline void load_row(Acts<T, H>& A, int r, const T* __restrict__ in, const T* LW, const T* LB) {
  for (int j = 0; j < 4 * H; ++j) A.z[r][j] = in[j];
  for (int j = 0; j < H; ++j) A.tc[r][j] = in[4 * H + j];
  for (int j = 0; j < H; ++j) A.hhat[r][j] = in[5 * H + j];
  if (LW)
    for (int j = 0; j < H; ++j) A.hn[r][j] = A.hhat[r][j] * LW[j] + LB[j];
  else
    for (int j = 0; j < H; ++j) A.hn[r][j] = A.hhat[r][j];
  const T* t = in + 6 * H;
  A.x[0][r] = t[0]; A.x[1][r] = t[1]; A.x[2][r] = t[2]; A.x[3][r] = t[3];
  A.g[r] = t[4]; A.rstd[r] = t[5]; A.lr[r] = t[6]; A.fg[r] = t[7];
}

struct Params {
  int64_t rows, users, K, nh;
  bool has_ln;
  double eps, clamp, p;
};

template <typename T, int H>
inline void block_forward(const Block& bk, const T* __restrict__ theta, const T* __restrict__ grad,
                          const T* __restrict__ h, const T* __restrict__ c, const T* __restrict__ bias,
                          const T* __restrict__ w, const T* __restrict__ lnw, const T* __restrict__ lnb,
                          const T* __restrict__ hw, const T* __restrict__ hb, const Params& P, Acts<T, H>& __restrict__ A) {
  constexpr int G = 4 * H;
  const int n = bk.n;
  const T clamp = T(P.clamp), pp = T(P.p), thr = T(std::exp(-P.p)), scale = T(std::exp(P.p)), eps = T(P.eps);
  const T* W = w + bk.k * (4 + H) * G;
  const T* bi = bias + (bk.k * P.users + bk.u) * G;
  const T* th = theta + bk.row;
  for (int r = 0; r < n; ++r) A.g[r] = std::min(std::max(grad[bk.row + r], -clamp), clamp);
  preprocess_block<T>(A.g, n, thr, scale, pp, A.x[0], A.x[1]);
  preprocess_block<T>(th, n, thr, scale, pp, A.x[2], A.x[3]);
  using V = Vectorized<T>;
  constexpr int VS = V::size();
  constexpr int NG = G / VS;
  for (int r = 0; r < n; ++r) {
    V acc[NG];  // the row's 4H gate pre-activations, in registers
    for (int v = 0; v < NG; ++v) acc[v] = V::loadu(bi + v * VS);
    for (int q = 0; q < 4; ++q) {
      const V xq(A.x[q][r]);
      const T* Wq = W + q * G;
      for (int v = 0; v < NG; ++v) acc[v] = at::vec::fmadd(xq, V::loadu(Wq + v * VS), acc[v]);
    }
    const T* hr_in = h + (bk.row + r) * H;
    for (int m = 0; m < H; ++m) {
      const V hm(hr_in[m]);
      const T* Wm = W + (4 + m) * G;
      for (int v = 0; v < NG; ++v) acc[v] = at::vec::fmadd(hm, V::loadu(Wm + v * VS), acc[v]);
    }
    for (int v = 0; v < NG; ++v) acc[v].store(A.z[r] + v * VS);
  }
  for (int r = 0; r < n; ++r) {
    sigmoid_inplace<T>(A.z[r], 3 * H);
    tanh_inplace<T>(A.z[r] + 3 * H, H);
    const T* i = A.z[r];
    const T* f = i + H;
    const T* cp = c + (bk.row + r) * H;
    for (int j = 0; j < H; ++j) A.cn[r][j] = f[j] * cp[j] + i[j] * i[3 * H + j];
    for (int j = 0; j < H; ++j) A.tc[r][j] = A.cn[r][j];
    tanh_inplace<T>(A.tc[r], H);
  }
  const T* LW = P.has_ln ? lnw + bk.k * H : nullptr;
  const T* LB = P.has_ln ? lnb + bk.k * H : nullptr;
  const T* HW = hw + bk.k * P.nh * H;
  const T* HB = hb + bk.k * P.nh;
  constexpr int NH = H / VS;
  for (int r = 0; r < n; ++r) {
    const T* o = A.z[r] + 2 * H;
    V hr[NH];
    for (int v = 0; v < NH; ++v) hr[v] = V::loadu(o + v * VS) * V::loadu(A.tc[r] + v * VS);
    if (P.has_ln) {
      V s = hr[0];
      for (int v = 1; v < NH; ++v) s = s + hr[v];
      const V mean(hsum<T>(s) / T(H));
      V q(T(0));
      for (int v = 0; v < NH; ++v) {
        hr[v] = hr[v] - mean;
        q = at::vec::fmadd(hr[v], hr[v], q);
      }
      const T rstd = T(1) / std::sqrt(hsum<T>(q) / T(H) + eps);
      A.rstd[r] = rstd;
      const V rs(rstd);
      for (int v = 0; v < NH; ++v) {
        const V hh = hr[v] * rs;
        hh.store(A.hhat[r] + v * VS);
        at::vec::fmadd(hh, V::loadu(LW + v * VS), V::loadu(LB + v * VS)).store(A.hn[r] + v * VS);
      }
    } else {
      A.rstd[r] = T(1);
      for (int v = 0; v < NH; ++v) {
        hr[v].store(A.hhat[r] + v * VS);
        hr[v].store(A.hn[r] + v * VS);
      }
    }
    V s0(T(0)), s1(T(0));
    for (int v = 0; v < NH; ++v) {
      const V hv = V::loadu(A.hn[r] + v * VS);
      s0 = at::vec::fmadd(hv, V::loadu(HW + v * VS), s0);
      if (P.nh > 1) s1 = at::vec::fmadd(hv, V::loadu(HW + H + v * VS), s1);
    }
    const T a0 = HB[0] + hsum<T>(s0);
    const T a1 = P.nh > 1 ? HB[1] + hsum<T>(s1) : T(0);
    A.a0[r] = a0;
    A.a1[r] = a1;
  }
  for (int r = 0; r < n; ++r) A.lr[r] = A.a0[r];
  sigmoid_inplace<T>(A.lr, n);
  if (P.nh > 1) {
    for (int r = 0; r < n; ++r) A.fg[r] = A.a1[r];
    sigmoid_inplace<T>(A.fg, n);
  } else {
    for (int r = 0; r < n; ++r) A.fg[r] = T(1);
  }
}

void check_inputs(const at::Tensor& theta, const at::Tensor& h, const at::Tensor& c, const at::Tensor& grad,
                  const at::Tensor& active, const at::Tensor& bias, const at::Tensor& w, const at::Tensor& ln_w,
                  const at::Tensor& ln_b, const at::Tensor& head_w, const at::Tensor& head_b, int64_t H) {
  for (const at::Tensor* t : {&theta, &h, &c, &grad, &bias, &w, &head_w, &head_b}) {
    TORCH_CHECK(t->device().is_cpu() && t->is_contiguous() && t->scalar_type() == theta.scalar_type(),
                "coordinate_lstm: every tensor must be a contiguous CPU tensor of one dtype");
  }
  if (ln_w.defined() && ln_w.numel()) TORCH_CHECK(ln_w.is_contiguous() && ln_b.is_contiguous(), "coordinate_lstm: LayerNorm");
  TORCH_CHECK(active.scalar_type() == at::kBool && active.is_contiguous(), "coordinate_lstm: active must be bool");
  TORCH_CHECK(w.size(1) == 4 + H && w.size(2) == 4 * H, "coordinate_lstm: w must be [K, 4 + H, 4H]");
  TORCH_CHECK(head_w.size(1) <= 2 && head_w.size(1) >= 1, "coordinate_lstm: one or two heads");
}

Params make_params(const at::Tensor& theta, const at::Tensor& active, const at::Tensor& w, const at::Tensor& ln_w,
                   const at::Tensor& head_w, double eps, double clamp, double p) {
  return Params{theta.size(0), active.size(0), w.size(0), head_w.size(1), ln_w.defined() && ln_w.numel() > 0, eps, clamp, p};
}

template <typename T, int H>
void forward_impl(const std::vector<Block>& blocks, const Params& P, const T* theta, const T* h, const T* c,
                  const T* grad, const bool* active, const T* bias, const T* w, const T* lnw, const T* lnb,
                  const T* hw, const T* hb, T* theta_new, T* h_new, T* c_new, T* lr, T* fg, T* saved) {
  at::parallel_for(0, (int64_t)blocks.size(), 64, [&](int64_t begin, int64_t end) {
    Acts<T, H> A;
    for (int64_t b = begin; b < end; ++b) {
      const Block& bk = blocks[b];
      block_forward<T, H>(bk, theta, grad, h, c, bias, w, lnw, lnb, hw, hb, P, A);
      const bool keep = active[bk.u];
      for (int r = 0; r < bk.n; ++r) {
        const int64_t row = bk.row + r;
        if (saved) save_row<T, H>(A, r, saved + row * saved_width<H>());
        theta_new[row] = keep ? A.fg[r] * theta[row] - A.lr[r] * A.g[r] : theta[row];
        lr[row] = A.lr[r];
        fg[row] = A.fg[r];
        for (int j = 0; j < H; ++j) {
          h_new[row * H + j] = A.hn[r][j];
          c_new[row * H + j] = A.cn[r][j];
        }
      }
    }
  });
}

template <typename T, int H>
void backward_impl(const std::vector<Block>& blocks, const Params& P, const T* theta, const T* h, const T* c,
                   const T* grad, const bool* active, const T* bias, const T* w, const T* lnw, const T* lnb,
                   const T* hw, const T* hb, const T* d_theta_new, const T* d_h_new, const T* d_c_new,
                   const T* saved, T* __restrict__ d_theta, T* __restrict__ d_h, T* __restrict__ d_c, T* acc_all,
                   int64_t acc_size, int64_t n_chunks) {
  constexpr int G = 4 * H;
  constexpr int X = 4 + H;
  using V = Vectorized<T>;
  constexpr int VS = V::size();
  constexpr int NG = G / VS, NH = H / VS;
  static_assert(H % VS == 0, "the hidden size must be a multiple of the vector width");
  constexpr int RG = NH >= 8 ? 1 : 8 / NH;  // rows per group of the recurrent gradient
  static_assert(NB % RG == 0, "row groups tile a block");
  const int64_t K = P.K, B = P.users, nh = P.nh;
  // w_hh transposed per tensor, [K, G, H]: d_h_prev[m] = sum_j d_z[j] w_hh[m, j] without lane reductions
  std::vector<T> wt(K * G * H);
  for (int64_t k = 0; k < K; ++k)
    for (int m = 0; m < H; ++m)
      for (int j = 0; j < G; ++j) wt[(k * G + j) * H + m] = w[(k * X + 4 + m) * G + j];
  const int64_t nblocks = (int64_t)blocks.size();
  // fixed chunks (not threads) own the accumulators, so the sums do not depend on the thread count
  at::parallel_for(0, n_chunks, 1, [&](int64_t c0, int64_t c1) {
    Acts<T, H> A;
    alignas(64) T DZ[NB][G];
    alignas(64) T XH[NB][X];
    alignas(64) T DH[NB][H];
    for (int64_t chunk = c0; chunk < c1; ++chunk) {
      T* __restrict__ acc = acc_all + chunk * acc_size;
      T* __restrict__ dW = acc;                   // [K, X, G]
      T* __restrict__ dbias = dW + K * X * G;     // [K, B, G]
      T* __restrict__ dlnw = dbias + K * B * G;   // [K, H]
      T* __restrict__ dlnb = dlnw + K * H;        // [K, H]
      T* __restrict__ dhw = dlnb + K * H;         // [K, nh, H]
      T* __restrict__ dhb = dhw + K * nh * H;     // [K, nh]
      const int64_t b0 = nblocks * chunk / n_chunks, b1 = nblocks * (chunk + 1) / n_chunks;
      for (int64_t b = b0; b < b1; ++b) {
        const Block& bk = blocks[b];
        const int n = bk.n;
        if (saved) {
          const T* LWk = P.has_ln ? lnw + bk.k * H : nullptr;
          const T* LBk = P.has_ln ? lnb + bk.k * H : nullptr;
          for (int r = 0; r < n; ++r) load_row<T, H>(A, r, saved + (bk.row + r) * saved_width<H>(), LWk, LBk);
        } else {
          block_forward<T, H>(bk, theta, grad, h, c, bias, w, lnw, lnb, hw, hb, P, A);
        }
        const T keep = active[bk.u] ? T(1) : T(0);
        const T* __restrict__ HW = hw + bk.k * nh * H;
        const T* __restrict__ LW = P.has_ln ? lnw + bk.k * H : nullptr;
        const T* __restrict__ WT = wt.data() + bk.k * G * H;
        T d_lr[NB], d_a1[NB];
        for (int r = 0; r < n; ++r) {
          const int64_t row = bk.row + r;
          const T dtn = d_theta_new ? d_theta_new[row] : T(0);
          const T dtk = dtn * keep;
          const T lr = A.lr[r], fg = A.fg[r];
          d_lr[r] = -dtk * A.g[r] * lr * (T(1) - lr);
          if (nh > 1) {
            d_theta[row] = dtn - dtk + dtk * fg;
            d_a1[r] = dtk * theta[row] * fg * (T(1) - fg);
          } else {
            d_theta[row] = dtn;
            d_a1[r] = T(0);
          }
        }
        for (int r = 0; r < n; ++r) {
          const int64_t row = bk.row + r;
          T* dh = DH[r];
          for (int j = 0; j < H; ++j) dh[j] = (d_h_new ? d_h_new[row * H + j] : T(0)) + d_lr[r] * HW[j];
          if (nh > 1)
            for (int j = 0; j < H; ++j) dh[j] += d_a1[r] * HW[H + j];
          T d_hr[H];
          if (P.has_ln) {
            T dhat[H], m1 = 0, m2 = 0;
            for (int j = 0; j < H; ++j) {
              dhat[j] = dh[j] * LW[j];
              m1 += dhat[j];
              m2 += dhat[j] * A.hhat[r][j];
            }
            m1 /= T(H);
            m2 /= T(H);
            const T rstd = A.rstd[r];
            for (int j = 0; j < H; ++j) d_hr[j] = rstd * (dhat[j] - m1 - A.hhat[r][j] * m2);
          } else {
            for (int j = 0; j < H; ++j) d_hr[j] = dh[j];
          }
          const T* i = A.z[r];
          const T* f = i + H;
          const T* o = i + 2 * H;
          const T* tg = i + 3 * H;
          const T* cp = c + row * H;
          T* dz = DZ[r];
          for (int j = 0; j < H; ++j) {
            const T tc = A.tc[r][j];
            const T dc = (d_c_new ? d_c_new[row * H + j] : T(0)) + d_hr[j] * o[j] * (T(1) - tc * tc);
            dz[j] = dc * tg[j] * i[j] * (T(1) - i[j]);
            dz[H + j] = dc * cp[j] * f[j] * (T(1) - f[j]);
            dz[2 * H + j] = d_hr[j] * tc * o[j] * (T(1) - o[j]);
            dz[3 * H + j] = dc * i[j] * (T(1) - tg[j] * tg[j]);
            d_c[row * H + j] = dc * f[j];
          }
          XH[r][0] = A.x[0][r];
          XH[r][1] = A.x[1][r];
          XH[r][2] = A.x[2][r];
          XH[r][3] = A.x[3][r];
          const T* hin = h + row * H;
          for (int m = 0; m < H; ++m) XH[r][4 + m] = hin[m];
        }
        // recurrent gradient d_h = w_hh dz, RG rows at a time: RG * NH independent accumulators
        // (one row's NH chains of 4H dependent FMAs would wait on the FMA latency), each
        // w_hh^T row loaded once for the RG rows
        for (int r = n; r < NB; ++r)
          for (int j = 0; j < G; ++j) DZ[r][j] = T(0);
        for (int r0 = 0; r0 < n; r0 += RG) {
          V dhp[RG][NH];
          for (int q = 0; q < RG; ++q)
            for (int v = 0; v < NH; ++v) dhp[q][v] = V(T(0));
          for (int j = 0; j < G; ++j) {
            const T* wtj = WT + j * H;
            V wv[NH];
            for (int v = 0; v < NH; ++v) wv[v] = V::loadu(wtj + v * VS);
            for (int q = 0; q < RG; ++q) {
              const V dzj(DZ[r0 + q][j]);
              for (int v = 0; v < NH; ++v) dhp[q][v] = at::vec::fmadd(dzj, wv[v], dhp[q][v]);
            }
          }
          for (int q = 0; q < RG && r0 + q < n; ++q)
            for (int v = 0; v < NH; ++v) dhp[q][v].store(d_h + (bk.row + r0 + q) * H + v * VS);
        }
        // per block: the weight gradient [x; h]^T dZ, the bias and the small weights' sums
        T* __restrict__ dWk = dW + bk.k * X * G;
        for (int q = 0; q < X; ++q) {
          T* row_w = dWk + q * G;
          V sum[NG];
          for (int v = 0; v < NG; ++v) sum[v] = V::loadu(row_w + v * VS);
          for (int r = 0; r < n; ++r) {
            const V xq(XH[r][q]);
            for (int v = 0; v < NG; ++v) sum[v] = at::vec::fmadd(xq, V::loadu(DZ[r] + v * VS), sum[v]);
          }
          for (int v = 0; v < NG; ++v) sum[v].store(row_w + v * VS);
        }
        {
          T* dbk = dbias + (bk.k * B + bk.u) * G;
          V sum[NG];
          for (int v = 0; v < NG; ++v) sum[v] = V::loadu(dbk + v * VS);
          for (int r = 0; r < n; ++r)
            for (int v = 0; v < NG; ++v) sum[v] = sum[v] + V::loadu(DZ[r] + v * VS);
          for (int v = 0; v < NG; ++v) sum[v].store(dbk + v * VS);
        }
        T* __restrict__ dlw = dlnw + bk.k * H;
        T* __restrict__ dlb = dlnb + bk.k * H;
        T* __restrict__ dhwk = dhw + bk.k * nh * H;
        for (int r = 0; r < n; ++r) {
          for (int j = 0; j < H; ++j) {
            dlw[j] += DH[r][j] * A.hhat[r][j];
            dlb[j] += DH[r][j];
            dhwk[j] += d_lr[r] * A.hn[r][j];
          }
          dhb[bk.k * nh] += d_lr[r];
          if (nh > 1) {
            for (int j = 0; j < H; ++j) dhwk[H + j] += d_a1[r] * A.hn[r][j];
            dhb[bk.k * nh + 1] += d_a1[r];
          }
        }
      }
    }
  });
}

template <int H>
struct HiddenTag {
  static constexpr int value = H;
};

template <typename F>
bool dispatch_hidden(int64_t H, F&& f) {
  switch (H) {
    case 8: f(HiddenTag<8>{}); return true;
    case 16: f(HiddenTag<16>{}); return true;
    case 32: f(HiddenTag<32>{}); return true;
    case 64: f(HiddenTag<64>{}); return true;
    default: return false;
  }
}

at::Tensor opt(const std::optional<at::Tensor>& t) { return t.has_value() ? t->contiguous() : at::Tensor(); }

}  // namespace

std::vector<at::Tensor> coordinate_lstm_forward(
    const at::Tensor& theta, const at::Tensor& h, const at::Tensor& c, const at::Tensor& grad, const at::Tensor& active,
    const at::Tensor& bias, const at::Tensor& w, const std::optional<at::Tensor>& ln_w_, const std::optional<at::Tensor>& ln_b_,
    const at::Tensor& head_w, const at::Tensor& head_b, at::IntArrayRef numels, double eps, double clamp, double p,
    bool save, const std::optional<at::Tensor>& saved_out) {
  const int64_t H = h.size(1);
  at::Tensor ln_w = opt(ln_w_), ln_b = opt(ln_b_);
  check_inputs(theta, h, c, grad, active, bias, w, ln_w, ln_b, head_w, head_b, H);
  Params P = make_params(theta, active, w, ln_w, head_w, eps, clamp, p);
  std::vector<int64_t> nv(numels.begin(), numels.end());
  auto blocks = make_blocks(nv, P.users);
  at::Tensor theta_new = at::empty_like(theta), h_new = at::empty_like(h), c_new = at::empty_like(c);
  at::Tensor lr = at::empty_like(theta), fg = at::empty_like(theta);
  // ``saved_out``: a caller's buffer for the activations, reused across calls (a fresh 6H + 8 numbers
  // per row each step costs the first-touch page faults of several MB)
  at::Tensor saved;
  if (!save) {
    saved = at::empty({0}, theta.options());
  } else if (saved_out.has_value() && saved_out->defined()) {
    saved = *saved_out;
    TORCH_CHECK(saved.is_contiguous() && saved.scalar_type() == theta.scalar_type() && saved.device().is_cpu() &&
                    saved.dim() == 2 && saved.size(0) == theta.size(0) && saved.size(1) == 6 * H + 8,
                "coordinate_lstm: saved_out must be a contiguous [rows, 6H + 8] CPU tensor of theta's dtype");
  } else {
    saved = at::empty({theta.size(0), 6 * H + 8}, theta.options());
  }
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "coordinate_lstm_forward", [&] {
    const scalar_t* lw = P.has_ln ? ln_w.data_ptr<scalar_t>() : nullptr;
    const scalar_t* lb = P.has_ln ? ln_b.data_ptr<scalar_t>() : nullptr;
    bool ok = dispatch_hidden(H, [&](auto tag) {
      constexpr int HH = decltype(tag)::value;
      forward_impl<scalar_t, HH>(blocks, P, theta.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
                                 grad.data_ptr<scalar_t>(), active.data_ptr<bool>(), bias.data_ptr<scalar_t>(),
                                 w.data_ptr<scalar_t>(), lw, lb, head_w.data_ptr<scalar_t>(), head_b.data_ptr<scalar_t>(),
                                 theta_new.data_ptr<scalar_t>(), h_new.data_ptr<scalar_t>(), c_new.data_ptr<scalar_t>(),
                                 lr.data_ptr<scalar_t>(), fg.data_ptr<scalar_t>(),
                                 save ? saved.data_ptr<scalar_t>() : nullptr);
    });
    TORCH_CHECK(ok, "coordinate_lstm: unsupported hidden size ", H);
  });
  return {theta_new, h_new, c_new, lr, fg, saved};
}

std::vector<at::Tensor> coordinate_lstm_backward(
    const at::Tensor& theta, const at::Tensor& h, const at::Tensor& c, const at::Tensor& grad, const at::Tensor& active,
    const at::Tensor& bias, const at::Tensor& w, const std::optional<at::Tensor>& ln_w_, const std::optional<at::Tensor>& ln_b_,
    const at::Tensor& head_w, const at::Tensor& head_b, at::IntArrayRef numels, double eps, double clamp, double p,
    const std::optional<at::Tensor>& d_theta_new_, const std::optional<at::Tensor>& d_h_new_,
    const std::optional<at::Tensor>& d_c_new_, const std::optional<at::Tensor>& saved_) {
  const int64_t H = h.size(1);
  at::Tensor ln_w = opt(ln_w_), ln_b = opt(ln_b_);
  check_inputs(theta, h, c, grad, active, bias, w, ln_w, ln_b, head_w, head_b, H);
  Params P = make_params(theta, active, w, ln_w, head_w, eps, clamp, p);
  std::vector<int64_t> nv(numels.begin(), numels.end());
  auto blocks = make_blocks(nv, P.users);
  at::Tensor dtn = opt(d_theta_new_), dhn = opt(d_h_new_), dcn = opt(d_c_new_), saved = opt(saved_);
  if (saved.defined())
    TORCH_CHECK(saved.size(0) == theta.size(0) && saved.size(1) == 6 * H + 8, "coordinate_lstm: saved activations");
  at::Tensor d_theta = at::empty_like(theta), d_h = at::empty_like(h), d_c = at::empty_like(c);
  const int64_t K = P.K, B = P.users, G = 4 * H, nh = P.nh;
  const int64_t acc_size = K * (4 + H) * G + K * B * G + 2 * K * H + K * nh * H + K * nh;
  const int64_t n_chunks = std::max<int64_t>(1, std::min<int64_t>(8, (int64_t)blocks.size()));
  at::Tensor acc = at::zeros({n_chunks, acc_size}, theta.options());
  AT_DISPATCH_FLOATING_TYPES(theta.scalar_type(), "coordinate_lstm_backward", [&] {
    const scalar_t* lw = P.has_ln ? ln_w.data_ptr<scalar_t>() : nullptr;
    const scalar_t* lb = P.has_ln ? ln_b.data_ptr<scalar_t>() : nullptr;
    auto ptr = [](const at::Tensor& t) -> const scalar_t* { return t.defined() ? t.data_ptr<scalar_t>() : nullptr; };
    bool ok = dispatch_hidden(H, [&](auto tag) {
      constexpr int HH = decltype(tag)::value;
      backward_impl<scalar_t, HH>(blocks, P, theta.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), c.data_ptr<scalar_t>(),
                                  grad.data_ptr<scalar_t>(), active.data_ptr<bool>(), bias.data_ptr<scalar_t>(),
                                  w.data_ptr<scalar_t>(), lw, lb, head_w.data_ptr<scalar_t>(), head_b.data_ptr<scalar_t>(),
                                  ptr(dtn), ptr(dhn), ptr(dcn), ptr(saved), d_theta.data_ptr<scalar_t>(), d_h.data_ptr<scalar_t>(),
                                  d_c.data_ptr<scalar_t>(), acc.data_ptr<scalar_t>(), acc_size, n_chunks);
    });
    TORCH_CHECK(ok, "coordinate_lstm: unsupported hidden size ", H);
  });
  at::Tensor total = acc.sum(0);  // the chunks' partial sums, in chunk order
  int64_t at_ = 0;
  auto take = [&](std::vector<int64_t> shape) {
    int64_t n = 1;
    for (auto s : shape) n *= s;
    at::Tensor t = total.narrow(0, at_, n).view(shape);
    at_ += n;
    return t;
  };
  at::Tensor d_w = take({K, 4 + H, G});
  at::Tensor d_bias = take({K, B, G});
  at::Tensor d_ln_w = take({K, H});
  at::Tensor d_ln_b = take({K, H});
  at::Tensor d_head_w = take({K, nh, H});
  at::Tensor d_head_b = take({K, nh});
  return {d_theta, d_h, d_c, d_bias, d_w, d_ln_w, d_ln_b, d_head_w, d_head_b};
}

TORCH_LIBRARY(metarec_native, m) {
  m.def("coordinate_lstm_forward(Tensor theta, Tensor h, Tensor c, Tensor grad, Tensor active, Tensor bias, Tensor w, "
        "Tensor? ln_w, Tensor? ln_b, Tensor head_w, Tensor head_b, int[] numels, float eps, float clamp, float p, "
        "bool save, Tensor? saved_out=None) -> Tensor[]",
        &coordinate_lstm_forward);
  m.def("coordinate_lstm_backward(Tensor theta, Tensor h, Tensor c, Tensor grad, Tensor active, Tensor bias, Tensor w, "
        "Tensor? ln_w, Tensor? ln_b, Tensor head_w, Tensor head_b, int[] numels, float eps, float clamp, float p, "
        "Tensor? d_theta_new, Tensor? d_h_new, Tensor? d_c_new, Tensor? saved) -> Tensor[]",
        &coordinate_lstm_backward);
}
