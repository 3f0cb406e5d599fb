"""precision="bf16": the propagation's gathered layers stored in bfloat16,
everything else float32. Checked against a reference that rounds the same
layers (bit for bit where float32 arithmetic is exact), against a float64
reference within a derived error bound, through autograd, and in training."""
import pytest
import torch

import lightgcn_ext
from helpers import (OPS, csr_operands, dense_operator, directed_graph, features, one_error_line,
                     random_undirected, run_main, toy_interactions, undirected_graph)
from lightgcn_ext import LightGCN
from lightgcn_ext._ops import propagate, propagate_rows
from lightgcn_ext.training import TrainConfig, train
from lightgcn_ext.training.config import check_precision
from lightgcn_ext.validation import ArgumentError

NUM_NODES = 40
# The unit roundoff of bfloat16 (8 significant bits, round to nearest even).
BF16_UNIT_ROUNDOFF = 2.0 ** -8


def _rows(seed=5):
    """A batch's rows: repeats, and a node without in-edges."""
    gen = torch.Generator().manual_seed(seed)
    rows = torch.randint(0, NUM_NODES, (25,), generator=gen)
    return torch.cat([rows, rows[:7], torch.tensor([NUM_NODES - 1, NUM_NODES - 1])])


def _graph(kind, weighted):
    """(edge_index, edge weight or None): directed (M^T != M) or symmetric,
    with duplicate edges and self-loops where unweighted."""
    if kind == "directed":
        edge_index = directed_graph(NUM_NODES, 120, seed=2)
        w = torch.rand(edge_index.shape[1], generator=torch.Generator().manual_seed(3),
                       dtype=torch.float64) + 0.5 if weighted else None
        return edge_index, w
    if weighted:
        return random_undirected(NUM_NODES, 60, seed=4, weighted=True, num_isolated=3)
    return undirected_graph(NUM_NODES, 60, seed=4), None


def horner_bf16(m, dinv, x, alpha):
    """sum_l alpha_l M^l x as the kernels compute it with bf16=True, in
    float64 but for the layers they gather: M = diag(dinv) A diag(dinv) (m
    is A), and the scaled layers s_l = dinv * h_l, l = L..1, are rounded to
    bfloat16; the last sum, alpha_0 x + dinv * (A s_1), is not."""
    x = x.double()
    num_layers = alpha.numel() - 1
    if num_layers == 0:
        return alpha[0] * x
    s = (dinv[:, None] * alpha[num_layers] * x).to(torch.bfloat16).double()
    for layer in range(num_layers - 1, 0, -1):
        h = alpha[layer] * x + dinv[:, None] * (m @ s)
        s = (dinv[:, None] * h).to(torch.bfloat16).double()
    return alpha[0] * x + dinv[:, None] * (m @ s)


def rounding_bound(m, x, alpha):
    """How far bf16=True may be from the exact sum_l alpha_l M^l x, entry by
    entry. Rounding each gathered layer h_l (Horner's partial sums, h_L =
    alpha_L x, h_l = alpha_l x + M h_{l+1}) to bfloat16 errs by at most
    u |h_l|, and that error reaches the result through M^l, so
    |error| <= u sum_{l=1..L} |M|^l |h_l| (to first order in u)."""
    x = x.double()
    num_layers = alpha.numel() - 1
    partial, h = {}, alpha[num_layers] * x
    partial[num_layers] = h
    for layer in range(num_layers - 1, 0, -1):
        h = alpha[layer] * x + m @ h
        partial[layer] = h
    bound = torch.zeros_like(x)
    for layer, h in partial.items():
        reached = h.abs()
        for _ in range(layer):
            reached = m.abs() @ reached
        bound += reached
    return BF16_UNIT_ROUNDOFF * bound


def _exact(m, x, alpha):
    out, h = alpha[0] * x.double(), x.double()
    for a in alpha[1:]:
        h = m @ h
        out = out + a * h
    return out


def _assert_within_bound(got, exact, bound):
    # 5% for the second-order terms, and float32's own rounding.
    slack = 1.05 * bound + 1e-5 * exact.abs().max()
    excess = (got.double() - exact).abs() - slack
    assert excess.max() <= 0, f"over the bound by {excess.max():.3g}"


