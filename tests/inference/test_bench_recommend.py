"""bench.bench_recommend runs end to end: its chunked top-k agrees with the
unchunked reference before anything is timed, and a --quick run shows the
target's ratio without judging it."""
import subprocess
import sys

from helpers import REPO


def test_the_recommend_benchmark_runs_and_checks_itself():
    result = subprocess.run([sys.executable, "-m", "bench.bench_recommend", "--quick"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "the same items as the reference in 100.00% of the places" in out
    assert "| lightgcn_ext recommend (chunked top-k, raw-id rows) |" in out
    assert "target at most 2 s: not judged (--quick)" in out and "FAIL" not in out
