"""The benchmarks run end to end (so that they cannot rot), what they write is
whole and agrees with itself, and every verdict they judge is PASS: a FAIL line
fails the test. A --quick run times a small graph on a machine shared with other
work, where the speed targets (set for Gowalla) say nothing, so it shows their
ratios as "not judged (--quick)"; what it judges is correctness. The data they use is tested in
test_datasets.py; the private ops they time in test_bench_ops.py."""
import json
import subprocess
import sys

import pytest
import torch
from helpers import REPO

from bench import bench_propagate, bench_scaling

BENCH_ROWS = [
    *(bench_propagate.IMPLS[name].label for name in bench_propagate.OURS),
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


QUICK_UNJUDGED = "not judged (--quick)"


def verdicts(text):
    """The lines that give a verdict: PASS or FAIL."""
    return [line for line in text.splitlines() if "PASS" in line or "FAIL" in line]


def assert_all_pass(text, count):
    """count judged verdicts, every one PASS."""
    lines = verdicts(text)
    failed = [line for line in lines if "FAIL" in line]
    assert not failed, "a benchmark verdict failed:\n" + "\n".join(failed)
    assert len(lines) == count, lines


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
                   "memory vs the lightest reference", "forward, time of one sweep over the "
                   "bare-gather floor", "fwd+bwd, time of one sweep over the bare-gather floor"]:
        assert any(line.startswith(f"- {target}") and QUICK_UNJUDGED in line
                   for line in stdout.splitlines()), target
    assert_all_pass(stdout, 1)  # every reference agrees with ours
    (written,) = tmp_path.glob("propagate-cpu-*.md")
    assert set(table_rows(written.read_text())) == set(rows)
    result = json.loads(written.with_suffix(".json").read_text())
    assert set(result["rows"]) == {bench_propagate.IMPLS[n].name for n in result["rows"]}
    assert set(result["floor_ms_per_sweep"]) == \
        {isa for isa in (bench_propagate.CHOSEN_ISA, bench_propagate.OTHER_ISA) if isa}


def test_bench_model_quick_runs():
    pytest.importorskip("torch_geometric")
    out = run_module("bench.bench_model", "--quick", "--threads", "1", timeout=300)
    assert "| implementation | get_embedding ms | BPR step ms |" in out
    for label in ("(ours)", "torch_geometric LightGCN, edge_index",
                  "torch_geometric LightGCN, torch.sparse CSR adj_t"):
        assert label in out
    assert out.count(QUICK_UNJUDGED) == 4  # the speed targets
    assert_all_pass(out, 1)  # every implementation agrees with PyG
    assert "MISMATCH" not in out


@pytest.mark.slow
def test_bench_read_log_quick_runs():
    """A small log through the whole benchmark: written, read in a child
    process, both numbers shown and left unjudged."""
    pytest.importorskip("pyarrow", reason="reading a log needs pyarrow")
    out = run_module("bench.bench_read_log", "--lines", "50000", "--quick")
    assert "wrote 50,000 lines" in out and "Interactions('log'" in out and "(string ids)" in out
    assert out.count(QUICK_UNJUDGED) == 2 and not verdicts(out)


@pytest.mark.slow
def test_bench_train_quick_runs(tmp_path):
    out = run_module("bench.bench_train", "--quick", "--threads", "1", "--parity-epochs", "1",
                     "--results-dir", str(tmp_path))
    assert "| implementation | step ms | epoch s (steps x step) | ours faster |" in out
    for label in ("(ours)", "--precision bf16 (ours)", "torch_geometric LightGCN, edge_index",
                  "torch_geometric LightGCN, torch.sparse CSR adj_t"):
        assert label in out
    # The speed targets: float32 and bf16 steps against the floor, the epoch against PyG's.
    assert out.count(QUICK_UNJUDGED) == 4
    assert_all_pass(out, 1)  # the same recall@20 and ndcg@20 after an epoch
    assert out.count("recall@20") == 4  # ours, ours in bf16, PyG, and the verdict
    assert len(list(tmp_path.glob("train-cpu-*.md"))) == 1


def test_bench_evaluate_quick_runs(tmp_path):
    """Both evaluation paths on a small graph: the same metrics, timed, unjudged."""
    out = run_module("bench.bench_evaluate", "--quick", "--threads", "1", "--results-dir",
                     str(tmp_path))
    assert "metrics of the two paths identical to the last bit: yes" in out
    assert "| new |" in out and "| old |" in out and "| products (torch matmul) |" in out
    assert out.count(QUICK_UNJUDGED) == 1 and not verdicts(out)
    report = json.loads(next(tmp_path.glob("evaluate-cpu-*.json")).read_text())
    assert report["identical"] and report["metrics"] == report["old_metrics"]


