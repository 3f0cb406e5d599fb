// Schemas of every lightgcn_ext op, the checks at their boundary, and the
// device-generic graph preparation.
//
// Notation: a CSR (rowptr, col, weight?) with rows = destinations and
// cols = sources, dinv = deg^-1/2 of the destinations, W the (optionally
// weighted) adjacency, M = D^-1/2 W D^-1/2 the normalized operator.
// The same ops serve the forward (CSR by destination) and the backward
// (the transposed CSR, i.e. rows = sources), because M^T has the same form.
#include "checks.h"

#include <ATen/ATen.h>
#include <torch/library.h>

namespace lightgcn_ext {

void check_graph_and_x(const at::Tensor& rowptr, const at::Tensor& col,
                       const c10::optional<at::Tensor>& weight, const at::Tensor& dinv,
                       const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2, "x must be 2-D [num_nodes, dim], got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  const int64_t n = x.size(0);
  const auto acc_type = at::toOpMathType(x.scalar_type());
  TORCH_CHECK(rowptr.dim() == 1 && rowptr.numel() == n + 1,
              "rowptr must be 1-D with num_nodes + 1 = ", n + 1, " entries (x has ", n,
              " rows), got shape ", rowptr.sizes());
  TORCH_CHECK(rowptr.scalar_type() == at::kLong, "rowptr must be int64, got ", rowptr.scalar_type());
  TORCH_CHECK(col.dim() == 1, "col must be 1-D, got shape ", col.sizes());
  TORCH_CHECK(col.scalar_type() == at::kInt || col.scalar_type() == at::kLong,
              "col must be int32 or int64, got ", col.scalar_type());
  TORCH_CHECK(dinv.dim() == 1 && dinv.numel() == n,
              "dinv must be 1-D with num_nodes = ", n, " entries, got shape ", dinv.sizes());
  TORCH_CHECK(dinv.scalar_type() == acc_type, "dinv must have dtype ", acc_type,
              " (the accumulation type of x, ", x.scalar_type(), "), got ", dinv.scalar_type());
  const auto device = x.device();
  TORCH_CHECK(rowptr.device() == device && col.device() == device && dinv.device() == device,
              "rowptr, col and dinv must be on the device of x (", device, "), got ",
              rowptr.device(), ", ", col.device(), ", ", dinv.device());
  if (weight.has_value()) {
    const auto& w = *weight;
    TORCH_CHECK(w.dim() == 1 && w.numel() == col.numel(),
                "weight must be 1-D with one entry per edge (", col.numel(), "), got shape ",
                w.sizes());
    TORCH_CHECK(w.scalar_type() == acc_type, "weight must have dtype ", acc_type,
                " (the accumulation type of x), got ", w.scalar_type());
    TORCH_CHECK(w.device() == device, "weight must be on the device of x (", device, "), got ",
                w.device());
  }
}

void check_csr_contents(const at::Tensor& rowptr, const at::Tensor& col, int64_t num_nodes) {
  const int64_t num_edges = col.numel();
  TORCH_CHECK(rowptr[0].item<int64_t>() == 0 && rowptr[-1].item<int64_t>() == num_edges,
              "rowptr must run from 0 to len(col) = ", num_edges, ", got ", rowptr[0].item<int64_t>(),
              " to ", rowptr[-1].item<int64_t>());
  TORCH_CHECK(num_nodes == 0 || !(rowptr.diff() < 0).any().item<bool>(),
              "rowptr must be non-decreasing");
  if (num_edges > 0) {
    const auto [lo, hi] = at::aminmax(col);
    TORCH_CHECK(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < num_nodes,
                "col must hold node ids in [0, num_nodes = ", num_nodes, "), got values in [",
                lo.item<int64_t>(), ", ", hi.item<int64_t>(), "]");
  }
}

int64_t check_alpha(const at::Tensor& alpha, const at::Tensor& x) {
  TORCH_CHECK(alpha.dim() == 1 && alpha.numel() >= 1,
              "alpha must be 1-D with num_layers + 1 >= 1 entries, got shape ", alpha.sizes());
  TORCH_CHECK(alpha.device() == x.device(), "alpha must be on the device of x (", x.device(),
              "), got ", alpha.device());
  TORCH_CHECK(!at::isComplexType(alpha.scalar_type()) && alpha.scalar_type() != at::kBool,
              "alpha must be a real number tensor, got ", alpha.scalar_type());
  return alpha.numel() - 1;
}

void check_like_x(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.sizes() == x.sizes(), name, " must have the shape of x ", x.sizes(), ", got ",
              t.sizes());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), name, " must have the dtype of x (",
              x.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), name, " must be on the device of x (", x.device(),
              "), got ", t.device());
}

