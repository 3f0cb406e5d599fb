"""A graph prepared once for fused propagation, from any PyG-style input.

The prepared form is the normalized operator M = D^-1/2 W D^-1/2 of PyG's
LGConv (messages flow from edge_index[0] to edge_index[1], D the weighted
in-degree, no self-loops added) as
  * a CSR by destination (rowptr, col[, weight]) for the forward,
  * a CSR by source (rowptr_t, col_t[, weight_t]) for the backward, which is
    the same tensors when the graph is symmetric (the usual user-item graph),
  * dinv = deg^-1/2 (0 for isolated nodes).
Building it costs a sort of the edges; `prepare` caches it per input.
"""
import weakref
from collections import OrderedDict

import torch

from . import validation
from ._ops import CsrOperator, accumulation_dtype

FLOWS = ("source_to_target", "target_to_source")


class Graph:
    """The prepared operator. Build it with `Graph.from_edge_index`,
    `Graph.from_adj_t` or `prepare`.

    It copies what it is built from, so changing the input afterwards does not
    change the graph, with one exception: edge weights that require grad (an
    ``nn.Parameter`` being trained) are tracked, and every call uses their
    current values, in the fused no-grad path as in the differentiable one.
    """

    def __init__(self, *, num_nodes, rowptr, col, perm, rowptr_t, col_t, perm_t, edge_index,
                 edge_weight, normalize, flow):
        self.num_nodes = num_nodes
        self.rowptr, self.col = rowptr, col
        self.normalize, self.flow = normalize, flow
        # The edges as messages flow (source, destination), and their weights,
        # for the differentiable edge-weight path.
        self.edge_index = edge_index
        self.edge_weight = edge_weight
        self._perm, self._perm_t = perm, perm_t
        # A symmetric structure keeps one CSR: the transpose's is the same.
        self._symmetric_structure = torch.equal(rowptr, rowptr_t) and torch.equal(col, col_t)
        self.rowptr_t = rowptr if self._symmetric_structure else rowptr_t
        self.col_t = col if self._symmetric_structure else col_t
        self._weights_version = None
        self._refresh_weights()

    # ------------------------------------------------------------------ build
    @classmethod
    def from_edge_index(cls, edge_index, num_nodes, edge_weight=None, *, normalize=True,
                        flow="source_to_target"):
        """edge_index: [2, E] integer tensor, an edge (j, i) sends x_j to i
        (flow="source_to_target", PyG's default)."""
        edge_index = _check_edge_index(edge_index)
        num_nodes = validation.non_negative_int(num_nodes, "num_nodes")
        validation.choice(flow, "flow", FLOWS)
        if edge_weight is not None:
            edge_weight = _check_edge_weight(edge_weight, edge_index)
        # Built outside inference mode, so that a graph first prepared in a
        # validation pass can serve a training step too.
        with torch.inference_mode(False):
            # A private copy: the graph does not change with the input.
            edge_index = edge_index.flip(0) if flow == "target_to_source" else edge_index.clone()
            if edge_weight is not None and not edge_weight.requires_grad:
                edge_weight = edge_weight.clone()
            # prepare_csr checks that the ids lie in [0, num_nodes) (a ValueError).
            rowptr, col, perm, rowptr_t, col_t, perm_t = torch.ops.lightgcn_ext.prepare_csr(
                edge_index, num_nodes)
            return cls(num_nodes=num_nodes, rowptr=rowptr, col=col, perm=perm, rowptr_t=rowptr_t,
                       col_t=col_t, perm_t=perm_t, edge_index=edge_index,
                       edge_weight=edge_weight, normalize=normalize, flow=flow)

    @classmethod
    def from_adj_t(cls, adj_t, *, normalize=True):
        """adj_t: a square torch.sparse COO/CSR matrix or a torch_sparse
        SparseTensor with rows = destinations (PyG's `adj_t`); its values are
        the edge weights (all-ones values are treated as unweighted)."""
        edge_index, edge_weight, num_nodes = edges_of_adj_t(adj_t)
        return cls.from_edge_index(edge_index, num_nodes, edge_weight, normalize=normalize)

    def _refresh_weights(self):
        """weight, weight_t and dinv from the current edge weights."""
        with torch.inference_mode(False):
            weight = weight_t = None
            if self.edge_weight is None:
                deg = self.rowptr.diff().to(torch.float64)
            else:
                w64 = self.edge_weight.detach().to(torch.float64)
                weight, weight_t = w64[self._perm], w64[self._perm_t]
                deg = torch.zeros(self.num_nodes, dtype=torch.float64, device=w64.device)
                deg.index_add_(0, self.edge_index[1], w64)
            self.dinv = inverse_sqrt_degree(deg, self.normalize)  # float64
        self._weights_version = tensor_version(self.edge_weight)
        self.weight = weight
        symmetric = self._symmetric_structure and (
            weight is None or torch.equal(weight, weight_t))
        self.weight_t = weight if symmetric else weight_t
        self._operators = {}

    # -------------------------------------------------------------- queries
    @property
    def is_symmetric(self):
        """M^T = M: the backward reuses the forward's operands."""
        return self._symmetric_structure and self.weight_t is self.weight

    @property
    def device(self):
        return self.rowptr.device

    @property
    def num_edges(self):
        return self.col.numel()

    @property
    def nbytes(self):
        """The memory this graph holds (its operand casts included)."""
        tensors = {id(t): t for t in (self.rowptr, self.col, self.rowptr_t, self.col_t,
                                      self.weight, self.weight_t, self.dinv, self.edge_index,
                                      self._perm, self._perm_t)
                   if t is not None}
        for op in self._operators.values():
            tensors.update((id(t), t) for t in op if t is not None)
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def operator(self, dtype):
        """The CsrOperator the ops take, with weight and dinv in the
        accumulation type of `dtype` features; up to date with tracked edge
        weights."""
        if (self.edge_weight is not None
                and tensor_version(self.edge_weight) != self._weights_version):
            self._refresh_weights()
        acc = accumulation_dtype(dtype)
        if acc not in self._operators:
            with torch.inference_mode(False):
                cast = lambda t: None if t is None else t.to(acc)  # noqa: E731
                weight = cast(self.weight)
                transposed = (None, None, None) if self.is_symmetric else (
                    self.rowptr_t, self.col_t, cast(self.weight_t))
                self._operators[acc] = CsrOperator(self.rowptr, self.col, weight,
                                                   self.dinv.to(acc), *transposed)
        return self._operators[acc]

    def to(self, device):
        """This graph on another device (a tracked edge weight is moved: the
        copy follows the values at the time of the move).

        Everything prepared is moved, nothing recomputed, so that moving costs
        no host synchronization; tensors shared between fields stay shared."""
        moved = {}

        def move(value):
            if not isinstance(value, torch.Tensor):
                return value
            if id(value) not in moved:
                moved[id(value)] = value.to(device)
            return moved[id(value)]

        graph = Graph.__new__(Graph)
        graph.__dict__.update({name: move(value) for name, value in vars(self).items()})
        graph._operators = {}
        return graph

    def __repr__(self):
        return (f"Graph(num_nodes={self.num_nodes}, num_edges={self.num_edges}, "
                f"weighted={self.weight is not None}, symmetric={self.is_symmetric}, "
                f"normalize={self.normalize}, flow={self.flow!r}, device={self.device})")


