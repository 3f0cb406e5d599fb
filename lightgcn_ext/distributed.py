"""LightGCN over torch.distributed: node rows partitioned across processes.

    torchrun --nproc-per-node 4 -m lightgcn_ext train --data gowalla ...   # the CLI, unchanged

Rank r owns a contiguous block of node ids, bounds[r] .. bounds[r+1] - 1
(`partition`: balanced by edges plus one average row per node), their rows of
the embedding table, their optimizer state, and the rows of the graph whose
destination it owns. Nothing of size N x d or E is replicated but the
training pairs, which every rank reads to draw the same global batches.

One layer, Â h for the owned rows, runs in P rounds (`DistributedGraph`):
round 0 applies the edges between owned nodes; round k receives from rank
r - k only the rows of its block that the owned rows touch (the halo, planned
once per graph) and applies the edges from them. Each round is the fused
`lightgcn_ext::propagate` op (alpha = [0, 1]) on a local square operator over
owned + halo nodes (halo rows empty, dinv from the global degrees), whose
registered autograd gives the gradient for owned and halo rows; `_Exchange`,
an autograd.Function around `all_to_all_single`, sends the halo part of it
back to the owners. Receiving one source rank's halo at a time keeps the
working memory at O((N / P) d) per rank, where a single exchange of the whole
halo would need O(N d) on a graph without locality.

The BPR step splits each global batch (the one a single process draws with
the same seed) evenly over the ranks; a rank fetches the propagated rows of
its slice's nodes from their owners, and the L2 term of each node is counted
by its owner. Gradients return through the same exchanges, and each rank
steps Adam on its own rows. Every rank builds the same autograd graph, so the
collectives of the backward pass run in the same order everywhere.
"""
import datetime
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from . import _ops, metrics
from . import train as _train
from .graph import _inverse_sqrt_degree
from .model import LightGCN

__all__ = ["partition", "DistributedGraph", "propagate", "evaluate", "run"]

INDEX = _train.DIST_INDEX
DEFAULT_TIMEOUT_S = 120


