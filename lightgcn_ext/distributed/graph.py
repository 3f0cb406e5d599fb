"""`DistributedGraph`: this rank's share of a graph partitioned by destination
rows, and one layer of the normalized propagation over it in rounds and
sub-rounds of halo exchanges (`add_layer`)."""
import warnings

import torch
import torch.distributed as dist

from .. import validation
from ..graph import inverse_sqrt_degree
from .exchange import collective, exchange_rows
from .partition import owner_of, partition

CHUNK_ROWS = 1 << 16  # the rows of a halo's piece that a sub-round exchanges, at most


class Block:
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
        chunk_rows = validation.positive_int(chunk_rows, "chunk_rows")
        self.bounds, self.num_nodes = list(bounds), degree.numel()
        self.lo, self.hi = bounds[self.rank], bounds[self.rank + 1]
        self.num_owned = self.hi - self.lo
        device = edge_index.device
        src, dst = edge_index[0].long(), edge_index[1].long()
        if dst.numel() and not bool(((dst >= self.lo) & (dst < self.hi)).all()):
            raise ValueError(f"edge_index of rank {self.rank} must hold only edges whose "
                             f"destination it owns, [{self.lo}, {self.hi})")
        self.num_local_edges = src.numel()
        dinv = inverse_sqrt_degree(degree.to(device, torch.float64), True)
        owner = owner_of(src, bounds)
        P, rank = self.world_size, self.rank
        halos = [torch.unique(src[owner == s]) if s != rank else src.new_empty(0)
                 for s in range(P)]
        # Tell every owner which of its rows this rank needs: counts, then ids.
        need_counts = torch.tensor([h.numel() for h in halos], device=device)
        give_counts = torch.empty_like(need_counts)
        collective(dist.all_to_all_single, give_counts, need_counts, group=group)
        # Round k's sub-rounds: enough for the largest halo any rank receives in it.
        pieces = torch.stack([-(-need_counts[(rank - k) % P] // chunk_rows) for k in range(P)])
        collective(dist.all_reduce, pieces, op=dist.ReduceOp.MAX, group=group)
        need_counts, give_counts, pieces = need_counts.tolist(), give_counts.tolist(), \
            pieces.tolist()
        give = src.new_empty(sum(give_counts))
        collective(dist.all_to_all_single, give, torch.cat(halos), give_counts, need_counts,
                   group=group)
        give_to = list(torch.split(give - self.lo, give_counts))
        local_dst = dst - self.lo
        weight = dinv[dst] * dinv[src]
        mine = owner == rank
        self.rounds = [[_SubRound(Block(src[mine] - self.lo, local_dst[mine], weight[mine],
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
                block = Block(local_src[inside] - first, round_dst[inside],
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
        differentiable (see `propagate_distributed`). Collective.

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
                    halo = exchange_rows(h[part.send_index], part.send_splits, part.recv_splits,
                                         self.group)
                    if block is not None:
                        out.addmm_(block, halo)
                else:
                    grads = h.new_empty(0, h.shape[1]) if block_t is None else block_t @ h
                    returned = exchange_rows(grads, part.recv_splits, part.send_splits, self.group)
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
