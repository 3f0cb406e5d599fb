// CUDA kernels of `propagate` and `layer_dots`; the CPU kernels in
// ../cpu/propagate_cpu.cpp define the semantics, and these follow them.
//
// Each op is L sweeps of one row-wise CSR SpMM with a fused epilogue. As on
// the CPU, the sweeps carry the source-scaled features s = dinv * h, so a row
// of M h is dinv[r] * sum_k w_k s[col_k] and no dinv is gathered per edge.
//
// Layout: a group of G lanes (a power of two <= 32, sized to d) owns one row
// at a time; its lanes split the feature dimension into vectors of V values
// (16-byte loads of the accumulation type when d and the pointers allow), so
// that a group reads each neighbour row contiguously. The group loads up to G
// edges (col, weight) at once, one per lane, and broadcasts them with shuffles.
// The sums stay in registers; the epilogue writes either the next s or out.
// Offsets into [N, d] arrays are int64.
//
// layer_dots reduces deterministically: every block writes one partial per
// layer, and a last kernel adds them in a fixed order. The grid depends only
// on N and d, never on the device.
#include "../checks.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>

namespace lightgcn_ext {
namespace {

constexpr int kThreads = 256;
// Columns a lane holds in registers per pass: kMaxVecs vectors of V values
// (32 lanes x 4 floats: d <= 128 in one pass). Wider rows take several passes
// over the row's edges. One vector keeps the sweep at <= 48 registers with 8
// edges' loads in flight; two vectors took 58-64 registers, spilled, and were
// ~25% slower at d = 64 on an H200.
constexpr int kMaxVecs = 1;
// Grid cap (rows are visited with a grid-stride loop); it also bounds the
// number of per-block partials of layer_dots.
constexpr int64_t kMaxBlocks = 8192;

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}

template <typename T, int N>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& v) {
  *reinterpret_cast<Vec<T, N>*>(p) = v;
}

template <typename acc_t, typename index_t>
struct Csr {
  const int64_t* __restrict__ rowptr;
  const index_t* __restrict__ col;
  const acc_t* __restrict__ weight;  // null: every edge has weight 1
  const acc_t* __restrict__ dinv;
  int64_t num_rows;
  int64_t d;
};

// Row groups: G = 1 << log2_group lanes per row, kThreads / G rows per block.
struct Plan {
  int log2_group;
  int64_t blocks;
};

Plan make_plan(int64_t n, int64_t d, int vec) {
  const int64_t vectors = (d + vec - 1) / vec;
  int log2_group = 0;
  while ((int64_t{1} << log2_group) < std::min<int64_t>(vectors, 32)) ++log2_group;
  const int64_t rows_per_block = kThreads >> log2_group;
  const int64_t blocks = std::min((n + rows_per_block - 1) / rows_per_block, kMaxBlocks);
  return {log2_group, std::max<int64_t>(blocks, 1)};
}

// Sum of v over the block, written by thread 0 to *out. Every thread of the
// block must call it. The order of the additions is fixed.
template <typename acc_t>
__device__ void block_sum(acc_t v, acc_t* out) {
  __shared__ acc_t warp_sums[kThreads / 32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    acc_t total = 0;
    for (int w = 0; w < kThreads / 32; ++w) total += warp_sums[w];
    *out = total;
  }
}

