"""Shared test helpers: device parametrization, dense float64 references, the
random graphs, torch_geometric's models and LGConv, and the comparisons.

Imported by the test modules as `helpers` (pytest puts tests/ on sys.path);
the fixtures are in conftest.py. torch_geometric is imported lazily, by the
functions that need it: a test that calls one skips where it is absent, the
others run.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lightgcn_ext  # loads the extension and registers the ops
from lightgcn_ext._ops import CsrOperator
from lightgcn_ext.data import Interactions

REPO = Path(__file__).resolve().parents[1]
OPS = torch.ops.lightgcn_ext


# ------------------------------------------------- the CPU sweep's copies
def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f
                         if line.startswith("flags")), set())
    except OSError:
        return set()


HAS_AVX2 = {"avx2", "fma"} <= _cpu_flags()
HAS_AVX512 = HAS_AVX2 and {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= _cpu_flags()
# The copies of the sweep this CPU runs (lightgcn_ext::_cpu_isa), widest first.
ISAS = ["avx512"] * HAS_AVX512 + ["avx2"] * HAS_AVX2 + ["baseline"]
FLOAT_DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
LOW_PRECISION = (torch.float16, torch.bfloat16)
# The dtypes of the model tests, and "agree to 1e-5 relative (float32) / 1e-10
# (float64)": relative to the largest magnitude of the reference, so near-zero
# entries do not dominate.
MODEL_DTYPES = [pytest.param(torch.float32, id="float32"),
                pytest.param(torch.float64, id="float64")]
REL_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
# The user-item graph of the recommend tests (conftest.bipartite).
NUM_USERS, NUM_ITEMS = 30, 50
# The marks of every module that tests the LightGCN model: torch.sparse's
# notices (raised inside PyG's conversions and products) are not failures, and
# one thread (see conftest.one_thread).
MODEL_MARKS = [pytest.mark.filterwarnings("ignore:Sparse .* (beta state|implicitly disabled)"),
               pytest.mark.filterwarnings("ignore:Converting sparse tensor to CSR"),
               pytest.mark.usefixtures("one_thread")]


# --------------------------------------------------------------- devices
def has_cuda_kernel():
    """True when the built extension registered CUDA kernels."""
    return torch._C._dispatch_has_kernel_for_dispatch_key("lightgcn_ext::propagate", "CUDA")


HAS_CUDA = torch.cuda.is_available() and has_cuda_kernel()
NEEDS_CUDA = [pytest.mark.cuda,
              pytest.mark.skipif(not HAS_CUDA, reason="no CUDA device or no CUDA kernels")]


def devices():
    """Devices to parametrize over: "cpu", plus "cuda" (marked `cuda`) only
    where a GPU is visible and the extension has CUDA kernels, so CUDA cases
    do not exist elsewhere."""
    params = [pytest.param("cpu", id="cpu")]
    if HAS_CUDA:
        params.append(pytest.param("cuda", id="cuda", marks=pytest.mark.cuda))
    return params


# ------------------------------------------------------- dense reference
def dense_operator(edge_index, num_nodes, edge_weight=None, normalize=True,
                   dtype=torch.float64):
    """The dense M = D^-1/2 Aᵀ D^-1/2 (M[i, j] = sum of w over edges j -> i,
    duplicates summed; deg = weighted in-degree; dinv = 0 where deg = 0; no
    self-loops added). Differentiable in edge_weight."""
    edge_index = torch.as_tensor(edge_index)
    src, dst = edge_index[0].long().cpu(), edge_index[1].long().cpu()
    if edge_weight is None:
        w = torch.ones(src.numel(), dtype=dtype)
    else:
        w = edge_weight.cpu().to(dtype)
    a_t = torch.zeros(num_nodes, num_nodes, dtype=dtype).index_put((dst, src), w, accumulate=True)
    if not normalize:
        return a_t
    deg = a_t.sum(dim=1)
    dinv = deg.pow(-0.5)
    dinv = dinv.masked_fill(deg == 0, 0.0)
    return dinv.unsqueeze(1) * a_t * dinv.unsqueeze(0)


def dense_propagate(edge_index, num_nodes, x, alpha, edge_weight=None, normalize=True,
                    dtype=torch.float64):
    """sum_l alpha_l M^l x computed densely in `dtype` (float64 by default),
    on the CPU. Differentiable in x, alpha and edge_weight."""
    m = dense_operator(edge_index, num_nodes, edge_weight, normalize, dtype)
    if not isinstance(alpha, torch.Tensor):
        alpha = torch.tensor(alpha, dtype=torch.float64)
    alpha = alpha.cpu().to(dtype)
    h = x.cpu().to(dtype)
    out = alpha[0] * h
    for layer in range(1, alpha.numel()):
        h = m @ h
        out = out + alpha[layer] * h
    return out


def dense_layer_dots(edge_index, num_nodes, x, grad, num_layers, edge_weight=None,
                     normalize=True, dtype=torch.float64):
    """[<M^l x, grad> for l = 0..num_layers] computed densely in `dtype`."""
    m = dense_operator(edge_index, num_nodes, edge_weight, normalize, dtype)
    h, g = x.cpu().to(dtype), grad.cpu().to(dtype)
    dots = [(h * g).sum()]
    for _ in range(num_layers):
        h = m @ h
        dots.append((h * g).sum())
    return torch.stack(dots)


def csr_operands(edge_index, num_nodes, edge_weight=None, dtype=torch.float64, normalize=True,
                 transpose=False):
    """The CsrOperator of the raw ops (CSR by destination, dinv, CSR by source),
    built with prepare_csr and plain PyTorch: weight and dinv in the
    accumulation type of `dtype`. transpose=True gives the operator of Mᵀ."""
    acc = torch.float32 if dtype in LOW_PRECISION else dtype
    rowptr, col, perm, rowptr_t, col_t, perm_t = OPS.prepare_csr(edge_index, num_nodes)
    dst = edge_index[1].long()
    if edge_weight is None:
        deg = torch.zeros(num_nodes, dtype=torch.float64, device=dst.device).index_add_(
            0, dst, torch.ones(dst.numel(), dtype=torch.float64, device=dst.device))
        weight = weight_t = None
    else:
        w64 = edge_weight.to(torch.float64)
        deg = torch.zeros(num_nodes, dtype=torch.float64, device=dst.device).index_add_(0, dst, w64)
        weight, weight_t = w64[perm].to(acc), w64[perm_t].to(acc)
    if normalize:
        dinv = deg.pow(-0.5).masked_fill(deg == 0, 0.0).to(acc)
    else:
        dinv = torch.ones(num_nodes, dtype=acc, device=dst.device)
    operator = CsrOperator(rowptr, col, weight, dinv, rowptr_t, col_t, weight_t)
    return operator.transposed() if transpose else operator


# ---------------------------------------------------------------- inputs
def features(num_nodes, d, dtype=torch.float64, device="cpu", seed=0, requires_grad=False):
    """Standard normal [num_nodes, d] features (drawn in float64, then cast)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_nodes, d, generator=gen, dtype=torch.float64).to(dtype).to(device)
    return x.requires_grad_(requires_grad)


