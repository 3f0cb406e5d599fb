// The schemas of every lightgcn_ext op, in one place. The kernels register
// per dispatch key (csrc/cpu, csrc/cuda); fake kernels and autograd are
// attached in Python (lightgcn_ext/_ops.py).
//
// Notation: a CSR (rowptr, col, weight?) with rows = destinations and
// cols = sources, dinv = deg^-1/2 of the destinations, W the (optionally
// weighted) adjacency, M = D^-1/2 W D^-1/2 the normalized operator.
// M^T has the same form on the transposed CSR (rowptr_t, col_t, weight_t),
// so one kernel serves the forward and the backward.
//
// bf16 (propagate and its row variants, float32 features only): the layers
// that the sweeps gather (the scaled copy of the features and every
// intermediate layer) are stored in bfloat16, half the bytes; every sum, the
// features' own term and the result stay float32. False leaves the numbers
// exactly those of the float32 kernels.
#include <torch/library.h>

TORCH_LIBRARY(lightgcn_ext, m) {
  // CSR of the graph by destination (rowptr, col, perm) and by source
  // (rowptr_t, col_t, perm_t); perm maps a CSR slot to its edge id.
  m.def(
      "prepare_csr(Tensor edge_index, int num_nodes) -> (Tensor rowptr, Tensor col, "
      "Tensor perm, Tensor rowptr_t, Tensor col_t, Tensor perm_t)");
  // sum_{l=0..L} alpha_l M^l x, L = len(alpha) - 1, by Horner's scheme.
  // The kernels read only (rowptr, col, weight, dinv). The transposed CSR is
  // what the backward propagates over (dx = sum_l alpha_l (M^T)^l grad); all
  // three None mean that M is symmetric and M^T is M.
  m.def(
      "propagate(Tensor rowptr, Tensor col, Tensor? weight, Tensor dinv, Tensor? rowptr_t, "
      "Tensor? col_t, Tensor? weight_t, Tensor x, Tensor alpha, bool bf16=False) -> Tensor");
  // ((sum_l alpha_l M^l x)[rows], x[rows]): propagate read at the listed rows
  // only (repeats allowed), whose last sweep computes only those rows; and
  // the rows of x themselves, so that a loss on both (BPR and its L2 term)
  // has one backward.
  m.def(
      "propagate_rows(Tensor rowptr, Tensor col, Tensor? weight, Tensor dinv, Tensor? rowptr_t, "
      "Tensor? col_t, Tensor? weight_t, Tensor x, Tensor alpha, Tensor rows, bool bf16=False) "
      "-> (Tensor, Tensor)");
  // The gradient of propagate_rows w.r.t. x, [num_nodes, d]: sum_l alpha_l (M^T)^l G
  // + G0, with G and G0 zero outside rows and grad, grad_x_rows there
  // (repeats summed). Its first sweep reads the edges of M's rows `rows` only.
  m.def(
      "propagate_rows_backward(Tensor rowptr, Tensor col, Tensor? weight, Tensor dinv, "
      "Tensor? rowptr_t, Tensor? col_t, Tensor? weight_t, Tensor grad, Tensor? grad_x_rows, "
      "Tensor alpha, Tensor rows, bool bf16=False) -> Tensor");
  // [<M^l x, grad> for l = 0..num_layers]: the gradient of propagate w.r.t. alpha.
  m.def(
      "layer_dots(Tensor rowptr, Tensor col, Tensor? weight, Tensor dinv, Tensor? rowptr_t, "
      "Tensor? col_t, Tensor? weight_t, Tensor x, Tensor grad, int num_layers) -> Tensor");
}