// The first step of both ops, no SpMM: s = dinv * scale * x with
// scale = *alpha (propagate: alpha_L) or 1 (alpha null, layer_dots, which
// also sums x * grad into partial[blockIdx.x]).
template <typename scalar_t, int V>
__global__ void __launch_bounds__(kThreads)
    scale_rows_kernel(const at::opmath_type<scalar_t>* __restrict__ dinv,
                      const scalar_t* __restrict__ x, const scalar_t* __restrict__ grad,
                      const at::opmath_type<scalar_t>* __restrict__ alpha, int64_t n, int64_t d,
                      int log2_group, at::opmath_type<scalar_t>* __restrict__ s,
                      at::opmath_type<scalar_t>* __restrict__ partial) {
  using acc_t = at::opmath_type<scalar_t>;
  const int group = 1 << log2_group;
  const int lane = threadIdx.x & (group - 1);
  const int64_t rows_per_block = kThreads >> log2_group;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * rows_per_block;
  const acc_t scale = alpha != nullptr ? alpha[0] : acc_t(1);
  acc_t dot = 0;
  for (int64_t r = blockIdx.x * rows_per_block + (threadIdx.x >> log2_group); r < n; r += stride) {
    const acc_t dr = dinv[r];
    for (int64_t j = static_cast<int64_t>(lane) * V; j < d; j += static_cast<int64_t>(group) * V) {
      const int64_t o = r * d + j;
      const auto xv = load_vec<scalar_t, V>(x + o);
      Vec<acc_t, V> sv;
#pragma unroll
      for (int i = 0; i < V; ++i) sv.v[i] = dr * scale * static_cast<acc_t>(xv.v[i]);
      store_vec(s + o, sv);
      if (grad != nullptr) {
        const auto gv = load_vec<scalar_t, V>(grad + o);
#pragma unroll
        for (int i = 0; i < V; ++i) dot += static_cast<acc_t>(xv.v[i]) * static_cast<acc_t>(gv.v[i]);
      }
    }
  }
  if (partial != nullptr) block_sum(dot, partial + blockIdx.x);
}

enum class Epilogue {
  kNext,   // s_out = dinv * (alpha_l x + dinv * acc): a middle step of propagate
  kFinal,  // out = alpha_0 x + dinv * acc: the last step of propagate
  kDots,   // h = dinv * acc; partial += <h, grad>; s_out = dinv * h: layer_dots
};

