// The checks that keep the kernels' memory accesses in bounds, and the operand
// preparation shared by every backend of the lightgcn_ext ops.
//
// Each check names the argument and what was expected, so that a bad call of
// a raw op fails with a readable message instead of inside a kernel. The
// checks of the public API's arguments are in Python.
#pragma once

#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>

namespace lightgcn_ext {

using OptTensor = c10::optional<at::Tensor>;

// The graph operands of propagate / layer_dots, contiguous for the kernels.
struct GraphOperands {
  at::Tensor rowptr, col, dinv;
  OptTensor weight;
};

// The checked operands of a propagate call: the graph and x made contiguous,
// and the number of layers L = len(alpha) - 1.
struct PropagateOperands {
  GraphOperands graph;
  at::Tensor x;
  int64_t num_layers;
};
PropagateOperands checked_propagate_operands(const at::Tensor& rowptr, const at::Tensor& col,
                                             const OptTensor& weight, const at::Tensor& dinv,
                                             const at::Tensor& x, const at::Tensor& alpha);

// The checked operands of a layer_dots call, contiguous.
struct LayerDotsOperands {
  GraphOperands graph;
  at::Tensor x, grad;
};
LayerDotsOperands checked_layer_dots_operands(const at::Tensor& rowptr, const at::Tensor& col,
                                              const OptTensor& weight, const at::Tensor& dinv,
                                              const at::Tensor& x, const at::Tensor& grad,
                                              int64_t num_layers);

// The checked operands of a propagate_rows call: those of propagate, and
// rows (int64, 1-D, on the device of x), contiguous.
struct PropagateRowsOperands {
  PropagateOperands propagate;
  at::Tensor rows;
};
PropagateRowsOperands checked_propagate_rows_operands(
    const at::Tensor& rowptr, const at::Tensor& col, const OptTensor& weight,
    const at::Tensor& dinv, const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& rows);

// The checked operands of a propagate_rows_backward call, contiguous: the
// graph of M, that of M^T (M's own where the transposed operands are None),
// grad [len(rows), d], grad_x_rows (like grad, optional), rows, and L.
struct PropagateRowsBackwardOperands {
  GraphOperands graph, graph_t;
  at::Tensor grad;
  OptTensor grad_x_rows;
  at::Tensor rows;
  int64_t num_layers;
};
PropagateRowsBackwardOperands checked_propagate_rows_backward_operands(
    const at::Tensor& rowptr, const at::Tensor& col, const OptTensor& weight,
    const at::Tensor& dinv, const OptTensor& rowptr_t, const OptTensor& col_t,
    const OptTensor& weight_t, const at::Tensor& grad, const OptTensor& grad_x_rows,
    const at::Tensor& alpha, const at::Tensor& rows);

// Every entry of rows is a node id in [0, num_nodes) (one host read: the CPU
// kernels call it; the CUDA kernels trust the ids, as they trust the CSR).
void check_row_values(const at::Tensor& rows, int64_t num_nodes);

// Validates what a CSR holds, not only its shape: rowptr runs from 0 to
// len(col) without decreasing, and every col is a node id. The CPU kernels
// call it so that a malformed CSR raises instead of reading out of bounds; on
// CUDA it would cost a host sync per call, so the CUDA kernels trust the CSR
// that prepare_csr built. A pass over the edges costs a few percent of a
// training step on Gowalla, so a CSR found valid is remembered (by its
// storages and their version counters, which any in-place change bumps) and
// not read again while it is alive and unchanged.
void check_csr_contents(const at::Tensor& rowptr, const at::Tensor& col, int64_t num_nodes);

// The arguments of prepare_csr, for every backend: edge_index [2, E] int32 or
// int64 with ids in [0, num_nodes) (a ValueError otherwise; one host read).
void check_prepare_csr_input(const at::Tensor& edge_index, int64_t num_nodes);

// bf16 = True (the layers that the sweeps of propagate and its row variants
// gather, stored in bfloat16) takes float32 features only; `name` is the
// features' argument (x, or grad for a backward).
void check_bf16_features(bool bf16, const at::Tensor& features, const char* name);

// alpha_0 * x in x's dtype (computed in its accumulation type): propagate
// with no layers, or with nothing to propagate.
at::Tensor alpha0_times_x(const at::Tensor& x, const at::Tensor& alpha);

}  // namespace lightgcn_ext
