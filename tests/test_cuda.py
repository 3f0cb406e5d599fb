"""The CUDA kernels against the CPU kernels, which define the semantics: every
op on CUDA compared with the CPU op on the same inputs, run twice (bitwise the
same), and the errors of mixed devices. Marked `cuda`; they skip without a
GPU or without CUDA kernels in the build.

propagate_rows and its backward are also held to propagate's own CUDA
numbers, bit for bit (the forward at the listed rows; the backward, where no
row repeats, against propagate over M^T of the dense gradient), on
symmetric graphs (M^T = M, no transposed CSR) and directed ones, with
repeated rows, isolated nodes and empty rows; and both are captured in a CUDA
graph and replayed with other rows.

Random CSR graphs with empty rows, duplicate edges, self-loops and a hub row;
x in float16, bfloat16, float32 and float64; col in int32 and int64; with and
without edge weights; alpha on the device in several dtypes; aligned,
misaligned and non-contiguous x; L = 0..3; n = 0 and d = 0. float64 is also
compared with an independent index_add reference. 
bfloat16 layers (bf16=True, float32 x): on data where float32 arithmetic is
exact (no normalization, weights and alphas powers of two, features on a
grid that bfloat16 cannot hold), CUDA and the CPU round the same layers to
the same bits; elsewhere CUDA is held to the CPU's bound against the exact
result, and to the CPU within twice that (each may round a layer value to
the neighbouring bfloat16 number where their float32 sums differ).

The cases whose id starts
with "small" are the ones compute-sanitizer runs (tools/gpu_check.sh):

    pytest tests/test_cuda.py -k "small or mixed_device"
"""
import itertools

import pytest
import torch

from helpers import (NEEDS_CUDA, OPS, csr_operands, dense_operator, features, symmetrize,
                     tiny_graph)
from lightgcn_ext import Graph, propagate
from lightgcn_ext._ops import CsrOperator

pytestmark = NEEDS_CUDA
DEVICE = "cuda"
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


# ----------------------------------------------------------------- inputs
def make_graph(n, avg_degree, gen, hub=0):
    """A CSR (rows = destinations) with ~20% empty rows, duplicates, self-loops
    and optionally a hub row 0 of `hub` extra edges; float64 weights > 0."""
    if n == 0:
        return (torch.zeros(1, dtype=torch.long), torch.zeros(0, dtype=torch.long),
                torch.zeros(0, dtype=torch.float64))
    counts = torch.poisson(torch.full((n,), float(avg_degree)), generator=gen).long()
    counts[torch.rand(n, generator=gen) < 0.2] = 0
    counts[0] += hub
    rowptr = torch.zeros(n + 1, dtype=torch.long)
    rowptr[1:] = counts.cumsum(0)
    num_edges = int(rowptr[-1])
    rows = torch.repeat_interleave(torch.arange(n), counts)
    col = torch.randint(0, n, (num_edges,), generator=gen)
    loops = torch.rand(num_edges, generator=gen) < 0.1
    col[loops] = rows[loops]
    # duplicate: the second edge of a row repeats the first, for half the rows with two or more
    starts = rowptr[:-1][(counts >= 2) & (torch.rand(n, generator=gen) < 0.5)]
    col[starts + 1] = col[starts]
    weight = torch.rand(num_edges, generator=gen, dtype=torch.float64) * 2 + 0.1
    return rowptr, col, weight


def degree_inv_sqrt(rowptr, weight, n):
    rows = torch.repeat_interleave(torch.arange(n), rowptr.diff())
    deg = torch.zeros(n, dtype=torch.float64).index_add_(0, rows, weight)
    return torch.where(deg > 0, deg.clamp_min(1e-300).rsqrt(), torch.zeros_like(deg))


def reference_propagate(rowptr, col, weight, dinv, x, alpha):
    """sum_l alpha_l M^l x in float64, M = D W D, straight from the definition."""
    layers = reference_layers(rowptr, col, weight, dinv, x, alpha.numel() - 1)
    return sum(a.double() * h for a, h in zip(alpha, layers))


