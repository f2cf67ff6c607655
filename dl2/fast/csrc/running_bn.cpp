// RunningBatchNorm's training step on float32 CPU tensors, forward and backward: dl2.batchnorm_kernels builds this file
// on first use (nbs/07c_batchnorm_kernels.ipynb explains it) and checks it against the lesson's PyTorch code.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <mutex>
#include <vector>

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

namespace {
constexpr int64_t BLOCK = 2048;

// An (N, C, ...) tensor as runs of contiguous elements. Planar (NCHW and the like): N*C runs of the L positions of
// one channel. Interleaved (channels-last, or no positions): N*L runs of the C channels of one position.
struct Layout { int64_t N, C, L; bool interleaved; };

Layout layout_of(const Tensor& x) {
  const int64_t N = x.size(0), C = x.size(1), L = x.numel() / (N * C);
  return {N, C, L, L == 1 || !x.is_contiguous()};
}

// Per channel c, su[c] = sum of (u - ku[c]) and suw[c] = sum of (u - ku[c]) * (w - kw[c]), accumulated in double.
void channel_sums(const Layout& d, const float* u, const float* ku, const float* w, const float* kw, double* su, double* suw) {
  const int64_t C = d.C, L = d.L;
  if (!d.interleaved) {
    at::parallel_for(0, C, 1, [=](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        double ta = 0., tb = 0.;
        const float kuc = ku[c], kwc = kw[c];
        for (int64_t n = 0; n < d.N; ++n)
          for (int64_t s = (n * C + c) * L, end = s + L; s < end; s += BLOCK) {   // float sums over short blocks vectorise
            const float* __restrict ub = u + s; const float* __restrict wb = w + s;
            const int64_t len = std::min(BLOCK, end - s);
            float fa = 0.f, fb = 0.f;
#pragma omp simd reduction(+:fa,fb)
            for (int64_t l = 0; l < len; ++l) { const float a = ub[l] - kuc; fa += a; fb += a * (wb[l] - kwc); }
            ta += fa; tb += fb;
          }
        su[c] = ta; suw[c] = tb;
      }
    });
    return;
  }
  std::fill(su, su + C, 0.); std::fill(suw, suw + C, 0.);
  std::mutex merge;
  at::parallel_for(0, d.N * L, std::max<int64_t>(1, 32768 / C), [&](int64_t r0, int64_t r1) {
    std::vector<double> acc(2 * C, 0.);
    double* __restrict a = acc.data(); double* __restrict b = a + C;
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict ur = u + r * C; const float* __restrict wr = w + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) { const float uc = ur[c] - ku[c]; a[c] += uc; b[c] += double(uc) * (wr[c] - kw[c]); }
    }
    std::lock_guard<std::mutex> lock(merge);
    for (int64_t c = 0; c < C; ++c) { su[c] += a[c]; suw[c] += b[c]; }
  });
}

// out = u*f[c] + k[c], plus g[c]*(w - m[c]) when `w` is given, over the elements of each channel c.
void channel_affine(const Layout& d, float* out, const float* u, const float* f, const float* k,
                    const float* w = nullptr, const float* g = nullptr, const float* m = nullptr) {
  const int64_t C = d.C, L = d.L;
  if (!d.interleaved) {
    at::parallel_for(0, d.N * C, std::max<int64_t>(1, 32768 / L), [=](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t c = r % C;
        float* __restrict o = out + r * L; const float* __restrict ur = u + r * L;
        const float fc = f[c], kc = k[c];
        if (!w) {
#pragma omp simd
          for (int64_t l = 0; l < L; ++l) o[l] = ur[l] * fc + kc;
        } else {
          const float* __restrict wr = w + r * L; const float gc = g[c], mc = m[c];
#pragma omp simd
          for (int64_t l = 0; l < L; ++l) o[l] = ur[l] * fc + gc * (wr[l] - mc) + kc;
        }
      }
    });
    return;
  }
  at::parallel_for(0, d.N * L, std::max<int64_t>(1, 32768 / C), [=](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float* __restrict o = out + r * C; const float* __restrict ur = u + r * C;
      if (!w) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = ur[c] * f[c] + k[c];
      } else {
        const float* __restrict wr = w + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = ur[c] * f[c] + g[c] * (wr[c] - m[c]) + k[c];
      }
    }
  });
}