def random_weights(num_edges, *, seed=0, dtype=torch.float64, device="cpu"):
    """Positive edge weights in [0.5, 2)."""
    gen = torch.Generator().manual_seed(seed)
    return (0.5 + 1.5 * torch.rand(num_edges, generator=gen, dtype=torch.float64)).to(
        dtype).to(device)


# ---------------------------------------------------------------- graphs
def _first_occurrences(keys):
    """The positions of the first occurrence of each key, in order."""
    seen, first = set(), []
    for i, k in enumerate(keys.tolist()):
        if k not in seen:
            seen.add(k)
            first.append(i)
    return first


def random_edges(num_nodes, num_edges, *, seed=0, self_loops=True, duplicates=True,
                 num_isolated=0, index_dtype=torch.int64, device="cpu"):
    """A random directed edge_index [2, num_edges]. The last `num_isolated`
    nodes touch no edge. Without duplicates/self_loops, fewer edges may come
    back when the node set is too small."""
    gen = torch.Generator().manual_seed(seed)
    active = num_nodes - num_isolated
    assert active >= 1 or num_edges == 0
    if num_edges == 0:
        return empty_graph(index_dtype, device)
    # Draw more than needed, then filter.
    draws = torch.randint(0, active, (2, 4 * num_edges + 8), generator=gen)
    if not self_loops:
        draws = draws[:, draws[0] != draws[1]]
    if not duplicates:
        draws = draws[:, _first_occurrences(draws[0] * num_nodes + draws[1])]
    edge_index = draws[:, :num_edges]
    if duplicates and edge_index.shape[1] >= 4:
        # Make sure there is at least one duplicate edge.
        edge_index = edge_index.clone()
        edge_index[:, -1] = edge_index[:, 0]
    return edge_index.to(index_dtype).to(device)