GraphOperands contiguous_graph(const at::Tensor& rowptr, const at::Tensor& col,
                               const c10::optional<at::Tensor>& weight, const at::Tensor& dinv) {
  GraphOperands g{rowptr.contiguous(), col.contiguous(), dinv.contiguous(), c10::nullopt};
  if (weight.has_value()) g.weight = weight->contiguous();
  return g;
}

at::Tensor alpha0_times_x(const at::Tensor& x, const at::Tensor& alpha) {
  const auto acc_type = at::toOpMathType(x.scalar_type());
  return (x.to(acc_type) * alpha[0].to(acc_type)).to(x.scalar_type());
}

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
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> prepare_csr(
    const at::Tensor& edge_index, int64_t num_nodes) {
  TORCH_CHECK(edge_index.dim() == 2 && edge_index.size(0) == 2,
              "edge_index must have shape [2, num_edges], got ", edge_index.sizes());
  TORCH_CHECK(edge_index.scalar_type() == at::kInt || edge_index.scalar_type() == at::kLong,
              "edge_index must be int32 or int64, got ", edge_index.scalar_type());
  TORCH_CHECK(num_nodes > 0, "num_nodes must be positive, got ", num_nodes);
  if (edge_index.size(1) > 0) {
    const auto [lo, hi] = at::aminmax(edge_index);
    const int64_t min_index = lo.item<int64_t>(), max_index = hi.item<int64_t>();
    TORCH_CHECK(min_index >= 0 && max_index < num_nodes,
                "edge_index must hold node ids in [0, num_nodes = ", num_nodes,
                "), got values in [", min_index, ", ", max_index, "]");
  }
  const auto src = edge_index.select(0, 0), dst = edge_index.select(0, 1);
  auto [rowptr, col, perm] = coo_to_csr(dst, src, num_nodes);
  auto [rowptr_t, col_t, perm_t] = coo_to_csr(src, dst, num_nodes);
  return {rowptr, col, perm, rowptr_t, col_t, perm_t};
}

}  // namespace

TORCH_LIBRARY(lightgcn_ext, m) {
  // CSR of the graph by destination (rowptr, col, perm) and by source
  // (rowptr_t, col_t, perm_t); perm maps a CSR slot to its edge id.
  m.def(
      "prepare_csr(Tensor edge_index, int num_nodes) -> (Tensor rowptr, Tensor col, "
      "Tensor perm, Tensor rowptr_t, Tensor col_t, Tensor perm_t)");
  // sum_{l=0..L} alpha_l M^l x, L = len(alpha) - 1, by Horner's scheme.
  // With the transposed CSR it is the backward: dx = sum_l alpha_l (M^T)^l grad.
  m.def(
      "propagate(Tensor rowptr, Tensor col, Tensor? weight, Tensor dinv, Tensor x, "
      "Tensor alpha) -> Tensor");
  // [<M^l x, grad> for l = 0..num_layers]: the gradient of propagate w.r.t. alpha.
  m.def(
      "layer_dots(Tensor rowptr, Tensor col, Tensor? weight, Tensor dinv, Tensor x, "
      "Tensor grad, int num_layers) -> Tensor");
}

TORCH_LIBRARY_IMPL(lightgcn_ext, CompositeExplicitAutograd, m) {
  m.impl("prepare_csr", &prepare_csr);
}

}  // namespace lightgcn_ext
