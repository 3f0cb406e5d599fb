"""Training on an interaction log with raw ids (`train --data ratings.csv`)
and the optional TensorBoard curves (`--tensorboard`), through the command
line (`lightgcn_ext.cli.main` in this process).

A log and the LightGCN text files of the same split train to the same
metrics; a run keeps every raw id (data.pt maps back to exactly the log's
pairs); every mistake in the log or its options is one line that leaves
--out untouched; a resume refuses other log options by name."""
import csv
import json
import random
import shlex
import subprocess
import sys

import pytest
import torch

from helpers import REPO, TINY, one_error_line, run_main, toy_interactions, write_dir
from lightgcn_ext.data import Interactions
from lightgcn_ext.training import run_files

pytest.importorskip("pyarrow")  # read_log's reader, an optional dependency

from lightgcn_ext.data import read_log  # noqa: E402


def results(out):
    return json.loads((out / run_files.RESULTS).read_text())


def saved_data(out):
    return Interactions.from_state_dict(torch.load(out / run_files.DATA, weights_only=True))


def write_log(path, rows, header=("userId", "movieId", "rating", "timestamp")):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def raw_pairs(data):
    """Every (user, item) pair of data's splits, in raw ids."""
    pairs = []
    for split in (data.train, data.valid, data.test):
        if split is not None:
            pairs += zip(data.id_map.raw_users(split[0]), data.id_map.raw_items(split[1]))
    return pairs


@pytest.fixture(scope="module")
def toy_log(tmp_path_factory):
    """The toy data's pairs as a CSV with string ids whose sorted order is not
    the toy's id order, in a shuffled line order."""
    data = toy_interactions()
    shuffle = random.Random(0)
    user_ids = [f"user-{shuffle.getrandbits(40):010x}" for _ in range(data.num_users)]
    item_ids = [f"tt{shuffle.getrandbits(24):08d}" for _ in range(data.num_items)]
    rows = [(user_ids[u], item_ids[i], 4, 1000 + n) for n, (u, i) in
            enumerate(torch.cat([data.train, data.test], dim=1).t().tolist())]
    shuffle.shuffle(rows)
    return write_log(tmp_path_factory.mktemp("logs") / "ratings.csv", rows)


# ------------------------------------------------- a log is the same data
def test_a_log_and_the_text_files_of_its_split_train_to_the_same_metrics(tmp_path, toy_log,
                                                                         capsys):
    """The log with raw string ids, and the split read_log made of it written
    as LightGCN text files with its dense ids: same seed, same metrics."""
    log_out, text_out = tmp_path / "log", tmp_path / "text"
    options = ["--epochs", "3", "--seed", "5", "--patience", "0", *TINY]
    code, _, err = run_main(["train", "--data", str(toy_log), "--out", str(log_out),
                             *options], capsys)
    assert code == 0, err
    split = read_log(toy_log, seed=5)
    kept = saved_data(log_out)
    for name in ("train", "valid", "test"):
        assert torch.equal(getattr(kept, name), getattr(split, name)), name
    assert kept.id_map == split.id_map
    write_dir(tmp_path / "dense", split, valid=split.valid)
    code, _, err = run_main(["train", "--data", str(tmp_path / "dense"), "--out",
                             str(text_out), *options], capsys)
    assert code == 0, err

    from_log, from_text = results(log_out), results(text_out)
    assert from_log["data"] == dict(from_text["data"], name="ratings")
    assert from_log["popularity"] == from_text["popularity"]
    assert len(from_log["history"]) == 3
    timings = ("epoch_seconds", "eval_seconds")
    for a, b in zip(from_log["history"], from_text["history"]):
        assert {k: v for k, v in a.items() if k not in timings} == \
            {k: v for k, v in b.items() if k not in timings}
    # Not a comparison of two untrained models: the model beat popularity.
    assert from_log["history"][-1]["recall@20"] > from_log["popularity"]["recall@20"]
    assert from_log["config"]["split"] == "random" and from_log["config"]["ratios"] == [
        0.8, 0.1, 0.1]


