"""Full-ranking evaluation (recall/ndcg/precision/hit@k), the fused top-k against the
torch top-k, side by side in one process.

    python -m bench.bench_evaluate --threads 2          # Gowalla when found, else synthetic
    python -m bench.bench_evaluate --weights runs/x/checkpoint.pt   # a trained model's table
    python -m bench.bench_evaluate --quick              # a small graph: the smoke test

Both paths rank every item for every test user, training items excluded, in the
same chunks of users:
  * new: lightgcn_ext.evaluation.ranking_metrics as it is: one op per chunk
    (lightgcn_ext::score_topk_unseen) scores its blocks of users, one block per
    thread (oneDNN where torch has it, else torch's matmul), each straight into a
    one-pass top-k;
  * old: the same chunks scored with torch's matmul, the excluded scores set
    to -inf, torch.topk with the lower-id tie rule (what the evaluation did before
    the op).
They must give the same metrics to the last bit (checked before timing). The
rounds interleave the two, so that a slow spell of a shared machine hits both;
the times are medians. Also timed: the products alone (both kinds), a chunk at
once over all threads, what a top-k after such products would add to.

The embedding is LightGCN's propagated table of a model with the default
initialization (seed 0), or of the weights in --weights (a run's checkpoint.pt or
best.pt). A random table has few ties: the report says how many test users have
equal 20th and 21st best unseen scores.
"""
import argparse
import json
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

import torch

import lightgcn_ext
from bench.bench_model import load_interactions, load_average
from lightgcn_ext import LightGCN
from lightgcn_ext.evaluation import metrics, ranking_metrics
from lightgcn_ext.training.run_files import atomic_write, load_file

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 2.0  # Gowalla, 2 CPU threads


@contextmanager
def old_path():
    """The evaluation as it was: one torch matmul per chunk, torch's top-k."""
    with mock.patch.object(metrics, "_fused_topk", lambda device: False), \
            mock.patch.object(metrics, "_scores", lambda users, items: users @ items.t()):
        yield


def embedding_table(data, args):
    torch.manual_seed(0)
    model = LightGCN(data.num_nodes, args.dim, args.layers)
    if args.weights:
        saved = load_file(args.weights)["model"]
        model.load_state_dict(saved)
    graph = lightgcn_ext.Graph.from_edge_index(data.edge_index(), data.num_nodes)
    with torch.no_grad():
        emb = model.get_embedding(graph)
    return emb[:data.num_users], emb[data.num_users:]


def tied_users(users, items, data, k=20, sample=2000):
    """Of `sample` test users, how many have equal k-th and (k+1)-th best unseen scores."""
    test_users = data.test[0].unique()[:sample]
    scores = users[test_users] @ items.t()
    train = data.train
    mask = torch.isin(train[0], test_users)
    row = torch.searchsorted(test_users, train[0][mask])
    scores[row, train[1][mask]] = float("-inf")
    top = scores.topk(k + 1, dim=1).values
    return int((top[:, k - 1] == top[:, k]).sum()), test_users.numel()


def products_only(users, items, test_users, chunk_size, onednn):
    """Every chunk's scores, nothing else, each chunk one product over all threads:
    what a top-k after such products would add to (the new path, one block per
    thread, can go under it)."""
    items = items.contiguous()
    for start in range(0, test_users.numel(), chunk_size):
        block = users[test_users[start:start + chunk_size]]
        if onednn:
            metrics._scores(block, items)
        else:
            block @ items.t()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", choices=["auto", "gowalla", "synthetic"], default="auto")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--weights", type=Path, default=None,
                        help="a run's checkpoint.pt or best.pt whose model to evaluate")
    parser.add_argument("--ks", type=int, nargs="+", default=[20])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="a small graph, one round")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 1
    torch.set_num_threads(args.threads)
    data = load_interactions(args)
    users, items = embedding_table(data, args)
    kwargs = dict(exclude=[data.train], ks=tuple(args.ks))

    new = ranking_metrics(users, items, data.test, **kwargs)
    with old_path():
        old = ranking_metrics(users, items, data.test, **kwargs)
    same = new == old
    ties, sampled = tied_users(users, items, data, k=max(args.ks))
    test_users = data.test[0].unique()
    chunk = metrics._check_chunk_size(None, data.num_items)

    workloads = {
        "new": lambda: ranking_metrics(users, items, data.test, **kwargs),
        "old": lambda: _old(users, items, data, kwargs),
        "products (oneDNN where available)": lambda: products_only(users, items, test_users,
                                                                   chunk, True),
        "products (torch matmul)": lambda: products_only(users, items, test_users, chunk, False),
    }
    times = {name: [] for name in workloads}
    for _ in range(args.rounds):
        for name, fn in workloads.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    seconds = {name: statistics.median(t) for name, t in times.items()}

    machine = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name")), "cpu")
    ratio = seconds["old"] / seconds["new"]
    passed = seconds["new"] <= TARGET_SECONDS
    lines = [
        f"# Full-ranking evaluation benchmark ({time.strftime('%Y-%m-%d %H:%M:%S')})", "",
        f"- cpu ({machine}), {args.threads} threads, torch {torch.__version__}",
        f"- data: {data.name}, {data.num_users:,} users x {data.num_items:,} items, "
        f"{data.test.shape[1]:,} test pairs ({test_users.numel():,} test users), "
        f"{data.train.shape[1]:,} excluded training pairs; d={args.dim}, L={args.layers}",
        f"- embedding: {'weights of ' + str(args.weights) if args.weights else 'initial model (seed 0)'}"
        f"; {ties} of {sampled} sampled test users have tied k-th and (k+1)-th best unseen "
        f"scores (k={max(args.ks)})",
        f"- chunks of {chunk} users; medians of {args.rounds} interleaved rounds; "
        f"load average before: {load_average()}", "",
        "| path | seconds |", "|---|---:|",
        *[f"| {name} | {s:.2f} |" for name, s in seconds.items()], "",
        f"- metrics of the two paths identical to the last bit: {'yes' if same else 'NO'} "
        f"({', '.join(f'{k} {v:.6f}' for k, v in new.items() if k != 'num_users')})",
        f"- new over old: {ratio:.2f}x faster",
        f"- target new <= {TARGET_SECONDS:.0f} s: "
        + (f"not judged (--quick): {seconds['new']:.2f} s" if args.quick else
           f"{'PASS' if passed else 'FAIL'}: {seconds['new']:.2f} s"),
    ]
    print("\n".join(lines), flush=True)
    report = dict(seconds=seconds, ratio=ratio, identical=same, metrics=new, old_metrics=old,
                  tied_users=ties, sampled_users=sampled, chunk_size=chunk,
                  threads=args.threads, data=data.name, target_seconds=TARGET_SECONDS,
                  passed=passed)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = args.results_dir / f"evaluate-cpu-{time.strftime('%Y%m%d-%H%M%S')}"
    atomic_write(stem.with_suffix(".md"), "\n".join(lines) + "\n")
    atomic_write(stem.with_suffix(".json"), json.dumps(report, indent=2))
    print(f"\nwritten to {stem}.md and .json")
    if not same:
        raise SystemExit("error: the two paths' metrics differ")


def _old(users, items, data, kwargs):
    with old_path():
        return ranking_metrics(users, items, data.test, **kwargs)


if __name__ == "__main__":
    main()
