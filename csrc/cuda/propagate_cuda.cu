// The CUDA entry points of `propagate`, `propagate_rows`, its backward and
// `layer_dots`: checks, dtype
// dispatch, the cases that need no kernel, and device memory from ATen's
// caching allocator. The kernels and the host code that sequences them are in
// propagate_kernels.cuh, which the CPU emulation of tests/cpp also builds.
#include "../checks.h"
#include "propagate_kernels.cuh"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/dot.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/index_select.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <limits>
#include <tuple>
#include <vector>

namespace lightgcn_ext {
namespace {

int64_t item_size() {
  const char* env = std::getenv("LIGHTGCN_EXT_CUDA_ITEM_SIZE");
  const int64_t size = cuda_kernels::item_size_from(env);
  TORCH_CHECK_VALUE(size > 0, "LIGHTGCN_EXT_CUDA_ITEM_SIZE must be an integer in [1, ",
                    cuda_kernels::kMaxItemSize, "], got '", env, "'");
  return size;
}

// Device memory for one call's scratch and intermediate layers, from the
// caching allocator (aligned far beyond a vector); it is released when the
// call returns, and the current stream orders its reuse after the kernels.
class CallMemory {
 public:
  explicit CallMemory(const at::Tensor& like) : options_(like.options().dtype(at::kByte)) {}
  void* operator()(int64_t bytes) {
    tensors_.push_back(at::empty({bytes}, options_));
    return tensors_.back().mutable_data_ptr();
  }

