"""LightGCN and BPRLoss with the API, defaults and state_dict of
torch_geometric.nn.models.LightGCN, on the fused propagation."""

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.loss import _Loss

from . import validation
from .graph import FLOWS, is_sparse_adjacency
from .propagation import propagate, propagate_rows

# Arguments of PyG's LGConv (and of its MessagePassing base) that we support,
# with the only values we support where that is restricted.
_SUPPORTED_AGGR = ("add", "sum")


class LightGCN(torch.nn.Module):
    r"""LightGCN (He et al., SIGIR 2020): a drop-in for
    :class:`torch_geometric.nn.models.LightGCN`.

    .. math::
        \mathbf{x} = \sum_{l=0}^{L} \alpha_l \hat{A}^l \mathbf{E},
        \qquad \hat{A} = D^{-1/2} A^\top D^{-1/2}

    Same signatures, defaults and ``state_dict`` keys (``alpha``,
    ``embedding.weight``) as PyG; the graph given as ``edge_index`` is prepared
    once (CSR and degrees) and reused until it changes, and the L layers run in
    one fused kernel call whose backward keeps no per-layer activations.

    Args:
        num_nodes (int): number of nodes.
        embedding_dim (int): embedding size.
        num_layers (int): number of propagation layers L.
        alpha (float, int or Tensor, optional): layer weights; ``None`` gives
            ``1 / (num_layers + 1)``; a number is repeated L + 1 times; a
            tensor must have L + 1 entries and may require grad.
        **kwargs: arguments of PyG's ``LGConv``: ``normalize`` (default True),
            ``flow`` (``"source_to_target"`` or ``"target_to_source"``) and
            ``aggr="add"``. Anything else raises ``ValueError``.
    """

    def __init__(self, num_nodes, embedding_dim, num_layers, alpha=None, **kwargs):
        super().__init__()
        self.normalize, self.flow = _check_conv_kwargs(kwargs)
        self.num_nodes = num_nodes
        self.embedding_dim = embedding_dim
        self.num_layers = num_layers
        if alpha is None:
            alpha = 1.0 / (num_layers + 1)
        if isinstance(alpha, Tensor):
            if alpha.dim() != 1 or alpha.size(0) != num_layers + 1:
                raise ValueError(f"alpha must have num_layers + 1 = {num_layers + 1} entries, "
                                 f"got shape {list(alpha.shape)}")
        else:
            alpha = torch.tensor([alpha] * (num_layers + 1))
        self.register_buffer("alpha", alpha)  # a buffer even when it requires grad, as PyG
        self.embedding = torch.nn.Embedding(num_nodes, embedding_dim)
        self.reset_parameters()

    def reset_parameters(self):
        r"""Resets the embedding (``xavier_uniform_``, as PyG)."""
        torch.nn.init.xavier_uniform_(self.embedding.weight)

    def get_embedding(self, edge_index, edge_weight=None) -> Tensor:
        r"""The final node embeddings :math:`\sum_l \alpha_l \hat{A}^l E`."""
        return propagate(edge_index, self.embedding.weight, self.alpha, edge_weight=edge_weight,
                         normalize=self.normalize, flow=self.flow)

    def get_embedding_rows(self, edge_index, rows, edge_weight=None, *, precision="float32"):
        r"""``(get_embedding(edge_index)[rows], embedding.weight[rows])``,
        computed for the nodes ``rows`` only (repeats allowed). A loss on a
        batch (BPR and its L2 term on the layer-0 rows) then has a backward
        that writes one ``[num_nodes, d]`` gradient, and costs fewer sweeps
        than the whole propagation and indexing; the numbers are the same.

        ``precision="bf16"`` (keyword-only, beyond PyG) stores the layers that
        the propagation and its backward gather in bfloat16: a faster training
        step, within bfloat16 rounding of the float32 one (see
        `lightgcn_ext.propagate`). The weights, their gradient and every other
        method stay float32."""
        rows = _check_index(rows, "rows", self.num_nodes)
        return propagate_rows(edge_index, self.embedding.weight, self.alpha, rows,
                              edge_weight=edge_weight, normalize=self.normalize, flow=self.flow,
                              precision=precision)

    def forward(self, edge_index, edge_label_index=None, edge_weight=None) -> Tensor:
        r"""Scores ``<x_src, x_dst>`` of the pairs in ``edge_label_index``
        (all edges of ``edge_index`` when it is ``None``; those of a prepared
        Graph in `Graph.edges()` order)."""
        if edge_label_index is None:
            edge_label_index = _edges_of(edge_index)
        edge_label_index = _check_index(edge_label_index, "edge_label_index", self.num_nodes,
                                        pairs=True)
        # Only the pairs' rows are propagated in the last layer.
        out, _ = self.get_embedding_rows(edge_index, edge_label_index.reshape(-1), edge_weight)
        src, dst = out.view(2, edge_label_index.size(1), out.size(-1))
        return (src * dst).sum(dim=-1)

    def predict_link(self, edge_index, edge_label_index=None, edge_weight=None,
                     prob=False) -> Tensor:
        r"""Link probabilities (``prob=True``) or 0/1 predictions."""
        pred = self(edge_index, edge_label_index, edge_weight).sigmoid()
        return pred if prob else pred.round()

    @torch.no_grad()
    def recommend(self, edge_index, edge_weight=None, src_index=None, dst_index=None, k=1,
                  sorted=True, *, exclude=None, chunk_size=None, return_scores=False):
        r"""Top-``k`` nodes of ``dst_index`` for each node of ``src_index``, all
        ids (``exclude``'s too) global node ids as in ``edge_index``.

        Nodes are ranked by ``<x_src, x_dst>``; ``src_index`` and ``dst_index``
        default to all nodes.

        Beyond PyG (keyword-only):

        * ``exclude``: a ``[2, M]`` tensor of (src, dst) pairs never to
          recommend (typically the training interactions), in **global node
          ids**, as in ``edge_index`` (an item's id is offset by the number of
          users), never positions in ``dst_index``. Where ``dst_index`` is
          given, every excluded dst must be in it (else ``ValueError``: the
          usual sign of item-local ids). A source left with fewer than ``k``
          candidates gets id ``-1`` (score ``-inf``) in the places it cannot fill.
        * ``chunk_size``: the number of sources scored at once, so that memory
          is ``O(chunk_size * len(dst_index))``, never a dense
          ``len(src_index) x len(dst_index)`` matrix.
        * ``return_scores``: return ``(index, scores)``, the scores
          ``<x_src, x_dst>`` of the recommended nodes.
        """
        out = self.get_embedding(edge_index, edge_weight)
        src_index = None if src_index is None else _check_index(src_index, "src_index",
                                                                 self.num_nodes)
        dst_index = None if dst_index is None else _check_index(dst_index, "dst_index",
                                                                self.num_nodes)
        src_index = None if src_index is None else src_index.to(out.device)
        dst_index = None if dst_index is None else dst_index.to(out.device)
        out_src = out if src_index is None else out[src_index]
        out_dst = out if dst_index is None else out[dst_index]
        num_candidates = out_dst.size(0)
        k = validation.as_int(k, "k")
        if not 0 <= k <= num_candidates:
            raise ValueError(f"k must be in [0, {num_candidates}] (the number of candidates "
                             f"in dst_index), got {k}")
        if chunk_size is None:
            chunk_size = max(1, (1 << 24) // max(num_candidates, 1))
        else:
            chunk_size = validation.positive_int(chunk_size, "chunk_size")
        excluded = None if exclude is None else _ExcludedPairs(
            exclude, self.num_nodes, src_index, dst_index, out.device)
        top_scores, top = [], []
        # One score matrix for every chunk: on a CPU, a new one per chunk costs
        # the page faults of fresh memory, about a third of the product's time.
        buffer = out.new_empty((min(chunk_size, out_src.size(0)), num_candidates))
        for start in range(0, out_src.size(0), chunk_size):
            rows = out_src[start:start + chunk_size]
            scores = torch.mm(rows, out_dst.t(), out=buffer[:rows.size(0)])
            if excluded is not None:
                excluded.mask_(scores, start)
            values, index = scores.topk(k, dim=-1, sorted=sorted)
            top_scores.append(values)
            top.append(index)
        top_index = torch.cat(top) if top else out.new_empty((0, k), dtype=torch.long)
        top_scores = torch.cat(top_scores) if top_scores else out.new_empty((0, k))
        if dst_index is not None:  # local positions -> node ids
            top_index = dst_index[top_index.view(-1)].view(*top_index.size())
        if excluded is not None:  # places only excluded nodes could fill
            top_index = top_index.masked_fill(top_scores == _EXCLUDED, -1)
        return (top_index, top_scores) if return_scores else top_index

    def link_pred_loss(self, pred: Tensor, edge_label: Tensor, **kwargs) -> Tensor:
        r"""Binary cross-entropy with logits, as PyG."""
        loss_fn = torch.nn.BCEWithLogitsLoss(**kwargs)
        return loss_fn(pred, edge_label.to(pred.dtype))

    def recommendation_loss(self, pos_edge_rank: Tensor, neg_edge_rank: Tensor,
                            node_id=None, lambda_reg: float = 1e-4, **kwargs) -> Tensor:
        r"""The BPR loss of PyG, regularizing the layer-0 embeddings of
        ``node_id`` (all nodes if ``None``)."""
        loss_fn = BPRLoss(lambda_reg, **kwargs)
        emb = self.embedding.weight
        if node_id is not None:
            emb = emb[_check_index(node_id, "node_id", self.num_nodes, allow_mask=True)]
        return loss_fn(pos_edge_rank, neg_edge_rank, emb)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}({self.num_nodes}, {self.embedding_dim}, " \
               f"num_layers={self.num_layers})"


