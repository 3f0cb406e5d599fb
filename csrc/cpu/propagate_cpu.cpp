// CPU kernels of `propagate` and `layer_dots`.
//
// Both are L sweeps of one row-wise CSR SpMM with a fused epilogue. The trick
// that keeps the sweeps cheap: the kernels never gather dinv per edge. They
// carry the *source-scaled* features s = dinv * h, so a row of M h is
// dinv[r] * sum_k w_k s[col_k], and the next s is written by the epilogue.
// Working memory: two [N, d] buffers in the accumulation type, whatever L and E.
#include "../checks.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <vector>

namespace lightgcn_ext {
namespace {

// Rows are cut into contiguous chunks of about this many edges (each row
// counts as one extra unit), so that a power-law degree distribution does not
// leave one thread with the hubs, and threads take chunks as they finish
// (`for_each_chunk`), so that a core shared with another process does not
// hold the others up. The chunking does not depend on the thread count,
// which keeps reductions deterministic.
constexpr int64_t kWorkPerChunk = 8192;

std::vector<int64_t> balanced_row_chunks(const int64_t* rowptr, int64_t num_rows) {
  const int64_t total = rowptr[num_rows] + num_rows;
  const int64_t num_chunks = std::max<int64_t>(1, std::min(num_rows, total / kWorkPerChunk));
  std::vector<int64_t> bounds(num_chunks + 1, num_rows);
  bounds[0] = 0;
  for (int64_t c = 1; c < num_chunks; ++c) {
    // First row whose cumulative work (edges + rows before it) reaches c/num_chunks.
    const int64_t target = total * c / num_chunks;
    int64_t lo = bounds[c - 1], hi = num_rows;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (rowptr[mid] + mid < target) lo = mid + 1; else hi = mid;
    }
    bounds[c] = lo;
  }
  return bounds;
}

// Calls f(c) for c in [0, num_chunks) on torch's intra-op threads, each
// thread taking the next chunk when it is done with one.
template <typename F>
void for_each_chunk(int64_t num_chunks, const F& f) {
  std::atomic<int64_t> next{0};
  const int64_t num_workers = std::min<int64_t>(at::get_num_threads(), num_chunks);
  at::parallel_for(0, num_workers, 1, [&](int64_t, int64_t) {
    for (int64_t c = next.fetch_add(1); c < num_chunks; c = next.fetch_add(1)) f(c);
  });
}

template <typename acc_t, typename index_t>
struct Csr {
  const int64_t* rowptr;
  const index_t* col;
  const acc_t* weight;  // null: every edge has weight 1
  const acc_t* dinv;
  int64_t num_rows;
};

// Features are processed in tiles of kTile values so that the accumulators
// stay in registers; kTile is a compile-time constant, which makes the
// feature loop contiguous vector loads and FMAs. (A loop whose trip count the
// compiler cannot see was vectorized across edges with gathers instead, which
// ran 10x slower on AMD.)
template <typename acc_t>
constexpr int kTile = 64 / sizeof(acc_t) * 4;  // 64 floats or 32 doubles

// The gathered rows are scattered over a table larger than the caches, and
// the hardware prefetcher cannot guess them: requesting the tile of the edge
// kPrefetchDistance ahead overlaps the memory latency (about 3x per sweep on
// Gowalla, d = 64, measured here).
constexpr int64_t kPrefetchDistance = 4;

#if defined(__GNUC__) || defined(__clang__)
#define LIGHTGCN_EXT_ALWAYS_INLINE __attribute__((always_inline))
#else
#define LIGHTGCN_EXT_ALWAYS_INLINE
#endif
constexpr int kCacheLine = 64;

template <int T, typename acc_t>
inline void prefetch_tile(const acc_t* p) {
#if defined(__GNUC__) || defined(__clang__)
  for (int offset = 0; offset < T * static_cast<int>(sizeof(acc_t)); offset += kCacheLine) {
    __builtin_prefetch(reinterpret_cast<const char*>(p) + offset);
  }
#endif
}

// The rows [r0, r1) of chunk c: for every row r and feature tile
// [j0, j0 + width), computes acc = sum_k w_k * in[col_k, j0 : j0 + width] and
// calls epilogue(c, r, j0, width, acc). Always inlined, so that each caller
// below compiles it for its own instruction set.
template <bool kWeighted, typename acc_t, typename index_t, typename Epilogue>
LIGHTGCN_EXT_ALWAYS_INLINE inline void sweep_chunk(const Csr<acc_t, index_t>& g, const acc_t* in,
                                                  int64_t d, int64_t c, int64_t r0, int64_t r1,
                                                  const Epilogue& epilogue) {
  constexpr int T = kTile<acc_t>;
  alignas(64) acc_t acc[T];
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t begin = g.rowptr[r], end = g.rowptr[r + 1];
    for (int64_t j0 = 0; j0 < d; j0 += T) {
      const int64_t width = std::min<int64_t>(T, d - j0);
      for (int t = 0; t < T; ++t) acc[t] = acc_t(0);
      if (width == T) {
        for (int64_t k = begin; k < end; ++k) {
          if (k + kPrefetchDistance < end) {
            prefetch_tile<T>(in + static_cast<int64_t>(g.col[k + kPrefetchDistance]) * d + j0);
          }
          const acc_t* src = in + static_cast<int64_t>(g.col[k]) * d + j0;
          const acc_t w = kWeighted ? g.weight[k] : acc_t(1);
          for (int t = 0; t < T; ++t) acc[t] += kWeighted ? w * src[t] : src[t];
        }
      } else {
        for (int64_t k = begin; k < end; ++k) {
          const acc_t* src = in + static_cast<int64_t>(g.col[k]) * d + j0;
          const acc_t w = kWeighted ? g.weight[k] : acc_t(1);
          for (int64_t t = 0; t < width; ++t) acc[t] += kWeighted ? w * src[t] : src[t];
        }
      }
      epilogue(c, r, j0, width, acc);
    }
  }
}