enum Saved { NEW_MEAN, VAR_EPS, BATCH_MEAN, DIFF, UNCLAMPED, N_SAVED };   // per-channel values kept for the backward

// The step from per-channel sums `s` of (x - shift) and `ss` of (x - shift)², over `n` values per channel: this batch's, or
// every process's with `shift` the running means (nullptr). Updates `means` and `vars`, fills `saved`, returns the output.
Tensor normalize_step(const Tensor& x, const Layout& d, const double* s, const double* ss, const float* shift, double n,
                      const Tensor& mults, const Tensor& adds, const Tensor& means, const Tensor& vars,
                      double eps, double w2, double min_var, Tensor& saved) {
  const int64_t C = d.C;
  saved = at::empty({N_SAVED, C}, x.options());
  float* sv = saved.data_ptr<float>();
  float *mp = means.data_ptr<float>(), *vp = vars.data_ptr<float>();
  const float *wp = mults.data_ptr<float>(), *ap = adds.data_ptr<float>();
  std::vector<float> factor(C), offset(C);
  for (int64_t c = 0; c < C; ++c) {
    const double k = shift ? shift[c] : mp[c];
    const double sm = s[c] / n, bm = k + sm, bv = std::max(ss[c] / n - sm * sm, 0.), diff = mp[c] - bm;
    const double nm = mp[c] + w2 * (bm - mp[c]);
    const double raw = vp[c] + w2 * (bv - vp[c]) + (1 - w2) * w2 * diff * diff;
    const double ve = std::max(raw, min_var) + eps, f = wp[c] / std::sqrt(ve);
    factor[c] = float(f); offset[c] = float(ap[c] - nm * f);
    mp[c] = float(nm); vp[c] = float(raw);
    sv[NEW_MEAN * C + c] = float(nm); sv[VAR_EPS * C + c] = float(ve); sv[BATCH_MEAN * C + c] = float(bm);
    sv[DIFF * C + c] = float(diff); sv[UNCLAMPED * C + c] = raw >= min_var ? 1.f : 0.f;
  }
  for (const auto& t : {means, vars}) t.unsafeGetTensorImpl()->bump_version();   // written through pointers: tell autograd
  Tensor y = at::empty_like(x);
  channel_affine(d, y.data_ptr<float>(), x.data_ptr<float>(), factor.data(), offset.data());
  return y;
}

// `g` laid out like `x`, as the kernels read them side by side.
Tensor like(const Tensor& g, const Tensor& x) {
  return g.contiguous(x.is_contiguous() ? at::MemoryFormat::Contiguous : at::MemoryFormat::ChannelsLast);
}

// Per channel c: sums[c] = sum of g, sums[C + c] = sum of g * (x - batch mean), the backward's two reductions.
void grad_sums(const Layout& d, const Tensor& g, const Tensor& x, const Tensor& saved, double* sums) {
  std::vector<float> zero(d.C, 0.f);
  channel_sums(d, g.data_ptr<float>(), zero.data(), x.data_ptr<float>(), saved.data_ptr<float>() + BATCH_MEAN * d.C,
               sums, sums + d.C);
}

