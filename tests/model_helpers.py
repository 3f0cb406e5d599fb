"""Helpers of tests/test_model.py: our LightGCN and torch_geometric's built
from one seed, random PyG-style graphs, and comparisons with a relative
tolerance (or via scores, for top-k results that may break ties differently).

Imported as `model_helpers` (pytest puts tests/ on sys.path).
"""
import pytest
import torch

import lightgcn_ext

pyg_models = pytest.importorskip("torch_geometric.nn.models")
PygLightGCN = pyg_models.LightGCN
PygBPRLoss = pyg_models.lightgcn.BPRLoss

# "Agree to 1e-5 relative (float32) / 1e-10 (float64)": relative to the
# largest magnitude of the reference, so near-zero entries do not dominate.
REL_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def make_models(num_nodes, embedding_dim, num_layers, alpha=None, *, dtype=torch.float32,
                seed=0, **kwargs):
    """(ours, PyG's) from torch.manual_seed(seed), both cast to dtype.
    A tensor alpha is cloned for each, as each model stores its own."""
    def build(cls):
        torch.manual_seed(seed)
        a = alpha.clone() if isinstance(alpha, torch.Tensor) else alpha
        model = cls(num_nodes, embedding_dim, num_layers, alpha=a, **kwargs)
        return model.double() if dtype == torch.float64 else model

    return build(lightgcn_ext.LightGCN), build(PygLightGCN)


def assert_rel_close(actual, expected, dtype=None, *, rtol=None):
    """|actual - expected| <= rtol * max(|expected|) elementwise (and equal shapes)."""
    dtype = dtype or expected.dtype
    rtol = REL_TOL[dtype] if rtol is None else rtol
    actual, expected = actual.detach(), expected.detach()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(scale, 1e-30))


def assert_same_topk(ours, ref, scores, *, sorted=True, rtol=1e-5):
    """Top-k node ids `ours` and `ref` ([num_src, k]) rank equally under
    `scores` ([num_src, num_nodes], by node id): their scores agree position by
    position (or as sorted rows when sorted=False), so ties and float noise may
    break differently but nothing else may."""
    assert ours.shape == ref.shape and ours.dtype == torch.long
    got, want = scores.gather(1, ours), scores.gather(1, ref)
    if not sorted:
        got, want = got.sort(dim=1).values, want.sort(dim=1).values
    scale = scores.abs().max().item() if scores.numel() else 0.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * max(scale, 1e-30))


def devices():
    """"cpu", plus "cuda" (marked `cuda`) where a GPU is visible and the
    extension was built with CUDA kernels: CUDA cases do not exist elsewhere."""
    params = [pytest.param("cpu", id="cpu")]
    if torch.cuda.is_available() and torch._C._dispatch_has_kernel_for_dispatch_key(
            "lightgcn_ext::propagate", "CUDA"):
        params.append(pytest.param("cuda", id="cuda", marks=pytest.mark.cuda))
    return params


# ---------------------------------------------------------------- graphs
def directed_graph(num_nodes, num_edges, *, seed=0, num_isolated=3):
    """A random directed [2, E] edge_index with duplicate edges, self-loops,
    nodes with out-edges only, and `num_isolated` isolated nodes (the last ones)."""
    gen = torch.Generator().manual_seed(seed)
    active = num_nodes - num_isolated
    edge_index = torch.randint(0, active, (2, num_edges), generator=gen)
    loops = torch.arange(0, min(active, 3)).repeat(2, 1)  # self-loops 0->0, 1->1, 2->2
    edge_index = torch.cat([edge_index, loops, edge_index[:, :5]], dim=1)  # + 5 duplicates
    return edge_index[:, torch.randperm(edge_index.shape[1], generator=gen)]


def undirected_graph(num_nodes, num_edges, *, seed=0, num_isolated=3):
    """Both directions of a directed_graph (duplicates and self-loops kept),
    shuffled: the symmetric user-item case."""
    gen = torch.Generator().manual_seed(seed + 1000)
    one_way = directed_graph(num_nodes, num_edges, seed=seed, num_isolated=num_isolated)
    both = torch.cat([one_way, one_way.flip(0)], dim=1)
    return both[:, torch.randperm(both.shape[1], generator=gen)]


def unique_edges(num_nodes, num_edges, *, seed=0, num_isolated=2, symmetric=False):
    """A random graph without duplicate edges (PyG's torch.sparse conversions
    coalesce duplicates away, so sparse-vs-edge_index comparisons need this)."""
    edge_index = directed_graph(num_nodes, num_edges, seed=seed, num_isolated=num_isolated)
    if symmetric:
        edge_index = torch.cat([edge_index, edge_index.flip(0)], dim=1)
    return torch.unique(edge_index, dim=1).contiguous()


def bipartite_graph(num_users, num_items, num_pairs, *, seed=0):
    """(edge_index of both directions, (user, item-node) pairs): users are nodes
    0..U-1, items U..U+I-1."""
    gen = torch.Generator().manual_seed(seed)
    users = torch.randint(0, num_users, (num_pairs,), generator=gen)
    items = torch.randint(0, num_items, (num_pairs,), generator=gen) + num_users
    pairs = torch.unique(torch.stack([users, items]), dim=1)
    return torch.cat([pairs, pairs.flip(0)], dim=1), pairs


def edge_weights(num_edges, *, seed=0, dtype=torch.float32):
    """Positive weights in [0.5, 2)."""
    gen = torch.Generator().manual_seed(seed)
    return (0.5 + 1.5 * torch.rand(num_edges, generator=gen, dtype=torch.float64)).to(dtype)