# ---------------------------------------------------------------- caching
_LAYOUTS = (torch.strided, torch.sparse_coo, torch.sparse_csr)
# Graphs kept at most, and the memory they may hold together.
_CACHE_SIZE = 8
_CACHE_MAX_BYTES = 2 << 30


class _CacheEntry:
    """A cached graph and, weakly, the input tensors it was prepared from."""

    def __init__(self, edge_index, edge_weight, graph):
        self.edge_index = weakref.ref(edge_index)
        self.edge_weight = None if edge_weight is None else weakref.ref(edge_weight)
        self.graph = graph

    def is_for(self, edge_index, edge_weight):
        return self.edge_index() is edge_index and (
            edge_weight is None or self.edge_weight() is edge_weight)


_cache = OrderedDict()  # key -> _CacheEntry, least recently used first


def prepare(edge_index, num_nodes=None, edge_weight=None, *, normalize=None, flow=None):
    """The prepared Graph of any PyG-style input: a Graph, a [2, E]
    edge_index tensor (or PyG EdgeIndex), a torch.sparse adj_t, or a
    torch_sparse SparseTensor.

    normalize and flow default to True and "source_to_target"; a Graph is
    returned as it is, and given settings must be the ones it was built with.

    Tensors are prepared once and cached. The cache notices a different
    tensor, or the same tensor modified in place through torch (its version
    counter), and finds the graph of an equal edge_index in another tensor
    (e.g. `edge_index.to(device)` on every call) by comparing contents, which
    costs far less than preparing it again. It holds its inputs weakly, and at
    most 8 graphs and 2 GiB. Writes that bypass the version counter (through
    a numpy view or `.data`, or in inference mode) are not seen: call
    `lightgcn_ext.clear_cache()` after them, or pass a Graph."""
    if isinstance(edge_index, Graph):
        return _check_prepared(edge_index, num_nodes, edge_weight, normalize, flow)
    if torch.compiler.is_compiling():
        return _prepared_for_compile(edge_index, num_nodes, edge_weight, normalize, flow)
    normalize = True if normalize is None else normalize
    flow = "source_to_target" if flow is None else flow
    if not (isinstance(edge_index, torch.Tensor) or is_sparse_adjacency(edge_index)):
        raise TypeError(f"edge_index must be a [2, num_edges] tensor, a sparse adj_t or a "
                        f"prepared Graph, got {type(edge_index).__name__}")
    if isinstance(edge_index, torch.Tensor) and edge_index.layout not in _LAYOUTS:
        raise TypeError(f"a sparse adj_t must have layout torch.sparse_coo or torch.sparse_csr, "
                        f"got {edge_index.layout}")
    if edge_weight is not None and not isinstance(edge_weight, torch.Tensor):
        raise TypeError(f"edge_weight must be a torch.Tensor, got {type(edge_weight).__name__}")
    # A graph tracks the values of a weight that requires grad (see Graph):
    # an optimizer step on it must not cost a new graph.
    tracked = edge_weight is not None and edge_weight.requires_grad
    key = (_tensor_key(edge_index), _tensor_key(edge_weight, versioned=not tracked), num_nodes,
           normalize, flow)
    entry = _cache.get(key)
    if entry is not None and entry.is_for(edge_index, edge_weight):
        _cache.move_to_end(key)
        return entry.graph
    graph = _find_equal(edge_index, num_nodes, edge_weight, normalize, flow)
    if graph is None:
        graph = _prepare_uncached(edge_index, num_nodes, edge_weight, normalize, flow)
    _cache[key] = _CacheEntry(edge_index, edge_weight, graph)
    _evict()
    if edge_weight is None and isinstance(edge_index, torch.Tensor):
        # What a compiled caller finds: torch.compile cannot trace the cache.
        edge_index._lightgcn_ext_graph = graph
    return graph


