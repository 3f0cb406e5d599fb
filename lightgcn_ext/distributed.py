"""LightGCN over torch.distributed: node rows partitioned across processes.

    torchrun --nproc-per-node 4 -m lightgcn_ext train --data gowalla ...   # the CLI, unchanged

Rank r owns a contiguous block of node ids, bounds[r] .. bounds[r+1] - 1
(`partition`: balanced by edges plus one average row per node), their rows of
the embedding table, their optimizer state, and the rows of the graph whose
destination it owns: O((N d + E) / P). Replicated on every rank: the training
pairs and the sampler (to draw the global batches) and the item rows during
evaluation. A rank draws the initial table block by block up to its last row,
so that a seed initializes as in one process.

One layer, Â h for the owned rows, runs in P rounds
(`DistributedGraph.add_layer`): round 0 applies the edges between owned
nodes; round k receives from rank r - k only the rows of its block that the
owned rows touch (the halo, planned once per graph) and applies the edges
from them. A round's edges are a rectangular block of Â from its source rows
to the owned rows, dinv folded into per-edge weights, applied in place as a
torch.sparse CSR product (`_Block`: out.addmm_(B, halo)); the fused op, which
is square and allocates its output and a working buffer, was heavier and
slower on such a block (bench_distributed times one round both ways). The
transposed layer, for the gradient, multiplies by the blocks' transposes and
sends the halo's gradients back to their owners. A halo travels in
sub-rounds of at most chunk_rows rows, as many on every rank, so that the
working memory is O((N / P) d) per rank, where a single exchange of the
whole halo would need O(N d) on a graph without locality. `propagate` sums
the layers by Horner's rule in an autograd.Function that saves nothing,
forward and backward: at most three [N / P, d] tensors and one sub-round's
buffers are alive at once.

The BPR step splits each global batch (the one a single process draws with
the same seed) evenly over the ranks; a rank fetches the propagated rows of
its slice's nodes from their owners, and the L2 term of each node is counted
by its owner. Gradients return through the same exchanges (the batch rows'
as sparse tensors), and each rank steps Adam on its own rows. Every rank builds the same autograd graph, so the
collectives of the backward pass run in the same order everywhere.
"""
import ctypes
import datetime
import json
import math
import os
import platform
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from . import metrics
from . import train as _train
from .graph import _inverse_sqrt_degree
from .model import LightGCN
from .propagation import _check_alpha

__all__ = ["partition", "DistributedGraph", "propagate", "evaluate", "run"]

INDEX = _train.DIST_INDEX
DEFAULT_TIMEOUT_S = 120.0
CHUNK_ROWS = 1 << 16  # the rows of a halo's piece that a sub-round exchanges, at most


# ------------------------------------------------------------ partition
def partition(degree, world_size):
    """bounds [world_size + 1]: rank r owns the nodes bounds[r] .. bounds[r+1] - 1.

    Each block has about the same cost, a node costing its in-degree (its
    rows' edges: the work of a sweep) plus the average degree (its rows of
    the N x d tensors: the memory), so that neither is more than about twice
    its even share. Every block holds at least one node."""
    _check_positive_int(world_size, "world_size")
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


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def owner_of(nodes, bounds):
    """The rank that owns each node id."""
    inner = torch.tensor(bounds[1:-1], dtype=nodes.dtype, device=nodes.device)
    return torch.searchsorted(inner, nodes, right=True)


# ------------------------------------------------------------ exchange
def _collective(collective, *args, **kwargs):
    """A torch.distributed collective whose failure says what most likely
    happened: gloo reports a dead peer or a timeout as a bare RuntimeError
    (NCCL as DistBackendError, a RuntimeError too)."""
    try:
        return collective(*args, **kwargs)
    except RuntimeError as error:
        raise ConnectionError(
            f"rank {dist.get_rank()} of {dist.get_world_size()}: {collective.__name__} failed, most "
            f"likely because another process died or stalled for longer than the process "
            f"group's timeout (--dist-timeout); see that process's output. ({error})") from error


def _exchange(rows, send_splits, recv_splits, group):
    """all_to_all_single of rows: send_splits[j] of them to rank j; returns
    the rows received, recv_splits[j] from rank j, in rank order."""
    out = rows.new_empty(sum(recv_splits), rows.shape[1])
    _collective(dist.all_to_all_single, out, rows, recv_splits, send_splits, group=group)
    return out


