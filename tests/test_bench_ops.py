"""The benchmarks' private ops: lightgcn_ext::_bare_gather (the floor the CPU
sweep is held against) and lightgcn_ext::_cpu_isa (which copy of the sweep runs)."""
import pytest
import torch

import lightgcn_ext
from helpers import HAS_AVX2, HAS_AVX512, ISAS, OPS, bipartite_graph, dense_propagate, features, random_edges, run_python



def _gather_reference(edge_index, num_nodes, x):
    """out[dst] = sum of x[src] over the edges (src -> dst), in float64."""
    src, dst = edge_index.long()
    return torch.zeros(num_nodes, x.shape[1], dtype=torch.float64).index_add_(
        0, dst, x.double()[src])


@pytest.fixture
def restore_isa():
    before = OPS._cpu_isa()
    yield
    OPS._cpu_isa(before)


# d = 1 and 70 leave a partial tile, 64 and 128 whole tiles (kTile = 64 floats).
@pytest.mark.parametrize("d", [1, 64, 70, 128])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bare_gather_sums_the_neighbour_rows(d, index_dtype, dtype):
    # Isolated nodes give empty rows; duplicates and self-loops count each time.
    edge_index = random_edges(40, 300, seed=5, num_isolated=3, index_dtype=index_dtype)
    rowptr, col, *_ = OPS.prepare_csr(edge_index, 40)
    x = features(40, d, dtype, seed=2)
    out = OPS._bare_gather(rowptr, col, x)
    assert out.dtype == dtype and out.shape == x.shape
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(out.double(), _gather_reference(edge_index, 40, x),
                               rtol=tol, atol=tol)


def test_bare_gather_rejects_bad_operands():
    edge_index = random_edges(10, 30, seed=1)
    rowptr, col, *_ = OPS.prepare_csr(edge_index, 10)
    x = features(10, 4, torch.float32)
    with pytest.raises(RuntimeError, match="x must be a 2-D float32, float64 or bfloat16"):
        OPS._bare_gather(rowptr, col, x.half())
    with pytest.raises(RuntimeError, match="rowptr must have len\\(x\\) \\+ 1 = 9"):
        OPS._bare_gather(rowptr, col, x[:8])
    with pytest.raises(RuntimeError, match="col must hold node ids"):
        OPS._bare_gather(rowptr, col + 10, x)
    with pytest.raises(RuntimeError, match="col must be a 1-D int32 or int64"):
        OPS._bare_gather(rowptr, col.float(), x)


def test_cpu_isa_names_the_setting_in_its_error(restore_isa):
    with pytest.raises(RuntimeError,
                       match="isa must be auto, avx512, avx2 or baseline, got 'sse4'"):
        OPS._cpu_isa("sse4")
    assert OPS._cpu_isa("baseline") == "baseline"
    assert OPS._cpu_isa() == "baseline"


@pytest.mark.skipif(not HAS_AVX2, reason="this CPU has no AVX2")
@pytest.mark.parametrize("d", [64, 70])
def test_every_copy_of_the_sweep_agrees_with_the_reference(restore_isa, d):
    edge_index = random_edges(50, 400, seed=7, num_isolated=2)
    alpha = [0.4, 0.3, 0.2, 0.1]
    x = features(50, d, torch.float32, seed=3)
    expected = dense_propagate(edge_index, 50, x, alpha)
    for isa in ISAS:
        assert OPS._cpu_isa(isa) == isa
        graph = lightgcn_ext.Graph.from_edge_index(edge_index, 50)
        torch.testing.assert_close(lightgcn_ext.propagate(graph, x, alpha).double(), expected, rtol=1e-5, atol=1e-5)
        rowptr, col, *_ = OPS.prepare_csr(edge_index, 50)
        torch.testing.assert_close(OPS._bare_gather(rowptr, col, x).double(),
                                   _gather_reference(edge_index, 50, x), rtol=1e-5, atol=1e-5)


