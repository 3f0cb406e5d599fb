"""Which rank owns which nodes (contiguous blocks balanced by `partition`), and
what a rank builds of its own rows without the whole graph or table: its edges
(`owned_edges`) and its rows of the initial embedding table (`initial_rows`)."""
import math

import torch

from .. import validation


def partition(degree, world_size):
    """bounds [world_size + 1]: rank r owns the nodes bounds[r] .. bounds[r+1] - 1.

    Each block has about the same cost, a node costing its in-degree (its
    rows' edges: the work of a sweep) plus the average degree (its rows of
    the N x d tensors: the memory), so that neither is more than about twice
    its even share. Every block holds at least one node."""
    world_size = validation.positive_int(world_size, "world_size")
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