// The build targets baseline x86-64 (SSE2) so that the wheel runs anywhere;
// where the CPU has AVX2 and FMA, the sweep runs a copy compiled for them
// (wider vectors: fewer instructions per gathered row).
#if defined(__GNUC__) && defined(__x86_64__)
template <bool kWeighted, typename acc_t, typename index_t, typename Epilogue>
__attribute__((target("avx2,fma"))) void sweep_chunk_avx2(
    const Csr<acc_t, index_t>& g, const acc_t* in, int64_t d, int64_t c, int64_t r0, int64_t r1,
    const Epilogue& epilogue) {
  sweep_chunk<kWeighted>(g, in, d, c, r0, r1, epilogue);
}

bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

template <bool kWeighted, typename acc_t, typename index_t, typename Epilogue>
void sweep_rows(const Csr<acc_t, index_t>& g, const acc_t* in, int64_t d,
                const std::vector<int64_t>& chunks, const Epilogue& epilogue) {
  for_each_chunk(static_cast<int64_t>(chunks.size()) - 1, [&](int64_t c) {
#if defined(__GNUC__) && defined(__x86_64__)
    if (cpu_has_avx2_fma()) {
      sweep_chunk_avx2<kWeighted>(g, in, d, c, chunks[c], chunks[c + 1], epilogue);
      return;
    }
#endif
    sweep_chunk<kWeighted>(g, in, d, c, chunks[c], chunks[c + 1], epilogue);
  });
}

template <typename acc_t, typename index_t, typename Epilogue>
void sweep(const Csr<acc_t, index_t>& g, const acc_t* in, int64_t d,
           const std::vector<int64_t>& chunks, const Epilogue& epilogue) {
  if (g.weight != nullptr) {
    sweep_rows<true>(g, in, d, chunks, epilogue);
  } else {
    sweep_rows<false>(g, in, d, chunks, epilogue);
  }
}

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