// Gradients of the input (if `need_gx`), `mults` and `adds` from the backward's sums: this process's `local` ones for the
// parameters (data-parallel training averages those), every process's `total` ones, over `n` values, for the input.
variable_list grad_step(const Layout& d, const Tensor& g, const Tensor& x, const Tensor& mults, const Tensor& saved,
                        const double* local, const double* total, double w2, double n, bool need_gx) {
  const int64_t C = d.C;
  const double w1 = 1 - w2;
  const float *sv = saved.data_ptr<float>(), *wp = mults.data_ptr<float>();
  Tensor gw = at::empty({C}, mults.options()), gb = at::empty({C}, mults.options());
  float *gwp = gw.data_ptr<float>(), *gbp = gb.data_ptr<float>();
  std::vector<float> A(C), B(C), K(C);
  for (int64_t c = 0; c < C; ++c) {
    const double nm = sv[NEW_MEAN * C + c], bm = sv[BATCH_MEAN * C + c], invstd = 1. / std::sqrt(double(sv[VAR_EPS * C + c]));
    // sum of g * (x - new mean) / std, of this process's values and of every process's
    const double gm = (local[C + c] + (bm - nm) * local[c]) * invstd, gm_all = (total[C + c] + (bm - nm) * total[c]) * invstd;
    const double d_var = -0.5 * gm_all * wp[c] * invstd * invstd * sv[UNCLAMPED * C + c];
    const double d_bmean = -w2 * total[c] * wp[c] * invstd - 2 * w1 * w2 * sv[DIFF * C + c] * d_var;
    gwp[c] = float(gm); gbp[c] = float(local[c]);
    A[c] = float(wp[c] * invstd); B[c] = float(2 * w2 * d_var / n); K[c] = float(d_bmean / n);
  }
  Tensor gx;
  if (need_gx) {
    gx = at::empty_like(x);
    channel_affine(d, gx.data_ptr<float>(), g.data_ptr<float>(), A.data(), K.data(), x.data_ptr<float>(), B.data(), sv + BATCH_MEAN * C);
  }
  return {gx, gw, gb};
}

struct RunningBN : public torch::autograd::Function<RunningBN> {
  static Tensor forward(AutogradContext* ctx, Tensor x, Tensor mults, Tensor adds, Tensor means, Tensor vars,
                        double eps, double w2, double min_var) {
    const Layout d = layout_of(x);
    const float* xp = x.data_ptr<float>();
    std::vector<float> shift(d.C);
    for (int64_t c = 0; c < d.C; ++c) shift[c] = xp[d.interleaved ? c : c * d.L];   // a value of the channel: keeps the sums small
    std::vector<double> s(d.C), ss(d.C);
    channel_sums(d, xp, shift.data(), xp, shift.data(), s.data(), ss.data());
    Tensor saved;
    Tensor y = normalize_step(x, d, s.data(), ss.data(), shift.data(), double(d.N * d.L), mults, adds, means, vars, eps, w2, min_var, saved);
    ctx->save_for_backward({x, mults, saved});
    ctx->saved_data["w2"] = w2;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto vs = ctx->get_saved_variables();
    const Tensor &x = vs[0], &mults = vs[1], &saved = vs[2];
    const Layout d = layout_of(x);
    const Tensor g = like(grads[0], x);
    std::vector<double> sums(2 * d.C);
    grad_sums(d, g, x, saved, sums.data());
    auto gs = grad_step(d, g, x, mults, saved, sums.data(), sums.data(), ctx->saved_data["w2"].toDouble(), double(d.N * d.L),
                        ctx->needs_input_grad(0));
    return {gs[0], ctx->needs_input_grad(1) ? gs[1] : Tensor(), ctx->needs_input_grad(2) ? gs[2] : Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

void check_vector(const Tensor& t, int64_t C, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous() && t.numel() == C,
              "running_bn: ", name, " must be a float32 CPU vector of ", C, " values");
}

void check_input(const Tensor& x, const char* fn) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.dim() >= 2 && x.numel() > 0,
              fn, ": expected a non-empty float32 CPU input of shape (N, C, ...), got ", x.scalar_type(), " ", x.sizes());
  TORCH_CHECK(x.is_contiguous() || (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)),
              fn, ": the input must be contiguous or channels-last");
}

void check_table(const Tensor& t, at::ScalarType dtype, int64_t numel, const char* fn, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.is_contiguous() && t.numel() == numel,
              fn, ": ", name, " must be a contiguous ", c10::toString(dtype), " CPU tensor of ", numel, " values, got ",
              t.scalar_type(), " ", t.sizes());
}
}

// Training step of RunningBatchNorm on float32 CPU `x` (N, C, ...): updates `means` and `vars` in place, returns the output.
Tensor running_bn(Tensor x, Tensor mults, Tensor adds, Tensor means, Tensor vars, Tensor eps, double w2, double min_var) {
  check_input(x, "running_bn");
  const int64_t C = x.size(1);
  check_vector(mults, C, "mults"); check_vector(adds, C, "adds"); check_vector(means, C, "means"); check_vector(vars, C, "vars");
  return RunningBN::apply(x, mults, adds, means, vars, eps.item<double>(), w2, min_var);
}