def reference_layers(rowptr, col, weight, dinv, x, num_layers):
    """[M^l x for l = 0..num_layers] in float64."""
    n = x.shape[0]
    rows = torch.repeat_interleave(torch.arange(n), rowptr.diff())
    coef = dinv.double()[rows] * weight.double() * dinv.double()[col]
    layers = [x.double()]
    for _ in range(num_layers):
        layers.append(torch.zeros_like(layers[0]).index_add_(0, rows, coef[:, None] *
                                                              layers[-1][col]))
    return layers


def on_device(t, layout):
    """t on DEVICE; a 2-D t laid out as `layout` says."""
    if layout == "offset" and t.dim() == 2:  # contiguous but not 16-byte aligned
        buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=DEVICE)
        out = buf[1:].view(t.shape)
        out.copy_(t)
        return out
    if layout == "transposed" and t.dim() == 2:  # not contiguous
        return t.t().contiguous().to(DEVICE).t()
    return t.to(DEVICE)


# ------------------------------------------------------------- tolerances
def tolerance(dtype, L, rowptr, abs_layers, alpha, extra_roundings=0, extra_bound=0.0):
    """The elementwise bound on |CUDA - CPU| for propagate: both sum each row
    in the accumulation type (acc), but in different orders (CUDA cuts long
    rows into pieces), and CUDA stores each of the L intermediate layers in
    x's dtype (the CPU keeps them in acc); both round the output once. Every
    rounding is relative to sum_l |alpha_l| |M|^l |x| (`abs_layers` holds
    |M|^l |x|), and a sum of k terms rounds ~sqrt(k) times their size.
    propagate_rows_backward rounds more (`extra_roundings`: its summed input)
    and adds a term of magnitude `extra_bound`."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    max_degree = int(rowptr.diff().max()) if rowptr.numel() > 1 else 0
    summation = L * (max_degree ** 0.5 + 2) * torch.finfo(acc).eps
    storage = (L + 1 + extra_roundings) * torch.finfo(dtype).eps
    bound = sum(a.double().abs() * h for a, h in zip(alpha, abs_layers)) + extra_bound
    return 2 * (summation + storage) * bound + 1e-30


def dot_tolerance(dtype, x, grad, abs_layers):
    """The bound on |CUDA - CPU| for layer_dots[l]: the reduction's rounding
    (1e-4 of ||x|| ||grad||, as the sums cancel) plus, in float16 and
    bfloat16, the storage of l layers in x's dtype."""
    reduction = 1e-12 if dtype == torch.float64 else 1e-4
    norms = x.double().norm() * grad.double().norm() + 1e-30
    eps = torch.finfo(dtype).eps if dtype in (torch.float16, torch.bfloat16) else 0.0
    return torch.stack([reduction * norms + 2 * l * eps * (h * grad.double().abs()).sum()
                        for l, h in enumerate(abs_layers)])


def assert_within(name, got, want, tol):
    """|got - want| <= tol elementwise, got finite, same shapes."""
    got, want = got.detach().cpu().double(), want.detach().cpu().double()
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if got.numel() == 0:
        return
    assert torch.isfinite(got).all(), f"{name}: non-finite values"
    diff = (got - want).abs()
    ratio = (diff / tol).max().item()  # <= 1 passes
    assert ratio <= 1, (f"{name}: max |diff| {diff.max().item():.3e} (max |ref| "
                        f"{want.abs().max().item():.3e}, {ratio:.2f}x the tolerance)")


# ------------------------------------------------------------------ cases
# (n, d, average degree, extra edges of row 0)
SHAPES = [(0, 8, 3, 0), (7, 0, 2, 0), (1, 1, 1, 0), (9, 3, 1, 0), (13, 4, 2, 0), (40, 8, 3, 4),
          (33, 64, 5, 0), (50, 100, 3, 20), (17, 130, 4, 0)]
BIG_SHAPES = [(300, 300, 6, 100), (200, 520, 3, 50), (5000, 64, 12, 3000),
              (20000, 64, 20, 20000)]