def test_a_movielens_log_trains_end_to_end_and_keeps_every_raw_id(tmp_path, capsys):
    """String ids, timestamps, repeated ratings of a movie: a temporal split
    whose data.pt maps back to exactly the log's distinct pairs, each user's
    test interactions its latest."""
    draw = random.Random(1)
    users = [f"{name}-{n}" for n, name in enumerate(("ana", "bo", "cy", "dee", "eli") * 12)]
    movies = [f"tt{draw.randrange(10**7):07d}" for _ in range(90)]
    rows, time = [], 10**9
    for user in users:
        for movie in draw.sample(movies, draw.randint(4, 25)):
            time += draw.randint(1, 10**4)
            rows.append((user, movie, draw.choice((0.5, 3, 4.5, 5)), time))
    rows += [(user, movie, 1, time + 1) for user, movie, *_ in rows[::7]]  # seen again later
    draw.shuffle(rows)
    log = write_log(tmp_path / "ratings.csv", rows)
    out = tmp_path / "run"
    code, stdout, err = run_main(["train", "--data", str(log), "--split", "temporal", "--out",
                                  str(out), "--epochs", "2", *TINY], capsys)
    assert code == 0, err
    assert stdout.splitlines()[0] == ("ids: 60 users (string ids) and "
                                      f"{len({r[1] for r in rows})} items (string ids), "
                                      f"renumbered 0..n-1")

    data = saved_data(out)
    pairs = raw_pairs(data)
    assert len(pairs) == len(set(pairs))  # none duplicated
    assert set(pairs) == {(user, movie) for user, movie, *_ in rows}  # none lost or invented
    assert list(data.id_map.users) == sorted(set(users))
    first_seen = {}
    for user, movie, _, time in rows:
        first_seen[user, movie] = min(time, first_seen.get((user, movie), time))
    for user in users:
        times = {name: [first_seen[user, movie] for u, movie in zip(
            data.id_map.raw_users(split[0]), data.id_map.raw_items(split[1])) if u == user]
            for name, split in (("train", data.train), ("valid", data.valid),
                                ("test", data.test))}
        assert times["test"] and max(times["train"] + times["valid"]) < min(times["test"])
        assert not times["valid"] or max(times["train"]) < min(times["valid"])
    saved = results(out)
    assert saved["config"]["split"] == "temporal" and saved["data"]["name"] == "ratings"
    assert saved["data"]["num_test"] == data.test.shape[1]


