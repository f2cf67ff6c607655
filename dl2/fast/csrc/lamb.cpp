// One LAMB step of a list of float32 CPU tensors, in two passes per tensor: dl2.fused_optimizers builds this file on
// first use (nbs/09a_fused_optimizers.ipynb explains it) and checks it against the lesson's `lamb_step`.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>

namespace {
constexpr int64_t GRAIN = 1 << 15, BLOCK = 2048;

struct Hyper { float b1, b2, ic1, ic2, eps, wd; };   // ic1, ic2: inverse bias corrections of the two averages

// LAMB's update direction: the debiased Adam step plus weight decay
inline float direction(float m, float v, float p, Hyper h) { return m * h.ic1 / (std::sqrt(v * h.ic2) + h.eps) + h.wd * p; }

// Pass 1 over elements [b, e): update the averages; return the squared norms of the weights and of the direction
std::pair<double, double> update_averages(const float* __restrict p, const float* __restrict g, float* __restrict m,
                                          float* __restrict v, int64_t b, int64_t e, Hyper h) {
  double pp = 0., dd = 0.;
  for (int64_t s = b; s < e; s += BLOCK) {   // float sums over short blocks vectorise; double sums across them stay exact
    float ps = 0.f, ds = 0.f;
    const int64_t t = std::min(e, s + BLOCK);
#pragma omp simd reduction(+:ps,ds)
    for (int64_t j = s; j < t; ++j) {
      const float gj = g[j], pj = p[j];
      const float mj = h.b1 * m[j] + (1.f - h.b1) * gj, vj = h.b2 * v[j] + (1.f - h.b2) * gj * gj;
      const float dj = direction(mj, vj, pj, h);
      m[j] = mj; v[j] = vj;
      ps += pj * pj; ds += dj * dj;
    }
    pp += ps; dd += ds;
  }
  return {pp, dd};
}

// Pass 2 over elements [b, e): step the weights along the direction, recomputed from the new averages
void apply_update(float* __restrict p, const float* __restrict m, const float* __restrict v, int64_t b, int64_t e,
                  Hyper h, float scale) {
#pragma omp simd
  for (int64_t j = b; j < e; ++j) p[j] -= scale * direction(m[j], v[j], p[j], h);
}

void check_like(const at::Tensor& t, const at::Tensor& p) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.sizes() == p.sizes() && t.strides() == p.strides()
              && t.is_non_overlapping_and_dense(), "lamb_: expected dense float32 CPU tensors laid out like their parameter");
}
}

// One LAMB step of each of `ps`, whose `steps` count this step; updates ps, ms and vs in place.
void lamb_(std::vector<at::Tensor> ps, std::vector<at::Tensor> gs, std::vector<at::Tensor> ms, std::vector<at::Tensor> vs,
           std::vector<int64_t> steps, double lr, double b1, double b2, double eps, double wd, double max_trust) {
  using Norms = std::pair<double, double>;
  for (size_t i = 0; i < ps.size(); ++i) {
    for (const auto& t : {ps[i], gs[i], ms[i], vs[i]}) check_like(t, ps[i]);
    const Hyper h{float(b1), float(b2), float(1. / (1. - std::pow(b1, steps[i]))), float(1. / (1. - std::pow(b2, steps[i]))),
                  float(eps), float(wd)};
    float *p = ps[i].data_ptr<float>(), *m = ms[i].data_ptr<float>(), *v = vs[i].data_ptr<float>();
    const float* g = gs[i].data_ptr<float>();
    const auto [pp, dd] = at::parallel_reduce(0, ps[i].numel(), GRAIN, Norms{0., 0.},
        [=](int64_t b, int64_t e, Norms acc) {
          const auto n = update_averages(p, g, m, v, b, e, h);
          return Norms{acc.first + n.first, acc.second + n.second};
        },
        [](Norms x, Norms y) { return Norms{x.first + y.first, x.second + y.second}; });
    const float scale = float(lr * (pp > 0 && dd > 0 ? std::min(std::sqrt(pp / dd), max_trust) : 1.));
    at::parallel_for(0, ps[i].numel(), GRAIN, [=](int64_t b, int64_t e) { apply_update(p, m, v, b, e, h, scale); });
    for (const auto& t : {ps[i], ms[i], vs[i]}) t.unsafeGetTensorImpl()->bump_version();   // writes through pointers: tell autograd
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lamb_", &lamb_, "LAMB step of float32 CPU tensors (updates parameters and averages in place)");
}
