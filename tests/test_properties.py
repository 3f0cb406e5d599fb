"""Property test: on random small graphs (directed, duplicates, self-loops,
isolated nodes, empty), propagate's forward, x-gradient and alpha-gradient and
layer_dots agree with the dense float64 reference."""
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402

from helpers import OPS, csr_operands, dense_layer_dots, dense_propagate  # noqa: E402
from lightgcn_ext import propagate  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-10)


@st.composite
def graphs(draw):
    n = draw(st.integers(1, 12))
    num_edges = draw(st.integers(0, 40))
    nodes = st.integers(0, n - 1)
    src = draw(st.lists(nodes, min_size=num_edges, max_size=num_edges))
    dst = draw(st.lists(nodes, min_size=num_edges, max_size=num_edges))
    index_dtype = draw(st.sampled_from([torch.int32, torch.int64]))
    edge_index = torch.tensor([src, dst], dtype=torch.int64).reshape(2, num_edges).to(index_dtype)
    weight = None
    if draw(st.booleans()):
        values = draw(st.lists(st.floats(0.1, 4.0), min_size=num_edges, max_size=num_edges))
        weight = torch.tensor(values, dtype=torch.float64).reshape(num_edges)
    d = draw(st.integers(1, 9))
    num_layers = draw(st.integers(0, 4))
    alpha = draw(st.lists(st.floats(-2.0, 2.0), min_size=num_layers + 1,
                          max_size=num_layers + 1))
    seed = draw(st.integers(0, 2**16))
    return n, edge_index, weight, d, alpha, seed


@settings(max_examples=60, deadline=None)
@given(graphs())
def test_propagate_matches_dense_reference(case):
    n, edge_index, weight, d, alpha_list, seed = case
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen, dtype=torch.float64, requires_grad=True)
    grad = torch.randn(n, d, generator=gen, dtype=torch.float64)
    alpha = torch.tensor(alpha_list, dtype=torch.float64, requires_grad=True)

    out = propagate(edge_index, x, alpha, edge_weight=weight)
    gx, galpha = torch.autograd.grad(out, (x, alpha), grad)

    x_ref = x.detach().clone().requires_grad_()
    alpha_ref = alpha.detach().clone().requires_grad_()
    ref = dense_propagate(edge_index, n, x_ref, alpha_ref, weight)
    gx_ref, galpha_ref = torch.autograd.grad(ref, (x_ref, alpha_ref), grad)

    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(gx, gx_ref, **TOL)
    torch.testing.assert_close(galpha, galpha_ref, **TOL)

    num_layers = len(alpha_list) - 1
    dots = OPS.layer_dots(*csr_operands(edge_index, n, weight), x.detach(), grad, num_layers)
    torch.testing.assert_close(
        dots, dense_layer_dots(edge_index, n, x.detach(), grad, num_layers, weight), **TOL)