def test_make_demo_ends_with_a_recommend_for_a_raw_user_id_of_the_run(tmp_path, toy_log,
                                                                       capsys):
    out = tmp_path / "run"
    assert run_main(["train", "--data", str(toy_log), "--out", str(out), "--epochs", "1",
                     *TINY], capsys)[0] == 0
    assert "\t@$(PYTHON) tools/demo_next.py $(DEMO_OUT) $(PYTHON)\n" in (
        REPO / "Makefile").read_text()
    shown = subprocess.run([sys.executable, "tools/demo_next.py", str(out), "python3"],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    heading, command = shown.stdout.splitlines()
    assert heading == "next, the top 10 items for a user of the demo data:"
    words = shlex.split(command)
    assert words[:6] == ["python3", "-m", "lightgcn_ext", "recommend", "--run", str(out)]
    assert words[6] == "--users" and words[8:] == ["--k", "10"]
    data = saved_data(out)
    user = data.id_map.dense_users([words[7]])  # a raw id of the run, not a dense one
    assert bool((data.test[0] == user).any())


# ------------------------------------------------------------ bad input
@pytest.mark.parametrize("case", ["missing column", "no header", "rating not a number",
                                  "ratios", "unknown suffix", "no such file",
                                  "log option without a log", "keep-ids", "no pyarrow",
                                  "no tensorboard"])
def test_a_mistake_is_one_line_and_leaves_out_untouched(tmp_path, toy_log, capsys, monkeypatch,
                                                        case):
    """Each mistake is one line naming the option or the file and the value,
    exit status 1, and --out, here the directory of an earlier run given
    --overwrite, keeps every file as it was."""
    out = tmp_path / "run"
    assert run_main(["train", "--data", str(toy_log), "--out", str(out), "--epochs", "1",
                     *TINY], capsys)[0] == 0
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    data, options = tmp_path / "bad.csv", []
    if case == "missing column":
        write_log(data, [("u1", "m1")], header=("visitor", "movieId"))
        expected = (f"{data}:1: no user column: none of the header's columns (visitor, "
                    f"movieId) has a usual user name; name it with user=... (--user)")
    elif case == "no header":
        write_log(data, [("u2", "m2", 4, 7)], header=("u1", "m1", "5", "3"))
        expected = (f"{data}:1: no header line: the first line 'u1, m1, 5, 3' is data; a .csv "
                    f"file needs a header line naming its columns (user, item, ...)")
    elif case == "rating not a number":
        write_log(data, [("u1", "m1", "five", 1)])
        options = ["--min-rating", "4"]
        expected = (f"{data}: the rating column 'rating' must be numeric, but has an invalid "
                    f"value 'five'")
    elif case == "ratios":
        data, options = toy_log, ["--ratios", "0.8", "0.2", "0.2"]
        expected = ("ratios must be three numbers in [0, 1] (train, valid, test) that sum to "
                    "1, got (0.8, 0.2, 0.2)")
    elif case == "unknown suffix":
        data = tmp_path / "ratings.txt"
        data.write_text(toy_log.read_text())
        expected = (f"--data {data} is a file, but not an interaction log by its suffix (.csv, "
                    f".tsv, .inter, .dat): give --sep to read it as one, or for the LightGCN "
                    f"text format the directory that holds train.txt and test.txt")
    elif case == "no such file":
        expected = f"--data {data}: no such file (an interaction log was expected)"
    elif case == "log option without a log":
        data, options = "synthetic", ["--split", "temporal", "--min-item-interactions", "3"]
        expected = ("--min-item-interactions, --split apply to an interaction log (--data a "
                    ".csv, .tsv, .inter, .dat file), not to --data synthetic")
    elif case == "keep-ids":
        data, options = toy_log, ["--keep-ids"]
        expected = (f"--keep-ids applies to a directory in the LightGCN text format; an "
                    f"interaction log's raw ids (--data {toy_log}) are always numbered 0, 1, "
                    f"..., and data.pt keeps their map")
    elif case == "no pyarrow":
        for module in ("pyarrow", "pyarrow.compute", "pyarrow.csv"):
            monkeypatch.setitem(sys.modules, module, None)  # import fails: not installed
        data = toy_log
        expected = (f"--data {toy_log}: reading an interaction log needs pyarrow: pip install "
                    f"pyarrow")
    else:
        for module in ("tensorboard", "torch.utils.tensorboard"):
            monkeypatch.setitem(sys.modules, module, None)  # import fails: not installed
        data, options = toy_log, ["--tensorboard"]
        expected = "--tensorboard needs the tensorboard package: pip install tensorboard"
    argv = ["train", "--data", str(data), "--out", str(out), "--overwrite", "--epochs", "1",
            *TINY, *options]
    code, _, err = run_main(argv, capsys)
    assert code == 1
    assert one_error_line(code, err) == expected
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before


def test_a_resume_refuses_other_log_options_by_name(tmp_path, toy_log, capsys):
    out = tmp_path / "run"
    base = ["train", "--data", str(toy_log), "--out", str(out), "--min-user-interactions", "2",
            *TINY]
    assert run_main(base + ["--epochs", "1"], capsys)[0] == 0
    checkpoint = (out / run_files.CHECKPOINT).read_bytes()
    changed = base + ["--epochs", "2", "--resume", "--split", "temporal", "--ratios", "0.7",
                      "0.1", "0.2"]
    assert one_error_line(*run_main(changed, capsys)[::2]) == (
        "--resume cannot change --split temporal (the run has random); --ratios 0.7 0.1 0.2 "
        "(the run has 0.8 0.1 0.1): resume with the run's values, or start a new run in "
        "another --out")
    assert (out / run_files.CHECKPOINT).read_bytes() == checkpoint
    # The same file, spelt another way, is the same data.
    base[2] = f"{toy_log.parent}/./{toy_log.name}"
    assert run_main(base + ["--epochs", "2", "--resume"], capsys)[0] == 0
    assert results(out)["epochs_done"] == 2


# ------------------------------------------------------------ TensorBoard
def test_tensorboard_gets_loss_metrics_and_step_time_per_epoch(tmp_path, toy_log, capsys):
    """The curves equal results.json's numbers; a resume continues them
    without repeating an epoch, a run started over replaces them."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    base = ["train", "--data", str(toy_log), "--out", str(out), "--tensorboard",
            "--eval-every", "2", *TINY]
    assert run_main(base + ["--epochs", "3"], capsys)[0] == 0
    assert run_main(base + ["--epochs", "4", "--resume"], capsys)[0] == 0

    def curve(tag):
        events = EventAccumulator(str(out / "tensorboard"))
        events.Reload()
        return [(event.step, event.value) for event in events.Scalars(tag)]

    history = results(out)["history"]
    float32 = dict(rel=1e-6, abs=1e-9)
    assert curve("loss") == [(r["epoch"], pytest.approx(r["loss"], **float32))
                             for r in history]
    assert [step for step, _ in curve("time/step_ms")] == [1, 2, 3, 4]
    assert all(ms > 0 for _, ms in curve("time/step_ms"))
    evaluated = [r for r in history if "recall@20" in r]
    assert [r["epoch"] for r in evaluated] == [2, 3, 4]  # every 2nd, and each run's last
    for metric in ("recall@20", "ndcg@20", "precision@20", "hit@20"):
        assert curve(f"test/{metric}") == [(r["epoch"], pytest.approx(r[metric], **float32))
                                           for r in evaluated]
        assert curve(f"valid/{metric}") == [
            (r["epoch"], pytest.approx(r["valid"][metric], **float32)) for r in evaluated]
    assert run_main(base + ["--epochs", "1", "--overwrite"], capsys)[0] == 0
    assert curve("loss") == [(1, pytest.approx(results(out)["history"][0]["loss"], **float32))]
