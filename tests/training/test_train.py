"""BPR training: the trainer's determinism, checkpoints that
resume exactly (after a SIGKILL), the run directory's files, the CLI, and
parity with the same loop on torch_geometric's LightGCN."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from helpers import REPO, pyg_models, toy_interactions
from lightgcn_ext.data import BPRSampler, Interactions
from lightgcn_ext.evaluation import ranking_metrics
from lightgcn_ext.training import TrainConfig, bpr_step, train


TOY_SCRIPT = f"""
import sys, torch
sys.path[:0] = [{str(REPO)!r}, {str(REPO / "tests")!r}]
torch.set_num_threads(1)
from helpers import toy_interactions
from lightgcn_ext.training import TrainConfig, train
resume, out, epochs = sys.argv[1] == "resume", sys.argv[2], int(sys.argv[3])
train(TrainConfig(epochs=epochs, dim=16, batch_size=64, out=out, resume=resume,
                  progress=False, patience=0), data=toy_interactions(num_pairs=12000))
"""


# ---------------------------------------------------------------- trainer
def _config(tmp_path, name="run", **overrides):
    settings = dict(epochs=3, dim=16, batch_size=256, out=str(tmp_path / name), progress=False)
    return TrainConfig(**{**settings, **overrides})


def test_same_seed_same_metrics_and_a_model_that_learns(tmp_path):
    data = toy_interactions()
    first = train(_config(tmp_path, "a", epochs=6), data=data)
    second = train(_config(tmp_path, "b", epochs=6), data=data)
    other = train(_config(tmp_path, "c", epochs=6, seed=1), data=data)
    assert [r["recall@20"] for r in first["history"]] == [r["recall@20"] for r in second["history"]]
    assert [r["loss"] for r in first["history"]] == [r["loss"] for r in second["history"]]
    assert first["history"][-1]["loss"] != other["history"][-1]["loss"]
    # Planted communities: the model beats popularity, and the loss falls.
    assert first["history"][-1]["recall@20"] > 2 * first["popularity"]["recall@20"]
    assert first["history"][-1]["loss"] < first["history"][0]["loss"]


def test_sampling_by_users_learns_is_recorded_and_cannot_change_on_resume(tmp_path):
    data = toy_interactions()
    by_users = train(_config(tmp_path, "users", epochs=4, sampling="users"), data=data)
    by_interactions = train(_config(tmp_path, "interactions", epochs=4), data=data)
    assert by_users["config"]["sampling"] == "users"
    assert by_interactions["config"]["sampling"] == "interactions"
    assert by_users["history"][-1]["loss"] != by_interactions["history"][-1]["loss"]
    assert by_users["history"][-1]["recall@20"] > 2 * by_users["popularity"]["recall@20"]
    with pytest.raises(ValueError, match="--sampling interactions"):
        train(_config(tmp_path, "users", epochs=5, resume=True), data=data)


def test_the_run_directory_holds_results_plot_and_checkpoint(tmp_path):
    results = train(_config(tmp_path, topk=(10, 20), eval_every=2), data=toy_interactions())
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir()) == [".lock", "best.pt", "checkpoint.pt",
                                                    "curve.png", "data.pt", "progress.json",
                                                    "results.json"]
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "results.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert saved["config"]["topk"] == [10, 20] and saved["data"]["name"] == "toy"
    assert [r["epoch"] for r in saved["history"]] == [1, 2, 3]
    evaluated = [r for r in saved["history"] if "recall@10" in r]
    assert [r["epoch"] for r in evaluated] == [2, 3]  # every 2 epochs, and the last
    for key in ("recall@10", "ndcg@10", "precision@20", "hit@20"):
        assert 0 <= evaluated[-1][key] <= 1 and key in saved["popularity"]
    assert saved["versions"]["torch"] == torch.__version__ and saved["device"]["type"] == "cpu"


def test_a_run_removes_what_a_kill_mid_write_left(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".checkpoint.pt.12345.tmp").write_bytes(b"half a checkpoint")
    train(_config(tmp_path, epochs=1), data=toy_interactions())
    assert sorted(p.name for p in out.iterdir()) == [".lock", "best.pt", "checkpoint.pt",
                                                    "curve.png", "data.pt", "progress.json",
                                                    "results.json"]


def test_early_stopping_on_recall(tmp_path):
    # A learning rate of ~0 never improves: it stops after `patience` evaluations.
    results = train(_config(tmp_path, epochs=20, lr=1e-12, patience=2), data=toy_interactions())
    assert results["stopped_early"] and results["epochs_done"] < 20
    assert results["best"]["epoch"] == 1


def test_resume_refuses_a_checkpoint_of_another_run(tmp_path):
    train(_config(tmp_path, epochs=1), data=toy_interactions())
    with pytest.raises(ValueError, match="dim"):
        train(_config(tmp_path, epochs=2, dim=8, resume=True), data=toy_interactions())
    with pytest.raises(ValueError, match="num_users"):
        train(_config(tmp_path, epochs=2, resume=True), data=toy_interactions(num_users=301))
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is damaged"):
        train(_config(tmp_path, epochs=2, resume=True), data=toy_interactions())
    with pytest.raises(ValueError, match="holds no checkpoint"):
        train(_config(tmp_path, "fresh", resume=True), data=toy_interactions())


def test_resume_in_pieces_gives_the_uninterrupted_result(tmp_path):
    data = toy_interactions()
    whole = train(_config(tmp_path, "whole", epochs=4), data=data)
    train(_config(tmp_path, "pieces", epochs=4, max_epochs_now=1), data=data)
    train(_config(tmp_path, "pieces", epochs=4, max_epochs_now=2, resume=True), data=data)
    pieces = train(_config(tmp_path, "pieces", epochs=4, resume=True), data=data)
    strip = [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in whole["history"]]
    assert [{k: v for k, v in r.items() if not k.endswith("seconds")}
            for r in pieces["history"]] == strip


@pytest.mark.slow
def test_a_run_killed_mid_epoch_resumes_to_the_same_metrics(tmp_path):
    script = tmp_path / "train_toy.py"
    script.write_text(textwrap.dedent(TOY_SCRIPT))
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def train(mode, out, epochs=5):
        return [sys.executable, str(script), mode, str(tmp_path / out), str(epochs)]

    subprocess.run(train("fresh", "whole"), check=True, env=env, timeout=300)
    victim = subprocess.Popen(train("fresh", "killed"), env=env)
    results = tmp_path / "killed" / "results.json"
    deadline = time.monotonic() + 240
    while not results.exists() and time.monotonic() < deadline:  # epoch 1 is written
        time.sleep(0.01)
    time.sleep(0.3)  # inside epoch 2 (an epoch takes most of a second)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    done = json.loads(results.read_text())["epochs_done"]  # complete, never half-written
    assert 1 <= done < 5
    subprocess.run(train("resume", "killed"), check=True, env=env, timeout=300)
    leftovers = [p.name for p in results.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []  # whatever a kill mid-write left, the resumed run removed
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    resumed = json.loads((tmp_path / "killed" / "results.json").read_text())
    assert resumed["history"][-1]["epoch"] == 5
    for key in ("loss", "recall@20", "ndcg@20", "precision@20", "hit@20"):
        assert resumed["history"][-1][key] == whole["history"][-1][key], key


def test_bad_config_values_raise(tmp_path):
    for bad in (dict(dim=0), dict(epochs=-1), dict(lr=0.0), dict(reg=-1.0), dict(topk=(0,)),
                dict(batch_size=1.5), dict(patience=-1), dict(sampling="items")):
        name = next(iter(bad))
        with pytest.raises(ValueError, match=name):
            train(_config(tmp_path, **bad), data=toy_interactions())
    empty = Interactions("empty", 3, 3, torch.zeros(2, 0, dtype=torch.long),
                         torch.tensor([[0], [1]]))
    with pytest.raises(ValueError, match="no training interactions"):
        train(_config(tmp_path), data=empty)


# -------------------------------------------------------------------- CLI
def test_cli_help_documents_every_option():
    result = subprocess.run([sys.executable, "-m", "lightgcn_ext", "train", "--help"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for option in ("--data", "--dim", "--layers", "--epochs", "--batch-size", "--lr", "--reg",
                   "--device", "--out", "--resume", "--seed", "--eval-every", "--patience",
                   "--topk", "--max-epochs-now", "--threads", "--no-progress", "--overwrite",
                   "--keep-ids", "--checkpoint-every", "--sampling"):
        assert option in result.stdout, option


def test_cli_reports_bad_input_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lightgcn_ext", "train", "--dim", "0",
                             "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode != 0 and "dim must be a positive int" in result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------- parity with PyG
def test_the_same_loop_with_pyg_lightgcn_reaches_the_same_recall():
    """Same data, seed, sampler and optimizer: our fused model and PyG's
    LightGCN give the same recall@20 after a few epochs (float32 noise)."""
    pyg_lightgcn = pyg_models().LightGCN
    data = toy_interactions()
    recall = {}
    for name, cls in (("ours", None), ("pyg", pyg_lightgcn)):
        torch.manual_seed(0)
        if cls is None:
            from lightgcn_ext import LightGCN as cls  # noqa: N813
        model = cls(data.num_nodes, 16, 3)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        sampler = BPRSampler(data.train, data.num_users, data.num_items, batch_size=256)
        generator = torch.Generator().manual_seed(0)
        edge_index = data.edge_index()
        for _ in range(4):
            for users, positives, negatives in sampler.epoch(generator):
                bpr_step(model, edge_index, optimizer, data.num_users, users, positives,
                         negatives, 1e-4 / 2)
        with torch.no_grad():
            emb = model.get_embedding(edge_index)
        recall[name] = ranking_metrics(emb[:data.num_users], emb[data.num_users:], data.test,
                                       exclude=[data.train])["recall@20"]
    assert recall["ours"] > 0.05
    assert abs(recall["ours"] - recall["pyg"]) < 0.005, recall


def test_train_is_one_process_and_says_where_several_go(tmp_path, monkeypatch):
    """A launcher chooses the worker: under torchrun with several processes,
    training.train refuses and names train_distributed (the CLI picks it)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="WORLD_SIZE is 2: .*lightgcn_ext.distributed."
                                         "train_distributed"):
        train(_config(tmp_path), data=toy_interactions())
