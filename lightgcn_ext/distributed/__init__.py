"""LightGCN over torch.distributed: node rows partitioned across processes.

    torchrun --nproc-per-node 4 -m lightgcn_ext train --data gowalla ...   # the CLI

    # in a script that torchrun starts:
    from lightgcn_ext.distributed import train_distributed
    from lightgcn_ext.training import TrainConfig
    results = train_distributed(TrainConfig(data="gowalla", out="runs/gowalla"))

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
torch.sparse CSR product (`Block`: out.addmm_(B, halo)); the fused op, which
is square and allocates its output and a working buffer, was heavier and
slower on such a block (bench_distributed times one round both ways). The
transposed layer, for the gradient, multiplies by the blocks' transposes and
sends the halo's gradients back to their owners. A halo travels in
sub-rounds of at most chunk_rows rows, as many on every rank, so that the
working memory is O((N / P) d) per rank, where a single exchange of the
whole halo would need O(N d) on a graph without locality.
`propagate_distributed` sums the layers by Horner's rule in an autograd.Function that saves nothing,
forward and backward: at most three [N / P, d] tensors and one sub-round's
buffers are alive at once.

The BPR step splits each global batch (the one a single process draws with
the same seed) evenly over the ranks; a rank fetches the propagated rows of
its slice's nodes from their owners, and the L2 term of each node is counted
by its owner. Gradients return through the same exchanges (the batch rows'
as sparse tensors), and each rank steps Adam on its own rows. Every rank
builds the same autograd graph, so the collectives of the backward pass run in the
same order everywhere.
"""
from .exchange import fetch_rows
from .graph import CHUNK_ROWS, DistributedGraph
from .launch import close, init_process_group, map_sub_round_buffers, train_distributed
from .partition import initial_rows, interaction_degree, owned_edges, owner_of, partition
from .propagation import evaluate_distributed, propagate_distributed
from .worker import DistributedWorker

__all__ = ["train_distributed", "DistributedGraph", "partition", "propagate_distributed",
           "evaluate_distributed", "DistributedWorker", "fetch_rows", "owner_of",
           "owned_edges", "initial_rows", "interaction_degree", "init_process_group", "close",
           "map_sub_round_buffers", "CHUNK_ROWS"]