LAYER_CONFIGS = [(0, torch.float32), (1, torch.float64), (2, torch.float16), (3, torch.float32),
                 (3, torch.int64)]  # (L, alpha dtype)
LAYOUTS = ["plain", "offset", "transposed"]


def _cases():
    """(shape, L, alpha dtype, layout) as pytest params, each with its own seed.
    "small": the small shapes with every other layer config, all layouts at
    L = 2 and plain ones otherwise; "full": the other combinations, then the
    big shapes."""
    plan = [(shape, L, alpha_dtype, layout) for shape in SHAPES
            for L, alpha_dtype in LAYER_CONFIGS for layout in LAYOUTS]
    plan += [(shape, 3, torch.float64, "plain") for shape in BIG_SHAPES]
    plan += [(shape, 2, torch.float32, "offset") for shape in BIG_SHAPES[:2]]
    small = {(shape, L, alpha_dtype, layout) for shape in SHAPES
             for L, alpha_dtype in LAYER_CONFIGS[::2]
             for layout in (LAYOUTS if L == 2 else LAYOUTS[:1])}
    params = []
    for seed, case in enumerate(plan):
        (n, d, _, hub), L, alpha_dtype, layout = case
        size = "small" if case in small else "full"
        case_id = f"{size}-n{n}-d{d}-hub{hub}-L{L}-alpha_{str(alpha_dtype)[6:]}-{layout}"
        params.append(pytest.param(*case, seed, id=case_id))
    return params


@pytest.mark.parametrize("shape, L, alpha_dtype, layout, seed", _cases())
def test_cuda_ops_match_cpu(shape, L, alpha_dtype, layout, seed):
    """propagate and layer_dots on DEVICE vs on the CPU, for every x dtype,
    col dtype and with or without weights, each run twice."""
    n, d, deg, hub = shape
    gen = torch.Generator().manual_seed(seed)
    rowptr, col64, weight64 = make_graph(n, deg, gen, hub)
    for dtype, index_dtype, weighted in itertools.product(
            DTYPES, [torch.int32, torch.int64], [False, True]):
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        w = weight64 if weighted else torch.ones_like(weight64)
        dinv = degree_inv_sqrt(rowptr, w, n).to(acc)
        # A forward needs no transposed CSR (rowptr_t, col_t, weight_t).
        graph_cpu = CsrOperator(rowptr, col64.to(index_dtype), w.to(acc) if weighted else None,
                                dinv, None, None, None)
        graph_dev = CsrOperator(*(None if t is None else t.to(DEVICE) for t in graph_cpu))
        x = torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype)
        grad = torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype)
        if alpha_dtype == torch.int64:
            alpha = torch.randint(0, 3, (L + 1,), generator=gen)
        else:
            alpha = (torch.rand(L + 1, generator=gen, dtype=torch.float64) + 0.1).to(alpha_dtype)
        name = (f"{str(dtype)[6:]} col={str(index_dtype)[6:]} "
                f"{'weighted' if weighted else 'unweighted'}")

        abs_layers = reference_layers(rowptr, col64, w.abs(), dinv, x.abs(), L)

        want = OPS.propagate(*graph_cpu, x, alpha)
        tol = tolerance(dtype, L, rowptr, abs_layers, alpha)
        got = OPS.propagate(*graph_dev, on_device(x, layout), alpha.to(DEVICE))
        assert got.dtype == dtype and got.device.type == torch.device(DEVICE).type, \
            f"propagate {name}: got {got.dtype} on {got.device}"
        assert_within("propagate " + name, got, want, tol)
        if dtype == torch.float64:
            ref = reference_propagate(rowptr, col64, w, dinv, x, alpha)
            assert_within("propagate vs reference " + name, got, ref, tol)
        again = OPS.propagate(*graph_dev, on_device(x, layout), alpha.to(DEVICE))
        assert torch.equal(got, again), f"propagate {name}: two runs differ"

        want = OPS.layer_dots(*graph_cpu, x, grad, L)
        got = OPS.layer_dots(*graph_dev, on_device(x, layout), on_device(grad, layout), L)
        assert got.dtype == acc and got.shape == (L + 1,), \
            f"layer_dots {name}: got {got.dtype} {tuple(got.shape)}"
        assert_within("layer_dots " + name, got, want, dot_tolerance(dtype, x, grad, abs_layers))
        again = OPS.layer_dots(*graph_dev, on_device(x, layout), on_device(grad, layout), L)
        assert torch.equal(got, again), f"layer_dots {name}: two runs differ (not deterministic)"


