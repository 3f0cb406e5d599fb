"""The benchmarks and the demo run end to end (so that they cannot rot), and
lightgcn_ext.data does what it says."""
import subprocess
import sys

import pytest
import torch

import lightgcn_ext
from helpers import REPO
from lightgcn_ext.data import (DATA_ENV, bipartite_edge_index, find_gowalla_root, load_gowalla,
                               synthetic_interactions)

BENCH_ROWS = [
    "lightgcn_ext.propagate (ours)",
    "torch.sparse.mm, precomputed normalized CSR",
    "torch.sparse.mm, normalized COO (LightGCN-PyTorch)",
]
try:
    import torch_geometric  # noqa: F401
    BENCH_ROWS += ["torch_geometric LGConv, edge_index",
                   "torch_geometric LGConv, torch.sparse CSR adj_t"]
except ImportError:
    pass


def run_module(module, *args, timeout=900):
    result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{module} exited {result.returncode}:\n" \
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def table_rows(text):
    return {line.split("|")[1].strip(): line for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| implementation")}


# ---------------------------------------------------------------- smoke tests
@pytest.mark.slow
def test_bench_quick_runs_every_implementation(tmp_path):
    stdout = run_module("bench.bench_propagate", "--quick", "--results-dir", str(tmp_path))
    rows = table_rows(stdout)
    for label in BENCH_ROWS:
        assert label in rows, f"no row for {label}:\n{stdout}"
        assert "n/a" not in rows[label], rows[label]
    assert "MISMATCH" not in stdout
    for target in ["forward vs torch.sparse.mm CSR", "fwd+bwd vs the fastest reference",
                   "memory vs the lightest reference"]:
        assert any(line.startswith(f"- {target}") and ("PASS" in line or "FAIL" in line)
                   for line in stdout.splitlines()), target
    (written,) = tmp_path.glob("cpu_*.md")
    assert set(table_rows(written.read_text())) == set(rows)


def test_bench_model_quick_runs():
    pytest.importorskip("torch_geometric")
    out = run_module("bench.bench_model", "--quick", "--threads", "1", timeout=300)
    assert "| implementation | get_embedding ms | BPR step ms |" in out
    for label in ("(ours)", "torch_geometric LightGCN, edge_index",
                  "torch_geometric LightGCN, torch.sparse CSR adj_t"):
        assert label in out
    assert out.count("PASS:") + out.count("FAIL:") == 4
    assert "MISMATCH" not in out


@pytest.mark.slow
def test_demo_quick_checks_and_times():
    stdout = run_module("lightgcn_ext.demo", "--quick")
    assert stdout.count(": OK") == 2, stdout
    assert "lightgcn_ext (fused)" in stdout and "torch.sparse.mm, CSR" in stdout


# ------------------------------------------------------------ synthetic data
def keys(data):
    return data.train[0] * data.num_items + data.train[1]


def test_synthetic_sizes_and_ranges():
    data = synthetic_interactions(500, 800, 12_000, seed=3)
    assert (data.num_users, data.num_items, data.num_nodes) == (500, 800, 1300)
    assert data.train.shape == (2, 12_000) and data.train.dtype == torch.int64
    assert data.test.shape == (2, 0)
    assert 0 <= data.train[0].min() and data.train[0].max() < 500
    assert 0 <= data.train[1].min() and data.train[1].max() < 800
    user_degree = torch.bincount(data.train[0], minlength=500)
    item_degree = torch.bincount(data.train[1], minlength=800)
    assert user_degree.min() >= 6 and item_degree.min() >= 1
    assert user_degree.max() > 5 * user_degree.float().median()  # a heavy tail


def test_synthetic_has_no_duplicate_pairs():
    for data in [synthetic_interactions(500, 800, 12_000, seed=1),
                 synthetic_interactions(20, 30, 500, seed=2),  # dense: many redraws
                 synthetic_interactions(4, 5, 20, seed=0)]:  # complete
        assert keys(data).unique().numel() == data.train.shape[1]


def test_synthetic_is_deterministic_by_seed():
    a = synthetic_interactions(300, 400, 5000, seed=7)
    assert torch.equal(a.train, synthetic_interactions(300, 400, 5000, seed=7).train)
    assert not torch.equal(a.train, synthetic_interactions(300, 400, 5000, seed=8).train)


def test_synthetic_default_is_gowalla_sized():
    data = synthetic_interactions()
    assert (data.num_users, data.num_items, data.train.shape[1]) == (29858, 40981, 810128)
    assert keys(data).unique().numel() == 810128


def test_synthetic_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="num_interactions"):
        synthetic_interactions(3, 3, 10)


