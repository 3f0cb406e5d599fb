"""The CPU propagation's arithmetic, operation by operation: Horner's scheme
with the sweeps carrying s = dinv * h, each row's edges summed in CSR order,
every product and sum rounded on its own (the extension is built without fused
multiply-adds). A reference written in torch float32 with that sequence of
roundings must give the op's bits exactly, on every copy of the sweep the CPU
runs: what lets a run resume with the same numbers on another CPU."""
import pytest
import torch

import lightgcn_ext
from helpers import ISAS, OPS, features, random_edges, random_weights

def _sequential_propagate(rowptr, col, weight, dinv, x, alpha):
    """sum_l alpha_l M^l x in float32, rounding as the CPU kernels do: s_L =
    (dinv * alpha_L) * x; then for l = L-1 .. 0, acc[r] = sum over row r's
    edges, in order, of w_k * s[col_k] (s[col_k] unweighted), and h = alpha_l
    * x[r] + dinv[r] * acc, s = dinv[r] * h (the output is h at l = 0)."""
    num_layers = alpha.numel() - 1
    degree = rowptr[1:] - rowptr[:-1]
    rows = torch.arange(degree.numel())
    s = (dinv * alpha[num_layers]).unsqueeze(1) * x
    for layer in range(num_layers - 1, -1, -1):
        acc = torch.zeros_like(x)
        for j in range(int(degree.max()) if degree.numel() else 0):  # the j-th edge of each row
            has = degree > j
            k = rowptr[:-1][has] + j
            v = s[col[k].long()]
            acc[rows[has]] = acc[rows[has]] + (v if weight is None else weight[k].unsqueeze(1) * v)
        h = alpha[layer] * x + dinv.unsqueeze(1) * acc
        s = dinv.unsqueeze(1) * h
    return h


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("d", [64, 70])  # whole tiles of 64 floats, and a partial one
def test_every_copy_computes_the_documented_roundings(num_layers, weighted, d):
    edge_index = random_edges(60, 700, seed=4, num_isolated=3)
    weight = random_weights(edge_index.size(1), seed=2, dtype=torch.float32) if weighted else None
    graph = lightgcn_ext.Graph.from_edge_index(edge_index, 60, weight)
    rowptr, col, csr_weight, dinv, *_ = graph.operator(torch.float32)
    x = features(60, d, torch.float32, seed=6)
    # Thirds and fifths: no product by alpha is exact.
    alpha = torch.tensor([1 / 3, 1 / 5, 2 / 7, 3 / 11][:num_layers + 1], dtype=torch.float32)
    expected = _sequential_propagate(rowptr, col, csr_weight, dinv, x, alpha)
    before = OPS._cpu_isa()
    try:
        for isa in ISAS:
            OPS._cpu_isa(isa)
            got = lightgcn_ext.propagate(graph, x, alpha)
            assert torch.equal(got, expected), (isa, (got - expected).abs().max())
    finally:
        OPS._cpu_isa(before)
