"""The functional API: out = sum_{l=0..L} alpha_l Â^l x."""
import weakref

import torch

from . import _ops, validation
from .cache import prepare
from .graph import Graph, tensor_version

# How the fused kernels store the layers their sweeps gather: "float32" (as
# x), or "bf16" (bfloat16, half the bytes read; float32 x only, float32 sums).
PRECISIONS = ("float32", "bf16")


def propagate(edge_index, x, alpha, *, edge_weight=None, normalize=None, flow=None,
              precision="float32"):
    """LightGCN's propagation, sum_{l=0..L} alpha_l Â^l x, Â = D^-1/2 Aᵀ D^-1/2.

    Args:
        edge_index: a prepared `Graph`, or anything `lightgcn_ext.prepare` takes
            ([2, E] edge_index, torch.sparse adj_t, torch_sparse SparseTensor);
            tensors are prepared once and cached.
        x: [num_nodes, d] features (float16, bfloat16, float32, float64).
        alpha: the L + 1 layer weights, a 1-D tensor or a sequence of numbers.
        edge_weight, normalize, flow: as in torch_geometric's LGConv (defaults
            True and "source_to_target"). A prepared Graph carries its own:
            settings given with one must match them (else ValueError).
        precision: "float32", or "bf16" for float32 x: the layers that the
            kernels gather (forward and backward) are stored in bfloat16, which
            halves the bytes each sweep reads; sums, the result and the gradient
            stay float32, within about 1e-2 relative of the float32 result.
            Training with it reaches float32's accuracy; evaluate in float32.

    Differentiable in x and alpha by fused kernels that save nothing of size
    E x d or L x N x d. When edge_weight requires grad, a slower path of plain
    PyTorch ops (PyG's memory profile: one E x d message tensor per layer)
    gives its gradient, through the degree normalization too; that path and
    an infinite alpha compute in x's dtype whatever the precision.
    """
    graph, x, alpha = _prepared(edge_index, x, alpha, edge_weight, normalize, flow)
    bf16 = _bf16(precision, x)
    if not _fused_path_serves(graph, alpha):
        return _propagate_unfused(graph, x, alpha)
    return _ops.propagate(graph.operator(x.dtype), x, alpha, bf16)


def propagate_rows(edge_index, x, alpha, rows, *, edge_weight=None, normalize=None, flow=None,
                   precision="float32"):
    """``(propagate(edge_index, x, alpha)[rows], x[rows])``, computed for the
    listed rows only (repeats allowed): what a loss on a batch of nodes needs
    (BPR: the batch's propagated rows, and its layer-0 rows for the L2 term).

    The same numbers as `propagate` followed by indexing, at less cost: the
    last sweep computes the listed rows only, and the backward writes one
    [N, d] gradient of x (both outputs' gradients together) whose first sweep
    reads the listed rows' edges only. Arguments as for `propagate`; rows is a
    1-D integer tensor of node ids on x's device.
    """
    graph, x, alpha = _prepared(edge_index, x, alpha, edge_weight, normalize, flow)
    bf16 = _bf16(precision, x)
    rows = rows.to(device=x.device, dtype=torch.long)
    if not _fused_path_serves(graph, alpha):
        return _propagate_unfused(graph, x, alpha)[rows], x[rows]
    return _ops.propagate_rows(graph.operator(x.dtype), x, alpha, rows, bf16)


def _prepared(edge_index, x, alpha, edge_weight, normalize, flow):
    """The prepared graph, x and alpha of a propagation, checked."""
    x = _check_x(x)
    # A raw edge_index takes its node count from x; other inputs carry their own.
    num_nodes = x.shape[0] if isinstance(edge_index, torch.Tensor) \
        and edge_index.layout == torch.strided else None
    graph = prepare(edge_index, num_nodes, edge_weight, normalize=normalize, flow=flow)
    if graph.num_nodes != x.shape[0]:
        raise ValueError(f"x must have one row per node ({graph.num_nodes}), got {x.shape[0]}")
    if graph.device != x.device:
        raise ValueError(f"x ({x.device}) and the graph ({graph.device}) must be on one device")
    return graph, x, validation.layer_weights(alpha, x)


def _bf16(precision, x):
    """Whether a precision asks the kernels for bfloat16 layers (checked)."""
    validation.choice(precision, "precision", PRECISIONS)
    if precision == "bf16" and x.dtype != torch.float32:
        raise ValueError(f"precision='bf16' stores the layers of float32 x in bfloat16: x must "
                         f"be float32, got {x.dtype}")
    return precision == "bf16"


def _fused_path_serves(graph, alpha):
    """Whether the fused kernels give the result: not when edge weights need
    a gradient, nor for an infinite alpha (Horner's scheme makes NaN of it)."""
    return not _needs_edge_weight_grad(graph) and _is_finite(alpha)


def _propagate_unfused(graph, x, alpha):
    if _needs_edge_weight_grad(graph):
        return _propagate_differentiable_weights(graph, x, alpha)
    return _propagate_layer_by_layer(graph, x, alpha)


def _check_x(x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [num_nodes, dim], got shape {list(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    return x


def _needs_edge_weight_grad(graph):
    return (graph.edge_weight is not None and graph.edge_weight.requires_grad
            and torch.is_grad_enabled())


def _is_finite(alpha):
    """Whether alpha is finite: read on the host once per alpha tensor and
    version, so that a CUDA buffer costs no synchronization per call."""
    if torch.compiler.is_compiling():
        return True  # a compiled graph takes the fused path (inf/NaN alpha give NaN)
    version = (tensor_version(alpha), alpha.data_ptr())
    seen = _finite_alphas.get(id(alpha))
    if seen is None or seen[0]() is not alpha or seen[1] != version:
        if len(_finite_alphas) >= 64:
            _finite_alphas.clear()
        seen = (weakref.ref(alpha), version, bool(torch.isfinite(alpha).all()))
        _finite_alphas[id(alpha)] = seen
    return seen[2]


_finite_alphas = {}  # id(alpha) -> (weak reference, version, finite?)


def _propagate_layer_by_layer(graph: Graph, x, alpha):
    """sum_l alpha_l x_l with each layer x_l = M x_{l-1} kept, as PyG does:
    an infinite alpha_l then gives inf (not the NaN that Horner's scheme
    makes of inf * 0)."""
    operator = graph.operator(x.dtype)
    one_hop = torch.tensor([0.0, 1.0], dtype=alpha.dtype, device=x.device)
    out = x * alpha[0].to(x.dtype)
    h = x
    for layer in range(1, alpha.numel()):
        h = _ops.propagate(operator, h, one_hop)
        out = out + h * alpha[layer].to(x.dtype)
    return out


def _propagate_differentiable_weights(graph: Graph, x, alpha):
    """PyG's computation in plain PyTorch ops, for a gradient w.r.t. edge_weight."""
    src, dst = graph.edge_index[0].long(), graph.edge_index[1].long()
    w = graph.edge_weight.to(x.dtype)
    if graph.normalize:
        deg = torch.zeros(graph.num_nodes, dtype=x.dtype, device=x.device).index_add(0, dst, w)
        dinv = deg.pow(-0.5)
        dinv = dinv.masked_fill(torch.isinf(dinv), 0.0)
        w = dinv[src] * w * dinv[dst]
    alpha = alpha.to(x.dtype)
    out = alpha[0] * x
    h = x
    for layer in range(1, alpha.numel()):
        h = torch.zeros_like(x).index_add(0, dst, w.unsqueeze(1) * h[src])
        out = out + alpha[layer] * h
    return out
