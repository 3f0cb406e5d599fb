// prepare_csr: the CSR of a graph by destination and by source, built with
// ATen ops, so that one implementation serves every device that has no kernel
// of its own (the CPU has one: cpu/prepare_csr_cpu.cpp); and its checks.
#include "checks.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

namespace lightgcn_ext {
namespace {

// Sorts the edges (row_e, col_e) by row, then col, and returns the CSR
// (rowptr int64, col int32 when num_nodes fits, else int64) and perm, the
// original edge id of each CSR slot (so that edge weights can follow).
std::tuple<at::Tensor, at::Tensor, at::Tensor> coo_to_csr(const at::Tensor& row,
                                                          const at::Tensor& col,
                                                          int64_t num_nodes) {
  const auto key = row.to(at::kLong) * num_nodes + col.to(at::kLong);
  const auto perm = std::get<1>(key.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  const auto counts = at::bincount(row.index_select(0, perm).to(at::kLong), {}, num_nodes);
  auto rowptr = at::zeros({num_nodes + 1}, row.options().dtype(at::kLong));
  rowptr.narrow(0, 1, num_nodes).copy_(counts.cumsum(0));
  const auto index_type =
      num_nodes <= std::numeric_limits<int32_t>::max() ? at::kInt : at::kLong;
  return {rowptr, col.index_select(0, perm).to(index_type), perm};
}

// prepare_csr: the CSR by destination and the CSR by source (the transpose).
// The CPU has its own kernel (cpu/prepare_csr_cpu.cpp): a counting sort that
// needs no memory beyond its outputs; this one serves the other devices.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> prepare_csr(
    const at::Tensor& edge_index, int64_t num_nodes) {
  check_prepare_csr_input(edge_index, num_nodes);
  const auto src = edge_index.select(0, 0), dst = edge_index.select(0, 1);
  auto [rowptr, col, perm] = coo_to_csr(dst, src, num_nodes);
  auto [rowptr_t, col_t, perm_t] = coo_to_csr(src, dst, num_nodes);
  return {rowptr, col, perm, rowptr_t, col_t, perm_t};
}

}  // namespace

void check_prepare_csr_input(const at::Tensor& edge_index, int64_t num_nodes) {
  TORCH_CHECK(edge_index.dim() == 2 && edge_index.size(0) == 2,
              "edge_index must have shape [2, num_edges], got ", edge_index.sizes());
  TORCH_CHECK(edge_index.scalar_type() == at::kInt || edge_index.scalar_type() == at::kLong,
              "edge_index must be int32 or int64, got ", edge_index.scalar_type());
  TORCH_CHECK_VALUE(num_nodes >= 0, "num_nodes must be non-negative, got ", num_nodes);
  if (edge_index.size(1) > 0) {
    const auto [lo, hi] = at::aminmax(edge_index);
    const int64_t min_index = lo.item<int64_t>(), max_index = hi.item<int64_t>();
    // The one range check of the ids (Python relies on it: a ValueError there).
    TORCH_CHECK_VALUE(min_index >= 0 && max_index < num_nodes,
                "edge_index must hold node ids in [0, num_nodes = ", num_nodes,
                "), got values in [", min_index, ", ", max_index, "]");
  }
}

TORCH_LIBRARY_IMPL(lightgcn_ext, CompositeExplicitAutograd, m) {
  m.impl("prepare_csr", &prepare_csr);
}

}  // namespace lightgcn_ext
