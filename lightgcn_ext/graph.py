"""A graph prepared once for fused propagation, from any PyG-style input.

The prepared form is the normalized operator M = D^-1/2 W D^-1/2 of PyG's
LGConv (messages flow from edge_index[0] to edge_index[1], D the weighted
in-degree, no self-loops added) as
  * a CSR by destination (rowptr, col[, weight]) for the forward,
  * a CSR by source (rowptr_t, col_t[, weight_t]) for the backward, which is
    the same tensors when the graph is symmetric (the usual user-item graph),
  * dinv = deg^-1/2 (0 for isolated nodes).
Building it costs a sort of the edges; `prepare` caches it per input tensor.
"""
import weakref
from collections import OrderedDict

import torch

from ._ops import CsrOperator, accumulation_dtype

FLOWS = ("source_to_target", "target_to_source")


class Graph:
    """The prepared operator. Build it with `Graph.from_edge_index`,
    `Graph.from_adj_t` or `prepare`; it is immutable and reusable."""

    def __init__(self, *, num_nodes, rowptr, col, weight, rowptr_t, col_t, weight_t, dinv,
                 edge_index, edge_weight, normalize):
        self.num_nodes = num_nodes
        self.rowptr, self.col, self.weight = rowptr, col, weight
        self.rowptr_t, self.col_t, self.weight_t = rowptr_t, col_t, weight_t
        self.dinv = dinv  # float64
        # The input, kept by reference for the differentiable edge-weight path.
        self.edge_index = edge_index
        self.edge_weight = edge_weight
        self.normalize = normalize
        self._operators = {}

    # ------------------------------------------------------------------ build
    @classmethod
    def from_edge_index(cls, edge_index, num_nodes, edge_weight=None, *, normalize=True,
                        flow="source_to_target"):
        """edge_index: [2, E] integer tensor, an edge (j, i) sends x_j to i
        (flow="source_to_target", PyG's default)."""
        edge_index = _check_edge_index(edge_index)
        num_nodes = _check_num_nodes(num_nodes)
        if flow not in FLOWS:
            raise ValueError(f"flow must be one of {FLOWS}, got {flow!r}")
        if flow == "target_to_source":
            edge_index = edge_index.flip(0)
        if edge_weight is not None:
            edge_weight = _check_edge_weight(edge_weight, edge_index)

        # prepare_csr checks that the ids lie in [0, num_nodes) (a ValueError).
        rowptr, col, perm, rowptr_t, col_t, perm_t = torch.ops.lightgcn_ext.prepare_csr(
            edge_index, num_nodes
        )
        weight = weight_t = None
        if edge_weight is not None:
            w64 = edge_weight.detach().to(torch.float64)
            weight, weight_t = w64[perm], w64[perm_t]
        dinv = _inverse_sqrt_degree(rowptr, edge_index[1], weight, edge_weight, num_nodes,
                                    normalize)
        symmetric = (
            torch.equal(rowptr, rowptr_t)
            and torch.equal(col, col_t)
            and (weight is None or torch.equal(weight, weight_t))
        )
        if symmetric:
            rowptr_t, col_t, weight_t = rowptr, col, weight
        return cls(num_nodes=num_nodes, rowptr=rowptr, col=col, weight=weight,
                   rowptr_t=rowptr_t, col_t=col_t, weight_t=weight_t, dinv=dinv,
                   edge_index=edge_index, edge_weight=edge_weight, normalize=normalize)

    @classmethod
    def from_adj_t(cls, adj_t, *, normalize=True):
        """adj_t: a square torch.sparse COO/CSR matrix or a torch_sparse
        SparseTensor with rows = destinations (PyG's `adj_t`); its values are
        the edge weights (all-ones values are treated as unweighted)."""
        edge_index, edge_weight, num_nodes = _edges_of_adj_t(adj_t)
        return cls.from_edge_index(edge_index, num_nodes, edge_weight, normalize=normalize)

    # -------------------------------------------------------------- queries
    @property
    def is_symmetric(self):
        return self.rowptr_t is self.rowptr

    @property
    def device(self):
        return self.rowptr.device

    @property
    def num_edges(self):
        return self.col.numel()

    def operator(self, dtype):
        """The CsrOperator the ops take, with weight and dinv in the
        accumulation type of `dtype` features."""
        acc = accumulation_dtype(dtype)
        if acc not in self._operators:
            cast = lambda t: None if t is None else t.to(acc)  # noqa: E731
            transposed = (None, None, None) if self.is_symmetric else (
                self.rowptr_t, self.col_t, cast(self.weight_t))
            self._operators[acc] = CsrOperator(self.rowptr, self.col, cast(self.weight),
                                               self.dinv.to(acc), *transposed)
        return self._operators[acc]

    def to(self, device):
        """This graph on another device."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        rowptr = move(self.rowptr)
        col = move(self.col)
        weight = move(self.weight)
        if self.is_symmetric:
            rowptr_t, col_t, weight_t = rowptr, col, weight
        else:
            rowptr_t, col_t, weight_t = move(self.rowptr_t), move(self.col_t), move(self.weight_t)
        return Graph(num_nodes=self.num_nodes, rowptr=rowptr, col=col, weight=weight,
                     rowptr_t=rowptr_t, col_t=col_t, weight_t=weight_t, dinv=move(self.dinv),
                     edge_index=move(self.edge_index), edge_weight=move(self.edge_weight),
                     normalize=self.normalize)

    def __repr__(self):
        return (f"Graph(num_nodes={self.num_nodes}, num_edges={self.num_edges}, "
                f"weighted={self.weight is not None}, symmetric={self.is_symmetric}, "
                f"normalize={self.normalize}, device={self.device})")


# ---------------------------------------------------------------- caching
_LAYOUTS = (torch.strided, torch.sparse_coo, torch.sparse_csr)
_CACHE_SIZE = 8
_cache = OrderedDict()


def prepare(edge_index, num_nodes=None, edge_weight=None, *, normalize=True,
            flow="source_to_target"):
    """The prepared Graph of any PyG-style input: a Graph (returned as is), a
    [2, E] edge_index tensor (or PyG EdgeIndex), a torch.sparse adj_t, or a
    torch_sparse SparseTensor. Tensors are prepared once and cached; the cache
    notices a different tensor, or the same tensor modified in place through
    torch (its version counter). Writes that bypass the counter (through a
    numpy view or `.data`) are not seen: call `clear_cache()` after them, or
    pass a Graph."""
    if isinstance(edge_index, Graph):
        if num_nodes is not None and num_nodes != edge_index.num_nodes:
            raise ValueError(f"the prepared graph has {edge_index.num_nodes} nodes, "
                             f"but num_nodes={num_nodes} was given")
        if edge_weight is not None:
            raise ValueError("edge_weight cannot be given with a prepared Graph: "
                             "pass it to Graph.from_edge_index instead")
        return edge_index
    if not (isinstance(edge_index, torch.Tensor) or _is_sparse_adjacency(edge_index)):
        raise TypeError(f"edge_index must be a [2, num_edges] tensor, a sparse adj_t or a "
                        f"prepared Graph, got {type(edge_index).__name__}")
    if isinstance(edge_index, torch.Tensor) and edge_index.layout not in _LAYOUTS:
        raise TypeError(f"a sparse adj_t must have layout torch.sparse_coo or torch.sparse_csr, "
                        f"got {edge_index.layout}")
    if edge_weight is not None and not isinstance(edge_weight, torch.Tensor):
        raise TypeError(f"edge_weight must be a torch.Tensor, got {type(edge_weight).__name__}")
    key = (_tensor_key(edge_index), _tensor_key(edge_weight), num_nodes, normalize, flow)
    hit = _cache.get(key)
    if hit is not None and hit[0]() is edge_index and (
        edge_weight is None or hit[1]() is edge_weight
    ):
        _cache.move_to_end(key)
        return hit[2]
    if _is_sparse_adjacency(edge_index):
        if edge_weight is not None:
            raise ValueError("edge_weight cannot be given with a sparse adj_t: "
                             "its values are the edge weights")
        if flow != "source_to_target":
            # As in PyG: a sparse adj_t already says which way messages flow.
            raise ValueError(f"flow={flow!r} is invalid with a sparse adj_t, whose rows are "
                             "the destinations; transpose it instead")
        graph = Graph.from_adj_t(edge_index, normalize=normalize)
        if num_nodes is not None and num_nodes != graph.num_nodes:
            raise ValueError(f"adj_t has {graph.num_nodes} nodes, but num_nodes={num_nodes}")
    else:
        if num_nodes is None:
            raise ValueError("num_nodes is required with an edge_index tensor")
        graph = Graph.from_edge_index(edge_index, num_nodes, edge_weight, normalize=normalize,
                                      flow=flow)
    weak_weight = None if edge_weight is None else weakref.ref(edge_weight)
    _cache[key] = (weakref.ref(edge_index), weak_weight, graph)
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return graph


def clear_cache():
    """Forgets every graph that `prepare` cached."""
    _cache.clear()


def _tensor_key(t):
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        if t.layout != torch.strided:  # torch.sparse: its parts carry the versions
            parts = (t.crow_indices(), t.col_indices(), t.values()) if t.layout == torch.sparse_csr \
                else (t._indices(), t._values())
            return (id(t), t.layout) + tuple((p._version, p.data_ptr()) for p in parts)
        return (id(t), t._version, t.data_ptr(), tuple(t.shape), t.dtype)
    # torch_sparse.SparseTensor
    storage = t.storage
    parts = [storage.row(), storage.col()] + ([] if storage.value() is None else [storage.value()])
    return (id(t),) + tuple((p._version, p.data_ptr()) for p in parts)


# ------------------------------------------------------------- validation
def _check_edge_index(edge_index):
    if isinstance(edge_index, torch.Tensor) and type(edge_index) is not torch.Tensor:
        edge_index = edge_index.as_subclass(torch.Tensor)  # PyG's EdgeIndex
    if not isinstance(edge_index, torch.Tensor):
        raise TypeError(f"edge_index must be a torch.Tensor of shape [2, num_edges], "
                        f"got {type(edge_index).__name__}")
    if edge_index.dtype.is_floating_point or edge_index.dtype.is_complex \
            or edge_index.dtype == torch.bool:
        raise TypeError(f"edge_index must be an integer tensor (int64 or int32), "
                        f"got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape [2, num_edges], got {list(edge_index.shape)}")
    if edge_index.dtype not in (torch.int32, torch.int64):
        edge_index = edge_index.long()
    return edge_index.contiguous()


def _check_num_nodes(num_nodes):
    if isinstance(num_nodes, torch.Tensor):
        num_nodes = int(num_nodes)
    if not isinstance(num_nodes, int) or isinstance(num_nodes, bool) or num_nodes <= 0:
        raise ValueError(f"num_nodes must be a positive int, got {num_nodes!r}")
    return num_nodes


def _check_edge_weight(edge_weight, edge_index):
    if not isinstance(edge_weight, torch.Tensor):
        raise TypeError(f"edge_weight must be a torch.Tensor, got {type(edge_weight).__name__}")
    if not edge_weight.dtype.is_floating_point:
        raise TypeError(f"edge_weight must be a floating-point tensor, got {edge_weight.dtype}")
    if edge_weight.dim() != 1 or edge_weight.shape[0] != edge_index.shape[1]:
        raise ValueError(f"edge_weight must have shape [num_edges={edge_index.shape[1]}], "
                         f"got {list(edge_weight.shape)}")
    if edge_weight.device != edge_index.device:
        raise ValueError(f"edge_weight must be on the device of edge_index ({edge_index.device}), "
                         f"got {edge_weight.device}")
    if not bool(torch.isfinite(edge_weight).all()):
        raise ValueError("edge_weight must be finite, got NaN or infinite values")
    return edge_weight


def _inverse_sqrt_degree(rowptr, dst, weight_csr, edge_weight, num_nodes, normalize):
    if not normalize:
        return torch.ones(num_nodes, dtype=torch.float64, device=rowptr.device)
    if weight_csr is None:
        deg = rowptr.diff().to(torch.float64)
    else:
        deg = torch.zeros(num_nodes, dtype=torch.float64, device=rowptr.device)
        deg.index_add_(0, dst, edge_weight.detach().to(torch.float64))
        if bool((deg < 0).any()):
            bad = int((deg < 0).nonzero()[0])
            raise ValueError(
                f"edge_weight gives node {bad} a negative degree ({float(deg[bad])}); "
                "deg^-1/2 is undefined there"
            )
    dinv = deg.pow(-0.5)
    return dinv.masked_fill_(torch.isinf(dinv), 0.0)


def _is_sparse_adjacency(obj):
    if isinstance(obj, torch.Tensor):
        return obj.layout != torch.strided
    return type(obj).__name__ == "SparseTensor" and hasattr(obj, "storage")


def _edges_of_adj_t(adj_t):
    """(edge_index [2, E] with edge_index[1] = row, edge_weight or None, num_nodes)."""
    if isinstance(adj_t, torch.Tensor):
        if adj_t.dim() != 2 or adj_t.shape[0] != adj_t.shape[1]:
            raise ValueError(f"adj_t must be a square 2-D sparse matrix, got {list(adj_t.shape)}")
        if adj_t.layout == torch.sparse_csr:
            crow = adj_t.crow_indices()
            row = torch.repeat_interleave(torch.arange(crow.numel() - 1, device=crow.device),
                                          crow.diff())
            col, value = adj_t.col_indices(), adj_t.values()
        elif adj_t.layout == torch.sparse_coo:
            # coalesce() sums duplicates (the same operator) and, unlike
            # _values(), keeps the values in autograd's graph.
            adj_t = adj_t if adj_t.is_coalesced() else adj_t.coalesce()
            row, col = adj_t.indices()
            value = adj_t.values()
        else:
            raise TypeError(f"adj_t must be a sparse COO or CSR tensor, got layout {adj_t.layout}")
        num_nodes = adj_t.shape[0]
    else:  # torch_sparse.SparseTensor
        row, col, value = adj_t.storage.row(), adj_t.storage.col(), adj_t.storage.value()
        num_rows, num_cols = adj_t.sparse_sizes()
        if num_rows != num_cols:
            raise ValueError(f"adj_t must be square, got sparse sizes {(num_rows, num_cols)}")
        num_nodes = num_rows
    if value is not None and value.dim() != 1:
        raise ValueError("adj_t must have scalar values")
    if value is not None and not value.requires_grad and bool((value == 1).all()):
        value = None  # an unweighted adjacency: the kernels skip the weights
    edge_index = torch.stack([col.long(), row.long()])
    return edge_index, value, num_nodes