class BPRLoss(_Loss):
    r"""Bayesian Personalized Ranking loss, as PyG's:
    ``-mean(logsigmoid(pos - neg)) + lambda_reg * ||parameters||^2 / batch``."""

    __constants__ = ["lambda_reg"]
    lambda_reg: float

    def __init__(self, lambda_reg: float = 0, **kwargs):
        super().__init__(None, None, "sum", **kwargs)
        self.lambda_reg = lambda_reg

    def forward(self, positives: Tensor, negatives: Tensor, parameters: Tensor = None) -> Tensor:
        try:
            torch.broadcast_shapes(positives.shape, negatives.shape)
        except RuntimeError:
            raise ValueError(f"positives and negatives must have broadcastable shapes, got "
                             f"{list(positives.shape)} and {list(negatives.shape)}") from None
        log_prob = F.logsigmoid(positives - negatives).mean()
        regularization = 0
        if self.lambda_reg != 0:
            if parameters is None:
                raise ValueError(f"parameters must be given when lambda_reg != 0 "
                                 f"(lambda_reg={self.lambda_reg})")
            regularization = self.lambda_reg * parameters.norm(p=2).pow(2)
            regularization = regularization / positives.size(0)
        return -log_prob + regularization


_EXCLUDED = float("-inf")  # the score of an excluded pair


