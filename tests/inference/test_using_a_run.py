"""Using a trained run: `load_run`, and the `recommend`, `export` and
`evaluate` commands on a tiny run trained in this module through the command
line, on a LightGCN-format directory whose raw ids are sparse (so that every
id goes through the run's id map).

What must hold: `evaluate` reproduces results.json's metrics exactly for the
same checkpoint (best.pt: the best evaluated epoch; checkpoint.pt: the last);
`recommend` for a user is the top-k of `export`'s embeddings without that
user's training items; no raw id is lost or changed on the way. Every user
mistake is one line and exit status 2, and leaves no file behind."""
import json
import sys

import numpy as np
import pytest
import torch

from helpers import toy_interactions
from lightgcn_ext import cli, load_run
from lightgcn_ext.data import IdMap, Interactions
from lightgcn_ext.inference import embeddings, evaluate_run, find_users, top_items
from lightgcn_ext.training import TrainConfig, train

TINY = ["--dim", "16", "--batch-size", "256", "--no-progress", "--threads", "1",
        "--topk", "10", "20", "--patience", "0"]
USER_ID, ITEM_ID = (lambda u: 1000 + 7 * u), (lambda i: 5 + 3 * i)  # sparse raw ids


def write_dir(path, splits):
    """{split: [2, n] dense pairs} as LightGCN text files with sparse raw ids."""
    path.mkdir(parents=True)
    for split, pairs in splits.items():
        lines = {}
        for user, item in pairs.t().tolist():
            lines.setdefault(USER_ID(user), []).append(ITEM_ID(item))
        (path / f"{split}.txt").write_text(
            "".join(f"{u} {' '.join(map(str, items))}\n" for u, items in sorted(lines.items())))
    return path


