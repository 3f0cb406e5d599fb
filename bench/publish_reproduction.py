"""Publishes a run of the paper's Gowalla setting: its results.json, a plot of
recall@20 and ndcg@20 per evaluation beside the LightGCN authors' logged
numbers, and a report with the exact command, the best metrics beside the
paper and LightGCN-PyTorch, the targets, and the wall time to recall@20 0.18.

    python -m bench.publish_reproduction RUN_DIR            # bench/published/gowalla-reproduction.*

The run is the CLI's, in resumable pieces if it took several invocations
(`--max-epochs-now`, `--resume`): results.json keeps every epoch's training
and evaluation seconds, so the wall time is their sum, bookkeeping and the
pauses between pieces left out. A piece stopped and continued (SIGSTOP, a
suspended laptop) counts the stop in its epoch's seconds, so the time is also
stated at the median: the epochs times the median epoch, plus the evaluations
times the median evaluation, the time on a machine that did nothing else.
"""
import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

from lightgcn_ext.training.run_files import atomic_write

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "bench" / "published"
METRICS = ("recall@20", "ndcg@20")
# The paper's setting (He et al., SIGIR 2020, Gowalla): the options a published run must have.
SETTING = dict(dim=64, layers=3, lr=1e-3, batch_size=2048, reg=1e-4, eval_every=20, topk=[20])
GOWALLA = dict(num_users=29858, num_items=40981)
PAPER = {"recall@20": 0.1830, "ndcg@20": 0.1554}
LIGHTGCN_PYTORCH = {"recall@20": 0.1824, "ndcg@20": 0.1547}  # gusye/LightGCN-PyTorch, 1000 epochs
# recall@20 of the authors' TensorFlow code (L = 4) by epoch, as logged by BARS.
AUTHORS_LOG = {20: 0.1233, 100: 0.1571, 200: 0.1697, 400: 0.1761, 500: 0.1786, 700: 0.1802,
               960: 0.1820, 1000: 0.1818}
TARGETS = {"best recall@20": 0.1820, "best ndcg@20": 0.1540, "recall@20 by epoch 700": 0.1800}
RECALL_MARK = 0.18
# The command's options, in the order it names them (the CLI's own names).
COMMAND_OPTIONS = ("dim", "layers", "lr", "batch_size", "reg", "sampling", "epochs",
                   "eval_every", "patience", "seed", "threads")


def command(config):
    """The CLI command that trains the run (the data by name: the named data
    set's files are checksum-verified, the same as a copy of them)."""
    parts = ["python -m lightgcn_ext train --data gowalla"]
    for name in COMMAND_OPTIONS:
        value = config.get(name)
        if value is not None:
            parts.append(f"--{name.replace('_', '-')} {value:g}" if isinstance(value, float)
                         else f"--{name.replace('_', '-')} {value}")
    return " ".join(parts) + " --out runs/gowalla"


def check_setting(results):
    """The reasons the run is not the paper's Gowalla setting (empty if it is)."""
    config, data = results["config"], results["data"]
    wrong = [f"--{name.replace('_', '-')} {config.get(name)} (the paper's: {value})"
             for name, value in SETTING.items() if config.get(name) != value]
    wrong += [f"{name} {data.get(name)} (Gowalla's: {value})" for name, value in GOWALLA.items()
              if data.get(name) != value]
    if config.get("device") not in ("cpu", "auto") or results["device"]["type"] != "cpu":
        wrong.append(f"device {results['device']['type']} (a CPU run is published here)")
    return wrong


def _verdict(measured, minimum, finished):
    """True or False; None while an unfinished run has not met it yet."""
    if measured is not None and measured >= minimum:
        return True
    return False if finished else None


def summarize(results):
    history = results["history"]
    finished = results["epochs_done"] >= results["config"]["epochs"]
    evaluated = [r for r in history if METRICS[0] in r]
    if not evaluated:
        raise ValueError("the run has no evaluation yet")
    best = max(evaluated, key=lambda r: r[METRICS[0]])
    median_epoch = statistics.median(r["epoch_seconds"] for r in history)
    median_eval = statistics.median(r["eval_seconds"] for r in evaluated)

    def hours(records):
        """(the recorded seconds' sum, the same epochs at the median) in hours."""
        recorded = sum(r["epoch_seconds"] + r.get("eval_seconds", 0.0) for r in records)
        at_median = (len(records) * median_epoch
                     + sum(METRICS[0] in r for r in records) * median_eval)
        return recorded / 3600, at_median / 3600

    reached = next((r["epoch"] for r in history if r.get(METRICS[0], 0.0) >= RECALL_MARK),
                   None)
    if reached is not None:
        recorded, at_median = hours(history[:reached])
        reached = dict(epoch=reached, hours=recorded, hours_at_median=at_median)
    by_700 = [r[METRICS[0]] for r in evaluated if r["epoch"] <= 700]
    measured = {"best recall@20": best[METRICS[0]],
                "best ndcg@20": max(r[METRICS[1]] for r in evaluated),
                "recall@20 by epoch 700": max(by_700) if by_700 and results["epochs_done"] >= 700
                else None}
    return dict(
        epochs_done=results["epochs_done"], best_epoch=best["epoch"],
        best={metric: best[metric] for metric in METRICS}, measured=measured,
        targets={name: dict(minimum=minimum, measured=measured[name],
                            passed=_verdict(measured[name], minimum, finished))
                 for name, minimum in TARGETS.items()},
        recall_018=reached, median_epoch_seconds=median_epoch, median_eval_seconds=median_eval,
        **dict(zip(("training_hours", "training_hours_at_median"), hours(history))))


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return cpu