class _ExcludedPairs:
    """(src, dst) node pairs to mask out of recommendation scores, grouped by
    source position so that each chunk of sources finds its pairs by slicing."""

    def __init__(self, exclude, num_nodes, src_index, dst_index, device):
        exclude = _check_index(exclude, "exclude", num_nodes, pairs=True).to(device)
        src_pos = _positions(src_index, num_nodes, device, "src_index")
        dst_pos = _positions(dst_index, num_nodes, device, "dst_index")
        rows, cols = src_pos[exclude[0]], dst_pos[exclude[1]]
        if bool((cols < 0).any()):
            outside = exclude[1][cols < 0]
            raise ValueError(
                f"exclude must hold (src, dst) pairs of global node ids, with every dst in "
                f"dst_index; {outside.numel()} dst ids are not in dst_index (e.g. "
                f"{outside[:5].tolist()}). Item-local ids must be offset by the number of "
                f"users; pairs of other items can be dropped with "
                f"exclude[:, torch.isin(exclude[1], dst_index)]")
        keep = rows >= 0  # sources not asked for are simply not scored
        rows, cols = rows[keep], cols[keep]
        order = torch.argsort(rows)
        self.rows, self.cols = rows[order], cols[order]

    def mask_(self, scores, start):
        """Sets the excluded entries of scores, the rows of the sources at
        positions start, start + 1, ..., to -inf."""
        bounds = torch.tensor([start, start + scores.size(0)], device=self.rows.device)
        lo, hi = torch.searchsorted(self.rows, bounds).tolist()
        scores[self.rows[lo:hi] - start, self.cols[lo:hi]] = _EXCLUDED


