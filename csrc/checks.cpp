// The checks that keep the kernels' memory accesses in bounds, and the
// operand preparation shared by the CPU and CUDA front-ends. The checks that
// help a user (argument names of the public API, value ranges that are not a
// memory hazard) live in Python, at the public boundary.
#include "checks.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <mutex>
#include <vector>

namespace lightgcn_ext {
namespace {

// Validates a prepared graph (rowptr, col, weight?, dinv) against the
// features x it propagates: shapes, dtypes and devices.
// The graph operands for features of type `type` on `device` with n rows.
void check_graph(const at::Tensor& rowptr, const at::Tensor& col, const OptTensor& weight,
                 const at::Tensor& dinv, int64_t n, at::ScalarType type, at::Device device) {
  const auto acc_type = at::toOpMathType(type);
  TORCH_CHECK(rowptr.dim() == 1 && rowptr.numel() == n + 1,
              "rowptr must be 1-D with num_nodes + 1 = ", n + 1, " entries, got shape ",
              rowptr.sizes());
  TORCH_CHECK(rowptr.scalar_type() == at::kLong, "rowptr must be int64, got ", rowptr.scalar_type());
  TORCH_CHECK(col.dim() == 1, "col must be 1-D, got shape ", col.sizes());
  TORCH_CHECK(col.scalar_type() == at::kInt || col.scalar_type() == at::kLong,
              "col must be int32 or int64, got ", col.scalar_type());
  TORCH_CHECK(dinv.dim() == 1 && dinv.numel() == n,
              "dinv must be 1-D with num_nodes = ", n, " entries, got shape ", dinv.sizes());
  TORCH_CHECK(dinv.scalar_type() == acc_type, "dinv must have dtype ", acc_type,
              " (the accumulation type of the features, ", type, "), got ", dinv.scalar_type());
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

void check_graph_and_x(const at::Tensor& rowptr, const at::Tensor& col,
                       const OptTensor& weight, const at::Tensor& dinv,
                       const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2, "x must be 2-D [num_nodes, dim], got shape ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "x must be float16, bfloat16, float32 or float64, got ", x.scalar_type());
  check_graph(rowptr, col, weight, dinv, x.size(0), x.scalar_type(), x.device());
}

void check_rows(const at::Tensor& rows, const at::Tensor& like) {
  TORCH_CHECK(rows.dim() == 1, "rows must be 1-D, got shape ", rows.sizes());
  TORCH_CHECK(rows.scalar_type() == at::kLong, "rows must be int64, got ", rows.scalar_type());
  TORCH_CHECK(rows.device() == like.device(), "rows must be on the device of the features (",
              like.device(), "), got ", rows.device());
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
                               const OptTensor& weight, const at::Tensor& dinv) {
  GraphOperands g{rowptr.contiguous(), col.contiguous(), dinv.contiguous(), c10::nullopt};
  if (weight.has_value()) g.weight = weight->contiguous();
  return g;
}

}  // namespace

PropagateOperands checked_propagate_operands(const at::Tensor& rowptr, const at::Tensor& col,
                                             const OptTensor& weight, const at::Tensor& dinv,
                                             const at::Tensor& x, const at::Tensor& alpha) {
  check_graph_and_x(rowptr, col, weight, dinv, x);
  const int64_t num_layers = check_alpha(alpha, x);
  return {contiguous_graph(rowptr, col, weight, dinv), x.contiguous(), num_layers};
}

LayerDotsOperands checked_layer_dots_operands(const at::Tensor& rowptr, const at::Tensor& col,
                                              const OptTensor& weight, const at::Tensor& dinv,
                                              const at::Tensor& x, const at::Tensor& grad,
                                              int64_t num_layers) {
  check_graph_and_x(rowptr, col, weight, dinv, x);
  check_like_x(grad, "grad", x);
  TORCH_CHECK(num_layers >= 0, "num_layers must be >= 0, got ", num_layers);
  return {contiguous_graph(rowptr, col, weight, dinv), x.contiguous(), grad.contiguous()};
}

PropagateRowsOperands checked_propagate_rows_operands(
    const at::Tensor& rowptr, const at::Tensor& col, const OptTensor& weight,
    const at::Tensor& dinv, const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& rows) {
  auto args = checked_propagate_operands(rowptr, col, weight, dinv, x, alpha);
  check_rows(rows, x);
  return {std::move(args), rows.contiguous()};
}

PropagateRowsBackwardOperands checked_propagate_rows_backward_operands(
    const at::Tensor& rowptr, const at::Tensor& col, const OptTensor& weight,
    const at::Tensor& dinv, const OptTensor& rowptr_t, const OptTensor& col_t,
    const OptTensor& weight_t, const at::Tensor& grad, const OptTensor& grad_x_rows,
    const at::Tensor& alpha, const at::Tensor& rows) {
  TORCH_CHECK(grad.dim() == 2, "grad must be 2-D [len(rows), dim], got shape ", grad.sizes());
  TORCH_CHECK(at::isFloatingType(grad.scalar_type()),
              "grad must be float16, bfloat16, float32 or float64, got ", grad.scalar_type());
  check_rows(rows, grad);
  TORCH_CHECK(rows.numel() == grad.size(0), "grad must have one row per entry of rows (",
              rows.numel(), "), got ", grad.size(0));
  if (grad_x_rows.has_value()) check_like_x(*grad_x_rows, "grad_x_rows", grad);
  const int64_t n = dinv.numel();
  check_graph(rowptr, col, weight, dinv, n, grad.scalar_type(), grad.device());
  const bool transposed = rowptr_t.has_value();
  TORCH_CHECK(transposed == col_t.has_value() && (transposed || !weight_t.has_value()),
              "rowptr_t and col_t must be both given or both None (weight_t None with them)");
  TORCH_CHECK(weight.has_value() == (transposed ? weight_t.has_value() : weight.has_value()),
              "weight and weight_t must be both given or both None");
  if (transposed) {
    check_graph(*rowptr_t, *col_t, weight_t, dinv, n, grad.scalar_type(), grad.device());
    TORCH_CHECK(col_t->numel() == col.numel(), "col_t must have one entry per edge (",
                col.numel(), "), got ", col_t->numel());
  }
  PropagateRowsBackwardOperands args{
      contiguous_graph(rowptr, col, weight, dinv),
      transposed ? contiguous_graph(*rowptr_t, *col_t, weight_t, dinv)
                 : contiguous_graph(rowptr, col, weight, dinv),
      grad.contiguous(), c10::nullopt, rows.contiguous(), check_alpha(alpha, grad)};
  if (grad_x_rows.has_value()) args.grad_x_rows = grad_x_rows->contiguous();
  return args;
}

void check_row_values(const at::Tensor& rows, int64_t num_nodes) {
  if (rows.numel() == 0) return;
  const auto [lo, hi] = at::aminmax(rows);
  TORCH_CHECK(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < num_nodes,
              "rows must hold node ids in [0, num_nodes = ", num_nodes, "), got values in [",
              lo.item<int64_t>(), ", ", hi.item<int64_t>(), "]");
}

namespace {

// A tensor's identity and contents as of a check: its storage (held weakly,
// so that a later storage cannot take its address while remembered), where it
// starts in it and its version counter.
struct TensorStamp {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;
  const void* data;
  int64_t numel;
  at::ScalarType dtype;
  uint32_t version;

