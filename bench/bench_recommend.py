"""How fast `lightgcn-ext recommend` ranks: the top-k items of --users users
on a Gowalla-sized run (Gowalla's training graph when its files are found,
else a synthetic graph of its size), training items excluded, through
`lightgcn_ext.inference.top_items` (one propagation, then the users in
chunks: scores, the training items masked to -inf, torch.topk) and the raw-id
rows the command writes. A random model: the ranking's cost does not depend
on the weights.

The reference, timed in the same rounds: one propagation, the whole
users x items score matrix at once, its training items masked, one
torch.topk. Both give the same items (checked before timing).

    python -m bench.bench_recommend                # 10,000 users, k = 20, 2 threads
    python -m bench.bench_recommend --quick        # a smoke run, not judged

Target: 10,000 users at k = 20 in at most 2 s on 2 cores.
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch

from bench.bench_model import load_interactions
from bench.timing import time_interleaved, verdict
from lightgcn_ext import Graph, LightGCN
from lightgcn_ext.inference import Run, top_items
from lightgcn_ext.inference.recommend import recommendation_rows

TARGET_S = 2.0


def random_run(data, dim, layers, seed=0):
    """A Run of data with a random LightGCN (scores spread like a trained one's)."""
    torch.manual_seed(seed)
    model = LightGCN(data.num_nodes, dim, layers).eval()
    with torch.no_grad():
        model.embedding.weight.normal_()
    graph = Graph.from_edge_index(data.edge_index(), data.num_nodes)
    return Run(path=Path("."), model=model, graph=graph, data=data, results={},
               checkpoint="best", epoch=0)


def recommend(run, users, k):
    """What the command does once the run is loaded: top-k, then raw-id rows."""
    items, scores = top_items(run, users, k)
    return recommendation_rows(run, users, items, scores)


@torch.no_grad()
def unchunked(run, users, k):
    """The reference: the whole score matrix, then one topk."""
    data = run.data
    embedding = run.model.get_embedding(run.graph)
    scores = embedding[users] @ embedding[data.num_users:].t()
    row_of = torch.full((data.num_users,), -1, dtype=torch.int64)
    row_of[users] = torch.arange(users.numel())
    rows = row_of[data.train[0]]
    asked = rows >= 0
    scores[rows[asked], data.train[1][asked]] = float("-inf")
    return scores.topk(k, dim=1)


def cpu_seconds(fn):
    """The CPU time of one call of fn, all of the process's threads together."""
    start = time.process_time()
    fn()
    return time.process_time() - start


def check_same(run, users, k):
    """Ours and the reference recommend the same items with the same scores."""
    items, scores = top_items(run, users, k)
    ref_scores, ref_items = unchunked(run, users, k)
    same = (items == ref_items).float().mean().item()
    if same < 0.999 or not torch.allclose(scores, ref_scores, rtol=1e-4, atol=1e-4):
        sys.exit(f"error: the chunked top-k differs from the reference ({same:.4f} of the "
                 f"places agree)")
    return same


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--data", choices=["auto", "gowalla", "synthetic"], default="auto")
    parser.add_argument("--users", type=int, default=10_000, help="users to recommend for")
    parser.add_argument("--k", type=int, default=20, help="items per user")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=2.0,
                        help="seconds per implementation and round")
    parser.add_argument("--quick", action="store_true", help="a small graph, short runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.min_run_time = 1, 0.05
    torch.set_num_threads(args.threads)
    data = load_interactions(args)
    run = random_run(data, args.dim, args.layers)
    generator = torch.Generator().manual_seed(0)
    users = torch.randperm(data.num_users, generator=generator)[:args.users]
    print(f"# recommend benchmark: {data!r}, {users.numel():,} users, k = {args.k}, "
          f"d = {args.dim}, L = {args.layers}, {args.threads} threads, torch "
          f"{torch.__version__}", flush=True)
    same = check_same(run, users, args.k)
    ms = time_interleaved({"ours": lambda: recommend(run, users, args.k),
                           "reference": lambda: unchunked(run, users, args.k)},
                          torch.device("cpu"), args.rounds, args.min_run_time, args.threads)
    ours_s, reference_s = ms["ours"] / 1e3, ms["reference"] / 1e3
    cpu = {name: cpu_seconds(fn) for name, fn in (("ours", lambda: recommend(run, users, args.k)),
                                                  ("reference", lambda: unchunked(run, users,
                                                                                  args.k)))}
    print(f"the same items as the reference in {same:.2%} of the places")
    print("")
    print("| implementation | seconds | CPU seconds, all threads | score matrix held at once |")
    print("|---|---:|---:|---:|")
    print(f"| lightgcn_ext recommend (chunked top-k, raw-id rows) | {ours_s:.3f} | "
          f"{cpu['ours']:.3f} | one chunk of users |")
    print(f"| reference: whole score matrix, one torch.topk | {reference_s:.3f} | "
          f"{cpu['reference']:.3f} | {users.numel() * data.num_items * 4 / 2**20:,.0f} MiB |")
    print("")
    print(f"Load average of the machine at the end: {os.getloadavg()[0]:.1f} (on a machine "
          f"busy with other work, the seconds stretch; the CPU seconds less so)")
    print("")
    print(f"{users.numel():,} users at k = {args.k} in {ours_s:.2f} s, target at most "
          f"{TARGET_S:.0f} s: {verdict(ours_s <= TARGET_S, TARGET_S / ours_s, not args.quick)}"
          f" under")
    return 0


if __name__ == "__main__":
    sys.exit(main())
