"""The command line as a user meets it: a run directory that never loses a
run (a forgotten --resume, two runs in one --out, Ctrl-C, a damaged
checkpoint), resumes that say what they change, and every user mistake in
one line with a non-zero exit, never a traceback.

Most cases run `lightgcn_ext.cli.main` in this process (each fails before
any training: fast); those that need a process of their own (a lock held by
another run, signals, the network) run `python -m lightgcn_ext`."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import REPO, TINY, one_error_line, run_main, toy_interactions, write_dir
from lightgcn_ext.data import Interactions
from lightgcn_ext.training import run_files

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_dir(tmp_path_factory.mktemp("data") / "toy", toy_interactions())


def run_cli(argv, **kwargs):
    return subprocess.run([sys.executable, "-m", "lightgcn_ext", *argv], cwd=REPO, text=True,
                          capture_output=True, timeout=300, **kwargs)


def results(out):
    return json.loads((out / run_files.RESULTS).read_text())


# --------------------------------------------------- a forgotten --resume
def test_a_forgotten_resume_leaves_the_earlier_run_whole(tmp_path, data_dir, capsys):
    out = tmp_path / "r"
    base = ["train", "--data", str(data_dir), "--out", str(out), *TINY]
    assert run_main(base + ["--epochs", "2"], capsys)[0] == 0
    checkpoint = (out / run_files.CHECKPOINT).read_bytes()
    message = one_error_line(*run_main(base + ["--epochs", "1"], capsys)[::2])
    assert message == (f"--out {out} holds another run's checkpoint (2 completed epochs): "
                       f"continue it with --resume, delete it and start again with "
                       f"--overwrite, or choose another --out")
    assert (out / run_files.CHECKPOINT).read_bytes() == checkpoint
    assert results(out)["epochs_done"] == 2
    assert run_main(base + ["--epochs", "1", "--overwrite"], capsys)[0] == 0
    assert results(out)["epochs_done"] == 1 and results(out)["history"][0]["epoch"] == 1


# ------------------------------------------------ what a resume may change
def test_a_resume_applies_a_new_lr_and_records_every_change(tmp_path, data_dir, capsys):
    out = tmp_path / "r"
    base = ["train", "--data", str(data_dir), "--out", str(out), *TINY]
    assert run_main(base + ["--epochs", "1"], capsys)[0] == 0
    code, stdout, _ = run_main(base + ["--epochs", "2", "--resume", "--lr", "0.01",
                                       "--reg", "0.001"], capsys)
    assert code == 0
    assert "--resume: lr 0.001 -> 0.01 from epoch 2" in stdout.splitlines()
    checkpoint = torch.load(out / run_files.CHECKPOINT, weights_only=True)
    assert [g["lr"] for g in checkpoint["optimizer"]["param_groups"]] == [0.01]
    saved = results(out)
    assert saved["config"]["lr"] == 0.01 and saved["epochs_done"] == 2
    assert saved["changes"] == [
        {"option": "epochs", "from": 1, "to": 2, "epoch": 2},
        {"option": "lr", "from": 0.001, "to": 0.01, "epoch": 2},
        {"option": "reg", "from": 0.0001, "to": 0.001, "epoch": 2}]
    # What a resume cannot change is refused by name, and nothing moves.
    message = one_error_line(*run_main(base + ["--epochs", "3", "--resume", "--dim", "16",
                                               "--seed", "3"], capsys)[::2])
    assert message == ("--resume cannot change --dim 16 (the run has 8); --seed 3 (the run has "
                       "0): resume with the run's values, or start a new run in another --out")
    assert results(out)["epochs_done"] == 2


# ----------------------------------------------------- two runs in one --out
def test_a_second_run_into_a_busy_out_fails_at_once_and_harms_nothing(tmp_path, data_dir):
    out = tmp_path / "r"
    # Epochs enough to outlast the test, which stops the run.
    first = subprocess.Popen([sys.executable, "-m", "lightgcn_ext", "train", "--data",
                              str(data_dir), "--out", str(out), "--epochs", "100000",
                              "--patience", "0", *TINY],
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / run_files.RESULTS).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        started = time.monotonic()
        second = run_cli(["train", "--data", str(data_dir), "--out", str(out), "--resume",
                          *TINY])
        assert time.monotonic() - started < 60  # before any data or training
        message = one_error_line(second.returncode, second.stderr)
        assert message.startswith(f"--out {out} is in use by another run (pid {first.pid} on ")
        # The first run goes on with its epochs (progress.json records each).
        done = run_files.read_progress(out)
        while run_files.read_progress(out) == done and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.poll() is None and run_files.read_progress(out) > done
    finally:
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
    assert first.returncode == 130, first.stderr


# ------------------------------------------------------------------ Ctrl-C
def test_ctrl_c_says_where_it_stopped_and_how_to_resume(tmp_path, data_dir):
    out = tmp_path / "r"
    argv = ["train", "--data", str(data_dir), "--out", str(out), "--epochs", "200", *TINY]
    run = subprocess.Popen([sys.executable, "-m", "lightgcn_ext", *argv], cwd=REPO,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / run_files.RESULTS).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    done = results(out)["epochs_done"]
    assert torch.load(out / run_files.CHECKPOINT, weights_only=True)["state"]["epoch"] == done
    resume = (f"python -m lightgcn_ext train --data {data_dir} --out {out} --epochs 200 "
              f"{' '.join(TINY)} --resume")
    # The checkpoint is written when due: epochs completed after it are trained again.
    running = run_files.read_progress(out) + 1
    again = "" if running == done + 1 else (
        f" (a resume trains the {running - 1 - done} epoch{'s' * (running - 1 - done != 1)} "
        f"after it again)")
    assert lines[0] == (f"lightgcn-ext train: interrupted during epoch {running}: the "
                        f"checkpoint of epoch {done} in {out} is intact{again}; resume with: "
                        f"{resume}")
    assert not list(out.glob(".*.tmp"))
    resumed = run_cli(resume.split()[3:-1] + ["--resume", "--epochs", str(done + 1)])
    assert resumed.returncode == 0, resumed.stderr
    assert results(out)["epochs_done"] == done + 1


# ------------------------------------------------------ mistakes, one line
@pytest.mark.parametrize("options, expected", [
    (["--device", "nonsense"], "--device 'nonsense' is not a device: expected 'auto', 'cpu', "
                               "'cuda' or 'cuda:N'"),
    (["--device", "mps"], "--device 'mps': lightgcn_ext runs on 'cpu' and 'cuda' only; use "
                          "--device cpu"),
    (["--threads", "0"], "threads must be a positive int, got 0"),
    (["--out", "/sys/x"], "--out /sys/x: cannot create it (Operation not permitted); choose a "
                          "writable directory"),
    (["--out", "/sys/kernel"], "--out /sys/kernel: cannot write into it (Permission denied); "
                               "choose a writable directory"),
    (["--resume", "--overwrite"], "--resume and --overwrite exclude each other: --resume "
                                  "continues the run in --out, --overwrite deletes it"),
])
def test_user_mistakes_are_one_line(tmp_path, data_dir, capsys, options, expected):
    argv = ["train", "--data", str(data_dir), "--out", str(tmp_path / "r"), *TINY, *options]
    if options[0] == "--device" and torch.cuda.is_available() and options[1] == "cuda":
        pytest.skip("CUDA is here")
    assert one_error_line(*run_main(argv, capsys)[::2]) == expected


def test_an_out_under_a_file_or_read_only_fails_before_the_data_loads(tmp_path, capsys):
    """The run directory is checked first: the data (which does not even
    exist here) is never read."""
    afile = tmp_path / "file"
    afile.write_text("x")
    missing = str(tmp_path / "no-such-data")
    for out, expected in ((afile / "r", f"--out {afile / 'r'} is under {afile}, a file, not a "
                                        f"directory; choose a directory"),
                          (afile, f"--out {afile} is a file, not a directory; choose a "
                                  f"directory")):
        argv = ["train", "--data", missing, "--out", str(out), *TINY]
        assert one_error_line(*run_main(argv, capsys)[::2]) == expected
    if os.geteuid() != 0:  # root writes into a read-only directory
        read_only = tmp_path / "ro"
        read_only.mkdir(mode=0o555)
        argv = ["train", "--data", missing, "--out", str(read_only), *TINY]
        assert "cannot write into it" in one_error_line(*run_main(argv, capsys)[::2])


def test_an_offline_named_data_set_is_one_line(tmp_path):
    """No network (a proxy that refuses): the download's message, URL, target
    and checksum included, in one line after the download notice."""
    env = dict(os.environ, LIGHTGCN_EXT_DATA=str(tmp_path / "cache"),
               https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    result = run_cli(["train", "--data", "gowalla", "--out", str(tmp_path / "r"), *TINY],
                     env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("lightgcn_ext: downloading https://") and len(lines) == 2
    assert lines[1].startswith("lightgcn-ext train: error: downloading https://")
    assert "nothing was saved" in lines[1] and "md5 must be" in lines[1]
    assert not (tmp_path / "cache" / "gowalla" / "train.txt").exists()


def test_a_damaged_checkpoint_is_one_line(tmp_path, data_dir, capsys):
    out = tmp_path / "r"
    base = ["train", "--data", str(data_dir), "--out", str(out), *TINY]
    assert run_main(base + ["--epochs", "2"], capsys)[0] == 0
    path = out / run_files.CHECKPOINT
    whole = path.read_bytes()
    for damaged in (whole[:len(whole) // 3], b"\x80\x04garbage" * 100):
        path.write_bytes(damaged)
        message = one_error_line(*run_main(base + ["--epochs", "3", "--resume"], capsys)[::2])
        assert message.startswith(f"--resume: {path} is damaged (truncated or not a checkpoint")
        assert message.endswith("results.json records 2 completed epochs. Start the run again "
                                "with --overwrite (which deletes it), or choose another --out")


# --------------------------------------------------------------- the data
def test_a_name_that_is_also_a_directory_is_the_directory(tmp_path, monkeypatch, capsys):
    write_dir(tmp_path / "gowalla", toy_interactions())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LIGHTGCN_EXT_DATA", str(tmp_path / "cache"))  # empty: no download
    code, out, _ = run_main(["train", "--data", "gowalla", "--out", str(tmp_path / "r"),
                             "--epochs", "1", *TINY], capsys)
    assert code == 0
    assert out.splitlines()[0] == (f"--data gowalla: the directory {tmp_path / 'gowalla'} "
                                   f"(also the name of a data set: give --data-root to load "
                                   f"that one)")
    assert results(tmp_path / "r")["data"]["num_users"] == 300


def test_offset_ids_are_renumbered_and_their_map_kept(tmp_path, capsys):
    data = toy_interactions()
    source = write_dir(tmp_path / "offset", data, offset=2_000_000)
    out = tmp_path / "r"
    code, stdout, _ = run_main(["train", "--data", str(source), "--out", str(out),
                                "--epochs", "1", *TINY], capsys)
    assert code == 0
    assert stdout.splitlines()[0].startswith("ids: 300 users (raw ids up to 2,000,299, "
                                             "2,000,000 unused) and 200 items")
    saved = results(out)
    assert (saved["data"]["num_users"], saved["data"]["num_items"]) == (300, 200)
    saved_data = Interactions.from_state_dict(
        torch.load(out / run_files.DATA, weights_only=True))
    assert saved_data.train.shape[1] == saved["data"]["num_train"]
    ids = saved_data.id_map.state_dict()
    assert ids["users"].tolist() == list(range(2_000_000, 2_000_300))
    checkpoint = torch.load(out / run_files.CHECKPOINT, weights_only=True)
    assert checkpoint["model"]["embedding.weight"].shape == (500, 8)


def test_kept_ids_of_2e9_are_refused_before_allocating(tmp_path, capsys):
    source = tmp_path / "huge"
    source.mkdir()
    (source / "train.txt").write_text("0 1 2\n2000000000 1\n")
    (source / "test.txt").write_text("0 2000000000\n")
    argv = ["train", "--data", str(source), "--out", str(tmp_path / "r"), "--epochs", "1",
            "--topk", "2", *TINY]
    message = one_error_line(*run_main(argv + ["--keep-ids"], capsys)[::2])
    assert message.startswith("the model needs 4,000,000,002 embedding rows of 8 (about ")
    assert message.endswith("drop it to number the ids in use 0, 1, ...")
    assert run_main(argv + ["--overwrite"], capsys)[0] == 0  # renumbered: 2 users, 3 items


# ------------------------------------------------------------ evaluation
def test_zero_information_evaluation_warns(tmp_path, capsys):
    data = toy_interactions()
    source = tmp_path / "same"
    write_dir(source, data)
    (source / "test.txt").write_text((source / "train.txt").read_text())  # test = train
    code, stdout, err = run_main(["train", "--data", str(source), "--out", str(tmp_path / "r"),
                                  "--epochs", "1", *TINY], capsys)
    assert code == 0
    users = int(data.train[0].unique().numel())
    assert f"test: {users:,} users evaluated" in stdout.splitlines()
    assert err.strip() == ("warning: no test user has a test item that is not also one of its "
                           "training items: every test metric will be 0, whatever the model")


def test_every_metric_names_its_split_and_the_best_epoch_gives_both(tmp_path, capsys):
    data = toy_interactions()
    valid, test = data.test[:, ::2], data.test[:, 1::2]
    source = write_dir(tmp_path / "v", type(data)("v", data.num_users, data.num_items,
                                                  data.train, test), valid=valid)
    code, stdout, _ = run_main(["train", "--data", str(source), "--out", str(tmp_path / "r"),
                                "--epochs", "2", *TINY], capsys)
    assert code == 0
    saved = results(tmp_path / "r")
    epoch_lines = [line for line in stdout.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2
    for line, record in zip(epoch_lines, saved["history"]):
        assert f"valid recall@20 {record['valid']['recall@20']:.4f}" in line
        assert f"test recall@20 {record['recall@20']:.4f} (popularity" in line
        assert " recall@20" not in line.replace("valid recall@20", "").replace(
            "test recall@20", "")  # no metric without its split
    best = saved["best"]
    record = saved["history"][best["epoch"] - 1]
    assert best["split"] == "valid" and best["score"] == record["valid"]["recall@20"]
    assert (f"best epoch {best['epoch']} (by valid recall@20): valid recall@20 "
            f"{record['valid']['recall@20']:.4f}") in stdout
    assert f"test recall@20 {record['recall@20']:.4f}" in stdout.split("best epoch")[1]


# -------------------------------------------------------------- best weights
def test_the_best_epochs_weights_are_kept_beside_the_last(tmp_path, data_dir, capsys):
    """With the learning rate raised after epoch 1, later epochs score worse:
    best.pt keeps epoch 1's weights, and they give epoch 1's recorded metric."""
    out = tmp_path / "r"
    base = ["train", "--data", str(data_dir), "--out", str(out), *TINY]
    assert run_main(base + ["--epochs", "1", "--lr", "0.05"], capsys)[0] == 0
    code, stdout, _ = run_main(base + ["--epochs", "3", "--resume", "--lr", "50"], capsys)
    assert code == 0
    saved = results(out)
    best = torch.load(out / run_files.BEST, weights_only=True)
    last = torch.load(out / run_files.CHECKPOINT, weights_only=True)
    assert best["epoch"] == saved["best"]["epoch"] and saved["best"]["weights"] == "best.pt"
    assert f"best epoch's weights: {out}/best.pt" in stdout
    from lightgcn_ext import LightGCN
    from lightgcn_ext.evaluation import ranking_metrics

    data = toy_interactions()
    model = LightGCN(data.num_nodes, 8, 3)
    model.load_state_dict(best["model"])
    with torch.no_grad():
        embedding = model.get_embedding(data.edge_index())
    scores = ranking_metrics(embedding[:data.num_users], embedding[data.num_users:], data.test,
                             exclude=[data.train])
    recorded = saved["history"][best["epoch"] - 1]["recall@20"]
    assert abs(scores["recall@20"] - recorded) < 1e-6
    assert (best["epoch"], last["state"]["epoch"]) == (1, 3)
    assert not torch.equal(best["model"]["embedding.weight"], last["model"]["embedding.weight"])