# ---------------------------------------------------------------- scaling
SWEEPS = {"forward": 1, "fwd_bwd": 2, "bpr": 2}  # sweeps per call, in units of L


@pytest.mark.slow
def test_bench_scaling_quick_writes_whole_consistent_results(tmp_path):
    """--quick: its tables, JSON and plots exist and parse, every implementation
    has a number or a reason in every case, and the numbers agree with each
    other (no timing assertions: the machine is shared)."""
    import matplotlib.image

    stdout = run_module("bench.bench_scaling", "--quick", "--results-dir", str(tmp_path),
                        timeout=300)
    (md,) = tmp_path.glob("cpu-*.md")
    report = md.read_text()
    assert report.strip() in stdout
    data = json.loads(md.with_suffix(".json").read_text())
    for kind in ("time", "memory"):
        (png,) = tmp_path.glob(f"cpu-*-{kind}.png")
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and min(image.shape[:2]) > 300, (png, image.shape)
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"

    cases = data["cases"]
    assert [(c["sweep"], c["edges"], c["dim"], c["layers"]) for c in cases] == [
        ("edges", 10**4, 64, 3), ("edges", 3 * 10**4, 64, 3), ("dim", 10**4, 32, 3),
        ("layers", 10**4, 64, 1)]
    labels = data["implementations"]
    assert "ours" in labels and "sparse_csr" in labels
    for label in labels.values():
        assert label in report
    for case in cases:
        n, d, num_layers = case["num_nodes"], case["dim"], case["layers"]
        assert n == case["edges"] // bench_propagate.POWERLAW_DEGREE
        assert set(case["results"]) == set(labels), "an implementation was dropped"
        floors = case["floor_ms_per_sweep"]
        assert floors and all(ms > 0 for ms in floors.values())
        for name, result in case["results"].items():
            if result["status"] != "ok":
                assert result["status"] in ("out of time", "out of memory", "failed")
                assert result["note"]
                continue
            assert set(result["ms"]) == set(SWEEPS) and all(v > 0 for v in result["ms"].values())
            # The other copy of our sweep is held against the floor on its own copy.
            isa = name[len("ours_"):] if name.startswith("ours_") else \
                bench_propagate.CHOSEN_ISA
            for mode, ms in result["ms"].items():
                expected = ms / (SWEEPS[mode] * num_layers * floors[isa])
                assert result["times_floor"][mode] == pytest.approx(expected, rel=1e-9)
                if name in bench_propagate.OURS:  # shown beside our times
                    assert f"{ms:.3g} ({expected:.2f}x)" in report
            # One forward+backward leaves x.grad, [N, d] float32, at the least.
            assert result["memory_bytes"] >= n * d * 4, (name, result["memory_bytes"])
        ours = case["results"]["ours"]
        assert ours["status"] == "ok"
        if "ours_" + str(bench_propagate.OTHER_ISA) in case["results"]:
            assert case["results"]["ours_" + bench_propagate.OTHER_ISA]["memory_bytes"] == \
                ours["memory_bytes"]
    # A reference that stopped in the size sweep stays stopped, and names the
    # last size it ran at.
    size_sweep = [c for c in cases if c["sweep"] == "edges"]
    for name in labels:
        statuses = [c["results"][name]["status"] for c in size_sweep]
        if "ok" in statuses[1:] and statuses[0] != "ok":
            pytest.fail(f"{name} ran again after it stopped: {statuses}")


def _result(ms, memory=1000):
    return bench_scaling.Result(ms={"forward": ms / 2, "fwd_bwd": ms, "bpr": ms}, memory=memory)