def plot(path, results):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evaluated = [r for r in results["history"] if METRICS[0] in r]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for index, metric in enumerate(METRICS):
        color = f"C{index}"
        ax.plot([r["epoch"] for r in evaluated], [r[metric] for r in evaluated], marker="o",
                markersize=3, color=color, label=f"lightgcn_ext {metric}")
        ax.axhline(PAPER[metric], color=color, linestyle="--", linewidth=1,
                   label=f"paper {metric} ({PAPER[metric]})")
    ax.plot(list(AUTHORS_LOG), list(AUTHORS_LOG.values()), linestyle="none", marker="x",
            color="C3", label="authors' TensorFlow code, recall@20 (L = 4)")
    ax.set_xlabel("epoch")
    ax.set_title("Gowalla, the paper's setting (d 64, L 3, lr 1e-3, batch 2048, reg 1e-4)")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def report(summary, results, cmd, cpu):
    def number(value):
        return "not yet" if value is None else f"{value:.4f}"

    lines = [
        "# LightGCN on Gowalla, the paper's setting, on a CPU", "",
        f"Command (torch {results['versions']['torch']}, {results['device']['threads']} "
        f"threads, {cpu}):", "", f"    {cmd}", "",
        f"Epochs done: {summary['epochs_done']} of {results['config']['epochs']}; evaluation "
        f"every {results['config']['eval_every']} epochs (full ranking, training items "
        f"excluded).", "",
        "| | recall@20 | ndcg@20 |", "|---|---:|---:|",
        f"| paper (He et al., 2020) | {PAPER['recall@20']:.4f} | {PAPER['ndcg@20']:.4f} |",
        f"| LightGCN-PyTorch | {LIGHTGCN_PYTORCH['recall@20']:.4f} | "
        f"{LIGHTGCN_PYTORCH['ndcg@20']:.4f} |",
        f"| lightgcn_ext, best epoch ({summary['best_epoch']}) | "
        f"{summary['best']['recall@20']:.4f} | {summary['best']['ndcg@20']:.4f} |", "",
        "| target | minimum | measured | |", "|---|---:|---:|---|"]
    for name, target in summary["targets"].items():
        verdict = {True: "met", False: "NOT met", None: "not yet"}[target["passed"]]
        lines.append(f"| {name} | {target['minimum']:.4f} | {number(target['measured'])} | "
                     f"{verdict} |")
    reached = summary["recall_018"]
    lines += ["", (f"recall@20 first at or above {RECALL_MARK} at epoch {reached['epoch']}, after "
                   f"{reached['hours']:.2f} hours of training and evaluation "
                   f"({reached['hours_at_median']:.2f} hours at the median epoch and evaluation)."
                   if reached else f"recall@20 has not reached {RECALL_MARK} yet."),
              f"Median epoch {summary['median_epoch_seconds']:.1f} s, median evaluation "
              f"{summary['median_eval_seconds']:.1f} s; {summary['training_hours']:.2f} hours "
              f"in all, {summary['training_hours_at_median']:.2f} at the median. Hours are the "
              f"sum of the epochs' and evaluations' seconds in results.json (a piece that was "
              f"stopped and continued counts the stop); hours at the median are the epochs "
              f"times the median epoch plus the evaluations times the median evaluation.", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path, help="the run directory (holds results.json)")
    parser.add_argument("--name", default="gowalla-reproduction",
                        help="the published files' name under bench/published/")
    parser.add_argument("--out-dir", type=Path, default=PUBLISHED)
    args = parser.parse_args(argv)
    path = args.run / "results.json"
    if not path.is_file():
        sys.exit(f"publish_reproduction: error: {path} does not exist (RUN is a run directory "
                 f"of `python -m lightgcn_ext train`)")
    results = json.loads(path.read_text())
    wrong = check_setting(results)
    if wrong:
        sys.exit("publish_reproduction: error: not the paper's Gowalla setting: "
                 + "; ".join(wrong))
    try:
        summary = summarize(results)
    except ValueError as error:
        sys.exit(f"publish_reproduction: error: {error}")
    cmd, cpu = command(results["config"]), machine()
    base = args.out_dir / args.name
    atomic_write(base.with_suffix(".json"), json.dumps(
        dict(command=cmd, machine=cpu, summary=summary, results=results), indent=1))
    plot(base.with_suffix(".png"), results)
    text = report(summary, results, cmd, cpu)
    atomic_write(base.with_suffix(".md"), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
