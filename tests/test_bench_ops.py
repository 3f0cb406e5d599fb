"""The benchmarks' private ops: lightgcn_ext::_bare_gather (the floor the CPU
sweep is held against) and lightgcn_ext::_cpu_isa (which copy of the sweep runs)."""
import pytest
import torch

import lightgcn_ext
from helpers import OPS, dense_propagate, features, random_edges, run_python



def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f
                         if line.startswith("flags")), set())
    except OSError:
        return set()


HAS_AVX2 = {"avx2", "fma"} <= _cpu_flags()


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
    with pytest.raises(RuntimeError, match="isa must be auto, avx2 or baseline, got 'sse4'"):
        OPS._cpu_isa("sse4")
    assert OPS._cpu_isa("baseline") == "baseline"
    assert OPS._cpu_isa() == "baseline"


@pytest.mark.skipif(not HAS_AVX2, reason="this CPU has no AVX2")
@pytest.mark.parametrize("d", [64, 70])
def test_both_copies_of_the_sweep_agree_with_the_reference(restore_isa, d):
    edge_index = random_edges(50, 400, seed=7, num_isolated=2)
    alpha = [0.4, 0.3, 0.2, 0.1]
    x = features(50, d, torch.float32, seed=3)
    expected = dense_propagate(edge_index, 50, x, alpha)
    for isa in ("avx2", "baseline"):
        assert OPS._cpu_isa(isa) == isa
        graph = lightgcn_ext.Graph.from_edge_index(edge_index, 50)
        torch.testing.assert_close(lightgcn_ext.propagate(graph, x, alpha).double(), expected, rtol=1e-5, atol=1e-5)
        rowptr, col, *_ = OPS.prepare_csr(edge_index, 50)
        torch.testing.assert_close(OPS._bare_gather(rowptr, col, x).double(),
                                   _gather_reference(edge_index, 50, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("value, expected", [("baseline", "baseline"), ("", None)])
def test_the_environment_variable_sets_the_first_choice(value, expected):
    code = ("import os, torch, lightgcn_ext\n"
            f"os.environ['LIGHTGCN_EXT_CPU_ISA'] = {value!r}\n"
            "print(torch.ops.lightgcn_ext._cpu_isa())")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-1] == (expected or ("avx2" if HAS_AVX2 else "baseline"))


def test_a_bad_environment_variable_is_an_error_naming_it():
    code = ("import os, torch, lightgcn_ext\n"
            "os.environ['LIGHTGCN_EXT_CPU_ISA'] = 'fast'\n"
            "torch.ops.lightgcn_ext._cpu_isa()")
    result = run_python(code)
    assert result.returncode != 0
    assert "LIGHTGCN_EXT_CPU_ISA must be auto, avx2 or baseline, got 'fast'" in result.stderr
