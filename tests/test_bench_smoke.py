"""The benchmarks run end to end (so that they cannot rot). The data
they use is tested in test_datasets.py."""
import subprocess
import sys

import pytest
from helpers import REPO

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
def test_bench_train_quick_runs(tmp_path):
    out = run_module("bench.bench_train", "--quick", "--threads", "1", "--parity-epochs", "1",
                     "--results-dir", str(tmp_path))
    assert "| implementation | step ms | epoch s (steps x step) | ours faster |" in out
    for label in ("(ours)", "torch_geometric LightGCN, edge_index",
                  "torch_geometric LightGCN, torch.sparse CSR adj_t"):
        assert label in out
    assert out.count("PASS:") + out.count("FAIL:") == 2
    assert out.count("recall@20") == 2
    assert len(list(tmp_path.glob("train-cpu-*.md"))) == 1
