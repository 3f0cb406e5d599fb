"""When a run writes its files (checkpoint, results.json, curve.png): every
--checkpoint-every epochs, else by the 2% clock, always at the end; the plot
only after a new evaluation; a run killed between two checkpoints resumes from
the last one, says how many epochs it trains again, and ends as an
uninterrupted run. And the fused Adam step: torch.optim.Adam's numbers, a
checkpoint of either that --resume loads."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import REPO, TINY, run_main, toy_interactions, write_dir
from lightgcn_ext import cli
from lightgcn_ext.training import TrainConfig, loop, make_optimizer, results, run_files, train
from lightgcn_ext.training.step import load_optimizer_state


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The toy data as a LightGCN-format directory."""
    return write_dir(tmp_path_factory.mktemp("data") / "toy", toy_interactions())


def _config(tmp_path, **overrides):
    settings = dict(epochs=5, dim=8, batch_size=512, out=str(tmp_path / "run"), progress=False,
                    patience=0)
    return TrainConfig(**{**settings, **overrides})


@pytest.fixture
def written(monkeypatch):
    """{"checkpoint": [epochs], "plot": [epochs]}: what a run writes, epoch by epoch."""
    seen = {"checkpoint": [], "plot": []}
    save_checkpoint, plot = run_files.save_checkpoint, results._plot

    def recorded_save(path, fingerprint, model, optimizer, generator, state):
        seen["checkpoint"].append(state["epoch"])
        save_checkpoint(path, fingerprint, model, optimizer, generator, state)

    def recorded_plot(path, saved):
        seen["plot"].append(saved["epochs_done"])
        plot(path, saved)

    monkeypatch.setattr(run_files, "save_checkpoint", recorded_save)
    monkeypatch.setattr(results, "_plot", recorded_plot)
    return seen


def test_checkpoint_every_n_epochs_and_at_the_end(tmp_path, written):
    done = train(_config(tmp_path, epochs=7, checkpoint_every=3, eval_every=2),
                 data=toy_interactions(num_pairs=3000))
    assert written["checkpoint"] == [3, 6, 7]
    # Drawn at the first writing, then at each that follows a new evaluation (epochs 4
    # and 6; 7, the last, evaluates too).
    assert written["plot"] == [3, 6, 7]
    saved = json.loads((tmp_path / "run" / run_files.RESULTS).read_text())
    assert saved["epochs_done"] == 7 and saved == json.loads(json.dumps(done))
    assert run_files.read_progress(tmp_path / "run") == 7


def test_the_plot_is_drawn_only_after_a_new_evaluation(tmp_path, written):
    train(_config(tmp_path, epochs=5, checkpoint_every=1, eval_every=2),
          data=toy_interactions(num_pairs=3000))
    assert written["checkpoint"] == [1, 2, 3, 4, 5]
    assert written["plot"] == [1, 2, 4, 5]  # the first writing, then after evaluations


def test_the_best_weights_are_written_with_the_other_files(tmp_path, monkeypatch):
    """Evaluating every epoch, best.pt is written only when the checkpoint is
    (a new best between checkpoints waits in memory), and holds the epoch that
    results.json names as the best."""
    best_written = []  # the epoch of the checkpoint written just after each best.pt
    atomic_write, save_checkpoint = run_files.atomic_write, run_files.save_checkpoint

    def recorded_write(path, write, **options):
        if path.name == run_files.BEST:
            best_written.append(None)
        return atomic_write(path, write, **options)

    def recorded_save(path, fingerprint, model, optimizer, generator, state):
        if best_written and best_written[-1] is None:
            best_written[-1] = state["epoch"]
        save_checkpoint(path, fingerprint, model, optimizer, generator, state)

    monkeypatch.setattr(run_files, "atomic_write", recorded_write)
    monkeypatch.setattr(run_files, "save_checkpoint", recorded_save)
    done = train(_config(tmp_path, epochs=7, checkpoint_every=3, eval_every=1, lr=0.05),
                 data=toy_interactions(num_pairs=3000))
    improved = [r["epoch"] for r in done["history"]
                if r["recall@20"] >= max(h["recall@20"] for h in done["history"]
                                         if h["epoch"] <= r["epoch"])]
    assert len(improved) > 3  # more new bests than checkpoints: some waited
    assert best_written and set(best_written) <= {3, 6, 7}, best_written
    best = torch.load(tmp_path / "run" / run_files.BEST, weights_only=True)
    assert best["epoch"] == done["best"]["epoch"]


def test_the_default_clock_spends_at_most_2_percent(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(loop.time, "perf_counter", lambda: now[0])
    clock = loop.BookkeepingClock()
    assert clock.due(1)  # nothing measured yet: the first epoch writes
    with clock.writing():
        now[0] += 0.5  # the writing took 0.5 s: the next one after 25 s
    now[0] += 24.9
    assert not clock.due(2)
    now[0] += 0.1
    assert clock.due(3)
    every = loop.BookkeepingClock(every=4)
    assert [e for e in range(1, 13) if every.due(e)] == [4, 8, 12]


def test_a_fast_run_writes_rarely(tmp_path, written, monkeypatch):
    """Epochs far shorter than a writing: by the clock, most epochs write nothing."""
    save_checkpoint = run_files.save_checkpoint

    def slow_save(*args):
        time.sleep(0.05)  # 2.5 s of epochs between writings
        save_checkpoint(*args)

    monkeypatch.setattr(run_files, "save_checkpoint", slow_save)
    train(_config(tmp_path, epochs=20, eval_every=100), data=toy_interactions(num_pairs=2000))
    assert written["checkpoint"][0] == 1 and written["checkpoint"][-1] == 20
    assert len(written["checkpoint"]) < 10, written


@pytest.mark.parametrize("value", ["0", "-3"])
def test_checkpoint_every_must_be_a_positive_int(tmp_path, capsys, value, data_dir):
    code, _, err = run_main(["train", "--data", str(data_dir), "--out", str(tmp_path / "r"),
                             "--checkpoint-every", value], capsys)
    assert code != 0 and "Traceback" not in err
    assert err.strip() == (f"lightgcn-ext train: error: checkpoint_every must be a positive "
                           f"int, got {value}")


def test_checkpoint_every_not_a_number_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["train", "--checkpoint-every", "often", "--out", str(tmp_path)])
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("argument --checkpoint-every: invalid int value: 'often'")