def _prepared_for_compile(edge_index, num_nodes, edge_weight, normalize, flow):
    graph = getattr(edge_index, "_lightgcn_ext_graph", None)
    if graph is None or edge_weight is not None:
        raise RuntimeError(
            "torch.compile: prepare the graph before compiling (a Graph from "
            "lightgcn_ext.prepare(edge_index, num_nodes), or one eager call with this "
            "edge_index tensor), and pass edge weights to Graph.from_edge_index")
    return _check_prepared(graph, num_nodes, None, normalize, flow)


def clear_cache():
    """Forgets every graph that `prepare` cached."""
    _cache.clear()


def _prepare_uncached(edge_index, num_nodes, edge_weight, normalize, flow):
    if not is_sparse_adjacency(edge_index):
        if num_nodes is None:
            raise ValueError("num_nodes is required with an edge_index tensor")
        return Graph.from_edge_index(edge_index, num_nodes, edge_weight, normalize=normalize,
                                     flow=flow)
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
    return graph


def _check_prepared(graph, num_nodes, edge_weight, normalize, flow):
    if num_nodes is not None and num_nodes != graph.num_nodes:
        raise ValueError(f"the prepared graph has {graph.num_nodes} nodes, "
                         f"but num_nodes={num_nodes} was given")
    if edge_weight is not None:
        raise ValueError("edge_weight cannot be given with a prepared Graph: "
                         "pass it to Graph.from_edge_index instead")
    for name, wanted, built in (("normalize", normalize, graph.normalize),
                                ("flow", flow, graph.flow)):
        if wanted is not None and wanted != built:
            raise ValueError(f"the prepared graph was built with {name}={built!r}, but "
                             f"{name}={wanted!r} was asked for: build it with "
                             f"Graph.from_edge_index(..., {name}={wanted!r})")
    return graph


