"""Benchmark-only code: a plain torch.sparse reference implementation of the
LightGCN propagation, sum_l alpha_l Â^l x, that the benchmarks check and time
the fused kernels against (not the fast path: that is lightgcn_ext.propagate),
and the size of Gowalla's training graph, for a synthetic stand-in of that size
where Gowalla is absent: `lightgcn_ext.data.synthetic(0, **GOWALLA_SIZES)`."""
import warnings

import torch

GOWALLA_SIZES = dict(num_users=29858, num_items=40981, num_interactions=810128)


def normalized_adjacency(edge_index, num_nodes, dtype, layout=torch.sparse_coo):
    """Â = D^-1/2 Aᵀ D^-1/2 (rows = destinations, PyG's LGConv, D the in-degrees)
    of a [2, E] (source, destination) edge_index, on its device: a coalesced
    torch.sparse COO tensor, or with layout=torch.sparse_csr the same as CSR."""
    if layout not in (torch.sparse_coo, torch.sparse_csr):
        raise ValueError(f"layout must be torch.sparse_coo or torch.sparse_csr, not {layout}")
    src, dst = edge_index
    deg = torch.bincount(dst, minlength=num_nodes).to(dtype)
    dinv = deg.pow(-0.5).masked_fill_(deg == 0, 0.0)
    adj = torch.sparse_coo_tensor(torch.stack([dst, src]), dinv[src] * dinv[dst],
                                  (num_nodes, num_nodes), check_invariants=False).coalesce()
    if layout == torch.sparse_coo:
        return adj
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        return adj.to_sparse_csr()


def sparse_propagate(adj, x, alpha):
    """sum_l alpha[l] adj^l x with torch.sparse.mm, for l = 0 .. len(alpha) - 1."""
    out = x * alpha[0]
    for a in alpha[1:]:
        x = torch.sparse.mm(adj, x)
        out = out + x * a
    return out