// One sweep: for every row r, acc = sum_k w_k s_in[col_k], then the epilogue.
// `x` is x for propagate and grad for layer_dots.
template <typename scalar_t, typename index_t, int V, Epilogue kEpilogue>
__global__ void __launch_bounds__(kThreads)
    sweep_kernel(Csr<at::opmath_type<scalar_t>, index_t> g,
                 const at::opmath_type<scalar_t>* __restrict__ s_in,
                 const scalar_t* __restrict__ x,
                 const at::opmath_type<scalar_t>* __restrict__ alpha, int log2_group,
                 at::opmath_type<scalar_t>* __restrict__ s_out, scalar_t* __restrict__ out,
                 at::opmath_type<scalar_t>* __restrict__ partial) {
  using acc_t = at::opmath_type<scalar_t>;
  const int group = 1 << log2_group;
  const int lane = threadIdx.x & (group - 1);
  // The lanes of this group within the warp, for the shuffles.
  const unsigned group_mask =
      group == 32 ? 0xffffffffu : ((1u << group) - 1u) << ((threadIdx.x & 31) & ~(group - 1));
  const int64_t rows_per_block = kThreads >> log2_group;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * rows_per_block;
  const int64_t d = g.d;
  const int64_t pass_width = static_cast<int64_t>(group) * V * kMaxVecs;
  const acc_t a = kEpilogue == Epilogue::kDots ? acc_t(0) : *alpha;
  acc_t dot = 0;

  for (int64_t r = blockIdx.x * rows_per_block + (threadIdx.x >> log2_group); r < g.num_rows;
       r += stride) {
    const int64_t begin = g.rowptr[r], end = g.rowptr[r + 1];
    const acc_t dr = g.dinv[r];
    for (int64_t j0 = 0; j0 < d; j0 += pass_width) {
      // Lane-local columns j0 + (t * group + lane) * V for t < vecs <= kMaxVecs:
      // adjacent lanes read adjacent vectors.
      const int64_t first = j0 + static_cast<int64_t>(lane) * V;
      const int64_t step = static_cast<int64_t>(group) * V;
      const int64_t lane_vecs = first >= d ? 0 : (d - first + step - 1) / step;
      const int vecs = lane_vecs < kMaxVecs ? static_cast<int>(lane_vecs) : kMaxVecs;
      acc_t acc[kMaxVecs][V];
#pragma unroll
      for (int t = 0; t < kMaxVecs; ++t)
#pragma unroll
        for (int i = 0; i < V; ++i) acc[t][i] = 0;

      for (int64_t k0 = begin; k0 < end; k0 += group) {
        index_t my_col = 0;
        acc_t my_w = 1;
        if (k0 + lane < end) {
          my_col = g.col[k0 + lane];
          if (g.weight != nullptr) my_w = g.weight[k0 + lane];
        }
        const int count = end - k0 < group ? static_cast<int>(end - k0) : group;
#pragma unroll 8
        for (int e = 0; e < count; ++e) {
          const int64_t c = __shfl_sync(group_mask, my_col, e, group);
          const acc_t w = __shfl_sync(group_mask, my_w, e, group);
          const acc_t* src = s_in + c * d + first;
#pragma unroll
          for (int t = 0; t < kMaxVecs; ++t) {
            if (t < vecs) {
              const auto v = load_vec<acc_t, V>(src + t * step);
#pragma unroll
              for (int i = 0; i < V; ++i) acc[t][i] += w * v.v[i];
            }
          }
        }
      }

#pragma unroll
      for (int t = 0; t < kMaxVecs; ++t) {
        if (t >= vecs) continue;
        const int64_t o = r * d + first + t * step;
        const auto xv = load_vec<scalar_t, V>(x + o);
        if constexpr (kEpilogue == Epilogue::kFinal) {
          Vec<scalar_t, V> ov;
#pragma unroll
          for (int i = 0; i < V; ++i)
            ov.v[i] = static_cast<scalar_t>(a * static_cast<acc_t>(xv.v[i]) + dr * acc[t][i]);
          store_vec(out + o, ov);
        } else {
          Vec<acc_t, V> sv;
#pragma unroll
          for (int i = 0; i < V; ++i) {
            if constexpr (kEpilogue == Epilogue::kNext) {
              sv.v[i] = dr * (a * static_cast<acc_t>(xv.v[i]) + dr * acc[t][i]);
            } else {
              const acc_t h = dr * acc[t][i];
              dot += h * static_cast<acc_t>(xv.v[i]);
              sv.v[i] = dr * h;
            }
          }
          store_vec(s_out + o, sv);
        }
      }
    }
  }
  if constexpr (kEpilogue == Epilogue::kDots) block_sum(dot, partial + blockIdx.x);
}

// dots[l] = sum of partial[l, 0 : num_partials], in a fixed order; one block per l.
template <typename acc_t>
__global__ void __launch_bounds__(kThreads)
    sum_partials_kernel(const acc_t* __restrict__ partial, int64_t num_partials,
                        acc_t* __restrict__ dots) {
  const acc_t* row = partial + blockIdx.x * num_partials;
  acc_t sum = 0;
  for (int64_t i = threadIdx.x; i < num_partials; i += kThreads) sum += row[i];
  block_sum(sum, dots + blockIdx.x);
}

// V values per vector: 16 bytes of the accumulation type where d is a multiple
// of it and every [N, d] array of scalar_t is aligned to a vector; else 1.
template <typename scalar_t>
constexpr int kVec = 16 / sizeof(at::opmath_type<scalar_t>);

template <typename scalar_t>
bool can_vectorize(int64_t d, std::initializer_list<const at::Tensor*> tensors) {
  constexpr int V = kVec<scalar_t>;
  if (d % V != 0) return false;
  for (const at::Tensor* t : tensors) {
    if (reinterpret_cast<std::uintptr_t>(t->const_data_ptr()) % (V * sizeof(scalar_t)) != 0)
      return false;
  }
  return true;
}

