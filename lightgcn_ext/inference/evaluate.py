"""The metrics of a trained run's saved weights, recomputed as the trainer
computes them (`lightgcn_ext.training.evaluate_model` and the popularity
baseline), beside what results.json recorded for the same epoch.

A run of one process, evaluated on the device it trained on, reproduces
results.json's numbers exactly: the same weights, the same graph, the same
kernels. A run of several processes was evaluated across them; one process
gives its numbers to float rounding.
"""
from ..evaluation import popularity_baseline
from ..training import evaluate_model

SPLITS = ("test", "valid")
# Metrics this close to results.json's differ only in the order their averages
# were summed in (a run of several processes sums per process).
ROUNDING = 1e-9


def evaluate_run(run, split="test", ks=None):
    """{"metrics", "popularity", "recorded"} for `split` ("test" or "valid")
    at each k of ks (default: the run's --topk): the model's metrics, the
    popularity baseline's, and results.json's record of this epoch on this
    split ({} when it has none, e.g. an epoch that was not evaluated)."""
    data = run.data
    if split not in SPLITS:
        raise ValueError(f"--split must be 'test' or 'valid', got {split!r}")
    if split == "valid" and data.valid is None:
        raise ValueError(f"--split valid: the run {run.path} has no validation split")
    ks = tuple(run.config["topk"] if ks is None else ks)
    too_large = [k for k in ks if not 1 <= k <= data.num_items]
    if too_large:
        raise ValueError(f"--topk {too_large[0]}: expected k from 1 to {data.num_items:,} (the "
                         f"run's number of items)")
    metrics = evaluate_model(run.model, run.graph, data, ks, split)
    # As the trainer: the training pairs are always excluded; the test split
    # also leaves out the validation pairs.
    pairs, exclude = (data.valid, []) if split == "valid" else \
        (data.test, [] if data.valid is None else [data.valid])
    popularity = popularity_baseline(data.train, data.num_users, data.num_items, pairs,
                                     exclude=exclude, ks=ks)
    record = run.record or {}
    recorded = record.get("valid", {}) if split == "valid" else record
    recorded = {name: value for name, value in recorded.items() if name in metrics
                and name != "num_users"}
    return dict(metrics=metrics, popularity=popularity, recorded=recorded)


def format_evaluation(run, split, evaluation):
    """The evaluation as lines: what was evaluated, a table of each metric
    beside the popularity baseline and results.json's value, and whether
    they agree."""
    metrics, recorded = evaluation["metrics"], evaluation["recorded"]
    source = "best.pt" if run.checkpoint == "best" else "the last checkpoint"
    lines = [f"{run.path}: {source} (epoch {run.epoch}), {split} split, "
             f"{metrics['num_users']:,} users"]
    names = [name for name in metrics if name != "num_users"]
    width = max(len(name) for name in names)
    lines.append(f"{'metric':<{width}}  {'model':>6}  {'popularity':>10}  {'results.json':>12}")
    for name in names:
        saved = f"{recorded[name]:.4f}" if name in recorded else "-"
        lines.append(f"{name:<{width}}  {metrics[name]:>6.4f}  "
                     f"{evaluation['popularity'][name]:>10.4f}  {saved:>12}")
    if not recorded:
        lines.append(f"results.json records no {split} metrics of epoch {run.epoch}")
    else:
        worst = max(abs(recorded[name] - metrics[name]) for name in recorded)
        if worst == 0:
            lines.append(f"the same as results.json records for epoch {run.epoch}")
        elif worst <= ROUNDING:
            lines.append(f"the same as results.json records for epoch {run.epoch}, to float "
                         f"rounding ({worst:.2g})")
        else:
            lines.append(f"differs from results.json's epoch {run.epoch} by up to {worst:.2g} "
                         f"(evaluated on another device than the run's?)")
    return lines