# ------------------------------------------------------------------ SIGKILL
def test_a_run_killed_between_checkpoints_resumes_from_the_last(tmp_path, data_dir):
    """Through the CLI: checkpoints every 20 epochs; a SIGKILL after epoch 20's
    checkpoint and before epoch 40's. The resume starts from epoch 20, says how
    many completed epochs it trains again, and ends with the metrics of a run
    that was never stopped."""
    options = ["--data", str(data_dir), *TINY, "--epochs", "40", "--checkpoint-every", "20",
               "--eval-every", "20", "--patience", "0"]
    whole = subprocess.run([sys.executable, "-m", "lightgcn_ext", "train", *options, "--out",
                            str(tmp_path / "whole")], cwd=REPO, capture_output=True, text=True,
                           timeout=600)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    victim = subprocess.Popen([sys.executable, "-m", "lightgcn_ext", "train", *options, "--out",
                               str(out)], cwd=REPO, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while (run_files.read_progress(out) or 0) < 22 and time.monotonic() < deadline:
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL, "the run ended before the kill"
    checkpoint = torch.load(out / run_files.CHECKPOINT, weights_only=True)
    assert checkpoint["state"]["epoch"] == 20
    completed = run_files.read_progress(out)
    assert 22 <= completed < 40
    resumed = subprocess.run([sys.executable, "-m", "lightgcn_ext", "train", *options, "--out",
                              str(out), "--resume"], cwd=REPO, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    repeated = completed - 20
    assert (f"--resume: the checkpoint holds epoch 20; the {repeated} epochs completed after "
            f"it (not checkpointed when the run stopped) are trained again") in resumed.stdout
    ends = [json.loads((tmp_path / name / run_files.RESULTS).read_text())["history"][-1]
            for name in ("whole", "killed")]
    assert ends[0]["epoch"] == ends[1]["epoch"] == 40
    for key in ("loss", "recall@20", "ndcg@20", "precision@20", "hit@20"):
        assert ends[1][key] == ends[0][key], key


# ------------------------------------------------------------- fused Adam
def _steps(optimizer, param, grads):
    for grad in grads:
        param.grad = grad.clone()
        optimizer.step()
    return param.detach().clone()


def _sparse_row_grads(seed, n=500, d=16, rows=60, steps=12):
    """A BPR step's gradient: nonzero on a few rows of the table."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        grad = torch.zeros(n, d)
        grad[torch.randperm(n, generator=g)[:rows]] = torch.randn(rows, d, generator=g)
        out.append(grad)
    return out


def test_make_optimizer_is_torch_adam_fused_with_its_numbers():
    config = TrainConfig(lr=1e-3)
    start = torch.randn(500, 16, generator=torch.Generator().manual_seed(0)) * 0.1
    grads = _sparse_row_grads(1)
    ours = torch.nn.Parameter(start.clone())
    optimizer = make_optimizer([ours], config)
    assert optimizer.param_groups[0]["fused"] is True
    reference = torch.nn.Parameter(start.clone())
    got = _steps(optimizer, ours, grads)
    expected = _steps(torch.optim.Adam([reference], lr=1e-3), reference, grads)
    # Float rounding: the same operations in another order, a few ulps after 12 steps.
    assert torch.allclose(got, expected, rtol=0, atol=4 * torch.finfo(torch.float32).eps * 0.5)
    assert not torch.equal(start, got)


def test_a_checkpoint_of_either_adam_resumes_the_fused_one():
    config = TrainConfig(lr=1e-3)
    start = torch.randn(500, 16, generator=torch.Generator().manual_seed(2)) * 0.1
    grads = _sparse_row_grads(3)
    # Fused, saved after 6 steps and resumed: the same bits as fused throughout.
    whole = torch.nn.Parameter(start.clone())
    expected = _steps(make_optimizer([whole], config), whole, grads)
    first = torch.nn.Parameter(start.clone())
    optimizer = make_optimizer([first], config)
    _steps(optimizer, first, grads[:6])
    saved = optimizer.state_dict()
    second = torch.nn.Parameter(first.detach().clone())
    resumed = make_optimizer([second], config)
    load_optimizer_state(resumed, saved)
    assert torch.equal(_steps(resumed, second, grads[6:]), expected)
    # The checkpoint of an unfused Adam (runs before the fused step) resumes fused.
    old = torch.nn.Parameter(start.clone())
    foreach = torch.optim.Adam([old], lr=1e-3, foreach=True)
    _steps(foreach, old, grads[:6])
    second = torch.nn.Parameter(old.detach().clone())
    resumed = make_optimizer([second], config)
    load_optimizer_state(resumed, foreach.state_dict())
    assert resumed.param_groups[0]["fused"] is True
    assert resumed.param_groups[0]["foreach"] is None
    got = _steps(resumed, second, grads[6:])
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)