template <typename scalar_t, typename index_t, int V>
void propagate_launch(const Csr<at::opmath_type<scalar_t>, index_t>& g, const scalar_t* x,
                      const at::opmath_type<scalar_t>* alpha, int64_t L,
                      at::opmath_type<scalar_t>* buf_a, at::opmath_type<scalar_t>* buf_b,
                      scalar_t* out, cudaStream_t stream) {
  const Plan plan = make_plan(g.num_rows, g.d, V);
  // Horner: h_L = alpha_L x; h_l = alpha_l x + M h_{l+1}; out = h_0.
  // The buffers hold s_l = dinv * h_l.
  scale_rows_kernel<scalar_t, V><<<plan.blocks, kThreads, 0, stream>>>(
      g.dinv, x, nullptr, alpha + L, g.num_rows, g.d, plan.log2_group, buf_a, nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  for (int64_t l = L - 1; l >= 1; --l) {
    sweep_kernel<scalar_t, index_t, V, Epilogue::kNext><<<plan.blocks, kThreads, 0, stream>>>(
        g, buf_a, x, alpha + l, plan.log2_group, buf_b, nullptr, nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    std::swap(buf_a, buf_b);
  }
  sweep_kernel<scalar_t, index_t, V, Epilogue::kFinal><<<plan.blocks, kThreads, 0, stream>>>(
      g, buf_a, x, alpha, plan.log2_group, nullptr, out, nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t, typename index_t, int V>
void layer_dots_launch(const Csr<at::opmath_type<scalar_t>, index_t>& g, const scalar_t* x,
                       const scalar_t* grad, int64_t L, at::opmath_type<scalar_t>* buf_a,
                       at::opmath_type<scalar_t>* buf_b, at::opmath_type<scalar_t>* partial,
                       at::opmath_type<scalar_t>* dots, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  const Plan plan = make_plan(g.num_rows, g.d, V);
  // Layer 0: <x, grad>; s_0 = dinv * x.
  scale_rows_kernel<scalar_t, V><<<plan.blocks, kThreads, 0, stream>>>(
      g.dinv, x, grad, nullptr, g.num_rows, g.d, plan.log2_group, buf_a, partial);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  for (int64_t l = 1; l <= L; ++l) {
    sweep_kernel<scalar_t, index_t, V, Epilogue::kDots><<<plan.blocks, kThreads, 0, stream>>>(
        g, buf_a, grad, nullptr, plan.log2_group, buf_b, nullptr, partial + l * plan.blocks);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    std::swap(buf_a, buf_b);
  }
  sum_partials_kernel<acc_t><<<L + 1, kThreads, 0, stream>>>(partial, plan.blocks, dots);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename acc_t, typename index_t>
Csr<acc_t, index_t> make_csr(const GraphOperands& g, int64_t d) {
  return {g.rowptr.const_data_ptr<int64_t>(), g.col.const_data_ptr<index_t>(),
          g.weight.has_value() ? g.weight->const_data_ptr<acc_t>() : nullptr,
          g.dinv.const_data_ptr<acc_t>(), g.dinv.numel(), d};
}

at::Tensor propagate_cuda(const at::Tensor& rowptr_in, const at::Tensor& col_in,
                          const OptTensor& weight_in, const at::Tensor& dinv_in,
                          const OptTensor& /*rowptr_t*/, const OptTensor& /*col_t*/,
                          const OptTensor& /*weight_t*/, const at::Tensor& x_in,
                          const at::Tensor& alpha_in) {
  const auto args =
      checked_propagate_operands(rowptr_in, col_in, weight_in, dinv_in, x_in, alpha_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto& graph = args.graph;
  const auto& x = args.x;
  const int64_t L = args.num_layers;
  const int64_t n = x.size(0), d = x.size(1);
  const auto acc_type = at::toOpMathType(x.scalar_type());
  if (L == 0 || n == 0 || d == 0) return alpha0_times_x(x, alpha_in);
  // alpha stays on the device: the kernels read alpha[l] themselves.
  const auto alpha = alpha_in.to(acc_type).contiguous();
  auto out = at::empty_like(x);
  auto buf_a = at::empty({n, d}, x.options().dtype(acc_type));
  auto buf_b = L > 1 ? at::empty_like(buf_a) : buf_a;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "propagate_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const bool vec = can_vectorize<scalar_t>(d, {&x, &out});
    AT_DISPATCH_INDEX_TYPES(graph.col.scalar_type(), "propagate_cuda_col", [&] {
      const auto g = make_csr<acc_t, index_t>(graph, d);
      const auto* x_ptr = x.const_data_ptr<scalar_t>();
      const auto* alpha_ptr = alpha.const_data_ptr<acc_t>();
      auto* a_ptr = buf_a.mutable_data_ptr<acc_t>();
      auto* b_ptr = buf_b.mutable_data_ptr<acc_t>();
      auto* out_ptr = out.mutable_data_ptr<scalar_t>();
      if (vec) {
        propagate_launch<scalar_t, index_t, kVec<scalar_t>>(g, x_ptr, alpha_ptr, L, a_ptr, b_ptr,
                                                            out_ptr, stream);
      } else {
        propagate_launch<scalar_t, index_t, 1>(g, x_ptr, alpha_ptr, L, a_ptr, b_ptr, out_ptr,
                                               stream);
      }
    });
  });
  return out;
}

at::Tensor layer_dots_cuda(const at::Tensor& rowptr_in, const at::Tensor& col_in,
                           const OptTensor& weight_in, const at::Tensor& dinv_in,
                           const OptTensor& /*rowptr_t*/, const OptTensor& /*col_t*/,
                           const OptTensor& /*weight_t*/, const at::Tensor& x_in,
                           const at::Tensor& grad_in, int64_t num_layers) {
  const auto args = checked_layer_dots_operands(rowptr_in, col_in, weight_in, dinv_in, x_in,
                                                grad_in, num_layers);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto& graph = args.graph;
  const auto &x = args.x, &grad = args.grad;
  const int64_t n = x.size(0), d = x.size(1);
  const auto acc_type = at::toOpMathType(x.scalar_type());
  auto dots = at::zeros({num_layers + 1}, x.options().dtype(acc_type));
  if (n == 0 || d == 0) return dots;
  auto buf_a = at::empty({n, d}, x.options().dtype(acc_type));
  auto buf_b = at::empty_like(buf_a);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "layer_dots_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const bool vec = can_vectorize<scalar_t>(d, {&x, &grad});
    const int64_t blocks = make_plan(n, d, vec ? kVec<scalar_t> : 1).blocks;
    auto partial = at::empty({(num_layers + 1) * blocks}, x.options().dtype(acc_type));
    AT_DISPATCH_INDEX_TYPES(graph.col.scalar_type(), "layer_dots_cuda_col", [&] {
      const auto g = make_csr<acc_t, index_t>(graph, d);
      const auto* x_ptr = x.const_data_ptr<scalar_t>();
      const auto* grad_ptr = grad.const_data_ptr<scalar_t>();
      auto* a_ptr = buf_a.mutable_data_ptr<acc_t>();
      auto* b_ptr = buf_b.mutable_data_ptr<acc_t>();
      auto* partial_ptr = partial.mutable_data_ptr<acc_t>();
      auto* dots_ptr = dots.mutable_data_ptr<acc_t>();
      if (vec) {
        layer_dots_launch<scalar_t, index_t, kVec<scalar_t>>(g, x_ptr, grad_ptr, num_layers, a_ptr,
                                                             b_ptr, partial_ptr, dots_ptr, stream);
      } else {
        layer_dots_launch<scalar_t, index_t, 1>(g, x_ptr, grad_ptr, num_layers, a_ptr, b_ptr,
                                                partial_ptr, dots_ptr, stream);
      }
    });
  });
  return dots;
}

}  // namespace

TORCH_LIBRARY_IMPL(lightgcn_ext, CUDA, m) {
  m.impl("propagate", &propagate_cuda);
  m.impl("layer_dots", &layer_dots_cuda);
}

}  // namespace lightgcn_ext