# ------------------------------------------------------------------- graph
def test_bipartite_edge_index_is_symmetric():
    pairs = torch.tensor([[0, 0, 1, 2], [0, 1, 1, 0]])
    edge_index = bipartite_edge_index(3, pairs)
    assert edge_index.shape == (2, 8) and edge_index.dtype == torch.int64
    edges = set(map(tuple, edge_index.t().tolist()))
    assert edges == {(d, s) for s, d in edges}
    assert edges == {(0, 3), (0, 4), (1, 4), (2, 3), (3, 0), (4, 0), (4, 1), (3, 2)}
    graph = lightgcn_ext.Graph.from_edge_index(edge_index, 5)
    assert graph.is_symmetric


def test_bipartite_edge_index_checks_its_input():
    with pytest.raises(ValueError, match=r"\[2, n\]"):
        bipartite_edge_index(3, torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="integer"):
        bipartite_edge_index(3, torch.zeros(2, 2))


# ----------------------------------------------------------------- Gowalla
def write_gowalla(root, train, test):
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.txt").write_text(train)
    (root / "test.txt").write_text(test)
    return root


def test_load_gowalla_reads_user_item_lists(tmp_path):
    root = write_gowalla(tmp_path, "0 0 1 2\n1 2\n\n2 1\n", "0 3\n1 0\n3\n")
    data = load_gowalla(root)
    assert (data.num_users, data.num_items) == (4, 4)  # user 3 appears with no items
    assert data.train.tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 1]]
    assert data.test.tolist() == [[0, 1], [3, 0]]


def test_load_gowalla_errors(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="lacks train.txt"):
        load_gowalla(tmp_path)
    write_gowalla(tmp_path, "0 1 x\n", "")
    with pytest.raises(ValueError, match=r"train.txt:1"):
        load_gowalla(tmp_path)
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "nowhere"))
    assert find_gowalla_root() is None
    with pytest.raises(FileNotFoundError, match=DATA_ENV):
        load_gowalla()


def test_find_gowalla_root_from_env(tmp_path, monkeypatch):
    root = write_gowalla(tmp_path / "gowalla", "0 0\n", "0 0\n")
    for value in [root, tmp_path]:  # the directory itself, or its parent
        monkeypatch.setenv(DATA_ENV, str(value))
        assert find_gowalla_root() == root


GOWALLA = REPO.parent / "shared" / "data" / "gowalla"  # the repository's copy, beside it


def test_find_gowalla_root_looks_only_in_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert find_gowalla_root() is None  # not the copy beside the repository
    root = write_gowalla(tmp_path / ".cache" / "lightgcn_ext" / "gowalla", "0 0\n", "0 0\n")
    assert find_gowalla_root() == root


@pytest.mark.skipif(not (GOWALLA / "train.txt").is_file(), reason="the Gowalla data is not here")
def test_real_gowalla():
    data = load_gowalla(GOWALLA)
    assert (data.num_users, data.num_items) == (29858, 40981)
    assert (data.train.shape[1], data.test.shape[1]) == (810128, 217242)
    edge_index = bipartite_edge_index(data.num_users, data.train)
    assert data.num_nodes == 70839 and edge_index.shape == (2, 1620256)