@pytest.mark.parametrize("ms, memory, expected", [
    (900, 1000, "ok"),                 # 3 x 0.9 s < 5 s
    (2000, 1000, "out of time"),       # 3 x 2 s > 5 s
    (900, 2**30, "out of memory"),     # 3 x 1 GiB > 2 GiB
])
def test_scaling_extrapolates_each_reference_from_its_last_size(ms, memory, expected):
    args = bench_scaling.parse_args(["--sizes", "1e4,3e4", "--sweep-size", "1e4",
                                     "--time-limit", "5"])
    small = bench_scaling.Case("edges", 10**4, 64, 3, "float32")
    large = bench_scaling.Case("edges", 3 * 10**4, 64, 3, "float32")
    history = {small: {"pyg_edge_index": _result(ms, memory)}}
    status, note = bench_scaling.predicted_status("pyg_edge_index", large, history, args, 2**31)
    assert status == expected
    assert (note == "") == (expected == "ok")
    # The d and L sweeps extrapolate from their base point, here the small size.
    wider = bench_scaling.Case("dim", 10**4, 128, 3, "float32")
    status, _ = bench_scaling.predicted_status("pyg_edge_index", wider, history, args, 2**31)
    assert status == ("ok" if ms * 2 / 1e3 <= 5 and memory * 2 <= 2**31 else status)
    # Once stopped, stopped for good, naming the last size it ran at.
    history[large] = {"pyg_edge_index": bench_scaling.Result("out of time", "slow")}
    largest = bench_scaling.Case("edges", 10**5, 64, 3, "float32")
    assert bench_scaling.predicted_status("pyg_edge_index", largest, history, args, 2**31) == \
        ("out of time", "slow")
    earlier = bench_scaling.earlier_results("pyg_edge_index", largest, history, args)
    assert bench_scaling.last_ok_edges(earlier) == 10**4


@pytest.mark.parametrize("module, argv, message", [
    (bench_scaling, ["--sizes", "1e4,many"], "--sizes: expected comma-separated positive integers"),
    (bench_scaling, ["--sizes", "1e4,-5"], "--sizes: expected comma-separated positive integers"),
    (bench_scaling, ["--sizes", "1000"], "--sizes: at least 2000 edges"),
    (bench_scaling, ["--sizes", "1e4,1e5", "--sweep-size", "3e4"],
     "--sweep-size 30000 must be one of --sizes"),
    (bench_scaling, ["--dtypes", "bfloat16"], "--dtypes: float16/bfloat16 are for --device cuda"),
    (bench_scaling, ["--dtypes", "float8"], "--dtypes: unknown ['float8']"),
    (bench_scaling, ["--time-limit", "0"], "--time-limit: expected a positive float"),
    (bench_scaling, ["--dim", "x"], "--dim: expected a positive int"),
    (bench_scaling, ["--skip-references", "ours"], "--skip-references: unknown ['ours']"),
    (bench_propagate, ["--data", "powerlaw"], "--edges goes with --data powerlaw"),
    (bench_propagate, ["--edges", "1e6"], "--edges goes with --data powerlaw"),
    (bench_propagate, ["--data", "powerlaw", "--edges", "100"], "--edges must be at least 2000"),
    (bench_propagate, ["--layers", "0"], "--layers: expected a positive int"),
    (bench_propagate, ["--rounds", "-1"], "--rounds: expected a positive int"),
], ids=lambda v: v.__name__.split(".")[-1] if hasattr(v, "__name__") else None)
def test_bad_arguments_are_named(module, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bench_distributed_quick_writes_whole_consistent_results(tmp_path):
    """--quick (P = 1, 2, 4 on a small graph): the losses agree (else it
    reports nothing), every run's plan is the measured one, and the memory
    verdict is the ratio it prints (no threshold: the graph is tiny)."""
    out = tmp_path / "distributed"
    stdout = run_module("bench.bench_distributed", "--quick", "--out", str(out), timeout=300)
    report = out.with_suffix(".md").read_text()
    assert report.strip() in stdout
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["round"]["fused_op_ms"] > 0 and data["round"]["addmm_ms"] > 0
    rows = data["timing"]["rows"]
    assert [row["world_size"] for row in rows] == [1, 2, 4]
    for row in rows[1:]:
        assert row["plan_matches"] and row["loss_max_rel_diff"] <= 1e-5
        # a layer's exchanges: P - 1 rounds, one sub-round each on a small graph
        assert row["collectives_per_step"] == 2 * 3 * (row["world_size"] - 1) + 2
    memory = data["memory"]
    assert len(memory["rank_peak_rss_mb"]) == 4
    assert memory["ratio"] == max(memory["rank_peak_rss_mb"]) / memory["single_peak_rss_mb"]
    assert f"{memory['ratio']:.3f}x" in report
    assert QUICK_UNJUDGED in report  # the memory target, for the 2,000,000-node graph
    assert_all_pass(stdout, 0)
    assert not list(tmp_path.glob(".*.tmp")), "a temporary file was left behind"