# ------------------------------------------- bit for bit where exact
def _grid_features(num_nodes, d, seed):
    """Multiples of 1/128 in [-1, 1) (bfloat16 holds them): float32 sums of
    them, and of their bfloat16 roundings, are exact, so the kernels and
    horner_bf16 round the same values."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, (num_nodes, d), generator=gen).float() / 128


@pytest.mark.parametrize("kind", ["directed", "symmetric"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("num_layers", [0, 1, 3])
def test_rounds_exactly_the_gathered_layers(kind, weighted, num_layers):
    """Without normalization (dinv = 1), power-of-two weights and alphas and
    features on a grid, float32 arithmetic is exact: the kernels must equal
    the reference that rounds each gathered layer to bfloat16, bit for bit,
    forward and backward (and the values must need rounding: 3 layers do)."""
    edge_index, _ = _graph(kind, False)
    w = None
    if weighted:  # 1/2, 1 or 2 per edge
        gen = torch.Generator().manual_seed(8)
        w = 2.0 ** torch.randint(-1, 2, (edge_index.shape[1],), generator=gen).double()
    operator = csr_operands(edge_index, NUM_NODES, w, torch.float32, normalize=False)
    a = dense_operator(edge_index, NUM_NODES, w, normalize=False)
    ones = torch.ones(NUM_NODES, dtype=torch.float64)
    x = _grid_features(NUM_NODES, 70, seed=1)  # a full tile of 64 and a partial one
    alpha = torch.tensor([0.5, 0.25, 0.125, 0.125][:num_layers + 1])
    rows = _rows()
    want = horner_bf16(a, ones, x, alpha.double())
    assert torch.equal(OPS.propagate(*operator, x, alpha, True), want.float())
    out, x_rows = OPS.propagate_rows(*operator, x, alpha, rows, True)
    assert torch.equal(out, want.float()[rows]) and torch.equal(x_rows, x[rows])
    if num_layers == 3:
        assert not torch.equal(want, _exact(a, x, alpha.double()))

    # The backward: the same scheme over M^T, from a gradient at the rows
    # (repeats summed), plus the gradient of x[rows].
    grad = _grid_features(rows.numel(), 70, seed=2)
    grad_x_rows = _grid_features(rows.numel(), 70, seed=3)
    dense_grad = torch.zeros(NUM_NODES, 70, dtype=torch.float64).index_add_(0, rows, grad.double())
    dense_extra = torch.zeros_like(dense_grad).index_add_(0, rows, grad_x_rows.double())
    want = horner_bf16(a.t(), ones, dense_grad, alpha.double()) + dense_extra
    got = OPS.propagate_rows_backward(*operator, grad, grad_x_rows, alpha, rows, True)
    assert torch.equal(got, want.float())


def test_bare_gather_of_bfloat16_rows():
    """The floor of the bf16 sweeps: float32 sums of bfloat16 rows, stored
    in bfloat16 (exact sums on the grid, so one rounding each)."""
    edge_index, _ = _graph("directed", False)
    rowptr, col, *_ = OPS.prepare_csr(edge_index, NUM_NODES)
    x = _grid_features(NUM_NODES, 70, seed=4)
    a = dense_operator(edge_index, NUM_NODES, normalize=False)
    got = OPS._bare_gather(rowptr, col, x.bfloat16())
    assert got.dtype == torch.bfloat16
    assert torch.equal(got, (a @ x.double()).to(torch.bfloat16))


# --------------------------------------------- against float64 and float32
@pytest.mark.parametrize("kind", ["directed", "symmetric"])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("num_layers", [1, 2, 3, 4])
def test_within_the_rounding_bound_of_the_exact_result(kind, weighted, num_layers):
    edge_index, w = _graph(kind, weighted)
    operator = csr_operands(edge_index, NUM_NODES, w, torch.float32)
    m = dense_operator(edge_index, NUM_NODES, w)
    x = features(NUM_NODES, 70, torch.float32, seed=1)
    alpha = torch.rand(num_layers + 1, generator=torch.Generator().manual_seed(1)) + 0.1
    rows = _rows()

    x_ = x.clone().requires_grad_()
    out, x_rows = propagate_rows(operator, x_, alpha, rows, bf16=True)
    exact = _exact(m, x, alpha.double())
    _assert_within_bound(out, exact[rows], rounding_bound(m, x, alpha.double())[rows])
    # Tight against the same roundings in float64 (float32 sums may flip a
    # rounding now and then: far below the bound).
    a = dense_operator(edge_index, NUM_NODES, w, normalize=False)
    same_roundings = horner_bf16(a, operator.dinv.double(), x, alpha.double())[rows]
    assert (out.double() - same_roundings).norm() <= 1e-5 * same_roundings.norm()

    # Against the float32 op: the rows within 1e-2 relative, and not equal
    # (the flag is honored).
    out32, _ = propagate_rows(operator, x, alpha, rows)
    row_error = (out - out32).norm(dim=1) / out32.norm(dim=1).clamp_min(1e-30)
    assert row_error.max() <= 1e-2 and not torch.equal(out.detach(), out32)

    # The backward, through autograd: the same bound over M^T.
    gen = torch.Generator().manual_seed(7)
    g_out = torch.randn(rows.numel(), 70, generator=gen)
    g_x0 = torch.randn(rows.numel(), 70, generator=gen)
    ((out * g_out).sum() + (x_rows * g_x0).sum()).backward()
    dense_g = torch.zeros(NUM_NODES, 70, dtype=torch.float64).index_add_(0, rows, g_out.double())
    dense_g0 = torch.zeros_like(dense_g).index_add_(0, rows, g_x0.double())
    _assert_within_bound(x_.grad, _exact(m.t(), dense_g, alpha.double()) + dense_g0,
                         rounding_bound(m.t(), dense_g, alpha.double()))
    direct = OPS.propagate_rows_backward(*operator, g_out, g_x0, alpha, rows, True)
    assert torch.equal(x_.grad, direct)


def test_full_propagate_forward_and_backward():
    edge_index, w = _graph("directed", True)
    operator = csr_operands(edge_index, NUM_NODES, w, torch.float32)
    m = dense_operator(edge_index, NUM_NODES, w)
    x = features(NUM_NODES, 16, torch.float32, seed=1, requires_grad=True)
    alpha = torch.tensor([0.4, 0.3, 0.2, 0.1], requires_grad=True)
    out = propagate(operator, x, alpha, bf16=True)
    _assert_within_bound(out, _exact(m, x.detach(), alpha.detach().double()),
                         rounding_bound(m, x.detach(), alpha.detach().double()))
    grad = features(NUM_NODES, 16, torch.float32, seed=2)
    out.backward(grad)
    # d/dx: the bf16 propagation over M^T; d/dalpha: float32 (nothing gathered).
    assert torch.equal(x.grad, OPS.propagate(*operator.transposed(), grad, alpha.detach(), True))
    x32 = x.detach().clone().requires_grad_()
    alpha32 = alpha.detach().clone().requires_grad_()
    propagate(operator, x32, alpha32).backward(grad)
    torch.testing.assert_close(alpha.grad, alpha32.grad, rtol=2e-2, atol=1e-3)


def test_opcheck_with_bf16():
    edge_index, w = _graph("directed", True)
    operator = csr_operands(edge_index, NUM_NODES, w, torch.float32)
    x = features(NUM_NODES, 5, torch.float32, seed=1)
    alpha = torch.tensor([0.4, 0.3, 0.2, 0.1])
    rows = _rows()
    torch.library.opcheck(OPS.propagate, (*operator, x, alpha, True))
    torch.library.opcheck(OPS.propagate_rows, (*operator, x, alpha, rows, True))
    x = x.clone().requires_grad_()
    torch.library.opcheck(OPS.propagate, (*operator, x, alpha, True))
    torch.library.opcheck(OPS.propagate_rows, (*operator, x, alpha, rows, True))


def test_float32_is_the_default_and_unchanged():
    edge_index, w = _graph("symmetric", True)
    operator = csr_operands(edge_index, NUM_NODES, w, torch.float32)
    x = features(NUM_NODES, 16, torch.float32, seed=1)
    alpha = torch.tensor([0.4, 0.3, 0.2, 0.1])
    graph = lightgcn_ext.prepare(edge_index, NUM_NODES, w)
    default = OPS.propagate(*operator, x, alpha)
    assert torch.equal(OPS.propagate(*operator, x, alpha, False), default)
    assert torch.equal(lightgcn_ext.propagate(graph, x, alpha, precision="float32"),
                       lightgcn_ext.propagate(graph, x, alpha))


# ------------------------------------------------------ the public API
def test_model_uses_bf16_for_training_rows_only():
    edge_index, _ = _graph("symmetric", False)
    torch.manual_seed(0)
    model = LightGCN(NUM_NODES, 16, 3)
    rows = _rows()
    out16, emb16 = model.get_embedding_rows(edge_index, rows, precision="bf16")
    out32, emb32 = model.get_embedding_rows(edge_index, rows)
    assert torch.equal(emb16, emb32) and not torch.equal(out16, out32)
    torch.testing.assert_close(out16, out32, rtol=2e-2, atol=1e-3)
    out16.sum().backward()
    assert model.embedding.weight.grad.dtype == torch.float32
    # PyG's API stays float32.
    assert torch.equal(model.get_embedding(edge_index)[rows], out32.detach())


def test_bad_precision_names_the_argument():
    edge_index, _ = _graph("symmetric", False)
    x = features(NUM_NODES, 4, torch.float32)
    with pytest.raises(ArgumentError, match="precision must be one of 'float32', 'bf16'"):
        lightgcn_ext.propagate(edge_index, x, [0.5, 0.5], precision="fp16")
    with pytest.raises(ValueError, match="precision='bf16'.*x must be float32, got torch.float64"):
        lightgcn_ext.propagate(edge_index, x.double(), [0.5, 0.5], precision="bf16")
    operator = csr_operands(edge_index, NUM_NODES, None, torch.float64)
    with pytest.raises(RuntimeError, match="x must be float32, got Double"):
        OPS.propagate(*operator, x.double(), torch.tensor([0.5, 0.5]), True)
    with pytest.raises(RuntimeError, match="grad must be float32, got Double"):
        OPS.propagate_rows_backward(*operator, x.double()[:3], None, torch.tensor([0.5, 0.5]),
                                    torch.arange(3), True)


# ------------------------------------------------------------- training
def _config(tmp_path, name, **overrides):
    settings = dict(epochs=6, dim=16, batch_size=256, out=str(tmp_path / name), progress=False)
    return TrainConfig(**{**settings, **overrides})


def test_training_in_bf16_learns_as_float32_does_and_is_fixed_on_resume(tmp_path):
    data = toy_interactions()
    bf16 = train(_config(tmp_path, "bf16", precision="bf16"), data=data)
    float32 = train(_config(tmp_path, "float32"), data=data)
    assert bf16["config"]["precision"] == "bf16"
    assert float32["config"]["precision"] == "float32"
    assert bf16["history"][-1]["loss"] != float32["history"][-1]["loss"]
    assert bf16["history"][-1]["loss"] < bf16["history"][0]["loss"]
    assert bf16["history"][-1]["recall@20"] > 2 * bf16["popularity"]["recall@20"]
    for key in ("recall@20", "ndcg@20"):
        assert abs(bf16["history"][-1][key] - float32["history"][-1][key]) < 0.02, key
    with pytest.raises(ValueError, match="--precision float32 \\(the run has bf16\\)"):
        train(_config(tmp_path, "bf16", epochs=7, resume=True), data=data)


def test_config_and_cli_refuse_a_bad_precision(tmp_path, capsys, monkeypatch):
    with pytest.raises(ArgumentError, match="precision must be one of"):
        TrainConfig(precision="fp16").check()
    code, _, err = run_main(["train", "--precision", "fp16", "--out", str(tmp_path)], capsys)
    assert code == 2 and "--precision: invalid choice: 'fp16'" in err and "Traceback" not in err
    check_precision("bf16", world_size=1)  # bf16 has CPU and CUDA kernels; one process only
    with pytest.raises(ValueError, match="--precision bf16 trains in one process only"):
        check_precision("bf16", world_size=2)
    check_precision("float32", world_size=4)
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, _, err = run_main(["train", "--precision", "bf16", "--out", str(tmp_path / "dist"),
                             "--no-progress"], capsys)
    assert "--precision bf16 trains in one process only" in one_error_line(code, err)
    assert not (tmp_path / "dist").exists()
    from lightgcn_ext.distributed import train_distributed  # from Python, not the CLI

    with pytest.raises(ValueError, match="--precision bf16 trains in one process only"):
        train_distributed(TrainConfig(precision="bf16", out=str(tmp_path / "dist")))
    assert not (tmp_path / "dist").exists()


def test_cli_help_documents_precision(capsys):
    code, out, _ = run_main(["train", "--help"], capsys)
    assert code == 0 and "--precision {float32,bf16}" in out