def symmetrize(edge_index, edge_weight=None):
    """Both directions of every edge (the user-item graph of LightGCN)."""
    both = torch.cat([edge_index, edge_index.flip(0)], dim=1)
    if edge_weight is None:
        return both, None
    return both, torch.cat([edge_weight, edge_weight])


def random_undirected(num_nodes, num_edges, *, seed=0, weighted=False, **kwargs):
    """A symmetrized random graph (2 * num_edges edges) and its weights (or None).
    Reverse pairs are avoided, so the weighted CSR is detected as symmetric."""
    edge_index = random_edges(num_nodes, num_edges, seed=seed, duplicates=False, **kwargs)
    key = torch.minimum(edge_index[0], edge_index[1]) * num_nodes + torch.maximum(
        edge_index[0], edge_index[1])
    edge_index = edge_index[:, _first_occurrences(key)]
    weight = random_weights(edge_index.shape[1], seed=seed + 1) if weighted else None
    return symmetrize(edge_index, weight)


def directed_graph(num_nodes, num_edges, *, seed=0, num_isolated=3):
    """A random_edges graph with more duplicate edges (5) and self-loops
    (0->0, 1->1, 2->2), shuffled: duplicates, self-loops, nodes with out-edges
    only, and `num_isolated` isolated nodes (the last ones)."""
    gen = torch.Generator().manual_seed(seed + 1000)
    edge_index = random_edges(num_nodes, num_edges, seed=seed, num_isolated=num_isolated)
    loops = torch.arange(0, min(num_nodes - num_isolated, 3)).repeat(2, 1)
    edge_index = torch.cat([edge_index, loops, edge_index[:, :5]], dim=1)
    return edge_index[:, torch.randperm(edge_index.shape[1], generator=gen)]


def undirected_graph(num_nodes, num_edges, *, seed=0, num_isolated=3):
    """Both directions of a directed_graph (duplicates and self-loops kept),
    shuffled: the symmetric user-item case."""
    gen = torch.Generator().manual_seed(seed + 2000)
    both, _ = symmetrize(directed_graph(num_nodes, num_edges, seed=seed,
                                        num_isolated=num_isolated))
    return both[:, torch.randperm(both.shape[1], generator=gen)]


def unique_edges(num_nodes, num_edges, *, seed=0, num_isolated=2, symmetric=False):
    """A random graph without duplicate edges (PyG's torch.sparse conversions
    coalesce duplicates away, so sparse-vs-edge_index comparisons need this)."""
    edge_index = directed_graph(num_nodes, num_edges, seed=seed, num_isolated=num_isolated)
    if symmetric:
        edge_index, _ = symmetrize(edge_index)
    return torch.unique(edge_index, dim=1).contiguous()


def bipartite_graph(num_users, num_items, num_pairs, *, seed=0, device="cpu"):
    """(edge_index of both directions, (user, item-node) pairs) on `device`:
    users are nodes 0..U-1, items U..U+I-1."""
    gen = torch.Generator().manual_seed(seed)
    users = torch.randint(0, num_users, (num_pairs,), generator=gen)
    items = torch.randint(0, num_items, (num_pairs,), generator=gen) + num_users
    pairs = torch.unique(torch.stack([users, items]), dim=1)
    return symmetrize(pairs)[0].to(device), pairs.to(device)


