// CPU kernels of `propagate` and `layer_dots`.
//
// Both are L sweeps of one row-wise CSR SpMM with a fused epilogue. The trick
// that keeps the sweeps cheap: the kernels never gather dinv per edge. They
// carry the *source-scaled* features s = dinv * h, so a row of M h is
// dinv[r] * sum_k w_k s[col_k], and the next s is written by the epilogue.
// Working memory: two [N, d] buffers in the accumulation type, whatever L and E.
#include "../checks.h"
#include "sweep.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace lightgcn_ext {
namespace {

using cpu::balanced_row_chunks;
using cpu::Csr;
using cpu::for_each_chunk;
using cpu::sweep;

// Applies f(r, j) to every element of an [n, d] array, in parallel.
template <typename F>
void for_each_element(int64_t n, int64_t d, const F& f) {
  at::parallel_for(0, n, std::max<int64_t>(1, 32768 / std::max<int64_t>(d, 1)),
                   [&](int64_t r0, int64_t r1) {
                     for (int64_t r = r0; r < r1; ++r)
                       for (int64_t j = 0; j < d; ++j) f(r, j);
                   });
}

template <typename scalar_t, typename index_t>
void propagate_kernel(const Csr<at::opmath_type<scalar_t>, index_t>& g, const scalar_t* x,
                      const std::vector<at::opmath_type<scalar_t>>& alpha, int64_t d,
                      at::opmath_type<scalar_t>* buf_a, at::opmath_type<scalar_t>* buf_b,
                      scalar_t* out) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = g.num_rows, L = static_cast<int64_t>(alpha.size()) - 1;
  const acc_t* dinv = g.dinv;
  // Horner: h_L = alpha_L x; h_l = alpha_l x + M h_{l+1}; out = h_0.
  // The buffers hold s_l = dinv * h_l, alternately; s_1, which the last
  // sweep reads while it writes out, is always in buf_a, so that buf_b may be
  // the output's own memory.
  if (L % 2 == 0) std::swap(buf_a, buf_b);
  const acc_t alpha_last = alpha[L];
  for_each_element(n, d, [&](int64_t r, int64_t j) {
    buf_a[r * d + j] = dinv[r] * alpha_last * static_cast<acc_t>(x[r * d + j]);
  });
  const auto chunks = balanced_row_chunks(g.rowptr, n);
  for (int64_t l = L - 1; l >= 0; --l) {
    const acc_t a = alpha[l];
    if (l == 0) {
      sweep(g, buf_a, d, chunks, [&](int64_t, int64_t r, int64_t j0, int64_t width, const acc_t* acc) {
        const int64_t o = r * d + j0;
        for (int64_t t = 0; t < width; ++t)
          out[o + t] = static_cast<scalar_t>(a * static_cast<acc_t>(x[o + t]) + dinv[r] * acc[t]);
      });
    } else {
      sweep(g, buf_a, d, chunks, [&](int64_t, int64_t r, int64_t j0, int64_t width, const acc_t* acc) {
        const int64_t o = r * d + j0;
        const acc_t s = dinv[r];
        for (int64_t t = 0; t < width; ++t)
          buf_b[o + t] = s * (a * static_cast<acc_t>(x[o + t]) + s * acc[t]);
      });
      std::swap(buf_a, buf_b);
    }
  }
}

template <typename scalar_t, typename index_t>
void layer_dots_kernel(const Csr<at::opmath_type<scalar_t>, index_t>& g, const scalar_t* x,
                       const scalar_t* grad, int64_t L, int64_t d,
                       at::opmath_type<scalar_t>* buf_a, at::opmath_type<scalar_t>* buf_b,
                       at::opmath_type<scalar_t>* dots) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = g.num_rows;
  const acc_t* dinv = g.dinv;
  const auto chunks = balanced_row_chunks(g.rowptr, n);
  const int64_t num_chunks = static_cast<int64_t>(chunks.size()) - 1;
  // Per-chunk partial sums, added in chunk order: deterministic.
  std::vector<acc_t> partial(num_chunks);
  auto reduce_partials = [&]() {
    acc_t total = 0;
    for (const acc_t p : partial) total += p;
    std::fill(partial.begin(), partial.end(), acc_t(0));
    return total;
  };
  // Layer 0: <x, grad>; s_0 = dinv * x.
  for_each_chunk(num_chunks, [&](int64_t c) {
    acc_t sum = 0;
    for (int64_t r = chunks[c]; r < chunks[c + 1]; ++r) {
      for (int64_t i = r * d; i < (r + 1) * d; ++i) {
        const acc_t xi = static_cast<acc_t>(x[i]);
        sum += xi * static_cast<acc_t>(grad[i]);
        buf_a[i] = dinv[r] * xi;
      }
    }
    partial[c] = sum;
  });
  dots[0] = reduce_partials();
  for (int64_t l = 1; l <= L; ++l) {
    sweep(g, buf_a, d, chunks, [&](int64_t c, int64_t r, int64_t j0, int64_t width, const acc_t* acc) {
      const int64_t o = r * d + j0;
      const acc_t s = dinv[r];
      acc_t sum = 0;
      for (int64_t t = 0; t < width; ++t) {
        const acc_t h = s * acc[t];
        sum += h * static_cast<acc_t>(grad[o + t]);
        buf_b[o + t] = s * h;
      }
      partial[c] += sum;
    });
    std::swap(buf_a, buf_b);
    dots[l] = reduce_partials();
  }
}