# ------------------------------------------------------------ propagate_rows
# (n, d, average degree, extra edges of row 0)
ROWS_SHAPES = [(1, 1, 1, 0), (9, 3, 1, 0), (40, 8, 3, 4), (50, 100, 3, 20), (17, 130, 4, 0)]
ROWS_BIG_SHAPES = [(2000, 64, 6, 2000)]


def rows_operator(n, deg, hub, gen, graph_kind, weighted):
    """(CSR operator in float64 on the CPU, its M^T as a CSR) of make_graph's
    graph: directed, with its transposed CSR; or symmetrized (W + W^T), whose
    operator has none (the ops then use M's CSR for M^T)."""
    rowptr, col, weight = make_graph(n, deg, gen, hub)
    edge_index = torch.stack([col, torch.repeat_interleave(torch.arange(n), rowptr.diff())])
    weight = weight if weighted else None
    if graph_kind == "symmetric":
        edge_index, weight = symmetrize(edge_index, weight)
    operator = csr_operands(edge_index, n, weight, torch.float64)
    if graph_kind == "symmetric":
        operator = operator._replace(rowptr_t=None, col_t=None, weight_t=None)
    return operator, csr_operands(edge_index, n, weight, torch.float64, transpose=True)


def cast_operator(operator, index_dtype, dtype):
    """operator with its columns in index_dtype, its weights and dinv in dtype."""
    def cast(name, t):
        if t is None:
            return None
        if name in ("col", "col_t"):
            return t.to(index_dtype)
        return t.to(dtype) if t.is_floating_point() else t
    return CsrOperator(**{name: cast(name, t) for name, t in operator._asdict().items()})