def empty_graph(index_dtype=torch.int64, device="cpu"):
    return torch.zeros(2, 0, dtype=index_dtype, device=device)


def tiny_graph(index_dtype=torch.int64):
    """6 nodes: a duplicate edge (1 -> 2 twice), a self-loop (3 -> 3), node 0
    with out-edges only (an empty CSR row), node 5 isolated."""
    return torch.tensor([[0, 1, 1, 2, 3, 3, 4, 0], [1, 2, 2, 4, 3, 1, 2, 4]], dtype=index_dtype)


def in_degree_zero(edge_index, num_nodes):
    """Mask of nodes with no incoming edge."""
    mask = torch.ones(num_nodes, dtype=torch.bool)
    mask[edge_index[1].long().cpu()] = False
    return mask


# ------------------------------------------------ torch_geometric reference
def pyg_models():
    """torch_geometric.nn.models (the calling test skips without torch_geometric)."""
    return pytest.importorskip("torch_geometric.nn.models")


def pyg_propagate(edge_index, x, alpha, edge_weight=None, normalize=True,
                  flow="source_to_target"):
    """torch_geometric's LightGCN propagation: L stacked LGConv, sum_l alpha_l x_l."""
    conv_module = pytest.importorskip("torch_geometric.nn.conv")
    conv = conv_module.LGConv(normalize=normalize, flow=flow)
    if not isinstance(alpha, torch.Tensor):
        alpha = torch.tensor(alpha, dtype=torch.float64)
    alpha = alpha.to(dtype=x.dtype, device=x.device)
    out = alpha[0] * x
    h = x
    for layer in range(1, alpha.numel()):
        h = conv(h, edge_index, edge_weight)
        out = out + alpha[layer] * h
    return out


def make_models(num_nodes, embedding_dim, num_layers, alpha=None, *, dtype=torch.float32,
                seed=0, **kwargs):
    """(ours, PyG's) LightGCN from torch.manual_seed(seed), both cast to dtype.
    A tensor alpha is cloned for each, as each model stores its own."""
    pyg_lightgcn = pyg_models().LightGCN

    def build(cls):
        torch.manual_seed(seed)
        a = alpha.clone() if isinstance(alpha, torch.Tensor) else alpha
        model = cls(num_nodes, embedding_dim, num_layers, alpha=a, **kwargs)
        return model.double() if dtype == torch.float64 else model

    return build(lightgcn_ext.LightGCN), build(pyg_lightgcn)


def brute_force_recommend(emb, src_index, dst_index, k, exclude):
    """Top-k by a dense masked score matrix: (values, node ids, dense scores by node id)."""
    num_nodes = emb.shape[0]
    src_ids = torch.arange(num_nodes) if src_index is None else src_index
    dst_ids = torch.arange(num_nodes) if dst_index is None else dst_index
    full = emb[src_ids] @ emb.t()  # [num_src, num_nodes]
    masked = torch.zeros_like(full, dtype=torch.bool)
    if exclude is not None:
        for s, d in exclude.t().tolist():
            masked[src_ids == s, d] = True
    full = full.masked_fill(masked, float("-inf"))
    values, local = full[:, dst_ids].topk(k, dim=1)
    return values, dst_ids[local], full


