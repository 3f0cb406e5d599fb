"""A run's results: results.json (the configuration, the data, the device, the
versions, the popularity baseline and every epoch's record) and curve.png, the
learning curve; both rewritten atomically by the main process whenever the
run's files are due (curve.png only when there is a new evaluation to show)."""
import dataclasses
import json
import platform

import torch

from .run_files import CURVE, RESULTS, atomic_write, git_commit


def start_results(config, data, device_description, num_parameters):
    """What results.json says of a run before its first epoch."""
    from .. import __version__

    return dict(config=_jsonable(dataclasses.asdict(config)), data=_describe(data),
                device=device_description,
                versions=dict(lightgcn_ext=__version__, torch=torch.__version__,
                              python=platform.python_version()),
                git_commit=git_commit(), num_parameters=num_parameters)


def final_results(results, state):
    """results with the loop's state: history, best, stopped_early, epochs_done,
    and the changes that resumes made (each with the first epoch it held for)."""
    return dict(results, history=state["history"], best=state["best"],
                stopped_early=state["stopped_early"], epochs_done=state["epoch"],
                changes=state.get("changes", []))


def write_results(out, results, state, plot=True):
    """results.json, and with plot curve.png, into out; returns the final results."""
    results = final_results(results, state)
    atomic_write(out / RESULTS, json.dumps(results, indent=2))
    if plot:
        _plot(out / CURVE, results)
    return results


def summary_line(record, popularity, ks):
    """An evaluated epoch in one line: the loss, the validation metrics (when
    there is a validation split), then the test metrics, each beside the
    popularity baseline's; every metric named with its split."""
    parts = [f"epoch {record['epoch']}: loss {record['loss']:.4f}"]
    if "valid" in record:
        parts.append(_metrics("valid", record["valid"], ks))
    parts.append(_metrics("test", record, ks, popularity))
    return "  ".join(parts)


def best_line(results):
    """The best evaluated epoch in one line: which split chose it, and its
    validation (when there is one) and test metrics."""
    best, ks = results["best"], results["config"]["topk"]
    record = next(r for r in results["history"] if r["epoch"] == best["epoch"])
    split = best.get("split", "test")
    parts = [_metrics("valid", record["valid"], ks)] if "valid" in record else []
    parts.append(_metrics("test", record, ks))
    return f"best epoch {best['epoch']} (by {split} recall@{ks[0]}): " + "  ".join(parts)


def _metrics(split, scores, ks, popularity=None):
    shown = []
    for k in ks:
        for name in ("recall", "ndcg"):
            metric = f"{name}@{k}"
            baseline = "" if popularity is None else f" (popularity {popularity[metric]:.4f})"
            shown.append(f"{split} {metric} {scores[metric]:.4f}{baseline}")
    return "  ".join(shown)


def _plot(path, results):
    """The learning curve: the metrics per evaluation beside the popularity
    baseline, and the training loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = results["history"]
    ks = results["config"]["topk"]
    fig, (ax_metrics, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    evaluated = [r for r in history if f"recall@{ks[0]}" in r]
    for index, name in enumerate(("recall", "ndcg")):
        metric = f"{name}@{ks[0]}"
        color = f"C{index}"
        ax_metrics.plot([r["epoch"] for r in evaluated], [r[metric] for r in evaluated],
                        marker="o", markersize=3, color=color, label=f"LightGCN {metric}")
        ax_metrics.axhline(results["popularity"][metric], color=color, linestyle="--",
                           label=f"popularity {metric}")
    ax_metrics.set_xlabel("epoch")
    ax_metrics.set_title(f"{results['data']['name']}: test metrics")
    ax_metrics.legend(fontsize=8)
    ax_loss.plot([r["epoch"] for r in history], [r["loss"] for r in history], color="C2")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("BPR loss (training)")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def _describe(data):
    return dict(name=data.name, num_users=data.num_users, num_items=data.num_items,
                num_train=int(data.train.shape[1]), num_test=int(data.test.shape[1]),
                num_valid=0 if data.valid is None else int(data.valid.shape[1]))


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
