// Argument checks and operand preparation shared by every backend of the
// lightgcn_ext ops.
//
// Each check names the argument and what was expected, so that a bad call
// fails with a readable message at the op boundary instead of inside a kernel.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

namespace lightgcn_ext {

// Validates a prepared graph (rowptr, col, weight?, dinv) against the
// features x it propagates: shapes, dtypes and devices.
void check_graph_and_x(const at::Tensor& rowptr, const at::Tensor& col,
                       const c10::optional<at::Tensor>& weight, const at::Tensor& dinv,
                       const at::Tensor& x);

// Validates what a CSR holds, not only its shape: rowptr runs from 0 to
// len(col) without decreasing, and every col is a node id. The CPU kernels
// call it (a pass over the edges, ~1 ms on Gowalla) so that a malformed CSR
// raises instead of reading out of bounds; on CUDA it would cost a host sync
// per call, so the CUDA kernels trust the CSR that prepare_csr built.
void check_csr_contents(const at::Tensor& rowptr, const at::Tensor& col, int64_t num_nodes);

// Validates the layer weights and returns the number of layers L = len(alpha) - 1.
int64_t check_alpha(const at::Tensor& alpha, const at::Tensor& x);

// Validates the extra tensor of `layer_dots`: same shape, dtype and device as x.
void check_like_x(const at::Tensor& t, const char* name, const at::Tensor& x);

// The graph operands of propagate / layer_dots, contiguous for the kernels.
struct GraphOperands {
  at::Tensor rowptr, col, dinv;
  c10::optional<at::Tensor> weight;
};
GraphOperands contiguous_graph(const at::Tensor& rowptr, const at::Tensor& col,
                               const c10::optional<at::Tensor>& weight, const at::Tensor& dinv);

// alpha_0 * x in x's dtype (computed in its accumulation type): propagate
// with no layers, or with nothing to propagate.
at::Tensor alpha0_times_x(const at::Tensor& x, const at::Tensor& alpha);

}  // namespace lightgcn_ext
