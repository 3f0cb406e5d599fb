"""bench.publish_reproduction: the report of a Gowalla run in the paper's
setting (targets, the first epoch at recall@20 0.18 and the time to it), and
one line for a run that is not that setting."""
import json

import pytest

from bench import publish_reproduction as publish


def _results(epochs_done, recalls, total_epochs=1000, **config):
    """A results.json of a CLI run: an evaluation every 20 epochs with the given
    recalls (ndcg = 0.78 recall), 10 s per epoch, 5 s per evaluation."""
    history = []
    for epoch in range(1, epochs_done + 1):
        record = dict(epoch=epoch, loss=0.1, epoch_seconds=10.0)
        if epoch % 20 == 0:
            recall = recalls[epoch // 20 - 1]
            record.update({"recall@20": recall, "ndcg@20": 0.78 * recall, "eval_seconds": 5.0})
        history.append(record)
    settings = dict(publish.SETTING, epochs=total_epochs, sampling="users", patience=0, seed=0,
                    threads=2, device="auto", data="/data/gowalla", out="/runs/g")
    return dict(config=dict(settings, **config), data=dict(publish.GOWALLA, name="gowalla"),
                device=dict(type="cpu", threads=2), versions=dict(torch="2.13.0+cpu"),
                history=history, epochs_done=epochs_done)


def test_the_summary_finds_the_best_the_targets_and_the_time_to_018():
    recalls = [0.12 + 0.0015 * i for i in range(50)]  # 0.18 first at evaluation 41
    summary = publish.summarize(_results(1000, recalls))
    assert summary["best_epoch"] == 1000 and summary["best"]["recall@20"] == recalls[-1]
    assert summary["recall_018"]["epoch"] == 820
    assert summary["recall_018"]["hours"] == pytest.approx((820 * 10 + 41 * 5) / 3600)
    assert summary["recall_018"]["hours_at_median"] == summary["recall_018"]["hours"]
    targets = summary["targets"]
    assert targets["best recall@20"]["passed"] and targets["best ndcg@20"]["passed"] is False
    assert targets["recall@20 by epoch 700"]["measured"] == recalls[34]
    assert targets["recall@20 by epoch 700"]["passed"] is False


def test_a_stopped_and_continued_piece_counts_in_the_sum_but_not_at_the_median():
    results = _results(1000, [0.12 + 0.0015 * i for i in range(50)])
    results["history"][19]["epoch_seconds"] = 5000.0  # stopped for 4,990 s during epoch 20
    summary = publish.summarize(results)
    assert summary["recall_018"]["hours"] == pytest.approx((820 * 10 + 4990 + 41 * 5) / 3600)
    assert summary["recall_018"]["hours_at_median"] == pytest.approx((820 * 10 + 41 * 5) / 3600)
    assert summary["training_hours"] == pytest.approx((10000 + 4990 + 50 * 5) / 3600)
    assert summary["training_hours_at_median"] == pytest.approx((10000 + 50 * 5) / 3600)


def test_an_unfinished_run_has_targets_not_met_yet():
    summary = publish.summarize(_results(100, [0.12, 0.13, 0.14, 0.15, 0.16]))
    assert summary["recall_018"] is None
    assert {t["passed"] for t in summary["targets"].values()} == {None}


def test_the_command_names_the_runs_options():
    command = publish.command(_results(20, [0.12])["config"])
    assert command == ("python -m lightgcn_ext train --data gowalla --dim 64 --layers 3 "
                       "--lr 0.001 --batch-size 2048 --reg 0.0001 --sampling users "
                       "--epochs 1000 --eval-every 20 --patience 0 --seed 0 --threads 2 "
                       "--out runs/gowalla")


def test_publishing_writes_the_results_the_plot_and_the_report(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(_results(40, [0.12, 0.14])))
    assert publish.main([str(run), "--out-dir", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    saved = json.loads((out / "gowalla-reproduction.json").read_text())
    assert saved["summary"]["epochs_done"] == 40 and saved["results"]["epochs_done"] == 40
    assert (out / "gowalla-reproduction.png").read_bytes()[:4] == b"\x89PNG"
    report = (out / "gowalla-reproduction.md").read_text()
    assert "| lightgcn_ext, best epoch (40) | 0.1400 | 0.1092 |" in report
    assert report in capsys.readouterr().out


def test_a_run_in_another_setting_is_refused_in_one_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(_results(20, [0.12], dim=32)))
    with pytest.raises(SystemExit) as stopped:
        publish.main([str(run), "--out-dir", str(tmp_path / "out")])
    assert str(stopped.value.code) == ("publish_reproduction: error: not the paper's Gowalla "
                                       "setting: --dim 32 (the paper's: 64)")
    with pytest.raises(SystemExit) as stopped:
        publish.main([str(tmp_path / "missing")])
    assert "results.json does not exist" in str(stopped.value.code)
    assert not (tmp_path / "out").exists()
