"""Fake (meta) kernels and autograd for the lightgcn_ext ops.

The C++ ops know nothing of autograd. Here they get fake kernels, so that
torch.compile can trace them, and one autograd.Function: the gradient of a
propagation is the same propagation on the transposed graph.
"""
import torch

_INT32_MAX = 2**31 - 1


def _opmath_dtype(dtype):
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@torch.library.register_fake("lightgcn_ext::prepare_csr")
def _prepare_csr_fake(edge_index, num_nodes):
    torch._check(edge_index.dim() == 2 and edge_index.shape[0] == 2)
    num_edges = edge_index.shape[1]
    rowptr = edge_index.new_empty(num_nodes + 1, dtype=torch.int64)
    col_dtype = torch.int32 if num_nodes <= _INT32_MAX else torch.int64
    col = edge_index.new_empty(num_edges, dtype=col_dtype)
    perm = edge_index.new_empty(num_edges, dtype=torch.int64)
    return rowptr, col, perm, torch.empty_like(rowptr), torch.empty_like(col), torch.empty_like(perm)


def _check_graph_and_x_fake(rowptr, col, weight, dinv, x, **others):
    tensors = dict(rowptr=rowptr, col=col, weight=weight, dinv=dinv, **others)
    for name, t in tensors.items():
        if t is not None:
            torch._check(t.device == x.device,
                         lambda: f"{name} must be on the device of x ({x.device}), "
                                 f"got {t.device}")
    torch._check(x.dim() == 2, lambda: f"x must be 2-D, got {x.dim()}-D")
    torch._check(rowptr.shape[0] == x.shape[0] + 1, lambda: "rowptr must have num_nodes + 1 entries")
    torch._check(dinv.shape[0] == x.shape[0], lambda: "dinv must have num_nodes entries")
    if weight is not None:
        torch._check(weight.shape[0] == col.shape[0], lambda: "weight must have one entry per edge")


@torch.library.register_fake("lightgcn_ext::propagate")
def _propagate_fake(rowptr, col, weight, dinv, x, alpha):
    _check_graph_and_x_fake(rowptr, col, weight, dinv, x, alpha=alpha)
    torch._check(alpha.dim() == 1 and alpha.shape[0] >= 1, lambda: "alpha must be 1-D, non-empty")
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("lightgcn_ext::layer_dots")
def _layer_dots_fake(rowptr, col, weight, dinv, x, grad, num_layers):
    _check_graph_and_x_fake(rowptr, col, weight, dinv, x, grad=grad)
    torch._check(grad.shape == x.shape, lambda: "grad must have the shape of x")
    return x.new_empty(num_layers + 1, dtype=_opmath_dtype(x.dtype))


class FusedPropagation(torch.autograd.Function):
    """out = sum_l alpha_l M^l x for a prepared graph M (no E x d state saved).

    Arguments after alpha are the graph: the CSR by destination, the CSR by
    source (the same tensors when the graph is symmetric) and dinv.
    """

    @staticmethod
    def forward(x, alpha, rowptr, col, weight, rowptr_t, col_t, weight_t, dinv):
        return torch.ops.lightgcn_ext.propagate(rowptr, col, weight, dinv, x, alpha)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, alpha, *graph = inputs
        # x is needed only for the gradient of alpha.
        saved_x = x if ctx.needs_input_grad[1] else None
        ctx.save_for_backward(saved_x, alpha, *graph)

    @staticmethod
    def backward(ctx, grad_out):
        x, alpha, *graph = ctx.saved_tensors
        grad_x = grad_alpha = None
        if ctx.needs_input_grad[0]:
            # The adjoint of M is M^T: the same propagation on the transposed graph.
            grad_x = FusedPropagation.apply(grad_out, alpha, *_transposed(graph))
        if ctx.needs_input_grad[1]:
            grad_alpha = LayerDots.apply(x, grad_out, alpha.shape[0] - 1, *graph).to(alpha.dtype)
        return (grad_x, grad_alpha) + (None,) * len(graph)


class LayerDots(torch.autograd.Function):
    """[<M^l x, grad> for l = 0..L]: the gradient of a propagation w.r.t. alpha.
    Differentiable itself (d/dx = sum_l v_l (M^T)^l grad, d/dgrad = sum_l v_l
    M^l x), so that double backward through alpha is right."""

    @staticmethod
    def forward(x, grad, num_layers, rowptr, col, weight, rowptr_t, col_t, weight_t, dinv):
        return torch.ops.lightgcn_ext.layer_dots(rowptr, col, weight, dinv, x,
                                                 grad.contiguous(), num_layers)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, grad, _, *graph = inputs
        ctx.save_for_backward(x, grad, *graph)

    @staticmethod
    def backward(ctx, grad_dots):
        x, grad, *graph = ctx.saved_tensors
        grad_x = grad_grad = None
        if ctx.needs_input_grad[0]:
            grad_x = FusedPropagation.apply(grad, grad_dots, *_transposed(graph))
        if ctx.needs_input_grad[1]:
            grad_grad = FusedPropagation.apply(x, grad_dots, *graph)
        return (grad_x, grad_grad, None) + (None,) * len(graph)


def _transposed(graph):
    """(rowptr, col, weight, rowptr_t, col_t, weight_t, dinv) of M^T."""
    rowptr, col, weight, rowptr_t, col_t, weight_t, dinv = graph
    return rowptr_t, col_t, weight_t, rowptr, col, weight, dinv
