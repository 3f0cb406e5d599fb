"""Row-partitioned training over torch.distributed (gloo on loopback): 2 and 4
processes give the propagation, its gradient, the evaluation and a training
run of 1 process to float rounding; checkpoints resume exactly and refuse
another world size; more ranks than nodes, and a rank that dies or stalls,
are clear errors, never a hang.

The multi-process checks run this file as a script, one process per rank,
with the environment torchrun would set (RANK, WORLD_SIZE, MASTER_ADDR/PORT).
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[2]), str(Path(__file__).resolve().parents[1])]

from helpers import REPO, toy_interactions  # noqa: E402
from lightgcn_ext import distributed  # noqa: E402
from lightgcn_ext.distributed import train_distributed  # noqa: E402
from lightgcn_ext.evaluation import ranking_metrics  # noqa: E402
from lightgcn_ext.model import LightGCN  # noqa: E402
from lightgcn_ext.training import TrainConfig, train  # noqa: E402

FLOAT_TOL = {torch.float64: 1e-12, torch.float32: 1e-5}  # relative to the largest entry
DEADLINE_S = 120  # a launch that takes longer hangs


def _config(out, **overrides):
    settings = dict(epochs=3, dim=16, batch_size=256, out=str(out), progress=False, patience=0,
                    topk=(10, 20), dist_timeout=30.0)
    return TrainConfig(**{**settings, **overrides})


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(world_size, *args, timeout=30.0):
    """One process per rank running this file's main(*args); returns them."""
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               WORLD_SIZE=str(world_size), OMP_NUM_THREADS="1",
               LIGHTGCN_TEST_DIST_TIMEOUT=str(timeout))
    return [subprocess.Popen([sys.executable, __file__, *map(str, args)],
                             env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for r in range(world_size)]


def _wait(procs, timeout=DEADLINE_S):
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=timeout))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"a rank did not finish within {timeout} s")
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    return outputs


# ------------------------------------------------------------ the ranks' side
def _random_graph(dtype):
    """A directed graph with a self-loop, a duplicate edge and nodes without
    in-edges, features and an output gradient."""
    gen = torch.Generator().manual_seed(5)
    num_nodes = 61
    edge_index = torch.randint(0, num_nodes - 3, (2, 300), generator=gen)
    edge_index = torch.cat([edge_index, torch.tensor([[3, 3, 4, 59], [3, 5, 5, 2]])], 1)
    x = torch.randn(num_nodes, 8, generator=gen, dtype=dtype)
    grad = torch.randn(num_nodes, 8, generator=gen, dtype=dtype)
    return edge_index, num_nodes, x, grad


def _check_propagation(report):
    import lightgcn_ext

    alpha = torch.tensor([0.4, 0.3, 0.2, 0.1])
    # chunk_rows 2: a halo comes in many sub-rounds, and some ranks have none in some
    for dtype, chunk_rows in [(torch.float64, 1 << 16), (torch.float32, 1 << 16),
                              (torch.float64, 2)]:
        edge_index, num_nodes, x, grad = _random_graph(dtype)
        x_ref = x.clone().requires_grad_()
        ref = lightgcn_ext.propagate(edge_index, x_ref, alpha)
        ref.backward(grad)
        graph = distributed.DistributedGraph.from_edge_index(edge_index, num_nodes,
                                                             chunk_rows=chunk_rows)
        lo, hi = graph.lo, graph.hi
        x_own = x[lo:hi].clone().requires_grad_()
        out = distributed.propagate_distributed(graph, x_own, alpha)
        out.backward(grad[lo:hi])
        scale = ref.abs().max().item(), x_ref.grad.abs().max().item()
        key = f"{dtype} in sub-rounds of {chunk_rows} rows"
        report[f"propagate {key}"] = (out - ref[lo:hi]).abs().max().item() / scale[0]
        report[f"gradient {key}"] = (x_own.grad - x_ref.grad[lo:hi]).abs().max().item() / scale[1]
        report[f"sub-rounds {key}"] = graph.plan()["collectives"]
    for bad_x, bad_alpha in [(x_own.detach().bfloat16(), alpha), (x_own, alpha.clone().requires_grad_())]:
        try:
            distributed.propagate_distributed(graph, bad_x, bad_alpha)
        except (TypeError, ValueError) as error:
            report.setdefault("bad input", []).append(f"{type(error).__name__}: {error}")