// The same step in four parts for synchronised statistics (nbs/07c_batchnorm_kernels.ipynb): the caller sums the first
// and third parts' results over the processes. 1: per-channel sums of (x - means), (x - means)², and the count.
Tensor running_bn_sums(Tensor x, Tensor means) {
  check_input(x, "running_bn_sums");
  const Layout d = layout_of(x);
  check_vector(means, d.C, "means");
  Tensor sums = at::empty({2 * d.C + 1}, x.options().dtype(at::kDouble));
  double* sp = sums.data_ptr<double>();
  channel_sums(d, x.data_ptr<float>(), means.data_ptr<float>(), x.data_ptr<float>(), means.data_ptr<float>(), sp, sp + d.C);
  sp[2 * d.C] = double(d.N * d.L);
  return sums;
}

// 2: from every process's sums (around the running means, `n` values per channel), the statistics updated, the output, the table.
std::tuple<Tensor, Tensor> running_bn_apply(Tensor x, Tensor sums, Tensor mults, Tensor adds, Tensor means, Tensor vars,
                                            Tensor eps, double w2, double min_var, double n) {
  check_input(x, "running_bn_apply");
  const Layout d = layout_of(x);
  const int64_t C = d.C;
  check_table(sums, at::kDouble, 2 * C + 1, "running_bn_apply", "sums");
  check_vector(mults, C, "mults"); check_vector(adds, C, "adds"); check_vector(means, C, "means"); check_vector(vars, C, "vars");
  const double* sp = sums.data_ptr<double>();
  Tensor saved;
  Tensor y = normalize_step(x, d, sp, sp + C, nullptr, n, mults, adds, means, vars, eps.item<double>(), w2, min_var, saved);
  return {y, saved};
}

// 3: per-channel sums of g and of g * (x - batch mean).
Tensor running_bn_grad_sums(Tensor g, Tensor x, Tensor saved) {
  check_input(x, "running_bn_grad_sums");
  const Layout d = layout_of(x);
  TORCH_CHECK(g.sizes() == x.sizes() && g.scalar_type() == at::kFloat, "running_bn_grad_sums: the gradient must be float32 of shape ", x.sizes());
  check_table(saved, at::kFloat, N_SAVED * d.C, "running_bn_grad_sums", "saved");
  Tensor sums = at::empty({2 * d.C}, x.options().dtype(at::kDouble));
  grad_sums(d, like(g, x), x, saved, sums.data_ptr<double>());
  return sums;
}

// 4: the gradients, of the parameters from this process's sums `local`, of the input from every process's `total`.
std::vector<Tensor> running_bn_grad_apply(Tensor g, Tensor x, Tensor mults, Tensor saved, Tensor local, Tensor total,
                                          double w2, double n, bool need_gx) {
  check_input(x, "running_bn_grad_apply");
  const Layout d = layout_of(x);
  TORCH_CHECK(g.sizes() == x.sizes() && g.scalar_type() == at::kFloat, "running_bn_grad_apply: the gradient must be float32 of shape ", x.sizes());
  check_vector(mults, d.C, "mults");
  check_table(saved, at::kFloat, N_SAVED * d.C, "running_bn_grad_apply", "saved");
  check_table(local, at::kDouble, 2 * d.C, "running_bn_grad_apply", "local");
  check_table(total, at::kDouble, 2 * d.C, "running_bn_grad_apply", "total");
  return grad_step(d, like(g, x), x, mults, saved, local.data_ptr<double>(), total.data_ptr<double>(), w2, n, need_gx);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("running_bn", &running_bn, "RunningBatchNorm training step (updates means and vars in place)");
  m.def("running_bn_sums", &running_bn_sums, "Synchronised step, part 1: per-channel sums around the running means, and the count");
  m.def("running_bn_apply", &running_bn_apply, "Synchronised step, part 2: statistics updated from summed sums; output and saved table");
  m.def("running_bn_grad_sums", &running_bn_grad_sums, "Synchronised step, part 3: per-channel sums of the backward");
  m.def("running_bn_grad_apply", &running_bn_grad_apply, "Synchronised step, part 4: gradients from local and summed sums");
}
