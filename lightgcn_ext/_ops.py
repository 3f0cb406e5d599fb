"""The lightgcn_ext ops seen from Python: fake kernels and autograd, registered
on the ops themselves (torch.library), so that torch.compile traces them and
`torch.ops.lightgcn_ext.propagate` is differentiable however it is called.

The gradient of a propagation is the same propagation on the transposed
graph, which the op's schema carries for that purpose; nothing of size E x d
or L x N x d is saved.
"""
from typing import NamedTuple, Optional

import torch
from torch import Tensor

_INT32_MAX = 2**31 - 1


def accumulation_dtype(dtype):
    """The type the kernels accumulate `dtype` features in (at::opmath_type):
    float32 for float16 and bfloat16, the type itself otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class CsrOperator(NamedTuple):
    """The operands of a prepared graph, in the order of the ops' schemas: the
    CSR of M by destination and dinv, then the CSR of M^T (all None when the
    graph is symmetric, M^T = M). `weight` and `dinv` are in the accumulation
    type of the features they propagate."""

    rowptr: Tensor
    col: Tensor
    weight: Optional[Tensor]
    dinv: Tensor
    rowptr_t: Optional[Tensor]
    col_t: Optional[Tensor]
    weight_t: Optional[Tensor]

    def transposed(self):
        """The operands of M^T."""
        if self.rowptr_t is None:
            return self
        return CsrOperator(self.rowptr_t, self.col_t, self.weight_t, self.dinv,
                           self.rowptr, self.col, self.weight)


def propagate(operator: CsrOperator, x: Tensor, alpha: Tensor, bf16: bool = False) -> Tensor:
    """sum_l alpha_l M^l x; differentiable in x and alpha. bf16 (float32 x):
    the layers the sweeps gather, forward and backward, stored in bfloat16."""
    return torch.ops.lightgcn_ext.propagate(*operator, x, alpha, bf16)


def propagate_rows(operator: CsrOperator, x: Tensor, alpha: Tensor, rows: Tensor,
                   bf16: bool = False):
    """((sum_l alpha_l M^l x)[rows], x[rows]) for int64 rows (repeats
    allowed); differentiable in x and alpha. The last sweep computes the
    listed rows only, and the gradient of x (from both outputs) is one
    [N, d] array whose first backward sweep reads the listed rows' edges
    only: the same numbers as propagate followed by indexing, at about
    L - 1 + L full sweeps instead of 2 L. bf16 as for propagate."""
    return torch.ops.lightgcn_ext.propagate_rows(*operator, x, alpha, rows, bf16)


def layer_dots(operator: CsrOperator, x: Tensor, grad: Tensor, num_layers: int) -> Tensor:
    """[<M^l x, grad> for l = 0..num_layers]; differentiable in x and grad."""
    return torch.ops.lightgcn_ext.layer_dots(*operator, x, grad, num_layers)


# ------------------------------------------------------------ fake kernels
# Shapes, and the one check the dispatcher needs from them: a meta tensor
# among real ones dispatches here, not to the C++ kernel that would refuse the
# mix. The other checks are at the public boundary (Python) and, where memory
# safety needs them, in the C++ ops.
@torch.library.register_fake("lightgcn_ext::prepare_csr")
def _prepare_csr_fake(edge_index, num_nodes):
    num_edges = edge_index.shape[1]
    rowptr = edge_index.new_empty(num_nodes + 1, dtype=torch.int64)
    col_dtype = torch.int32 if num_nodes <= _INT32_MAX else torch.int64
    col = edge_index.new_empty(num_edges, dtype=col_dtype)
    perm = edge_index.new_empty(num_edges, dtype=torch.int64)
    return rowptr, col, perm, torch.empty_like(rowptr), torch.empty_like(col), torch.empty_like(perm)


def _check_one_device(x, **tensors):
    for name, t in tensors.items():
        if t is not None:
            torch._check(t.device == x.device,
                         lambda: f"{name} must be on the device of x ({x.device}), got {t.device}")


def _check_bf16(bf16, features, name):
    torch._check(not bf16 or features.dtype == torch.float32,
                 lambda: f"bf16=True stores the layers of float32 {name} in bfloat16: {name} "
                         f"must be float32, got {features.dtype}")


@torch.library.register_fake("lightgcn_ext::propagate")
def _propagate_fake(rowptr, col, weight, dinv, rowptr_t, col_t, weight_t, x, alpha, bf16=False):
    _check_bf16(bf16, x, "x")
    _check_one_device(x, rowptr=rowptr, col=col, weight=weight, dinv=dinv, alpha=alpha)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("lightgcn_ext::propagate_rows")
def _propagate_rows_fake(rowptr, col, weight, dinv, rowptr_t, col_t, weight_t, x, alpha, rows,
                         bf16=False):
    _check_bf16(bf16, x, "x")
    _check_one_device(x, rowptr=rowptr, col=col, weight=weight, dinv=dinv, alpha=alpha, rows=rows)
    shape = (rows.shape[0], x.shape[1])
    return x.new_empty(shape), x.new_empty(shape)


@torch.library.register_fake("lightgcn_ext::propagate_rows_backward")
def _propagate_rows_backward_fake(rowptr, col, weight, dinv, rowptr_t, col_t, weight_t, grad,
                                  grad_x_rows, alpha, rows, bf16=False):
    _check_bf16(bf16, grad, "grad")
    _check_one_device(grad, rowptr=rowptr, col=col, weight=weight, dinv=dinv, alpha=alpha,
                      rows=rows, grad_x_rows=grad_x_rows)
    return grad.new_empty((dinv.shape[0], grad.shape[1]))


@torch.library.register_fake("lightgcn_ext::layer_dots")
def _layer_dots_fake(rowptr, col, weight, dinv, rowptr_t, col_t, weight_t, x, grad, num_layers):
    _check_one_device(x, rowptr=rowptr, col=col, weight=weight, dinv=dinv, grad=grad)
    return x.new_empty(num_layers + 1, dtype=accumulation_dtype(x.dtype))


# --------------------------------------------------------------- autograd
# Positions in the schemas: the graph operands come first, then the tensors
# (needs_input_grad is indexed from the front: in setup_context it has an
# extra entry at the end).
_NUM_GRAPH_OPERANDS = len(CsrOperator._fields)
_NO_GRAPH_GRADS = (None,) * _NUM_GRAPH_OPERANDS
_FIRST, _SECOND = _NUM_GRAPH_OPERANDS, _NUM_GRAPH_OPERANDS + 1  # (x, alpha) or (x, grad)


def _propagate_setup_context(ctx, inputs, output):
    *graph, x, alpha, bf16 = inputs
    # x is needed only for the gradient of alpha.
    ctx.save_for_backward(x if ctx.needs_input_grad[_SECOND] else None, alpha, *graph)
    ctx.bf16 = bf16


def _propagate_backward(ctx, grad_out):
    x, alpha, *graph = ctx.saved_tensors
    operator = CsrOperator(*graph)
    needs_x, needs_alpha = ctx.needs_input_grad[_FIRST], ctx.needs_input_grad[_SECOND]
    # The adjoint of M is M^T: the same propagation on the transposed graph,
    # its gathered layers stored as the forward's were.
    grad_x = propagate(operator.transposed(), grad_out, alpha, ctx.bf16) if needs_x else None
    grad_alpha = None
    if needs_alpha:
        grad_alpha = layer_dots(operator, x, grad_out, alpha.shape[0] - 1).to(alpha.dtype)
    return _NO_GRAPH_GRADS + (grad_x, grad_alpha, None)


def _propagate_rows_setup_context(ctx, inputs, output):
    *graph, x, alpha, rows, bf16 = inputs
    ctx.save_for_backward(x if ctx.needs_input_grad[_SECOND] else None, alpha, rows, *graph)
    ctx.x_shape, ctx.x_dtype, ctx.bf16 = x.shape, x.dtype, bf16


def _propagate_rows_backward(ctx, grad_out, grad_x_rows):
    x, alpha, rows, *graph = ctx.saved_tensors
    operator = CsrOperator(*graph)
    needs_x, needs_alpha = ctx.needs_input_grad[_FIRST], ctx.needs_input_grad[_SECOND]
    if grad_out is None:  # only x[rows] was used
        grad_out = torch.zeros((rows.shape[0], ctx.x_shape[1]), dtype=ctx.x_dtype,
                               device=rows.device)
    grad_x = None
    if needs_x:
        grad_x = torch.ops.lightgcn_ext.propagate_rows_backward(*operator, grad_out, grad_x_rows,
                                                                alpha, rows, ctx.bf16)
    grad_alpha = None
    if needs_alpha:
        # <M^l x, G> with G the batch's gradient scattered to its rows: the
        # full layer_dots (alpha is a trained parameter in few models).
        dense = grad_out.new_zeros(ctx.x_shape).index_add_(0, rows, grad_out)
        grad_alpha = layer_dots(operator, x, dense, alpha.shape[0] - 1).to(alpha.dtype)
    return _NO_GRAPH_GRADS + (grad_x, grad_alpha, None, None)


def _layer_dots_setup_context(ctx, inputs, output):
    *graph, x, grad, _ = inputs
    ctx.save_for_backward(x, grad, *graph)


def _layer_dots_backward(ctx, grad_dots):
    """d/dx = sum_l v_l (M^T)^l grad and d/dgrad = sum_l v_l M^l x, for
    double backward through alpha."""
    x, grad, *graph = ctx.saved_tensors
    operator = CsrOperator(*graph)
    needs_x, needs_grad = ctx.needs_input_grad[_FIRST], ctx.needs_input_grad[_SECOND]
    grad_x = propagate(operator.transposed(), grad, grad_dots) if needs_x else None
    grad_grad = propagate(operator, x, grad_dots) if needs_grad else None
    return _NO_GRAPH_GRADS + (grad_x, grad_grad, None)


torch.library.register_autograd("lightgcn_ext::propagate", _propagate_backward,
                                setup_context=_propagate_setup_context)
torch.library.register_autograd("lightgcn_ext::propagate_rows", _propagate_rows_backward,
                                setup_context=_propagate_rows_setup_context)
torch.library.register_autograd("lightgcn_ext::layer_dots", _layer_dots_backward,
                                setup_context=_layer_dots_setup_context)