def _positions(index, num_nodes, device, name):
    """position[node] = the place of node in index (-1 if absent); identity if None."""
    if index is None:
        return torch.arange(num_nodes, device=device)
    position = torch.full((num_nodes,), -1, dtype=torch.long, device=device)
    position[index] = torch.arange(index.numel(), device=device)
    if int((position >= 0).sum()) != index.numel():
        raise ValueError(f"{name} must not repeat a node when exclude is given")
    return position


def _check_conv_kwargs(kwargs):
    kwargs = dict(kwargs)
    normalize = kwargs.pop("normalize", True)
    flow = kwargs.pop("flow", "source_to_target")
    aggr = kwargs.pop("aggr", "add")
    if not isinstance(normalize, bool):
        raise ValueError(f"normalize must be a bool, got {normalize!r}")
    validation.choice(flow, "flow", FLOWS)
    if aggr not in _SUPPORTED_AGGR:
        raise ValueError(f"aggr={aggr!r} is not supported: lightgcn_ext's LightGCN "
                         f"aggregates by sum (aggr='add'), as LGConv does by default")
    if kwargs:
        raise ValueError(f"unsupported LGConv arguments {sorted(kwargs)}: lightgcn_ext "
                         f"supports normalize, flow and aggr='add'")
    return normalize, flow


def _edges_of(edge_index):
    """The [2, E] (src, dst) pairs of any graph input, as PyG's to_edge_index."""
    from .graph import Graph, edges_of_adj_t

    if isinstance(edge_index, Graph):  # by destination, then source (Graph.edges)
        return edge_index.edges()
    if isinstance(edge_index, Tensor) and edge_index.layout == torch.sparse_coo:
        return edge_index._indices()  # every stored entry, in order, as PyG
    if is_sparse_adjacency(edge_index):
        pairs, _, _ = edges_of_adj_t(edge_index)
        return pairs.flip(0)  # PyG returns (row, col) of the sparse matrix
    return edge_index


def _check_index(index, name, num_nodes, pairs=False, allow_mask=False):
    """Node ids (or [2, n] id pairs) as a tensor, each checked to be in range;
    with allow_mask, a boolean mask over the nodes is accepted as well."""
    if not isinstance(index, Tensor):
        try:
            index = torch.as_tensor(index)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"{name} must be a tensor of node ids, got "
                            f"{type(index).__name__}") from None
    if allow_mask and index.dtype == torch.bool:
        if index.shape != (num_nodes,):
            raise ValueError(f"{name} as a boolean mask must have shape [num_nodes={num_nodes}], "
                             f"got {list(index.shape)}")
        return index
    if index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got {index.dtype}")
    if pairs and (index.dim() != 2 or index.size(0) != 2):
        raise ValueError(f"{name} must have shape [2, num_pairs], got {list(index.shape)}")
    if not pairs and index.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {list(index.shape)}")
    if torch.compiler.is_compiling() or index.device.type != "cpu":
        # Reading the range on the host would break a compiled graph, and cost
        # a CUDA step a synchronization: the check runs on the device.
        torch._assert_async(((index >= 0) & (index < num_nodes)).all(),
                            f"{name} must hold node ids in [0, num_nodes={num_nodes})")
    elif index.numel() > 0:
        low, high = torch.aminmax(index)
        if int(low) < 0 or int(high) >= num_nodes:
            raise ValueError(f"{name} must hold node ids in [0, num_nodes={num_nodes}), "
                             f"got values in [{int(low)}, {int(high)}]")
    return index.as_subclass(Tensor) if type(index) is not Tensor else index