def _check_evaluation(report):
    data = toy_interactions()
    gen = torch.Generator().manual_seed(7)
    embedding = torch.randn(data.num_nodes, 16, generator=gen)
    bounds = distributed.partition(distributed.interaction_degree(data), _world_size())
    rank = int(os.environ["RANK"])
    ks = (5, 20)
    report["evaluate"] = distributed.evaluate_distributed(
        embedding[bounds[rank]:bounds[rank + 1]], bounds, data.num_users, data.test,
        exclude=[data.train], ks=ks)
    report["evaluate reference"] = ranking_metrics(
        embedding[:data.num_users], embedding[data.num_users:], data.test, exclude=[data.train],
        ks=ks)
    report["users per rank"] = [min(b, data.num_users) for b in bounds]


def _world_size():
    return int(os.environ["WORLD_SIZE"])


def main(out):
    """A rank's side of test_processes_match_one_process."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    distributed.init_process_group("gloo")
    out, report = Path(out), {}
    _check_propagation(report)
    _check_evaluation(report)
    data = toy_interactions()
    world_size = _world_size()
    report["whole"] = train_distributed(_config(out / f"whole{world_size}"), data=data)
    train_distributed(_config(out / f"pieces{world_size}", max_epochs_now=1), data=data)
    report["pieces"] = train_distributed(_config(out / f"pieces{world_size}", resume=True),
                                         data=data)
    try:  # a checkpoint of 1 process (the test wrote it before launching)
        train_distributed(_config(out / "single", epochs=4, resume=True), data=data)
    except ValueError as error:
        report["other world size"] = str(error)
    reports = [None] * world_size
    dist.all_gather_object(reports, report)
    if dist.get_rank() == 0:
        (out / f"report{world_size}.json").write_text(json.dumps(reports))
    distributed.close()


def main_train(out, epochs):
    """A rank's side of the dying-rank test: a long training run."""
    torch.set_num_threads(1)
    train_distributed(_config(out, epochs=int(epochs), batch_size=32,
                              dist_timeout=float(os.environ["LIGHTGCN_TEST_DIST_TIMEOUT"])),
                      data=toy_interactions(num_pairs=12000))


# ------------------------------------------------------------------ the tests
def test_partition_is_contiguous_non_empty_and_balanced():
    degree = torch.cat([torch.full((90,), 2), torch.full((10,), 40)])  # a heavy tail
    for world_size in (1, 2, 3, 7, 100):
        bounds = distributed.partition(degree, world_size)
        assert bounds[0] == 0 and bounds[-1] == 100 and len(bounds) == world_size + 1
        assert all(a < b for a, b in zip(bounds, bounds[1:]))
    bounds = distributed.partition(degree, 4)
    cost = (degree + degree.float().mean()).cumsum(0)
    shares = torch.diff(torch.cat([torch.zeros(1), cost[torch.tensor(bounds[1:]) - 1]]))
    assert shares.max() <= cost[-1] / 4 + (degree.max() + degree.float().mean()), shares


def test_more_ranks_than_nodes_is_a_clear_error():
    with pytest.raises(ValueError, match=r"world_size \(5 processes\) must be at most the "
                                         r"number of nodes \(3\)"):
        distributed.partition(torch.ones(3), 5)
    with pytest.raises(ValueError, match="world_size must be a positive int"):
        distributed.partition(torch.ones(3), 0)