def listed_rows(n, gen):
    """Row lists: random nodes with repeats, the last node (isolated or an
    empty row in most graphs) three times, node 0 (the hub's row); and every
    node, shuffled."""
    repeats = torch.cat([torch.randint(0, n, (n // 2 + 1,), generator=gen),
                         torch.tensor([n - 1, 0, n - 1, n - 1])])
    return {"repeats": repeats, "all": torch.randperm(n, generator=gen)}


def _rows_cases():
    """(shape, L, graph kind) as pytest params: "small" (the ones that
    compute-sanitizer runs: scalar and vector loads, L = 0 and 3), "full" the
    others."""
    params = []
    for seed, (shape, L, graph_kind) in enumerate(itertools.chain(
            itertools.product(ROWS_SHAPES, [0, 1, 3], ["directed", "symmetric"]),
            itertools.product(ROWS_BIG_SHAPES, [2], ["directed", "symmetric"]))):
        n, d, _, hub = shape
        size = "small" if (n, L) in {(9, 3), (40, 0), (40, 3)} else "full"
        case_id = f"{size}-rows-n{n}-d{d}-hub{hub}-L{L}-{graph_kind}"
        params.append(pytest.param(shape, L, graph_kind, seed, id=case_id))
    return params


@pytest.mark.parametrize("shape, L, graph_kind, seed", _rows_cases())
def test_cuda_propagate_rows_matches_cpu(shape, L, graph_kind, seed):
    """propagate_rows and propagate_rows_backward on DEVICE vs on the CPU, for
    every x dtype, col dtype and with or without weights, each run twice; and
    vs propagate's own CUDA kernels, bit for bit."""
    n, d, deg, hub = shape
    gen = torch.Generator().manual_seed(1000 + seed)
    for weighted in (False, True):
        operator64, transposed64 = rows_operator(n, deg, hub, gen, graph_kind, weighted)
        for dtype, index_dtype in itertools.product(DTYPES, [torch.int32, torch.int64]):
            acc = torch.float64 if dtype == torch.float64 else torch.float32
            op_cpu = cast_operator(operator64, index_dtype, acc)
            op_dev = CsrOperator(*(None if t is None else t.to(DEVICE) for t in op_cpu))
            name = (f"{str(dtype)[6:]} col={str(index_dtype)[6:]} "
                    f"{'weighted' if weighted else 'unweighted'}")
            x = torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype)
            alpha = (torch.rand(L + 1, generator=gen, dtype=torch.float64) + 0.1).to(acc)
            alpha_dev = alpha.to(DEVICE)
            x_dev = x.to(DEVICE)
            # The bounds, from the float64 operators of M and M^T.
            ones = torch.ones_like(operator64.col, dtype=torch.float64)
            abs_layers = reference_layers(operator64.rowptr, operator64.col,
                                          operator64.weight if weighted else ones,
                                          operator64.dinv, x.abs(), L)
            full_tol = tolerance(dtype, L, operator64.rowptr, abs_layers, alpha)
            full_dev = OPS.propagate(*op_dev, x_dev, alpha_dev)
            for kind, rows in listed_rows(n, gen).items():
                rows_dev = rows.to(DEVICE)
                want, want_x = OPS.propagate_rows(*op_cpu, x, alpha, rows)
                got, got_x = OPS.propagate_rows(*op_dev, x_dev, alpha_dev, rows_dev)
                assert got.dtype == dtype and got.shape == (rows.numel(), d), \
                    f"propagate_rows {name}: got {got.dtype} {tuple(got.shape)}"
                assert_within(f"propagate_rows {kind} {name}", got, want, full_tol[rows])
                assert torch.equal(got_x.cpu(), want_x), f"propagate_rows {name}: x[rows]"
                assert torch.equal(got, full_dev[rows_dev]), \
                    f"propagate_rows {kind} {name}: not propagate's numbers at the rows"
                again, _ = OPS.propagate_rows(*op_dev, x_dev, alpha_dev, rows_dev)
                assert torch.equal(got, again), f"propagate_rows {name}: two runs differ"

                grad = torch.randn(rows.numel(), d, generator=gen, dtype=torch.float64).to(dtype)
                grad_x = torch.randn(rows.numel(), d, generator=gen,
                                     dtype=torch.float64).to(dtype)
                abs_g = torch.zeros(n, d, dtype=torch.float64).index_add_(0, rows,
                                                                           grad.double().abs())
                abs_g0 = torch.zeros(n, d, dtype=torch.float64).index_add_(0, rows,
                                                                            grad_x.double().abs())
                abs_layers_t = reference_layers(transposed64.rowptr, transposed64.col,
                                                transposed64.weight if weighted else ones,
                                                transposed64.dinv, abs_g, L)
                # More roundings than a propagation: G's, and the repeats' sums.
                roundings = 1 + int(torch.bincount(rows).max())
                for extra in (None, grad_x):
                    tol = tolerance(dtype, L, transposed64.rowptr, abs_layers_t, alpha,
                                    extra_roundings=roundings,
                                    extra_bound=0.0 if extra is None else abs_g0)
                    extra_dev = None if extra is None else extra.to(DEVICE)
                    want = OPS.propagate_rows_backward(*op_cpu, grad, extra, alpha, rows)
                    got = OPS.propagate_rows_backward(*op_dev, grad.to(DEVICE), extra_dev,
                                                      alpha_dev, rows_dev)
                    label = f"propagate_rows_backward {kind} {name} grad_x={extra is not None}"
                    assert got.dtype == dtype and got.shape == (n, d), \
                        f"{label}: got {got.dtype} {tuple(got.shape)}"
                    assert_within(label, got, want, tol)
                    again = OPS.propagate_rows_backward(*op_dev, grad.to(DEVICE), extra_dev,
                                                        alpha_dev, rows_dev)
                    assert torch.equal(got, again), f"{label}: two runs differ"
                if kind == "all":  # no repeats: the dense G is grad scattered, exactly
                    dense = torch.zeros(n, d, dtype=dtype, device=DEVICE).index_copy_(
                        0, rows_dev, grad.to(DEVICE))
                    full_t = OPS.propagate(*op_dev.transposed(), dense, alpha_dev)
                    got = OPS.propagate_rows_backward(*op_dev, grad.to(DEVICE), None, alpha_dev,
                                                      rows_dev)
                    assert torch.equal(got, full_t), \
                        f"propagate_rows_backward {name}: not propagate's numbers over M^T"


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16"])
def test_cuda_propagate_rows_in_a_cuda_graph(bf16):
    """Both ops captured in a CUDA graph: replays with other rows (repeats
    included) and another gradient give the eager numbers, bit for bit, and
    the eager calls make no host synchronization; with bfloat16 layers too."""
    gen = torch.Generator().manual_seed(77)
    n, d, L, k = 3000, 64, 3, 500
    operator64, _ = rows_operator(n, 8, 500, gen, "directed", True)
    op = CsrOperator(*(None if t is None else t.to(DEVICE)
                       for t in cast_operator(operator64, torch.int32, torch.float32)))
    x = torch.randn(n, d, generator=gen).to(DEVICE)
    alpha = torch.tensor([0.4, 0.3, 0.2, 0.1], device=DEVICE)

    def run(rows, grad):
        out, _ = OPS.propagate_rows(*op, x, alpha, rows, bf16)
        return out, OPS.propagate_rows_backward(*op, grad, grad.flip(0), alpha, rows, bf16)

    def batch():
        rows = torch.randint(0, n, (k,), generator=gen)
        rows[-3:] = rows[:3]
        return rows.to(DEVICE), torch.randn(k, d, generator=gen).to(DEVICE)

    static_rows, static_grad = batch()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            run(static_rows, static_grad)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out, static_grad_x = run(static_rows, static_grad)
    for _ in range(3):
        rows, grad = batch()
        static_rows.copy_(rows)
        static_grad.copy_(grad)
        graph.replay()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out, grad_x = run(rows, grad)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert torch.equal(static_out, out) and torch.equal(static_grad_x, grad_x)


# ------------------------------------------------------------ bf16 layers
# (n, d, average degree, extra edges of row 0): scalar (d = 1, 3, 65) and
# vector (d = 64) loads; the last one for the bound only (its long sums are
# not exact in float32).
BF16_SHAPES = [(1, 1, 1, 0), (9, 3, 1, 0), (40, 64, 3, 4), (50, 65, 3, 20), (2000, 64, 6, 2000)]
BF16_UNIT_ROUNDOFF = 2.0 ** -8


def _bf16_cases():
    params = []
    for seed, (shape, L, graph_kind) in enumerate(itertools.product(
            BF16_SHAPES, [1, 2, 3], ["directed", "symmetric"])):
        n, d, _, hub = shape
        size = "small" if (n, L) in {(9, 3), (40, 1)} else "full"
        case_id = f"{size}-bf16-n{n}-d{d}-hub{hub}-L{L}-{graph_kind}"
        params.append(pytest.param(shape, L, graph_kind, seed, id=case_id))
    return params


def bf16_graph(n, deg, hub, gen, graph_kind, weights):
    """make_graph's edges (symmetrized for "symmetric") and their weights:
    "none", "powers" (1/2, 1 or 2 per edge) or "random"."""
    rowptr, col, weight = make_graph(n, deg, gen, hub)
    edge_index = torch.stack([col, torch.repeat_interleave(torch.arange(n), rowptr.diff())])
    if weights == "powers":
        weight = 2.0 ** torch.randint(-1, 2, (col.numel(),), generator=gen).double()
    weight = None if weights == "none" else weight
    if graph_kind == "symmetric":
        edge_index, weight = symmetrize(edge_index, weight)
    return edge_index, weight


def bf16_layers_bound(m, x, alpha):
    """tests/test_precision.py's bound on what bfloat16 layers add to the
    error of sum_l alpha_l M^l x (M dense, >= 0): u sum_{l=1..L} M^l |h_l|
    over Horner's partial sums h_L = alpha_L x, h_l = alpha_l x + M h_{l+1}."""
    num_layers = alpha.numel() - 1
    h, bound = alpha[num_layers] * x, torch.zeros_like(x)
    for layer in range(num_layers, 0, -1):
        reached = h.abs()
        for _ in range(layer):
            reached = m @ reached
        bound += BF16_UNIT_ROUNDOFF * reached
        h = alpha[layer - 1] * x + m @ h
    return bound


def exact_propagation(m, x, alpha):
    out, h = alpha[0] * x, x
    for a in alpha[1:]:
        h = m @ h
        out = out + a * h
    return out


def run_bf16_ops(op, x, alpha, rows, grad, grad_x):
    """propagate, propagate_rows and propagate_rows_backward with bf16=True
    on op's device, the results on the CPU."""
    device = op.rowptr.device
    x, alpha, rows = x.to(device), alpha.to(device), rows.to(device)
    grad, grad_x = grad.to(device), grad_x.to(device)
    out = OPS.propagate(*op, x, alpha, True)
    out_rows, x_rows = OPS.propagate_rows(*op, x, alpha, rows, True)
    assert torch.equal(out_rows, out[rows]) and torch.equal(x_rows, x[rows])
    back = OPS.propagate_rows_backward(*op, grad, grad_x, alpha, rows, True)
    for t in (out, back):
        assert t.dtype == torch.float32
    return out.cpu(), out_rows.cpu(), back.cpu()


@pytest.mark.parametrize("shape, L, graph_kind, seed", _bf16_cases())
def test_cuda_bf16_layers_match_cpu(shape, L, graph_kind, seed):
    """bf16=True on DEVICE and on the CPU: the same bits where float32 is
    exact; else CUDA within the bound of the exact result and twice it of
    the CPU, not the float32 numbers, the same in two runs; propagate_rows
    at its rows equal to propagate, for int32 and int64 columns."""
    n, d, deg, hub = shape
    gen = torch.Generator().manual_seed(3000 + seed)
    rows = listed_rows(n, gen)["repeats"]
    alpha = torch.tensor([0.5, 0.25, 0.125, 0.125])[:L + 1]
    if n <= 50:  # exact: no normalization, powers of two, a grid of 2^-9
        for weights, index_dtype in itertools.product(["none", "powers"],
                                                      [torch.int32, torch.int64]):
            edge_index, w = bf16_graph(n, deg, hub, gen, graph_kind, weights)
            op_cpu = cast_operator(csr_operands(edge_index, n, w, torch.float32, normalize=False),
                                   index_dtype, torch.float32)
            op_dev = CsrOperator(*(None if t is None else t.to(DEVICE) for t in op_cpu))
            x = torch.randint(-511, 512, (n, d), generator=gen).float() / 512
            grad = torch.randint(-511, 512, (rows.numel(), d), generator=gen).float() / 512
            grad_x = torch.randint(-511, 512, (rows.numel(), d), generator=gen).float() / 512
            want = run_bf16_ops(op_cpu, x, alpha, rows, grad, grad_x)
            got = run_bf16_ops(op_dev, x, alpha, rows, grad, grad_x)
            for what, g, w_ in zip(["propagate", "propagate_rows", "propagate_rows_backward"],
                                   got, want):
                assert torch.equal(g, w_), f"{what} {weights} {index_dtype}: not the CPU's bits"

    # Normalized, random weights and features.
    edge_index, w = bf16_graph(n, deg, hub, gen, graph_kind, "random")
    op64 = csr_operands(edge_index, n, w, torch.float64)
    op_cpu = cast_operator(op64, torch.int32, torch.float32)
    op_dev = CsrOperator(*(None if t is None else t.to(DEVICE) for t in op_cpu))
    x = torch.randn(n, d, generator=gen)
    grad = torch.randn(rows.numel(), d, generator=gen)
    grad_x = torch.randn(rows.numel(), d, generator=gen)
    want = run_bf16_ops(op_cpu, x, alpha, rows, grad, grad_x)
    got = run_bf16_ops(op_dev, x, alpha, rows, grad, grad_x)
    again = run_bf16_ops(op_dev, x, alpha, rows, grad, grad_x)
    assert all(torch.equal(a, b) for a, b in zip(got, again)), "two runs differ"
    if edge_index.shape[1] > 0:  # else nothing is gathered, nor rounded
        float32 = OPS.propagate(*op_dev, x.to(DEVICE), alpha.to(DEVICE)).cpu()
        assert not torch.equal(got[0], float32), "bf16=True gave the float32 numbers"

    # The tolerance: the bound of the bfloat16 roundings (5% more for the
    # second-order terms) and that of float32 CUDA against the CPU.
    m = dense_operator(edge_index, n, w)
    dense_g = torch.zeros(n, d, dtype=torch.float64).index_add_(0, rows, grad.double())
    dense_g0 = torch.zeros(n, d, dtype=torch.float64).index_add_(0, rows, grad_x.double())
    abs_g0 = torch.zeros(n, d, dtype=torch.float64).index_add_(0, rows, grad_x.double().abs())
    op64_t = op64.transposed()
    checks = {
        "propagate": (got[0], want[0], exact_propagation(m, x.double(), alpha.double()),
                      bf16_layers_bound(m, x.double(), alpha.double()),
                      tolerance(torch.float32, L, op64.rowptr,
                                reference_layers(op64.rowptr, op64.col, op64.weight, op64.dinv,
                                                 x.abs(), L), alpha)),
        "propagate_rows_backward": (
            got[2], want[2], exact_propagation(m.t(), dense_g, alpha.double()) + dense_g0,
            bf16_layers_bound(m.t(), dense_g, alpha.double()),
            tolerance(torch.float32, L, op64_t.rowptr,
                      reference_layers(op64_t.rowptr, op64_t.col, op64_t.weight, op64_t.dinv,
                                       dense_g.abs(), L), alpha,
                      extra_roundings=1 + int(torch.bincount(rows).max()), extra_bound=abs_g0)),
    }
    for what, (got_, cpu, exact, bound, float32_tol) in checks.items():
        tol = 1.05 * bound + float32_tol
        assert_within(f"{what} vs the exact result", got_, exact, tol)
        assert_within(f"{what} vs the CPU", got_, cpu, 2 * tol)


# ------------------------------------------------------------ mixed devices
def test_cuda_mixed_device_raw_op_refuses_cpu_x():
    """x on the CPU with a CUDA graph: the shared checks refuse it."""
    rowptr, col, weight = make_graph(10, 3, torch.Generator().manual_seed(0))
    dinv = degree_inv_sqrt(rowptr, weight, 10).float()
    with pytest.raises(RuntimeError, match="device"):
        OPS.propagate(rowptr.to(DEVICE), col.to(DEVICE), None, dinv.to(DEVICE), None, None, None,
                      torch.randn(10, 4), torch.ones(3, device=DEVICE))


def test_cuda_mixed_devices():
    """Each argument on the wrong device is named: by the public API, and by
    the raw op for each graph operand left on the CPU."""
    n, alpha = 6, [0.5, 0.3, 0.2]
    graph = Graph.from_edge_index(tiny_graph(), n)
    with pytest.raises(ValueError, match=r"\bx\b"):
        propagate(graph, features(n, 3, device=DEVICE), alpha)
    with pytest.raises(ValueError, match="alpha"):
        propagate(graph.to(DEVICE), features(n, 3, device=DEVICE), torch.tensor(alpha))
    rowptr, col, _, dinv, *_ = csr_operands(tiny_graph(), n, None, torch.float32)
    operands = dict(rowptr=rowptr, col=col, weight=None, dinv=dinv, rowptr_t=None, col_t=None,
                    weight_t=None, x=features(n, 3, torch.float32), alpha=torch.tensor(alpha))
    for name in ("rowptr", "col", "dinv"):
        args = {key: None if t is None else t.to(DEVICE) for key, t in operands.items()}
        args[name] = args[name].cpu()
        with pytest.raises(RuntimeError, match=rf"\b{name}\b"):
            OPS.propagate(*args.values())
