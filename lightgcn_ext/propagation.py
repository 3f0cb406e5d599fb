"""The functional API: out = sum_{l=0..L} alpha_l Â^l x."""
import torch

from . import _ops
from .graph import Graph, prepare


def propagate(edge_index, x, alpha, *, edge_weight=None, normalize=True,
              flow="source_to_target"):
    """LightGCN's propagation, sum_{l=0..L} alpha_l Â^l x, Â = D^-1/2 Aᵀ D^-1/2.

    Args:
        edge_index: a prepared `Graph`, or anything `lightgcn_ext.prepare` takes
            ([2, E] edge_index, torch.sparse adj_t, torch_sparse SparseTensor);
            tensors are prepared once and cached.
        x: [num_nodes, d] features (float16, bfloat16, float32, float64).
        alpha: the L + 1 layer weights, a 1-D tensor or a sequence of numbers.
        edge_weight, normalize, flow: as in torch_geometric's LGConv; used only
            when edge_index is not already a Graph.

    Differentiable in x and alpha by fused kernels that save nothing of size
    E x d or L x N x d. When edge_weight requires grad, a slower path of plain
    PyTorch ops (PyG's memory profile: one E x d message tensor per layer)
    gives its gradient, through the degree normalization too.
    """
    x = _check_x(x)
    # A raw edge_index takes its node count from x; other inputs carry their own.
    num_nodes = x.shape[0] if isinstance(edge_index, torch.Tensor) \
        and edge_index.layout == torch.strided else None
    graph = prepare(edge_index, num_nodes, edge_weight, normalize=normalize, flow=flow)
    if graph.num_nodes != x.shape[0]:
        raise ValueError(f"x must have one row per node ({graph.num_nodes}), got {x.shape[0]}")
    if graph.device != x.device:
        raise ValueError(f"x ({x.device}) and the graph ({graph.device}) must be on one device")
    alpha = _check_alpha(alpha, x)
    if _needs_edge_weight_grad(graph):
        return _propagate_differentiable_weights(graph, x, alpha)
    return _ops.propagate(graph.operator(x.dtype), x, alpha)


def _check_x(x):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [num_nodes, dim], got shape {list(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    return x


def _check_alpha(alpha, x):
    if not isinstance(alpha, torch.Tensor):
        alpha = torch.as_tensor(alpha, dtype=torch.float64, device=x.device)
    if alpha.dim() != 1 or alpha.numel() < 1:
        raise ValueError(f"alpha must be 1-D with num_layers + 1 >= 1 entries, "
                         f"got shape {list(alpha.shape)}")
    if alpha.dtype == torch.bool or alpha.is_complex():
        raise TypeError(f"alpha must be a real tensor, got {alpha.dtype}")
    if alpha.device != x.device:
        raise ValueError(f"alpha ({alpha.device}) must be on the device of x ({x.device})")
    return alpha


def _needs_edge_weight_grad(graph):
    return (graph.edge_weight is not None and graph.edge_weight.requires_grad
            and torch.is_grad_enabled())


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