# ------------------------------------------------------------ comparisons
def assert_close_to_reference(out, ref64, dtype, ref_low=None, *, rtol=None, atol=None):
    """out vs the float64 reference. float64/float32: fixed tolerances.
    float16/bfloat16 (flash-attention's idiom): the error is at most twice that
    of the same reference computed in that dtype, plus a small eps."""
    out64 = out.detach().cpu().to(torch.float64)
    ref64 = ref64.detach().cpu().to(torch.float64)
    assert out64.shape == ref64.shape
    if dtype in LOW_PRECISION:
        assert ref_low is not None, "low precision needs the reference in that dtype"
        ref_err = (ref_low.detach().cpu().to(torch.float64) - ref64).abs().max().item()
        err = (out64 - ref64).abs().max().item() if out64.numel() else 0.0
        eps = torch.finfo(dtype).eps * max(1.0, ref64.abs().max().item() if ref64.numel() else 0)
        assert err <= 2 * ref_err + eps, f"{dtype}: error {err} > 2 * {ref_err} + {eps}"
        return
    if rtol is None:
        rtol, atol = {torch.float64: (1e-12, 1e-12), torch.float32: (1e-5, 1e-5)}[dtype]
    torch.testing.assert_close(out64, ref64, rtol=rtol, atol=atol)


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


# ---------------------------------------------------- the command line
# Small training runs for the command-line tests: fast, one thread, quiet.
TINY = ["--dim", "8", "--batch-size", "256", "--no-progress", "--threads", "1"]


def write_dir(path, data, offset=0, valid=None):
    """data (Interactions) as a LightGCN-format directory, ids + offset."""
    path.mkdir(parents=True, exist_ok=True)
    splits = dict(train=data.train, test=data.test, **({} if valid is None else {"valid": valid}))
    for split, pairs in splits.items():
        lines = {}
        for user, item in pairs.t().tolist():
            lines.setdefault(user + offset, []).append(item + offset)
        (path / f"{split}.txt").write_text(
            "".join(f"{u} {' '.join(map(str, items))}\n" for u, items in sorted(lines.items())))
    return path


def run_main(argv, capsys):
    """(exit code, stdout, stderr) of lightgcn_ext.cli.main(argv) in this process."""
    from lightgcn_ext import cli

    try:
        code = cli.main(argv)
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
        if isinstance(exit.code, str):
            print(exit.code, file=sys.stderr)
    out, err = capsys.readouterr()
    return code, out, err


def one_error_line(code, err):
    """The one line a user mistake in `train` prints, after checking the exit code."""
    assert code not in (0, None), err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("lightgcn-ext train: error: "), err
    return lines[0][len("lightgcn-ext train: error: "):]


# ------------------------------------------------------------- processes
def run_python(code, timeout=120):
    """Runs code in a fresh interpreter with the repo on the path (a crash
    there does not take pytest down): the CompletedProcess, text output."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in [str(REPO), env.get("PYTHONPATH")] if p)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def toy_interactions(seed=0, num_users=300, num_items=200, num_pairs=6000, communities=5):
    """Users and items in communities; 80% of a user's pairs within its own:
    something for a model to learn. Split 80/20 at random."""
    gen = torch.Generator().manual_seed(seed)
    user_community = torch.randint(0, communities, (num_users,), generator=gen)
    users = torch.randint(0, num_users, (num_pairs,), generator=gen)
    own = (torch.randint(0, num_items // communities, (num_pairs,), generator=gen) * communities
           + user_community[users])
    anywhere = torch.randint(0, num_items, (num_pairs,), generator=gen)
    items = torch.where(torch.rand(num_pairs, generator=gen) < 0.8, own, anywhere)
    keys = torch.unique(users * num_items + items)
    keys = keys[torch.randperm(keys.numel(), generator=gen)]
    cut = int(0.8 * keys.numel())
    pairs = torch.stack([keys // num_items, keys % num_items])
    return Interactions("toy", num_users, num_items, pairs[:, :cut], pairs[:, cut:])


# The repository's copy of Gowalla, beside it (tests that need it skip without it).
GOWALLA_COPY = REPO.parent / "shared" / "data" / "gowalla"
HAVE_GOWALLA = all((GOWALLA_COPY / file).is_file() for file in ("train.txt", "test.txt"))


def write_splits(directory, **files):
    """Writes <split>.txt files (str or bytes) into directory, created if needed."""
    directory.mkdir(parents=True, exist_ok=True)
    for split, text in files.items():
        (directory / f"{split}.txt").write_bytes(text.encode() if isinstance(text, str) else text)
    return directory