class _Exchange(torch.autograd.Function):
    """Rows of x sent to other ranks: x[send_index], send_splits[j] of them to
    rank j; returns the rows received, recv_splits[j] from rank j, in rank
    order. The backward sends the gradients of the received rows back: x's
    gradient is a sparse COO tensor of those rows (a batch's rows are few,
    and a dense [num_rows, d] one would stay alive through the propagation's
    backward)."""

    @staticmethod
    def forward(ctx, x, send_index, send_splits, recv_splits, group):
        ctx.save_for_backward(send_index)
        ctx.num_rows, ctx.splits, ctx.group = x.shape[0], (send_splits, recv_splits), group
        return _exchange(x[send_index], send_splits, recv_splits, group)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (send_index,) = ctx.saved_tensors
        send_splits, recv_splits = ctx.splits
        returned = _exchange(grad.contiguous(), recv_splits, send_splits, ctx.group)
        grad_x = torch.sparse_coo_tensor(send_index.unsqueeze(0), returned,
                                         (ctx.num_rows, grad.shape[1]))
        return grad_x, None, None, None, None


class _Block:
    """The edges of one sub-round: from `width` source rows (local ids from 0:
    the owned rows in round 0, a piece of the halo received in a later one)
    to the num_owned owned rows, the normalization folded into per-edge
    weights dinv[dst] * dinv[src]. Applied as torch.sparse CSR products,
    rectangular and in place (out.addmm_(B, h)), forward and transposed."""

    def __init__(self, src, dst, weight, width, num_owned):
        self.shape = (num_owned, width)
        # The CSR of B (rows dst) and of Bᵀ (rows src); weights in float64,
        # cast once per feature dtype.
        self.structure = (_csr_structure(dst, src, weight, num_owned),
                          _csr_structure(src, dst, weight, width))
        self._matrices = {}

    def matrices(self, dtype):
        """(B, Bᵀ) as sparse CSR tensors of dtype."""
        if dtype not in self._matrices:
            with warnings.catch_warnings():  # "sparse CSR tensor support is in beta state"
                warnings.filterwarnings("ignore", "Sparse CSR tensor support", UserWarning)
                self._matrices[dtype] = tuple(
                    torch.sparse_csr_tensor(crow, col, values.to(dtype), shape,
                                            check_invariants=False)
                    for (crow, col, values), shape in zip(self.structure,
                                                          (self.shape, self.shape[::-1])))
        return self._matrices[dtype]


def _csr_structure(rows, cols, values, num_rows):
    """(crow, col, values) of the CSR with an entry per (rows, cols) pair,
    each row's entries in edge order; int32 indices where they fit (half the
    memory, and what MKL takes without a copy)."""
    order = torch.sort(rows, stable=True).indices
    crow = torch.zeros(num_rows + 1, dtype=torch.long, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=num_rows), 0, out=crow[1:])
    fits = max(num_rows, int(cols.max()) + 1 if cols.numel() else 0, rows.numel()) < 2**31
    index = torch.int32 if fits else torch.long
    return crow.to(index), cols[order].to(index), values[order]


class _SubRound:
    """A block and the exchange that feeds it: send_index, the owned rows
    this rank sends (send_splits) and recv_splits, the rows it receives."""

    def __init__(self, block, send_index, send_splits, recv_splits):
        self.block, self.send_index = block, send_index
        self.send_splits, self.recv_splits = send_splits, recv_splits