// Calls f(csr) with the typed view of the graph.
template <typename acc_t, typename F>
void with_csr(const GraphOperands& g, const F& f) {
  AT_DISPATCH_INDEX_TYPES(g.col.scalar_type(), "lightgcn_ext_cpu_col", [&] {
    const Csr<acc_t, index_t> csr{g.rowptr.data_ptr<int64_t>(), g.col.data_ptr<index_t>(),
                                  g.weight.has_value() ? g.weight->data_ptr<acc_t>() : nullptr,
                                  g.dinv.data_ptr<acc_t>(), g.dinv.numel()};
    f(csr);
  });
}

at::Tensor propagate_cpu(const at::Tensor& rowptr_in, const at::Tensor& col_in,
                         const OptTensor& weight_in, const at::Tensor& dinv_in,
                         const OptTensor& /*rowptr_t*/, const OptTensor& /*col_t*/,
                         const OptTensor& /*weight_t*/, const at::Tensor& x_in,
                         const at::Tensor& alpha) {
  const auto args = checked_propagate_operands(rowptr_in, col_in, weight_in, dinv_in, x_in, alpha);
  const auto& g = args.graph;
  const auto& x = args.x;
  const int64_t L = args.num_layers;
  check_csr_contents(g.rowptr, g.col, x.size(0));
  const int64_t n = x.size(0), d = x.size(1);
  const auto acc_type = at::toOpMathType(x.scalar_type());
  if (L == 0 || n == 0 || d == 0) return alpha0_times_x(x, alpha);
  auto out = at::empty_like(x);
  auto buf_a = at::empty({n, d}, x.options().dtype(acc_type));
  // The second working buffer: the output itself where it has the
  // accumulation type (float32, float64), which saves an [N, d] buffer.
  const auto buf_b = acc_type == x.scalar_type() ? out : L > 1 ? at::empty_like(buf_a) : buf_a;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "propagate_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto alpha_acc = alpha.to(at::kCPU, acc_type).contiguous();
    const std::vector<acc_t> a(alpha_acc.data_ptr<acc_t>(), alpha_acc.data_ptr<acc_t>() + L + 1);
    with_csr<acc_t>(g, [&](const auto& csr) {
      propagate_kernel<scalar_t>(csr, x.data_ptr<scalar_t>(), a, d, buf_a.data_ptr<acc_t>(),
                                 buf_b.data_ptr<acc_t>(), out.data_ptr<scalar_t>());
    });
  });
  return out;
}

at::Tensor layer_dots_cpu(const at::Tensor& rowptr_in, const at::Tensor& col_in,
                          const OptTensor& weight_in, const at::Tensor& dinv_in,
                          const OptTensor& /*rowptr_t*/, const OptTensor& /*col_t*/,
                          const OptTensor& /*weight_t*/, const at::Tensor& x_in,
                          const at::Tensor& grad_in, int64_t num_layers) {
  const auto args = checked_layer_dots_operands(rowptr_in, col_in, weight_in, dinv_in, x_in,
                                                grad_in, num_layers);
  const auto& g = args.graph;
  const auto &x = args.x, &grad = args.grad;
  check_csr_contents(g.rowptr, g.col, x.size(0));
  const int64_t n = x.size(0), d = x.size(1);
  const auto acc_type = at::toOpMathType(x.scalar_type());
  auto dots = at::zeros({num_layers + 1}, x.options().dtype(acc_type));
  if (n == 0 || d == 0) return dots;
  auto buf_a = at::empty({n, d}, x.options().dtype(acc_type));
  auto buf_b = at::empty_like(buf_a);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "layer_dots_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    with_csr<acc_t>(g, [&](const auto& csr) {
      layer_dots_kernel<scalar_t>(csr, x.data_ptr<scalar_t>(), grad.data_ptr<scalar_t>(), num_layers,
                                  d, buf_a.data_ptr<acc_t>(), buf_b.data_ptr<acc_t>(),
                                  dots.data_ptr<acc_t>());
    });
  });
  return dots;
}

}  // namespace

TORCH_LIBRARY_IMPL(lightgcn_ext, CPU, m) {
  m.impl("propagate", &propagate_cpu);
  m.impl("layer_dots", &layer_dots_cpu);
}

}  // namespace lightgcn_ext
