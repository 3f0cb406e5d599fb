// CPU kernel of `prepare_csr`: each CSR by a counting sort on the rows, then
// a sort of each row's few columns.
//
// It returns what the ATen version (../prepare_csr.cpp) returns, slot for
// slot: the edges ordered by (row, col, edge id). It needs no memory beyond
// its outputs and one cursor per node, where sorting the edges' keys with
// at::sort takes about 4 more int64 values per edge (the keys, the sorted
// keys and the indices, and the sort's own buffers): on Gowalla's graph
// (1.6M edges) 65 MB at the peak of each CSR, more than the propagation
// that follows needs. It is also O(E + N) instead of O(E log E).
#include "../checks.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <utility>
#include <vector>

namespace lightgcn_ext {
namespace {

// The CSR of the edges (rows[e], cols[e]) into rowptr [num_nodes + 1],
// col [E] and perm [E] (the edge id of each slot).
template <typename in_t, typename col_t>
void fill_csr(const in_t* rows, const in_t* cols, int64_t num_edges, int64_t num_nodes,
              int64_t* rowptr, col_t* col, int64_t* perm) {
  std::fill(rowptr, rowptr + num_nodes + 1, int64_t{0});
  for (int64_t e = 0; e < num_edges; ++e) ++rowptr[rows[e] + 1];
  for (int64_t r = 0; r < num_nodes; ++r) rowptr[r + 1] += rowptr[r];
  // Edges go to their rows in edge order: a row's slots hold increasing edge ids.
  std::vector<int64_t> cursor(rowptr, rowptr + num_nodes);
  for (int64_t e = 0; e < num_edges; ++e) {
    const int64_t slot = cursor[rows[e]]++;
    col[slot] = static_cast<col_t>(cols[e]);
    perm[slot] = e;
  }
  // Each row by column, ties by edge id (they are already in that order).
  const int64_t grain = std::max<int64_t>(1, 4096 * num_nodes / std::max<int64_t>(num_edges, 1));
  at::parallel_for(0, num_nodes, grain, [&](int64_t r0, int64_t r1) {
    std::vector<std::pair<col_t, int64_t>> row;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t begin = rowptr[r], end = rowptr[r + 1];
      if (std::is_sorted(col + begin, col + end)) continue;
      row.clear();
      for (int64_t k = begin; k < end; ++k) row.emplace_back(col[k], perm[k]);
      std::sort(row.begin(), row.end());
      for (int64_t k = begin; k < end; ++k) {
        col[k] = row[k - begin].first;
        perm[k] = row[k - begin].second;
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> csr_by(const at::Tensor& rows,
                                                      const at::Tensor& cols,
                                                      int64_t num_nodes) {
  const int64_t num_edges = rows.numel();
  const auto index_type =
      num_nodes <= std::numeric_limits<int32_t>::max() ? at::kInt : at::kLong;
  auto rowptr = at::empty({num_nodes + 1}, rows.options().dtype(at::kLong));
  auto col = at::empty({num_edges}, rows.options().dtype(index_type));
  auto perm = at::empty({num_edges}, rows.options().dtype(at::kLong));
  AT_DISPATCH_INDEX_TYPES(rows.scalar_type(), "prepare_csr_cpu", [&] {
    using in_t = index_t;
    AT_DISPATCH_INDEX_TYPES(index_type, "prepare_csr_cpu_col", [&] {
      fill_csr(rows.data_ptr<in_t>(), cols.data_ptr<in_t>(), num_edges, num_nodes,
               rowptr.data_ptr<int64_t>(), col.data_ptr<index_t>(), perm.data_ptr<int64_t>());
    });
  });
  return {rowptr, col, perm};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
prepare_csr_cpu(const at::Tensor& edge_index, int64_t num_nodes) {
  check_prepare_csr_input(edge_index, num_nodes);
  const auto edges = edge_index.contiguous();
  const auto src = edges.select(0, 0), dst = edges.select(0, 1);  // contiguous rows
  auto [rowptr, col, perm] = csr_by(dst, src, num_nodes);
  auto [rowptr_t, col_t, perm_t] = csr_by(src, dst, num_nodes);
  return {rowptr, col, perm, rowptr_t, col_t, perm_t};
}

}  // namespace

TORCH_LIBRARY_IMPL(lightgcn_ext, CPU, m) {
  m.impl("prepare_csr", &prepare_csr_cpu);
}

}  // namespace lightgcn_ext
