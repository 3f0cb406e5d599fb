"""bench/bench_cuda.py (the GPU targets) runs end to end: on the CPU here,
with --quick, so that the harness cannot rot between GPU machines."""
import json
import subprocess
import sys

import pytest
from helpers import REPO


@pytest.mark.slow
def test_bench_cuda_quick_on_cpu(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "bench.bench_cuda", "--device", "cpu", "--quick",
         "--results-dir", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    [report] = tmp_path.glob("cpu-*.json")
    results = json.loads(report.read_text())
    rows = results["propagation"]
    assert {row["implementation"] for row in rows} == {
        "lightgcn_ext f32", "lightgcn_ext bf16", "lightgcn_ext f16", "torch.sparse.mm CSR f32"}
    for row in rows:
        assert row["forward_ms"] > 0 and row["fwd_bwd_ms"] > 0
        if row["implementation"] == "lightgcn_ext f32":
            assert row["max_rel_error_vs_float64"] < 1e-5
        elif row["implementation"].startswith("lightgcn_ext"):
            assert row["max_rel_error_vs_float64"] < 2e-2  # float16 / bfloat16
    assert results["bpr_step"]["eager ms"] > 0
    assert (tmp_path / report.name.replace(".json", ".md")).read_text().startswith("# ")


def test_bench_cuda_refuses_bad_arguments():
    for args, message in ((["--device", "tpu"], "--device"), (["--dim", "0"], "--dim")):
        result = subprocess.run([sys.executable, "-m", "bench.bench_cuda", *args], cwd=REPO,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and message in result.stderr, result.stderr