class DistributedGraph:
    """This rank's share of a graph partitioned by destination rows.

    Build it with `from_edge_index` (every rank holds the whole graph) or from
    the edges whose destination this rank owns, `DistributedGraph(edge_index,
    degree, bounds)`: edge_index [2, e] (source, destination) in global node
    ids, every destination in bounds[rank] .. bounds[rank+1] - 1; degree [N]
    the global in-degrees (every rank the same). Building it is collective.
    The graph is unweighted and normalized as LGConv's default
    (Â = D^-1/2 Aᵀ D^-1/2, D the in-degree); it may be directed.

    A round's halo is exchanged in sub-rounds of at most chunk_rows rows, as
    many in every rank (agreed once), so that a rank never holds more than
    chunk_rows received (or returned) rows at once."""

    def __init__(self, edge_index, degree, bounds, group=None, chunk_rows=None):
        self.group = group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        if len(bounds) != self.world_size + 1:
            raise ValueError(f"bounds must have world_size + 1 = {self.world_size + 1} entries, "
                             f"got {len(bounds)}")
        chunk_rows = CHUNK_ROWS if chunk_rows is None else chunk_rows
        _check_positive_int(chunk_rows, "chunk_rows")
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
        _collective(dist.all_to_all_single, give_counts, need_counts, group=group)
        # Round k's sub-rounds: enough for the largest halo any rank receives in it.
        pieces = torch.stack([-(-need_counts[(rank - k) % P] // chunk_rows) for k in range(P)])
        _collective(dist.all_reduce, pieces, op=dist.ReduceOp.MAX, group=group)
        need_counts, give_counts, pieces = need_counts.tolist(), give_counts.tolist(), \
            pieces.tolist()
        give = src.new_empty(sum(give_counts))
        _collective(dist.all_to_all_single, give, torch.cat(halos), give_counts, need_counts,
                    group=group)
        give_to = list(torch.split(give - self.lo, give_counts))
        local_dst = dst - self.lo
        weight = dinv[dst] * dinv[src]
        mine = owner == rank
        self.rounds = [[_SubRound(_Block(src[mine] - self.lo, local_dst[mine], weight[mine],
                                         self.num_owned, self.num_owned), None, None, None)]]
        for k in range(1, P):
            source, target = (rank - k) % P, (rank + k) % P
            mine = owner == source
            local_src = torch.searchsorted(halos[source], src[mine])
            round_dst, round_weight = local_dst[mine], weight[mine]
            self.rounds.append([])
            for piece in range(pieces[k]):
                first = piece * chunk_rows
                received = max(0, min(chunk_rows, need_counts[source] - first))
                sent = max(0, min(chunk_rows, give_counts[target] - first))
                inside = (local_src >= first) & (local_src < first + received)
                send_splits, recv_splits = [0] * P, [0] * P
                send_splits[target], recv_splits[source] = sent, received
                block = _Block(local_src[inside] - first, round_dst[inside],
                               round_weight[inside], received, self.num_owned) \
                    if received else None  # a block's row pointers cost num_owned ints
                self.rounds[-1].append(_SubRound(block, give_to[target][first:first + sent],
                                                 send_splits, recv_splits))

    @classmethod
    def from_edge_index(cls, edge_index, num_nodes, group=None, **kwargs):
        """Every rank passes the same [2, E] (source, destination) edge_index."""
        degree = torch.bincount(edge_index[1].long(), minlength=num_nodes)
        bounds = partition(degree, dist.get_world_size(group))
        rank = dist.get_rank(group)
        mine = (edge_index[1] >= bounds[rank]) & (edge_index[1] < bounds[rank + 1])
        return cls(edge_index[:, mine], degree, bounds, group, **kwargs)

    # ---------------------------------------------------------------- sweeps
    @torch.no_grad()
    def add_layer(self, h, out, transposed=False):
        """out += Â h (Âᵀ h when transposed) for the owned rows, in place,
        h and out [num_owned, d] this rank's rows, float32 or float64; not
        differentiable (see `propagate`). Collective.

        Forward, a sub-round receives a piece of the halo from rank - k and
        adds its block's product; transposed, it multiplies by the block's
        transpose, which gives the gradients of the rows that rank - k sent,
        and sends them back to be added to their own rows."""
        if h.shape[0] != self.num_owned or out.shape != h.shape:
            raise ValueError(f"h and out must both have one row per owned node "
                             f"({self.num_owned}), got {list(h.shape)} and {list(out.shape)}")
        if h.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"h must be float32 or float64 (torch.sparse's products), "
                            f"got {h.dtype}")
        for k, round_ in enumerate(self.rounds):
            for part in round_:
                # None: nothing received in this sub-round (it still sends).
                block, block_t = (None, None) if part.block is None else \
                    part.block.matrices(h.dtype)
                if k == 0:
                    out.addmm_(block_t if transposed else block, h)
                elif not transposed:
                    halo = _exchange(h[part.send_index], part.send_splits, part.recv_splits,
                                     self.group)
                    if block is not None:
                        out.addmm_(block, halo)
                else:
                    grads = h.new_empty(0, h.shape[1]) if block_t is None else block_t @ h
                    returned = _exchange(grads, part.recv_splits, part.send_splits, self.group)
                    out.index_add_(0, part.send_index, returned)
        return out

    # ------------------------------------------------------------ the plan
    def plan(self):
        """What one layer costs this rank: rows sent and received, edges applied."""
        return dict(rank=self.rank, num_owned=self.num_owned, num_edges=self.num_local_edges,
                    rows_sent=sum(part.send_index.numel() for round_ in self.rounds[1:]
                                  for part in round_),
                    rows_received=sum(sum(part.recv_splits) for round_ in self.rounds[1:]
                                      for part in round_),
                    collectives=sum(len(round_) for round_ in self.rounds[1:]))


class _Propagate(torch.autograd.Function):
    """sum_l alpha_l Â^l x by Horner's rule, alpha_0 x + Â(alpha_1 x + Â(...
    + Â alpha_L x)), and its gradient, the same sum on Âᵀ. Nothing is saved:
    at most three [num_owned, d] tensors (x, the running sum, the next one)
    and one round's buffers are alive at once, forward and backward."""

    @staticmethod
    def forward(ctx, x, alpha, graph):
        ctx.graph = graph
        ctx.save_for_backward(alpha)
        return _horner(graph, x, alpha, transposed=False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (alpha,) = ctx.saved_tensors
        grad = grad if grad.is_sparse else grad.contiguous()
        return _horner(ctx.graph, grad, alpha, transposed=True), None, None


def _horner(graph, x, alpha, transposed):
    """x dense, or sparse (the gradient of a batch's rows: kept sparse)."""
    alpha = alpha.to(x.dtype).unbind()

    def scaled(a):
        return (x * a).to_dense() if x.is_sparse else x * a

    out = scaled(alpha[-1])
    for a in reversed(alpha[:-1]):
        inner, out = out, scaled(a)
        graph.add_layer(inner, out, transposed)
        del inner
    return out


def propagate(graph, x, alpha):
    """sum_l alpha_l Â^l x for the owned rows: x [num_owned, d] this rank's
    rows; differentiable in x (alpha is a constant, as LightGCN's buffer).
    Collective."""
    alpha = _check_alpha(alpha, x)
    if alpha.requires_grad and torch.is_grad_enabled():
        raise ValueError("alpha must not require grad: distributed.propagate is "
                         "differentiable in x only")
    if x.shape[0] != graph.num_owned:
        raise ValueError(f"x must have one row per owned node ({graph.num_owned}), "
                         f"got {x.shape[0]}")
    return _Propagate.apply(x.contiguous(), alpha, graph)


# ---------------------------------------------------------- BPR training
def fetch_rows(embedding, nodes, bounds, group=None):
    """The rows of this rank's slice of a global batch of node ids.

    nodes [..., B] is the same on every rank; rank r's slice is the columns
    B * r // P .. B * (r + 1) // P - 1. Each owner sends the distinct nodes of
    every slice that it owns (it knows them all: no request is sent), and the
    gradients of the rows go back to it. Returns [..., b, d]. Collective."""
    rank, P = dist.get_rank(group), dist.get_world_size(group)
    size = nodes.shape[-1]
    cuts = [size * j // P for j in range(P + 1)]
    requests = [torch.unique(nodes[..., cuts[j]:cuts[j + 1]], return_inverse=j == rank)
                for j in range(P)]
    requests[rank], inverse = requests[rank]
    bounds_t = torch.tensor(bounds, device=nodes.device)
    at = torch.stack([torch.searchsorted(request, bounds_t) for request in requests]).tolist()
    lo = bounds[rank]
    send_index = torch.cat([requests[j][at[j][rank]:at[j][rank + 1]] for j in range(P)]) - lo
    send_splits = [at[j][rank + 1] - at[j][rank] for j in range(P)]
    recv_splits = [at[rank][s + 1] - at[rank][s] for s in range(P)]
    rows = _Exchange.apply(embedding, send_index, send_splits, recv_splits, group)
    return rows[inverse]


def owned_edges(train, num_users, lo, hi):
    """The edges of LightGCN's user-item graph (datasets.bipartite_edge_index)
    whose destination lies in lo .. hi - 1, as [2, e] (source, destination),
    without building the whole graph."""
    users, items = train[0], train[1] + num_users
    to_users = (users >= lo) & (users < hi)
    to_items = (items >= lo) & (items < hi)
    return torch.stack([torch.cat([items[to_users], users[to_items]]),
                        torch.cat([users[to_users], items[to_items]])])


def initial_rows(num_nodes, dim, lo, hi, seed, block=1 << 20):
    """Rows lo .. hi - 1 of the table of LightGCN(num_nodes, dim, ...) built
    after torch.manual_seed(seed), drawn `block` numbers at a time, so that
    no rank holds the whole table. The module's constructor draws the table
    twice from the CPU generator: torch.nn.Embedding's normal_, which
    xavier_uniform_ (gain 1) then overwrites. normal_ of n >= 16 float32s
    takes n numbers (n + 16 when 16 does not divide n), uniform_ one per
    entry, in order; so blocks that are multiples of 16, the last of at
    least 16, take what the whole draw takes (a test checks the rows)."""
    torch.manual_seed(seed)
    total = num_nodes * dim
    block = max(16, block - block % 16)
    for size in _blocks(total, block):
        torch.empty(size).normal_()  # only to advance the generator as the module does
    bound = math.sqrt(3.0) * math.sqrt(2.0 / float(dim + num_nodes))  # xavier_uniform_'s
    rows = torch.empty((hi - lo) * dim)
    start = 0
    for size in _blocks(hi * dim, block):  # uniform_ needs no whole-table alignment
        drawn = torch.empty(size).uniform_(-bound, bound)
        first = max(start, lo * dim)
        if start + size > first:
            rows[first - lo * dim:start + size - lo * dim] = drawn[first - start:]
        start += size
    return rows.view(hi - lo, dim)


def _blocks(total, block):
    """Sizes that add up to total: block each, the last at least 16 (or total)."""
    full = max(0, (total - 16) // block)
    last = total - full * block
    return [block] * full + ([last] if last else [])


def interaction_degree(data):
    """The in-degrees of LightGCN's user-item graph of data.train."""
    return torch.cat([torch.bincount(data.train[0], minlength=data.num_users),
                      torch.bincount(data.train[1], minlength=data.num_items)])


class _Worker:
    """This rank's rows of the model and of Adam, its share of the graph, and
    the sampler every rank runs alike: what train.train_loop steps, evaluates
    and checkpoints."""

    def __init__(self, config, data, device, group=None):
        self.config, self.data, self.device, self.group = config, data, device, group
        self.rank, self.world_size = dist.get_rank(group), dist.get_world_size(group)
        self.is_main = self.rank == 0
        bounds = partition(interaction_degree(data), self.world_size)
        lo, hi = bounds[self.rank], bounds[self.rank + 1]
        self.graph = DistributedGraph(owned_edges(data.train.to(device), data.num_users, lo, hi),
                                      interaction_degree(data).to(device), bounds, group)
        self.weight = torch.nn.Parameter(
            initial_rows(data.num_nodes, config.dim, lo, hi, config.seed).to(device))
        self.alpha = LightGCN(1, 1, config.layers).alpha.to(device)
        self.optimizer = _train.make_optimizer([self.weight], config)
        self.sampler, self.generator = _train.make_sampler(config, data, device)
        self.num_parameters = data.num_nodes * config.dim

    def step(self, users, positives, negatives):
        """One Adam step on the global batch, as train.bpr_step: the BPR loss
        of this rank's slice and the L2 term of the nodes it owns, each
        divided by the global batch size, so that the ranks' losses and
        gradients add up to the single process's. Returns this rank's part."""
        size, num_users = users.numel(), self.data.num_users
        nodes = torch.stack([users, positives + num_users, negatives + num_users])
        self.optimizer.zero_grad(set_to_none=True)  # first, as train.bpr_step
        embedding = propagate(self.graph, self.weight, self.alpha)
        user_emb, pos_emb, neg_emb = fetch_rows(embedding, nodes, self.graph.bounds, self.group)
        del embedding  # the rows are copies: [num_owned, d] less through the backward
        pos_scores = (user_emb * pos_emb).sum(dim=-1)
        neg_scores = (user_emb * neg_emb).sum(dim=-1)
        # model.BPRLoss with lambda_reg = reg / 2 over all 3 * size batch nodes,
        # as sums (never a mean over a slice, which may be empty).
        flat = nodes.view(-1)
        owned = flat[(flat >= self.graph.lo) & (flat < self.graph.hi)] - self.graph.lo
        # A sparse gradient: a dense one would stay alive through the backward.
        owned_rows = F.embedding(owned, self.weight, sparse=True)
        loss = (-F.logsigmoid(pos_scores - neg_scores).sum()
                + self.config.reg / 2 * owned_rows.pow(2).sum()) / size
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def mean_loss(self, loss_sum, steps):
        _collective(dist.all_reduce, loss_sum, group=self.group)
        return loss_sum.item() / steps

    @torch.no_grad()
    def evaluate(self, split):
        self.optimizer.zero_grad(set_to_none=True)  # the last step's: not kept through this
        embedding = propagate(self.graph, self.weight, self.alpha)
        data = self.data
        exclude = [data.train] if split == "valid" else \
            [data.train] + ([] if data.valid is None else [data.valid])
        return evaluate(embedding, self.graph.bounds, data.num_users,
                        data.valid if split == "valid" else data.test, exclude=exclude,
                        ks=tuple(self.config.topk), group=self.group)

    def describe_device(self):
        return dict(_train._describe_device(self.device), world_size=self.world_size,
                    backend=dist.get_backend(self.group))

    # ------------------------------------------------------------ checkpoints
    def _shard_name(self, epoch):
        return f"checkpoint.epoch{epoch}.rank{self.rank}-of-{self.world_size}.pt"

    def save(self, out, fingerprint, state):
        """Each rank's shard, then the index that names them (rank 0); the
        shards of older epochs go only once the new index is in place, so a
        kill at any moment leaves a complete checkpoint."""
        epoch = state["epoch"]
        shard = dict(format=_train._FORMAT, epoch=epoch, weight=self.weight.detach(),
                     optimizer=self.optimizer.state_dict(),
                     rng=_train.rng_state(self.generator))
        _train.atomic_write(out / self._shard_name(epoch), lambda f: torch.save(shard, f))
        _collective(dist.barrier, group=self.group)
        if self.is_main:
            index = dict(format=_train._FORMAT, world_size=self.world_size,
                         bounds=self.graph.bounds, epoch=epoch, fingerprint=fingerprint,
                         state=state, shards=[self._shard_name(epoch).replace(
                             f"rank{self.rank}-", f"rank{r}-") for r in range(self.world_size)])
            _train.atomic_write(out / INDEX, lambda f: f.write(json.dumps(index).encode()))
        _collective(dist.barrier, group=self.group)
        self._remove_shards(out, keep=self._shard_name(epoch))

    def _remove_shards(self, out, keep):
        for path in out.glob(f"checkpoint.epoch*.rank{self.rank}-of-*.pt"):
            if path.name != keep:
                path.unlink()

    def load(self, out, fingerprint):
        path = out / INDEX
        if not path.exists():
            if (out / _train.CHECKPOINT).exists():
                raise ValueError(f"{out} holds a checkpoint of a single process: resume it "
                                 f"without torchrun (its rows and optimizer state are not "
                                 f"partitioned for {self.world_size} processes)")
            raise FileNotFoundError(f"--resume: no checkpoint in {out} ({path} is missing)")
        try:
            index = json.loads(path.read_text())
        except ValueError as error:
            raise ValueError(f"{path} is not a readable checkpoint index ({error})") from error
        if index.get("world_size") != self.world_size:
            raise ValueError(
                f"{path} was written by {index.get('world_size')} processes, but this run has "
                f"{self.world_size} (WORLD_SIZE): resume it with torchrun --nproc-per-node "
                f"{index.get('world_size')}; rows and optimizer state are partitioned per "
                f"process")
        _train.check_fingerprint(path, index["fingerprint"], fingerprint)
        if index["bounds"] != self.graph.bounds:
            raise ValueError(f"{path} partitions the nodes as {index['bounds']}, this run as "
                             f"{self.graph.bounds}: the data changed")
        shard_path = out / index["shards"][self.rank]
        shard = torch.load(shard_path, map_location="cpu", weights_only=True)
        with torch.no_grad():
            self.weight.copy_(shard["weight"])
        self.optimizer.load_state_dict(shard["optimizer"])
        _train.set_rng_state(self.generator, shard["rng"])
        self._remove_shards(out, keep=shard_path.name)
        return index["state"]


# ------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(embedding, bounds, num_users, test, *, exclude=(), ks=(20,), group=None):
    """metrics.evaluate of the whole embedding table, from this rank's rows
    (`embedding`, nodes bounds[rank] .. bounds[rank+1] - 1): each rank scores
    its own users against every item (each owner broadcasts its item rows into
    one table: an all_gather would need equal, padded pieces and a copy) and
    the sums over users are added up across ranks. Collective."""
    rank, P = dist.get_rank(group), dist.get_world_size(group)
    lo, hi = bounds[rank], bounds[rank + 1]
    num_items = bounds[-1] - num_users
    item_emb = embedding.new_empty(num_items, embedding.shape[1])
    for j in range(P):
        a, b = max(bounds[j], num_users), max(bounds[j + 1], num_users)  # rank j's items
        if a == b:
            continue
        rows = item_emb[a - num_users:b - num_users]
        if j == rank:
            rows.copy_(embedding[a - lo:b - lo])
        _collective(dist.broadcast, rows, group=group, group_src=j)
    first, last = min(lo, num_users), min(hi, num_users)  # this rank's users

    def own(pairs):
        pairs = pairs.to(embedding.device)
        keep = (pairs[0] >= first) & (pairs[0] < last)
        return torch.stack([pairs[0][keep] - first, pairs[1][keep]])

    exclude = [exclude] if isinstance(exclude, torch.Tensor) else list(exclude)
    sums, count, ks = metrics.metric_sums(embedding[:last - first], item_emb, own(test),
                                          exclude=[own(e) for e in exclude], ks=ks)
    count = torch.tensor(float(count), dtype=torch.float64, device=sums.device)
    _collective(dist.all_reduce, sums, group=group)
    _collective(dist.all_reduce, count, group=group)
    if count.item() == 0:
        raise ValueError("test is empty: nothing to evaluate")
    return metrics.metrics_of_sums(sums, int(count.item()), ks)


# ---------------------------------------------------------------- launch
def map_sub_round_buffers(dim, itemsize=4):
    """Asks glibc's malloc to give every block of at least one sub-round's
    buffer (CHUNK_ROWS rows of dim floats: 16 MiB at d = 64) its own mapping,
    so that a freed one goes back to the system at once, and to trim its heap
    above twice that (the ratio glibc's own, moving, thresholds keep). By
    default the mapping threshold rises to 32 MiB as large blocks are freed,
    and the sub-rounds' buffers, freed and allocated again many times a step,
    stay in the heap: about 300 MiB of resident memory that no tensor holds,
    per rank of bench_distributed's 2,000,000-node graph (VmRSS sampled
    through the steps, with and without this call). A 1 MiB threshold
    saved about 100 MiB more there, but it costs a page fault per page of
    every smaller buffer, and it made the Gowalla steps of 2 and 4 processes
    1.6-1.9x slower. A single process does not call this: its large buffers
    are mapped anyway. A no-op where malloc is not glibc's."""
    if platform.system() != "Linux":
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    size = min(CHUNK_ROWS * dim * itemsize, 32 << 20)  # glibc's largest mapping threshold
    mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(size))
    mallopt(ctypes.c_int(M_TRIM_THRESHOLD), ctypes.c_int(2 * size))


def run(config, data=None):
    """train.run across the processes that torchrun started (WORLD_SIZE,
    RANK, MASTER_ADDR, ... in the environment): gloo on CPU, NCCL on CUDA
    (one GPU per process, cuda:LOCAL_RANK). Rank 0 shows progress and writes
    results.json and curve.png; every rank writes its checkpoint shard."""
    device = _train.resolve_device(config.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    map_sub_round_buffers(config.dim)  # before the data is read
    owns_group = not dist.is_initialized()
    if owns_group:
        init_process_group("nccl" if device.type == "cuda" else "gloo", config.dist_timeout)
    if data is None:  # rank 0 first: a named data set is downloaded once
        if dist.get_rank() != 0:
            _collective(dist.barrier)
        data = _train.load_data(config.data, config.data_root)
        if dist.get_rank() == 0:
            _collective(dist.barrier)
    results = _train.train_loop(config, data, _Worker(config, data, device))
    if owns_group:
        close()
    return results


def init_process_group(backend="gloo", timeout=DEFAULT_TIMEOUT_S):
    """dist.init_process_group from torchrun's environment, with a timeout in
    seconds. torch._dynamo is imported first: imported later (torch.optim
    does it), it keeps a reference to the default group, whose gloo threads
    then outlive destroy_process_group and can abort the process at exit
    ("terminate called without an active exception", torch 2.13)."""
    import torch._dynamo  # noqa: F401

    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))


def close():
    """Destroys the default process group once every rank is done with it: a
    rank that tears its connections down while another still finishes its last
    collective can abort that one (gloo)."""
    _collective(dist.barrier)
    dist.destroy_process_group()