  explicit TensorStamp(const at::Tensor& t)
      : storage(t.storage().getWeakStorageImpl()),
        data(t.const_data_ptr()),
        numel(t.numel()),
        dtype(t.scalar_type()),
        version(t._version()) {}

  bool matches(const at::Tensor& t) const {
    auto alive = storage.lock();
    return alive && alive.get() == t.storage().unsafeGetStorageImpl() &&
           data == t.const_data_ptr() && numel == t.numel() &&
           dtype == t.scalar_type() && version == t._version();
  }
};

struct CheckedCsr {
  TensorStamp rowptr, col;
  int64_t num_nodes;
};

// The CSRs found valid most recently (a run uses one or two: M and M^T).
class CheckedCsrs {
 public:
  bool contains(const at::Tensor& rowptr, const at::Tensor& col, int64_t num_nodes) {
    std::lock_guard<std::mutex> lock(mutex_);
    return std::any_of(entries_.begin(), entries_.end(), [&](const CheckedCsr& e) {
      return e.num_nodes == num_nodes && e.rowptr.matches(rowptr) && e.col.matches(col);
    });
  }

  void add(const at::Tensor& rowptr, const at::Tensor& col, int64_t num_nodes) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (entries_.size() == kCapacity) entries_.erase(entries_.begin());
    entries_.push_back(CheckedCsr{TensorStamp(rowptr), TensorStamp(col), num_nodes});
  }

 private:
  static constexpr size_t kCapacity = 8;
  std::mutex mutex_;
  std::vector<CheckedCsr> entries_;
};

CheckedCsrs& checked_csrs() {
  static CheckedCsrs csrs;
  return csrs;
}

// Inference tensors keep no version counter: they are checked every time.
bool rememberable(const at::Tensor& t) { return !t.is_inference(); }

}  // namespace

void check_csr_contents(const at::Tensor& rowptr, const at::Tensor& col, int64_t num_nodes) {
  const bool remember = rememberable(rowptr) && rememberable(col);
  if (remember && checked_csrs().contains(rowptr, col, num_nodes)) return;
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
  if (remember) checked_csrs().add(rowptr, col, num_nodes);
}

void check_bf16_features(bool bf16, const at::Tensor& features, const char* name) {
  TORCH_CHECK(!bf16 || features.scalar_type() == at::kFloat,
              "bf16=True stores the layers of float32 ", name, " in bfloat16: ", name,
              " must be float32, got ", features.scalar_type());
}

at::Tensor alpha0_times_x(const at::Tensor& x, const at::Tensor& alpha) {
  const auto acc_type = at::toOpMathType(x.scalar_type());
  return (x.to(acc_type) * alpha[0].to(acc_type)).to(x.scalar_type());
}

}  // namespace lightgcn_ext