# ------------------------------------------------------------ partition
def partition(degree, world_size):
    """bounds [world_size + 1]: rank r owns the nodes bounds[r] .. bounds[r+1] - 1.

    Each block has about the same cost, a node costing its in-degree (its
    rows' edges: the work of a sweep) plus the average degree (its rows of
    the N x d tensors: the memory), so that neither is more than about twice
    its even share. Every block holds at least one node."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    num_nodes = degree.numel()
    if world_size > num_nodes:
        raise ValueError(f"world_size ({world_size} processes) must be at most the number of "
                         f"nodes ({num_nodes}): every rank owns a non-empty block of nodes")
    cost = degree.double().cpu()
    cost = cost + cost.sum() / num_nodes
    cumulative = cost.cumsum(0)
    targets = cumulative[-1] * torch.arange(1, world_size, dtype=torch.float64) / world_size
    cuts = torch.searchsorted(cumulative, targets, right=True).tolist()
    bounds = [0]
    for r, cut in enumerate(cuts, start=1):
        bounds.append(min(max(cut, bounds[-1] + 1), num_nodes - (world_size - r)))
    return bounds + [num_nodes]


def owner_of(nodes, bounds):
    """The rank that owns each node id."""
    inner = torch.tensor(bounds[1:-1], dtype=nodes.dtype, device=nodes.device)
    return torch.searchsorted(inner, nodes, right=True)


# ------------------------------------------------------------ exchange
class _Exchange(torch.autograd.Function):
    """Rows of x sent to other ranks with all_to_all_single: x[send_index],
    send_splits[j] of them to rank j; returns the rows received, recv_splits[j]
    from rank j, in rank order. The backward sends the gradients of the
    received rows back and adds them to the rows they came from."""

    @staticmethod
    def forward(ctx, x, send_index, send_splits, recv_splits, group):
        ctx.save_for_backward(send_index)
        ctx.num_rows, ctx.splits, ctx.group = x.shape[0], (send_splits, recv_splits), group
        received = x.new_empty(sum(recv_splits), x.shape[1])
        dist.all_to_all_single(received, x[send_index], recv_splits, send_splits, group=group)
        return received

    @staticmethod
    def backward(ctx, grad):
        (send_index,) = ctx.saved_tensors
        send_splits, recv_splits = ctx.splits
        returned = grad.new_empty(send_index.numel(), grad.shape[1])
        dist.all_to_all_single(returned, grad.contiguous(), send_splits, recv_splits,
                               group=ctx.group)
        grad_x = grad.new_zeros(ctx.num_rows, grad.shape[1]).index_add_(0, send_index, returned)
        return grad_x, None, None, None, None


class _Round:
    """One round of a sweep: the local operator, and what to send and receive."""

    def __init__(self, rowptr, col, rowptr_t, col_t, dinv, send_index, send_splits,
                 recv_splits):
        self.graph = (rowptr, col, rowptr_t, col_t)
        self.dinv = dinv  # float64; cast per feature dtype
        self.send_index, self.send_splits, self.recv_splits = send_index, send_splits, recv_splits
        self._operators = {}

    def operator(self, dtype):
        acc = _ops.accumulation_dtype(dtype)
        if acc not in self._operators:
            rowptr, col, rowptr_t, col_t = self.graph
            self._operators[acc] = _ops.CsrOperator(rowptr, col, None, self.dinv.to(acc),
                                                    rowptr_t, col_t, None)
        return self._operators[acc]


class DistributedGraph:
    """This rank's share of a graph partitioned by destination rows.

    Build it with `from_edge_index` (every rank holds the whole graph) or from
    the edges whose destination this rank owns, `DistributedGraph(edge_index,
    degree, bounds)`: edge_index [2, e] (source, destination) in global node
    ids, every destination in bounds[rank] .. bounds[rank+1] - 1; degree [N]
    the global in-degrees (every rank the same). Building it is collective.
    The graph is unweighted and normalized as LGConv's default
    (Â = D^-1/2 Aᵀ D^-1/2, D the in-degree); it may be directed."""

    def __init__(self, edge_index, degree, bounds, group=None):
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        if len(bounds) != self.world_size + 1:
            raise ValueError(f"bounds must have world_size + 1 = {self.world_size + 1} entries, "
                             f"got {len(bounds)}")
        self.bounds, self.num_nodes = list(bounds), degree.numel()
        self.lo, self.hi = bounds[self.rank], bounds[self.rank + 1]
        self.num_owned = self.hi - self.lo
        device = edge_index.device
        src, dst = edge_index[0].long(), edge_index[1].long()
        if dst.numel() and not bool(((dst >= self.lo) & (dst < self.hi)).all()):
            raise ValueError(f"edge_index of rank {self.rank} must hold only edges whose "
                             f"destination it owns, [{self.lo}, {self.hi})")
        self.num_local_edges = src.numel()
        dinv = _inverse_sqrt_degree(degree.to(device, torch.float64), True)
        owner = owner_of(src, bounds)
        P, rank = self.world_size, self.rank
        halos = [torch.unique(src[owner == s]) if s != rank else src.new_empty(0)
                 for s in range(P)]
        # Tell every owner which of its rows this rank needs: counts, then ids.
        need_counts = torch.tensor([h.numel() for h in halos], device=device)
        give_counts = torch.empty_like(need_counts)
        dist.all_to_all_single(give_counts, need_counts, group=group)
        need_counts, give_counts = need_counts.tolist(), give_counts.tolist()
        give = src.new_empty(sum(give_counts))
        dist.all_to_all_single(give, torch.cat(halos), give_counts, need_counts, group=group)
        give_to = list(torch.split(give - self.lo, give_counts))
        owned = torch.arange(self.lo, self.hi, device=device)
        self.rounds = []
        for k in range(P):
            source, target = (rank - k) % P, (rank + k) % P
            mine = owner == source
            nodes = torch.cat([owned, halos[source]])
            if k == 0:
                local_src = src[mine] - self.lo
            else:
                local_src = self.num_owned + torch.searchsorted(halos[source], src[mine])
            local = torch.stack([local_src, dst[mine] - self.lo])
            rowptr, col, _, rowptr_t, col_t, _ = torch.ops.lightgcn_ext.prepare_csr(
                local, nodes.numel())
            if torch.equal(rowptr, rowptr_t) and torch.equal(col, col_t):
                rowptr_t = col_t = None  # symmetric: the backward reuses the forward's CSR
            send_splits, recv_splits = [0] * P, [0] * P
            if k > 0:
                send_splits[target], recv_splits[source] = give_counts[target], need_counts[source]
            send_index = give_to[target] if k > 0 else owned.new_empty(0)
            self.rounds.append(_Round(rowptr, col, rowptr_t, col_t, dinv[nodes], send_index,
                                      send_splits, recv_splits))

    @classmethod
    def from_edge_index(cls, edge_index, num_nodes, group=None):
        """Every rank passes the same [2, E] (source, destination) edge_index."""
        degree = torch.bincount(edge_index[1].long(), minlength=num_nodes)
        bounds = partition(degree, dist.get_world_size(group))
        rank = dist.get_rank(group)
        mine = (edge_index[1] >= bounds[rank]) & (edge_index[1] < bounds[rank + 1])
        return cls(edge_index[:, mine], degree, bounds, group)

    # ---------------------------------------------------------------- sweeps
    def layer(self, h):
        """Â h for the owned rows, h [num_owned, d] this rank's rows of the input."""
        if h.shape[0] != self.num_owned:
            raise ValueError(f"h must have one row per owned node ({self.num_owned}), "
                             f"got {h.shape[0]}")
        one_hop = torch.tensor([0.0, 1.0], dtype=h.dtype, device=h.device)
        out = None
        for k, round_ in enumerate(self.rounds):
            local = h if k == 0 else torch.cat([h, _Exchange.apply(
                h, round_.send_index, round_.send_splits, round_.recv_splits, self.group)])
            y = _ops.propagate(round_.operator(h.dtype), local, one_hop)[:self.num_owned]
            out = y if out is None else out + y
        return out

    # ------------------------------------------------------------ the plan
    def plan(self):
        """What one layer costs this rank: rows sent and received, edges applied."""
        return dict(rank=self.rank, num_owned=self.num_owned, num_edges=self.num_local_edges,
                    rows_sent=sum(r.send_index.numel() for r in self.rounds),
                    rows_received=sum(sum(r.recv_splits) for r in self.rounds),
                    collectives=self.world_size - 1)


def propagate(graph, x, alpha):
    """sum_l alpha_l Â^l x for the owned rows: x [num_owned, d] this rank's
    rows; differentiable in x (and alpha). Collective."""
    alpha = torch.as_tensor(alpha, device=x.device)
    out, h = x * alpha[0].to(x.dtype), x
    for layer in range(1, alpha.numel()):
        h = graph.layer(h)
        out = out + h * alpha[layer].to(x.dtype)
    return out