 private:
  at::TensorOptions options_;
  std::vector<at::Tensor> tensors_;
};

template <typename scalar_t, typename index_t>
cuda_kernels::DeviceGraph<scalar_t, index_t> device_graph(const GraphOperands& graph) {
  using acc_t = at::opmath_type<scalar_t>;
  return {graph.rowptr.const_data_ptr<int64_t>(),
          graph.col.const_data_ptr<index_t>(),
          graph.weight.has_value() ? graph.weight->const_data_ptr<acc_t>() : nullptr,
          graph.dinv.const_data_ptr<acc_t>(),
          graph.dinv.numel(),
          graph.col.numel()};
}

// Calls f(scalar_t{}, store_t{}) for the features' type scalar_t and the
// type store_t of the layers that the sweeps gather: bfloat16 where bf16 is
// set (float32 features, checked by check_bf16_features), else the features'
// own type.
template <typename F>
void dispatch_storage(at::ScalarType features, bool bf16, const F& f) {
  if (bf16) {
    TORCH_INTERNAL_ASSERT(features == at::kFloat);
    f(float{}, c10::BFloat16{});
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features, "cuda_sweeps", [&] {
    f(scalar_t{}, scalar_t{});
  });
}

// Runs sweeps(scalar_t{}, store_t{}, device graph, item size, memory, stream)
// for x's floating type, the storage type of the layers (dispatch_storage)
// and the graph's column index type: the dispatch and the setup that every
// entry point shares.
template <typename Sweeps>
void run_sweeps(const at::Tensor& x, const GraphOperands& graph, bool bf16,
                const Sweeps& sweeps) {
  const int64_t size = item_size();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  CallMemory memory(x);
  dispatch_storage(x.scalar_type(), bf16, [&](auto scalar, auto store) {
    using scalar_t = decltype(scalar);
    AT_DISPATCH_INDEX_TYPES(graph.col.scalar_type(), "cuda_sweeps_col", [&] {
      sweeps(scalar, store, device_graph<scalar_t, index_t>(graph), size, memory, stream);
    });
  });
}

at::Tensor propagate_cuda(const at::Tensor& rowptr_in, const at::Tensor& col_in,
                          const OptTensor& weight_in, const at::Tensor& dinv_in,
                          const OptTensor& /*rowptr_t*/, const OptTensor& /*col_t*/,
                          const OptTensor& /*weight_t*/, const at::Tensor& x_in,
                          const at::Tensor& alpha_in, bool bf16) {
  const auto args =
      checked_propagate_operands(rowptr_in, col_in, weight_in, dinv_in, x_in, alpha_in);
  check_bf16_features(bf16, args.x, "x");
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
  run_sweeps(x, graph, bf16,
             [&](auto scalar, auto store, const auto& device, int64_t size, CallMemory& memory,
                 cudaStream_t stream) {
               using scalar_t = decltype(scalar);
               cuda_kernels::propagate_sweeps<decltype(store)>(
                   device, d, size, x.const_data_ptr<scalar_t>(),
                   alpha.const_data_ptr<at::opmath_type<scalar_t>>(), L,
                   out.mutable_data_ptr<scalar_t>(), memory, stream);
             });
  return out;
}

// The kernels keep a batch's positions in int32.
void check_num_listed(const at::Tensor& rows) {
  TORCH_CHECK(rows.numel() <= std::numeric_limits<int32_t>::max(),
              "rows must have fewer than 2^31 entries on CUDA, got ", rows.numel());
}

// (out, x_rows) = ((sum_l alpha_l M^l x)[rows], x[rows]): the sweeps of
// propagate, but the last computes the listed rows only.
std::tuple<at::Tensor, at::Tensor> propagate_rows_cuda(
    const at::Tensor& rowptr_in, const at::Tensor& col_in, const OptTensor& weight_in,
    const at::Tensor& dinv_in, const OptTensor& /*rowptr_t*/, const OptTensor& /*col_t*/,
    const OptTensor& /*weight_t*/, const at::Tensor& x_in, const at::Tensor& alpha_in,
    const at::Tensor& rows_in, bool bf16) {
  const auto args = checked_propagate_rows_operands(rowptr_in, col_in, weight_in, dinv_in, x_in,
                                                    alpha_in, rows_in);
  check_bf16_features(bf16, args.propagate.x, "x");
  const c10::cuda::CUDAGuard guard(x_in.device());
  const auto& graph = args.propagate.graph;
  const auto &x = args.propagate.x, &rows = args.rows;
  const int64_t L = args.propagate.num_layers;
  const int64_t d = x.size(1), num_rows = rows.numel();
  auto x_rows = x.index_select(0, rows);
  if (L == 0 || num_rows == 0 || d == 0) return {alpha0_times_x(x_rows, alpha_in), x_rows};
  check_num_listed(rows);
  const auto alpha = alpha_in.to(at::toOpMathType(x.scalar_type())).contiguous();
  auto out = at::empty({num_rows, d}, x.options());
  run_sweeps(x, graph, bf16,
             [&](auto scalar, auto store, const auto& device, int64_t size, CallMemory& memory,
                 cudaStream_t stream) {
               using scalar_t = decltype(scalar);
               cuda_kernels::propagate_rows_sweeps<decltype(store)>(
                   device, d, size, x.const_data_ptr<scalar_t>(),
                   alpha.const_data_ptr<at::opmath_type<scalar_t>>(), L,
                   rows.const_data_ptr<int64_t>(), num_rows, out.mutable_data_ptr<scalar_t>(),
                   memory, stream);
             });
  return {out, x_rows};
}

// grad_x = sum_l alpha_l (M^T)^l G + G0, G and G0 zero outside rows and
// grad, grad_x_rows there (repeats summed in list order, after a stable sort
// of rows): one [N, d] array, whose first sweep gathers the listed rows only.
at::Tensor propagate_rows_backward_cuda(
    const at::Tensor& rowptr_in, const at::Tensor& col_in, const OptTensor& weight_in,
    const at::Tensor& dinv_in, const OptTensor& rowptr_t_in, const OptTensor& col_t_in,
    const OptTensor& weight_t_in, const at::Tensor& grad_in, const OptTensor& grad_x_rows_in,
    const at::Tensor& alpha_in, const at::Tensor& rows_in, bool bf16) {
  const auto args = checked_propagate_rows_backward_operands(
      rowptr_in, col_in, weight_in, dinv_in, rowptr_t_in, col_t_in, weight_t_in, grad_in,
      grad_x_rows_in, alpha_in, rows_in);
  check_bf16_features(bf16, args.grad, "grad");
  const c10::cuda::CUDAGuard guard(grad_in.device());
  const auto& graph_t = args.graph_t;
  const auto &grad = args.grad, &rows = args.rows;
  const int64_t L = args.num_layers, n = graph_t.dinv.numel(), d = grad.size(1);
  if (rows.numel() == 0 || d == 0) return at::zeros({n, d}, grad.options());
  check_num_listed(rows);
  const auto alpha = alpha_in.to(at::toOpMathType(grad.scalar_type())).contiguous();
  at::Tensor sorted, order;
  std::tie(sorted, order) = at::sort(rows, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  auto out = at::empty({n, d}, grad.options());
  run_sweeps(grad, graph_t, bf16,
             [&](auto scalar, auto store, const auto& device, int64_t size, CallMemory& memory,
                 cudaStream_t stream) {
               using scalar_t = decltype(scalar);
               cuda_kernels::propagate_rows_backward_sweeps<decltype(store)>(
                   device, d, size, grad.const_data_ptr<scalar_t>(),
                   args.grad_x_rows.has_value() ? args.grad_x_rows->const_data_ptr<scalar_t>()
                                                : nullptr,
                   alpha.const_data_ptr<at::opmath_type<scalar_t>>(), L,
                   sorted.const_data_ptr<int64_t>(), order.const_data_ptr<int64_t>(),
                   rows.numel(), out.mutable_data_ptr<scalar_t>(), memory, stream);
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
  if (n == 0 || d == 0) return at::zeros({num_layers + 1}, x.options().dtype(acc_type));
  if (num_layers == 0) {  // no sweep: dots[0] = <x, grad>
    return at::dot(x.to(acc_type).flatten(), grad.to(acc_type).flatten()).reshape({1});
  }
  auto dots = at::empty({num_layers + 1}, x.options().dtype(acc_type));
  run_sweeps(x, graph, /*bf16=*/false,
             [&](auto scalar, auto /*store: scalar_t*/, const auto& device, int64_t size,
                 CallMemory& memory, cudaStream_t stream) {
               using scalar_t = decltype(scalar);
               cuda_kernels::layer_dots_sweeps(
                   device, d, size, x.const_data_ptr<scalar_t>(), grad.const_data_ptr<scalar_t>(),
                   num_layers, dots.mutable_data_ptr<at::opmath_type<scalar_t>>(), memory,
                   stream);
             });
  return dots;
}

}  // namespace

TORCH_LIBRARY_IMPL(lightgcn_ext, CUDA, m) {
  m.impl("propagate", &propagate_cuda);
  m.impl("layer_dots", &layer_dots_cuda);
  m.impl("propagate_rows", &propagate_rows_cuda);
  m.impl("propagate_rows_backward", &propagate_rows_backward_cuda);
}

}  // namespace lightgcn_ext