def _compare(report, single, tmp_path, world_size):
    for key, value in report[0].items():
        if key.startswith(("propagate", "gradient")):
            dtype = torch.float64 if "float64" in key else torch.float32
            worst = max(r[key] for r in report)
            assert worst <= FLOAT_TOL[dtype], (key, worst)
    for r in report:
        # Float64 sums of per-user metrics, added in another order.
        ours, ref = r["evaluate"], r["evaluate reference"]
        assert ours.keys() == ref.keys()
        assert all(abs(ours[k] - ref[k]) <= 1e-12 for k in ref), (ours, ref)
    assert 0 < report[0]["users per rank"][1] < report[0]["users per rank"][-1]  # users split
    # Every rank runs the same number of exchanges, here many per round.
    pieces = {r["sub-rounds torch.float64 in sub-rounds of 2 rows"] for r in report}
    assert len(pieces) == 1 and pieces.pop() > 3 * (world_size - 1)
    assert report[0]["bad input"] == [
        "TypeError: h must be float32 or float64 (torch.sparse's products), got torch.bfloat16",
        "ValueError: alpha must not require grad: propagate_distributed is differentiable in "
        "x only"]
    whole, pieces = report[0]["whole"], report[0]["pieces"]
    strip = lambda h: [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in h]  # noqa: E731
    assert strip(pieces["history"]) == strip(whole["history"])  # resumed exactly
    assert whole["device"]["world_size"] == world_size
    for ours, ref in zip(whole["history"], single["history"]):
        assert ours["loss"] == pytest.approx(ref["loss"], rel=1e-6)
        for key in ("recall@10", "ndcg@10", "recall@20", "ndcg@20", "precision@20"):
            # A swapped pair in one user's ranking moves recall@20 by about 1e-3.
            assert abs(ours[key] - ref[key]) < 1e-4, (key, ours[key], ref[key])
    # The embedding rows of the final checkpoint shards are the single process's.
    index = json.loads((tmp_path / f"whole{world_size}" / "checkpoint.index.json").read_text())
    rows = torch.cat([torch.load(tmp_path / f"whole{world_size}" / name)["weight"]
                      for name in index["shards"]])
    reference = torch.load(tmp_path / "single" / "checkpoint.pt")["model"]["embedding.weight"]
    assert torch.allclose(rows, reference, rtol=1e-4, atol=1e-6), (rows - reference).abs().max()
    assert "checkpoint of a single process: resume it without torchrun" in \
        report[0]["other world size"]


@pytest.mark.parametrize("num_nodes, dim, lo, hi, block", [
    (2, 3, 0, 2, 16), (17, 5, 0, 17, 16), (17, 5, 3, 9, 32), (1001, 3, 0, 1001, 16),
    (1000, 7, 100, 800, 48), (5003, 64, 4000, 5003, 1 << 20), (5003, 64, 2000, 4100, 1 << 12)])
def test_a_rank_draws_its_rows_of_the_single_process_table(num_nodes, dim, lo, hi, block):
    """Drawn block by block (never the whole table), the rows are bitwise the
    module's, whose constructor draws normal_ and then xavier_uniform_."""
    torch.manual_seed(11)
    reference = LightGCN(num_nodes, dim, 3).embedding.weight.detach()[lo:hi]
    assert torch.equal(distributed.initial_rows(num_nodes, dim, lo, hi, 11, block), reference)


@pytest.mark.parametrize("world_size", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_processes_match_one_process(tmp_path, world_size):
    single = train(_config(tmp_path / "single"), data=toy_interactions())
    _wait(_launch(world_size, "main", tmp_path))
    report = json.loads((tmp_path / f"report{world_size}.json").read_text())
    _compare(report, single, tmp_path, world_size)


def test_the_cli_under_torchrun_and_a_resume_with_another_world_size(tmp_path):
    """`torchrun ... -m lightgcn_ext train` needs no other option; one process
    cannot resume its checkpoint."""
    data = toy_interactions()
    data_dir = tmp_path / "toy"
    data_dir.mkdir()
    for split in ("train", "test"):
        pairs = getattr(data, split)
        lines = [" ".join(map(str, [u] + pairs[1][pairs[0] == u].tolist()))
                 for u in range(data.num_users)]
        (data_dir / f"{split}.txt").write_text("\n".join(lines) + "\n")
    args = ["-m", "lightgcn_ext", "train", "--data", str(data_dir), "--dim", "16",
            "--batch-size", "256", "--no-progress", "--out", str(tmp_path / "cli")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                               "2", "--master-port", str(_free_port()), *args, "--epochs", "2"],
                              cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=DEADLINE_S)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert launched.stdout.count("done: 2 epochs") == 1  # rank 0 reports
    # The sparse gradients' invariants hold and are said to: no rank warns.
    assert "Sparse invariant checks are implicitly disabled" not in launched.stderr
    results = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert results["device"]["world_size"] == 2 and results["epochs_done"] == 2
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == [
        ".lock", "checkpoint.epoch2.rank0-of-2.pt", "checkpoint.epoch2.rank1-of-2.pt",
        "checkpoint.index.json", "curve.png", "data.pt", "progress.json", "results.json"]
    alone = subprocess.run([sys.executable, *args, "--epochs", "3", "--resume"], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=DEADLINE_S)
    assert alone.returncode != 0 and "Traceback" not in alone.stderr
    assert "holds a checkpoint of 2 processes: resume it with torchrun --nproc-per-node 2" in \
        alone.stderr