def _find_equal(edge_index, num_nodes, edge_weight, normalize, flow):
    """A cached graph of an edge_index tensor with the same contents, or None.
    Edge weights that require grad are tracked by identity, so they match
    only themselves."""
    if (not isinstance(edge_index, torch.Tensor) or edge_index.layout != torch.strided
            or edge_index.dtype not in (torch.int32, torch.int64)):
        return None  # other inputs are checked when prepared, then found by identity
    if edge_weight is not None and edge_weight.requires_grad:
        return None
    for graph in _cache_graphs():
        if (graph.num_nodes != num_nodes or graph.normalize != normalize or graph.flow != flow
                or graph.device != edge_index.device
                or graph.edge_index.shape != edge_index.shape
                or (graph.edge_weight is None) != (edge_weight is None)):
            continue
        if graph.edge_weight is not None and (graph.edge_weight.requires_grad
                                              or graph.edge_weight.dtype != edge_weight.dtype):
            continue
        stored = graph.edge_index.flip(0) if flow == "target_to_source" else graph.edge_index
        if torch.equal(stored, edge_index.to(stored.dtype)) and (
                edge_weight is None or torch.equal(graph.edge_weight, edge_weight)):
            return graph
    return None


def _evict():
    """Drops the least recently used entries beyond the count or the memory bound."""
    while len(_cache) > _CACHE_SIZE or (len(_cache) > 1 and _cached_bytes() > _CACHE_MAX_BYTES):
        _cache.popitem(last=False)


def _cached_bytes():
    return sum(graph.nbytes for graph in _cache_graphs())


def _cache_graphs():
    """The distinct graphs in the cache (entries of equal inputs share one)."""
    return list({id(entry.graph): entry.graph for entry in _cache.values()}.values())


def tensor_version(t):
    """t's version counter; inference tensors have none (in-place writes to
    them are possible only inside inference mode, and are not seen)."""
    if t is None:
        return None
    return 0 if t.is_inference() else t._version


def _tensor_key(t, versioned=True):
    if t is None:
        return None
    if isinstance(t, torch.Tensor) and not versioned:
        return (id(t), t.data_ptr(), tuple(t.shape), t.dtype)
    if isinstance(t, torch.Tensor):
        if t.layout != torch.strided:  # torch.sparse: its parts carry the versions
            parts = (t.crow_indices(), t.col_indices(), t.values()) if t.layout == torch.sparse_csr \
                else (t._indices(), t._values())
            return (id(t), t.layout) + tuple((tensor_version(p), p.data_ptr()) for p in parts)
        return (id(t), tensor_version(t), t.data_ptr(), tuple(t.shape), t.dtype)
    # torch_sparse.SparseTensor
    storage = t.storage
    parts = [storage.row(), storage.col()] + ([] if storage.value() is None else [storage.value()])
    return (id(t),) + tuple((tensor_version(p), p.data_ptr()) for p in parts)


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


def inverse_sqrt_degree(deg, normalize):
    """deg^-1/2 (0 where deg = 0), or ones without normalization."""
    if not normalize:
        return torch.ones_like(deg)
    if bool((deg < 0).any()):
        bad = int((deg < 0).nonzero()[0])
        raise ValueError(f"edge_weight gives node {bad} a negative degree ({float(deg[bad])}); "
                         "deg^-1/2 is undefined there")
    dinv = deg.pow(-0.5)
    return dinv.masked_fill_(torch.isinf(dinv), 0.0)


def is_sparse_adjacency(obj):
    if isinstance(obj, torch.Tensor):
        return obj.layout != torch.strided
    return type(obj).__name__ == "SparseTensor" and hasattr(obj, "storage")


def edges_of_adj_t(adj_t):
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