def run_main(argv, capsys):
    """(exit status, stdout, stderr) of cli.main(argv) in this process."""
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The directory of a run on sparse raw ids with a validation split,
    whose best epoch (2) is not its last (4): 2 epochs evaluated every 2,
    then a resume to 4 whose learning rate of 10 wrecks the model."""
    root = tmp_path_factory.mktemp("inference")
    data = toy_interactions()
    test = data.test
    half = test.shape[1] // 2
    data_dir = write_dir(root / "toy", dict(train=data.train, valid=test[:, :half],
                                            test=test[:, half:]))
    out = root / "run"
    argv = ["train", "--data", data_dir, "--out", out, "--epochs", 4, "--eval-every", 2, *TINY]
    assert cli.main([str(a) for a in argv + ["--max-epochs-now", 2]]) == 0
    assert cli.main([str(a) for a in argv + ["--resume", "--lr", 10]]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["epoch"] for r in results["history"] if "recall@10" in r] == [2, 4]
    assert results["best"]["epoch"] == 2
    return out


# ------------------------------------------------------------------ load_run
def test_load_run_gives_the_model_graph_and_data_of_each_checkpoint(trained):
    best, last = load_run(trained), load_run(trained, checkpoint="last")
    assert (best.checkpoint, best.epoch, last.epoch) == ("best", 2, 4)
    assert best.results["best"]["epoch"] == 2
    assert not torch.equal(best.model.embedding.weight, last.model.embedding.weight)
    saved = torch.load(trained / "best.pt", weights_only=True)["model"]
    assert torch.equal(best.model.embedding.weight, saved["embedding.weight"])
    data = best.data
    assert data.valid is not None and data.id_map is not None
    assert best.graph.num_nodes == data.num_nodes == best.model.num_nodes
    assert data.id_map.raw_users(torch.arange(3)).tolist() == [1000, 1007, 1014]
    assert best.config["topk"] == [10, 20] and best.record["epoch"] == 2


# ------------------------------------------------------------------ evaluate
@pytest.mark.parametrize("checkpoint, epoch", [("best", 2), ("last", 4)])
@pytest.mark.parametrize("split", ["test", "valid"])
def test_evaluate_reproduces_results_json_exactly(trained, capsys, checkpoint, epoch, split):
    code, out, err = run_main(["evaluate", "--run", trained, "--checkpoint", checkpoint,
                               "--split", split, "--device", "cpu"], capsys)
    assert code == 0, err
    results = json.loads((trained / "results.json").read_text())
    record = next(r for r in results["history"] if r["epoch"] == epoch)
    recorded = record["valid"] if split == "valid" else record
    evaluation = evaluate_run(load_run(trained, checkpoint), split)
    names = [f"{m}@{k}" for k in (10, 20) for m in ("recall", "ndcg", "precision", "hit")]
    assert {n: evaluation["metrics"][n] for n in names} == {n: recorded[n] for n in names}
    assert evaluation["recorded"] == {n: recorded[n] for n in names}
    assert f"the same as results.json records for epoch {epoch}" in out
    row = next(line.split() for line in out.splitlines() if line.startswith("recall@20 "))
    assert row[1] == row[3] == f"{recorded['recall@20']:.4f}"
    if split == "test":  # the trainer's popularity baseline, recomputed
        assert {n: evaluation["popularity"][n] for n in names} == \
            {n: results["popularity"][n] for n in names}


def test_evaluate_at_other_ks_says_what_results_json_lacks(trained, capsys):
    code, out, _ = run_main(["evaluate", "--run", trained, "--topk", "5", "--device", "cpu"],
                            capsys)
    assert code == 0
    assert "recall@5" in out and "results.json records no test metrics of epoch 2" in out


# ---------------------------------------------------------- recommend, export
def test_recommend_is_the_top_k_of_the_exported_embeddings_without_seen_items(
        trained, tmp_path, capsys):
    users = [USER_ID(u) for u in (0, 5, 17, 123)]
    for output in ("recs.csv", "recs.json", "recs.parquet"):
        if output.endswith(".parquet"):
            pytest.importorskip("pyarrow")
        code, out, err = run_main(["recommend", "--run", trained, "--users", *users, "--k", 10,
                                   "--output", tmp_path / output, "--device", "cpu"], capsys)
        assert code == 0, err
        assert out.strip().endswith(str(tmp_path / output))
    code, _, err = run_main(["export", "--run", trained, "--output", tmp_path / "emb.npz",
                             "--device", "cpu"], capsys)
    assert code == 0, err

    exported = np.load(tmp_path / "emb.npz")
    data = load_run(trained).data
    train_items = {}
    for user, item in data.train.t().tolist():
        train_items.setdefault(USER_ID(user), set()).add(ITEM_ID(item))
    user_row = {int(u): k for k, u in enumerate(exported["user_ids"])}
    expected = {}
    for user in users:
        scores = exported["item_embeddings"] @ exported["user_embeddings"][user_row[user]]
        seen = np.isin(exported["item_ids"], list(train_items[user]))
        scores[seen] = -np.inf
        top = np.argsort(-scores, kind="stable")[:10]
        expected[user] = (exported["item_ids"][top].tolist(), scores[top])
        assert not set(expected[user][0]) & train_items[user]

    csv_lines = (tmp_path / "recs.csv").read_text().splitlines()
    assert csv_lines[0] == "user,rank,item,score" and len(csv_lines) == 1 + 10 * len(users)
    as_json = json.loads((tmp_path / "recs.json").read_text())
    assert [entry["user"] for entry in as_json] == users
    for entry in as_json:
        items, scores = expected[entry["user"]]
        assert entry["items"] == items
        np.testing.assert_allclose(entry["scores"], scores, rtol=1e-5)
    rows = [line.split(",") for line in csv_lines[1:]]
    assert [(int(u), int(r), int(i)) for u, r, i, _ in rows] == [
        (user, rank + 1, item) for user in users for rank, item in enumerate(expected[user][0])]
    if (tmp_path / "recs.parquet").exists():
        import pyarrow.parquet as pq

        table = pq.read_table(tmp_path / "recs.parquet").to_pydict()
        assert table["item"] == [int(r[2]) for r in rows] and table["user"] == [
            int(r[0]) for r in rows]


def test_include_seen_keeps_the_training_items(trained):
    run = load_run(trained)
    users = torch.arange(run.data.num_users)
    k = run.data.num_items
    everything, _ = top_items(run, users, k, include_seen=True)
    unseen, scores = top_items(run, users, k)
    assert (everything >= 0).all()
    seen_count = torch.bincount(torch.unique(run.data.train, dim=1)[0],
                                minlength=run.data.num_users)
    # A user's places beyond its unseen items stay empty (-1, score -inf).
    assert torch.equal((unseen < 0).sum(dim=1), seen_count)
    assert torch.isinf(scores[unseen < 0]).all()


def test_export_holds_every_raw_id_once_with_its_embedding(trained, tmp_path, capsys):
    run = load_run(trained)
    arrays = embeddings(run)
    data_dir_users = sorted({USER_ID(u) for u in range(run.data.num_users)
                             if (run.data.train[0] == u).any() or (run.data.test[0] == u).any()
                             or (run.data.valid[0] == u).any()})
    assert arrays["user_ids"].tolist() == data_dir_users  # every user, once, ascending
    assert len(set(arrays["item_ids"].tolist())) == run.data.num_items
    with torch.no_grad():
        embedding = run.model.get_embedding(run.graph)
    assert np.array_equal(arrays["item_embeddings"], embedding[run.data.num_users:].numpy())
    pa = pytest.importorskip("pyarrow.parquet")
    code, _, err = run_main(["export", "--run", trained, "--output", tmp_path / "emb.parquet",
                             "--device", "cpu"], capsys)
    assert code == 0, err
    table = pa.read_table(tmp_path / "emb.parquet").to_pydict()
    assert table["kind"].count("user") == run.data.num_users
    assert table["id"][:run.data.num_users] == data_dir_users
    assert np.allclose(table["embedding"][0], arrays["user_embeddings"][0])


def test_recommend_prints_a_table_and_names_unknown_users(trained, tmp_path, capsys):
    code, out, err = run_main(["recommend", "--run", trained, "--users", 1000, 3, "x", 1007,
                               "--k", 3, "--device", "cpu"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["user", "rank", "item", "score"] and len(lines) == 1 + 2 * 3
    assert [line.split()[:2] for line in lines[1:4]] == [["1000", "1"], ["1000", "2"],
                                                        ["1000", "3"]]
    assert err.count("\n") == 1 and "skipped 2 of the 4 users given, not in the run's data" in err
    assert "'3', 'x'" in err
    users_file = tmp_path / "users.txt"
    users_file.write_text("1000\n\n  3\nx\n1007\n")  # blank lines and spaces are skipped
    code, from_file, err = run_main(["recommend", "--run", trained, "--users-file", users_file,
                                     "--k", 3, "--device", "cpu"], capsys)
    assert code == 0 and from_file == out and "'3', 'x'" in err


# ---------------------------------------------- other runs: no map, string ids
def test_a_run_without_an_id_map_and_one_with_string_ids(tmp_path, capsys):
    plain = toy_interactions(num_pairs=2000)
    names = IdMap(users=tuple(f"u{u:04d}" for u in range(plain.num_users)),
                  items=tuple(f"item-{i:03d}" for i in range(plain.num_items)))
    named = Interactions("named", plain.num_users, plain.num_items, plain.train, plain.test,
                         id_map=names)
    for name, data, user in (("plain", plain, "3"), ("named", named, "u0003")):
        train(TrainConfig(epochs=1, dim=8, batch_size=256, out=str(tmp_path / name),
                          progress=False), data=data)
        run = load_run(tmp_path / name)
        assert (run.data.id_map is None) == (name == "plain")
        dense, unknown = find_users(run, [user, "nobody", user])
        assert dense.tolist() == [3] and unknown == ["nobody"]
        code, _, err = run_main(["recommend", "--run", tmp_path / name, "--users", user,
                                 "--output", tmp_path / f"{name}.json", "--k", 5], capsys)
        assert code == 0, err
        (entry,) = json.loads((tmp_path / f"{name}.json").read_text())
        items, _ = top_items(run, dense, 5)
        expected = items[0].tolist() if name == "plain" else [names.items[i] for i in items[0]]
        assert entry == dict(user=3 if name == "plain" else user, items=expected,
                             scores=entry["scores"])
        code, _, err = run_main(["export", "--run", tmp_path / name, "--output",
                                 tmp_path / f"{name}.npz"], capsys)
        assert code == 0, err
        exported = np.load(tmp_path / f"{name}.npz")
        if name == "named":
            assert exported["user_ids"].dtype.kind == "U"
            assert exported["item_ids"].tolist() == list(names.items)
        else:
            assert exported["user_ids"].tolist() == list(range(plain.num_users))


# ------------------------------------------------------------------ bad input
def assert_one_line_error(code, err, *phrases):
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    for phrase in phrases:
        assert phrase in last, last


@pytest.mark.parametrize("command", ["recommend", "export", "evaluate"])
def test_a_run_without_a_model_or_data_is_one_line(trained, tmp_path, capsys, command):
    extra = {"recommend": ["--users", 1000], "export": ["--output", tmp_path / "e.npz"],
             "evaluate": []}[command]
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run_main([command, "--run", empty, *extra], capsys)
    assert_one_line_error(code, err, f"--run {empty} is not a run directory")
    code, _, err = run_main([command, "--run", tmp_path / "nowhere", *extra], capsys)
    assert_one_line_error(code, err, "--run", "does not exist")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("results.json", "checkpoint.pt", "data.pt"):
        (broken / name).write_bytes((trained / name).read_bytes())
    code, _, err = run_main([command, "--run", broken, *extra], capsys)
    assert_one_line_error(code, err, f"--run {broken} holds no best.pt", "--checkpoint last")
    (broken / "data.pt").write_bytes(b"not a torch file")
    code, _, err = run_main([command, "--run", broken, "--checkpoint", "last", *extra], capsys)
    assert_one_line_error(code, err, f"--run {broken}: data.pt is damaged")
    (broken / "data.pt").unlink()
    code, _, err = run_main([command, "--run", broken, "--checkpoint", "last", *extra], capsys)
    assert_one_line_error(code, err, f"--run {broken} holds no data.pt")
    assert not (tmp_path / "e.npz").exists()


@pytest.mark.parametrize("argv, phrases", [
    (["--users", "nobody", "42"], ["--users: no user given is a user of the run",
                                   "2 given: 'nobody', '42'"]),
    (["--users", 1000, "--k", 0], ["argument --k: expected a positive int, got '0'"]),
    (["--users", 1000, "--k", "ten"], ["argument --k: expected a positive int, got 'ten'"]),
    (["--users", 1000, "--k", 100000], ["--k must be an int from 1 to", "got 100000"]),
    (["--users", 1000, "--output", "{tmp}/missing/recs.csv"],
     ["--output {tmp}/missing/recs.csv: the folder {tmp}/missing does not exist"]),
    (["--users", 1000, "--output", "{tmp}/recs.xlsx"], ["unknown suffix '.xlsx'",
                                                        ".csv, .json, .parquet"]),
    (["--users-file", "{tmp}/no-such-file"], ["--users-file {tmp}/no-such-file: cannot read"]),
    (["--users", 1000, "--device", "tpu"], ["--device 'tpu'"]),
])
def test_recommend_refuses_bad_input_in_one_line(trained, tmp_path, capsys, argv, phrases):
    argv = [str(a).format(tmp=tmp_path) for a in argv]
    code, out, err = run_main(["recommend", "--run", trained, *argv], capsys)
    assert_one_line_error(code, err, *[p.format(tmp=tmp_path) for p in phrases])
    assert out == "" and sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv, phrases", [
    (["export", "--output", "{tmp}/emb.csv"], ["unknown suffix '.csv'", ".npz, .parquet"]),
    (["export", "--output", "{tmp}/a/b/emb.npz"], ["the folder {tmp}/a/b does not exist"]),
    (["evaluate", "--topk", "0"], ["argument --topk: expected a positive int"]),
    (["evaluate", "--topk", "500"], ["--topk 500: expected k from 1 to"]),
    (["evaluate", "--split", "train"], ["argument --split: invalid choice: 'train'"]),
])
def test_export_and_evaluate_refuse_bad_input_in_one_line(trained, tmp_path, capsys, argv,
                                                          phrases):
    argv = [argv[0], "--run", str(trained), *[a.format(tmp=tmp_path) for a in argv[1:]]]
    code, out, err = run_main(argv, capsys)
    assert_one_line_error(code, err, *[p.format(tmp=tmp_path) for p in phrases])
    assert out == "" and sorted(p.name for p in tmp_path.iterdir()) == []


def test_valid_split_of_a_run_without_one_is_one_line(tmp_path, capsys):
    train(TrainConfig(epochs=1, dim=8, batch_size=256, out=str(tmp_path / "run"),
                      progress=False), data=toy_interactions(num_pairs=2000))
    code, _, err = run_main(["evaluate", "--run", tmp_path / "run", "--split", "valid"], capsys)
    assert_one_line_error(code, err, "--split valid: the run", "has no validation split")


def test_every_command_has_help(capsys):
    for command in ("recommend", "export", "evaluate"):
        with pytest.raises(SystemExit) as exit:
            cli.main([command, "--help"])
        assert exit.value.code == 0
        assert "--run" in capsys.readouterr().out


def test_the_top_level_import_stays_light():
    """`import lightgcn_ext` loads no training code; load_run is fetched on use."""
    from helpers import run_python

    done = run_python("import sys, lightgcn_ext\n"
                      "print('lightgcn_ext.training' in sys.modules)\n"
                      "print(lightgcn_ext.load_run.__module__)\n")
    assert done.stdout.split() == ["False", "lightgcn_ext.inference.run"], done.stderr
    assert sys.modules["lightgcn_ext"].load_run is load_run


# ------------------------------------------------- a run of several processes
def test_a_run_of_two_processes_loads_its_last_epoch_from_the_shards(tmp_path, capsys):
    """torchrun's shards joined into one model: the last epoch's weights, the
    metrics of results.json to float rounding (the run evaluated across its
    processes); best.pt, which such a run does not keep, is refused in one line."""
    import os
    import socket
    import subprocess

    from helpers import REPO

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = toy_interactions(num_pairs=3000)
    data_dir = write_dir(tmp_path / "toy", dict(train=data.train, test=data.test))
    out = tmp_path / "run"
    launched = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", str(port), "-m", "lightgcn_ext", "train", "--data", str(data_dir),
         "--out", str(out), "--epochs", "2", *map(str, TINY)],
        cwd=REPO, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
        timeout=300)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert (out / "checkpoint.index.json").exists() and not (out / "best.pt").exists()
    run = load_run(out, checkpoint="last")
    assert run.epoch == 2 and run.model.embedding.weight.shape == (run.data.num_nodes, 16)
    evaluation = evaluate_run(run)
    for name, value in evaluation["recorded"].items():
        assert abs(evaluation["metrics"][name] - value) <= 1e-9, name
    assert len(evaluation["recorded"]) == 8
    code, _, err = run_main(["recommend", "--run", out, "--users", USER_ID(0)], capsys)
    assert_one_line_error(code, err, "is a run of several processes", "--checkpoint last")


def test_parquet_without_pyarrow_is_one_line(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    for argv in (["recommend", "--users", 1000], ["export"]):
        code, out, err = run_main([*argv, "--run", trained, "--output",
                                   tmp_path / "out.parquet"], capsys)
        assert_one_line_error(code, err, "writing parquet needs pyarrow (pip install pyarrow)")
    assert not list(tmp_path.iterdir())
