"""`prepare` and its cache: the prepared Graph of any PyG-style input, made
once per input (see `prepare`)."""
import weakref
from collections import OrderedDict

import torch

from .graph import Graph, is_sparse_adjacency, tensor_version

_LAYOUTS = (torch.strided, torch.sparse_coo, torch.sparse_csr)
# Graphs kept at most, and the memory they may hold together.
_CACHE_SIZE = 8
_CACHE_MAX_BYTES = 2 << 30


class _CacheEntry:
    """A cached graph and, weakly, the input tensors it was prepared from
    (with their versions then, to tell a later in-place change)."""

    def __init__(self, edge_index, edge_weight, graph):
        self.edge_index = weakref.ref(edge_index)
        self.edge_weight = None if edge_weight is None else weakref.ref(edge_weight)
        self.versions = (tensor_version(edge_index), tensor_version(edge_weight))
        self.graph = graph

    def is_for(self, edge_index, edge_weight):
        return self.edge_index() is edge_index and (
            edge_weight is None or self.edge_weight() is edge_weight)

    def has_contents_of(self, edge_index, edge_weight):
        """Whether edge_index and edge_weight equal this entry's inputs, while
        those live unchanged."""
        seen = self.edge_index()
        seen_weight = None if self.edge_weight is None else self.edge_weight()
        if (not isinstance(seen, torch.Tensor) or seen.layout != torch.strided
                or seen.shape != edge_index.shape or seen.device != edge_index.device
                or (edge_weight is not None and seen_weight is None)
                or self.versions != (tensor_version(seen), tensor_version(seen_weight))):
            return False
        if not torch.equal(seen, edge_index.to(seen.dtype)):
            return False
        return edge_weight is None or (seen_weight.dtype == edge_weight.dtype
                                       and torch.equal(seen_weight, edge_weight))


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
    (e.g. `edge_index.to(device)` on every call) by comparing contents: with
    the tensor the graph was prepared from while it lives, else with the
    graph's CSR (one sort of the edges, less than preparing them again). It
    holds its inputs weakly, keeps no copy of them, and holds at most 8
    graphs and 2 GiB. Writes that bypass the version counter (through
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
    """A cached graph of an edge_index tensor with the same edges (and equal
    edge weights), or None. A graph keeps no copy of its input, so the
    contents are compared with the input the graph was prepared from while
    that tensor lives (one comparison), else with the graph's CSR (a sort of
    the new input's edges: cheaper than preparing it again, and the memory
    stays free). Edge weights that require grad are tracked by identity, so
    they match only themselves."""
    if (not isinstance(edge_index, torch.Tensor) or edge_index.layout != torch.strided
            or edge_index.dtype not in (torch.int32, torch.int64)
            or edge_index.dim() != 2 or edge_index.shape[0] != 2):
        return None  # other inputs are checked when prepared, then found by identity
    if edge_weight is not None and (
            edge_weight.requires_grad or not isinstance(edge_weight, torch.Tensor)
            or edge_weight.shape != edge_index.shape[1:] or edge_weight.device != edge_index.device
            or not edge_weight.dtype.is_floating_point):
        return None
    candidates = []
    for entry in _cache.values():
        graph = entry.graph
        if (graph.num_nodes != num_nodes or graph.normalize != normalize or graph.flow != flow
                or graph.device != edge_index.device or graph.edge_weight is not None
                or graph.num_edges != edge_index.shape[1]
                or (graph.weight is None) != (edge_weight is None)):
            continue
        if entry.has_contents_of(edge_index, edge_weight):
            return graph
        candidates.append(graph)
    for graph in {id(graph): graph for graph in candidates}.values():
        if _has_edges(graph, edge_index, edge_weight):
            return graph
    return None


def _has_edges(graph, edge_index, edge_weight):
    """Whether edge_index (with edge_weight, or unweighted) gives exactly the
    graph's CSR by destination: the same edges, duplicates included, in any
    order. Duplicate edges with different weights must come in the order the
    graph was prepared from, or they are taken for different graphs (never
    for the same one by mistake)."""
    with torch.inference_mode(False):
        edges = edge_index.long()
        src, dst = edges if graph.flow == "source_to_target" else edges.flip(0)
        n = graph.num_nodes
        if edges.numel() and not (int(edges.min()) >= 0 and int(edges.max()) < n):
            return False
        if not torch.equal(torch.bincount(dst, minlength=n), graph.rowptr.diff()):
            return False  # other in-degrees: different edges, found without a sort
        keys, order = (dst * n + src).sort(stable=True)
        rows = torch.repeat_interleave(torch.arange(n, device=keys.device), graph.rowptr.diff(),
                                       output_size=keys.numel())
        if not torch.equal(keys, rows * n + graph.col.long()):
            return False
        return edge_weight is None or torch.equal(edge_weight.to(torch.float64)[order],
                                                  graph.weight)


def _evict():
    """Drops the least recently used entries beyond the count or the memory bound."""
    while len(_cache) > _CACHE_SIZE or (len(_cache) > 1 and _cached_bytes() > _CACHE_MAX_BYTES):
        _cache.popitem(last=False)


def _cached_bytes():
    return sum(graph.nbytes for graph in _cache_graphs())


def _cache_graphs():
    """The distinct graphs in the cache (entries of equal inputs share one)."""
    return list({id(entry.graph): entry.graph for entry in _cache.values()}.values())


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
