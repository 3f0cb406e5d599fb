"""A graph prepared once for fused propagation, from any PyG-style input.

The prepared form is the normalized operator M = D^-1/2 W D^-1/2 of PyG's
LGConv (messages flow from edge_index[0] to edge_index[1], D the weighted
in-degree, no self-loops added) as
  * a CSR by destination (rowptr, col[, weight]) for the forward,
  * a CSR by source (rowptr_t, col_t[, weight_t]) for the backward, which is
    the same tensors when the graph is symmetric (the usual user-item graph),
  * dinv = deg^-1/2 (0 for isolated nodes).
Building it costs a sort of the edges; `lightgcn_ext.cache.prepare` makes
it once per input.
"""
import torch

from . import validation
from ._ops import CsrOperator, accumulation_dtype

FLOWS = ("source_to_target", "target_to_source")


class Graph:
    """The prepared operator. Build it with `Graph.from_edge_index`,
    `Graph.from_adj_t` or `prepare`.

    It holds what propagation needs and no more: the CSR (and, when the graph
    is not symmetric, the transpose's), dinv, and the edge weights in CSR
    order. It copies what it is built from, so changing the input afterwards
    does not change the graph, with one exception: edge weights that require
    grad (an ``nn.Parameter`` being trained) are tracked, and every call uses
    their current values, in the fused no-grad path as in the differentiable
    one. Only such a graph keeps the edges in their given order
    (`edge_index`), the weight itself (`edge_weight`) and the two edge
    permutations that put the weights in CSR order; in every other graph
    these three are None.
    """

    def __init__(self, *, num_nodes, rowptr, col, rowptr_t, col_t, normalize, flow,
                 weight64=None, perm=None, perm_t=None, edge_index=None, edge_weight=None):
        self.num_nodes = num_nodes
        self.rowptr, self.col = rowptr, col
        self.normalize, self.flow = normalize, flow
        # A tracked edge weight, with what it takes to follow it: the edges
        # as messages flow (source, destination) in the weight's order, and
        # the permutations from that order to the two CSRs.
        self.edge_index = edge_index
        self.edge_weight = edge_weight
        self._perm, self._perm_t = perm, perm_t
        # A symmetric structure keeps one CSR: the transpose's is the same.
        self._symmetric_structure = torch.equal(rowptr, rowptr_t) and torch.equal(col, col_t)
        self.rowptr_t = rowptr if self._symmetric_structure else rowptr_t
        self.col_t = col if self._symmetric_structure else col_t
        self._weights_version = None
        if edge_weight is not None:
            self._refresh_weights()
        else:
            self._set_weights(weight64)

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
        tracked = edge_weight is not None and edge_weight.requires_grad
        # Built outside inference mode, so that a graph first prepared in a
        # validation pass can serve a training step too.
        with torch.inference_mode(False):
            # prepare_csr checks that the ids lie in [0, num_nodes) (a ValueError).
            rowptr, col, perm, rowptr_t, col_t, perm_t = torch.ops.lightgcn_ext.prepare_csr(
                edge_index, num_nodes)
            if flow == "target_to_source":
                # Messages flow from edge_index[1] to edge_index[0]: the CSR by
                # destination is the one by edge_index[0], and the other way round.
                rowptr, col, perm, rowptr_t, col_t, perm_t = \
                    rowptr_t, col_t, perm_t, rowptr, col, perm
            if tracked:
                messages = edge_index.flip(0) if flow == "target_to_source" \
                    else edge_index.clone()  # a private copy: see the class's doc
                return cls(num_nodes=num_nodes, rowptr=rowptr, col=col, rowptr_t=rowptr_t,
                           col_t=col_t, normalize=normalize, flow=flow, perm=perm,
                           perm_t=perm_t, edge_index=messages, edge_weight=edge_weight)
            weight64 = None
            if edge_weight is not None:
                w64 = edge_weight.detach().to(torch.float64)
                weight64 = (w64[perm], w64[perm_t])
            del perm, perm_t  # not kept: the weights are in CSR order already
            return cls(num_nodes=num_nodes, rowptr=rowptr, col=col, rowptr_t=rowptr_t,
                       col_t=col_t, normalize=normalize, flow=flow, weight64=weight64)

    @classmethod
    def from_adj_t(cls, adj_t, *, normalize=True):
        """adj_t: a square torch.sparse COO/CSR matrix or a torch_sparse
        SparseTensor with rows = destinations (PyG's `adj_t`); its values are
        the edge weights (all-ones values are treated as unweighted)."""
        edge_index, edge_weight, num_nodes = edges_of_adj_t(adj_t)
        return cls.from_edge_index(edge_index, num_nodes, edge_weight, normalize=normalize)

    def _refresh_weights(self):
        """The weights in CSR order and dinv from a tracked weight's current values."""
        with torch.inference_mode(False):
            w64 = self.edge_weight.detach().to(torch.float64)
            self._set_weights((w64[self._perm], w64[self._perm_t]))
        self._weights_version = tensor_version(self.edge_weight)

    def _set_weights(self, weight64):
        """weight, weight_t and dinv from the weights in the two CSRs' orders
        (float64), or from the degrees when weight64 is None (unweighted)."""
        with torch.inference_mode(False):
            weight = weight_t = None
            if weight64 is None:
                deg = self.rowptr.diff().to(torch.float64)
            else:
                weight, weight_t = weight64
                # The in-degree of row i: the sum of its CSR slots' weights.
                rows = torch.repeat_interleave(
                    torch.arange(self.num_nodes, device=weight.device), self.rowptr.diff(),
                    output_size=weight.numel())
                deg = torch.zeros(self.num_nodes, dtype=torch.float64, device=weight.device)
                deg.index_add_(0, rows, weight)
            self.dinv = inverse_sqrt_degree(deg, self.normalize)  # float64
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

    def edges(self):
        """The graph's edges as an edge_index [2, E] in the graph's flow (the
        rows of what it was built from, duplicates included), in CSR order:
        by destination, then source. A model scores these when given a Graph
        and no edge_label_index."""
        destination = torch.repeat_interleave(
            torch.arange(self.num_nodes, device=self.device), self.rowptr.diff(),
            output_size=self.num_edges)
        messages = torch.stack([self.col.long(), destination])
        return messages.flip(0) if self.flow == "target_to_source" else messages

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


def tensor_version(t):
    """t's version counter; inference tensors have none (in-place writes to
    them are possible only inside inference mode, and are not seen)."""
    if t is None:
        return None
    return 0 if t.is_inference() else t._version


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