def test_a_single_process_imports_no_distributed_machinery(tmp_path):
    code = ("import sys; sys.path.insert(0, 'tests'); from helpers import toy_interactions; "
            "from lightgcn_ext.training import TrainConfig, train; "
            f"train(TrainConfig(epochs=1, dim=8, out={str(tmp_path)!r}, progress=False), "
            "data=toy_interactions()); print('lightgcn_ext.distributed' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split()[-1] == "False"


@pytest.mark.parametrize("how", ["dies", pytest.param("stalls", marks=pytest.mark.slow)])
def test_a_rank_that_dies_or_stalls_fails_the_others_within_the_timeout(tmp_path, how):
    timeout = 4.0
    procs = _launch(2, "main_train", tmp_path / "run", 100, timeout=timeout)
    try:
        results = tmp_path / "run" / "results.json"
        deadline = time.monotonic() + DEADLINE_S
        while not results.exists() and time.monotonic() < deadline:  # epoch 1 is done
            assert procs[0].poll() is None, procs[0].communicate()[1][-3000:]
            time.sleep(0.01)
        time.sleep(0.2)  # inside epoch 2
        procs[1].send_signal(signal.SIGKILL if how == "dies" else signal.SIGSTOP)
        started = time.monotonic()
        _, err = procs[0].communicate(timeout=timeout + 30)
        waited = time.monotonic() - started
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert procs[0].returncode != 0
    assert "ConnectionError: rank 0 of 2" in err and "another process died or stalled" in err
    assert waited < timeout + (5 if how == "dies" else 15), waited  # not a hang


if __name__ == "__main__":
    {"main": main, "main_train": main_train}[sys.argv[1]](*sys.argv[2:])


_HEAP_PROBE = """
import sys, torch
from lightgcn_ext import distributed
def rss_mib():
    return next(int(line.split()[1]) for line in open("/proc/self/status")
                if line.startswith("VmRSS")) / 1024
if sys.argv[1] == "mapped":
    distributed.map_sub_round_buffers(dim=16)  # blocks of 4 MiB and more
big = torch.ones(1 << 22)
del big  # 16 MiB freed (mapped): glibc's default raises its mapping threshold to that
blocks, pins = [], []
for _ in range(50):  # 4 MiB blocks, each followed by a smaller one that stays
    blocks.append(torch.ones(1 << 20))
    pins.append(torch.ones(1 << 16))  # 256 KiB: from the top of the heap
before = rss_mib()
del blocks
print(before - rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or
                    os.confstr("CS_GNU_LIBC_VERSION") is None, reason="glibc's malloc")
def test_freed_blocks_go_back_to_the_system_in_a_distributed_worker():
    """200 MiB of 4 MiB blocks freed between live smaller ones: glibc keeps them
    in its heap, unless map_sub_round_buffers maps them on their own."""
    released = {}
    for mode in ("heap", "mapped"):
        done = subprocess.run([sys.executable, "-c", _HEAP_PROBE, mode], cwd=REPO,
                              capture_output=True, text=True, timeout=DEADLINE_S)
        assert done.returncode == 0, done.stderr[-3000:]
        released[mode] = float(done.stdout.split()[-1])
    assert released["mapped"] > 150 and released["heap"] < 50, released