def test_a_copy_this_cpu_lacks_is_refused_by_name(restore_isa):
    for isa, present in (("avx512", HAS_AVX512), ("avx2", HAS_AVX2)):
        if not present:
            with pytest.raises(RuntimeError, match=f"isa = {isa}, but this CPU"):
                OPS._cpu_isa(isa)


def _propagation_results(edge_index, num_nodes, dtype, d):
    """propagate with edge weights and a learnable alpha, and its gradients."""
    weight = torch.rand(edge_index.shape[1], generator=torch.Generator().manual_seed(4),
                        dtype=dtype) + 0.5
    graph = lightgcn_ext.Graph.from_edge_index(edge_index, num_nodes, weight)
    x = features(num_nodes, d, dtype, seed=3, requires_grad=True)
    alpha = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=dtype, requires_grad=True)
    out = lightgcn_ext.propagate(graph, x, alpha)
    out.backward(features(num_nodes, d, dtype, seed=8))
    return out, x.grad, alpha.grad


def _training_results(precision):
    """The losses and weights of five BPR steps of the trainer's loop."""
    from lightgcn_ext.training.step import bpr_step

    num_users, num_items = 60, 90
    edge_index, pairs = bipartite_graph(num_users, num_items, 900, seed=2)
    graph = lightgcn_ext.Graph.from_edge_index(edge_index, num_users + num_items)
    torch.manual_seed(0)
    # Two layers: alpha = 1/3, whose products round (1/4 would be exact).
    model = lightgcn_ext.LightGCN(num_users + num_items, 64, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2, fused=True)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(5):
        users = torch.randint(0, num_users, (128,), generator=gen)
        positives = torch.randint(0, num_items, (128,), generator=gen)
        negatives = torch.randint(0, num_items, (128,), generator=gen)
        losses.append(bpr_step(model, graph, optimizer, num_users, users, positives, negatives,
                               1e-4, precision))
    return torch.stack(losses), model.embedding.weight.detach().clone()


# Every copy computes the same bits (the build fuses no multiply-add): a run
# checkpointed on one CPU and resumed on another goes on with the same
# numbers. d = 70 leaves a partial tile, 130 whole ones and a partial.
@pytest.mark.skipif(not HAS_AVX2, reason="this CPU has no AVX2")
@pytest.mark.parametrize("d", [1, 64, 70, 130])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_copy_propagates_to_the_same_bits(restore_isa, dtype, d):
    edge_index = random_edges(80, 900, seed=6, num_isolated=3)
    results = {}
    for isa in ISAS:
        OPS._cpu_isa(isa)
        results[isa] = _propagation_results(edge_index, 80, dtype, d)
    for isa in ISAS[1:]:
        for first, other in zip(results[ISAS[0]], results[isa]):
            assert torch.equal(first, other), isa


@pytest.mark.skipif(not HAS_AVX2, reason="this CPU has no AVX2")
@pytest.mark.parametrize("precision", ["float32", "bf16"])
def test_every_copy_trains_to_the_same_bits(restore_isa, precision):
    results = {}
    for isa in ISAS:
        OPS._cpu_isa(isa)
        results[isa] = _training_results(precision)
    for isa in ISAS[1:]:
        for first, other in zip(results[ISAS[0]], results[isa]):
            assert torch.equal(first, other), isa


@pytest.mark.parametrize("value, expected", [("baseline", "baseline"), ("", None)])
def test_the_environment_variable_sets_the_first_choice(value, expected):
    code = ("import os, torch, lightgcn_ext\n"
            f"os.environ['LIGHTGCN_EXT_CPU_ISA'] = {value!r}\n"
            "print(torch.ops.lightgcn_ext._cpu_isa())")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == (expected or ISAS[0])


def test_a_bad_environment_variable_is_an_error_naming_it():
    code = ("import os, torch, lightgcn_ext\n"
            "os.environ['LIGHTGCN_EXT_CPU_ISA'] = 'fast'\n"
            "torch.ops.lightgcn_ext._cpu_isa()")
    result = run_python(code)
    assert result.returncode != 0
    assert "LIGHTGCN_EXT_CPU_ISA must be auto, avx512, avx2 or baseline, got 'fast'" in result.stderr
