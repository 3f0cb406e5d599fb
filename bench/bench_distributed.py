"""Row-partitioned training on one machine: what each rank sends against what
it computes (the partition plan), one round's product both ways (our fused
op, torch.sparse's addmm_), the time per BPR step for P = 1, 2, 4 processes
beside a model's prediction, and the peak memory of each process.

    python -m bench.bench_distributed                  # Gowalla when found; writes
                                                       # bench/results/distributed.{json,md}
    python -m bench.bench_distributed --quick          # small graphs: the smoke test

The steps are the trainer's: lightgcn_ext.training.LocalWorker.step for one process (all the
machine's threads), lightgcn_ext.distributed.DistributedWorker.step for P processes launched by
torchrun (gloo over loopback, threads split between them). Every run starts
from the same seed, so the first losses must agree before anything is timed.

Traffic per rank and layer is counted from the partition plan: the halo rows
it receives and sends (float32, d floats each); a step sends them in the
forward pass and again, reversed, in the backward pass, and fetches the rows
of its slice of the batch (at most 3 B / P rows, their gradients back). For a
graph too large to build here (10^7 users, 10^8 interactions) the halo is the
expectation under random wiring with the same degrees: node j of block s is in
rank r's halo unless none of its deg_j neighbours lies in r's rows,
1 - (1 - m_r)^deg_j, m_r the share of the other side's edge ends that r owns.
The same formula is printed beside the exact plan of the graphs built here.

The time model: compute is the single process's 1-thread step scaled by the
largest rank's share of the partition cost, slowed by P / cores when the
processes outnumber the cores; communication is 2 L S + 2 collectives per
step (S the exchanges of a layer: P - 1 rounds, each cut into sub-rounds of at
most 64Ki rows) at the measured loopback latency plus the bytes at the
measured all_to_all bandwidth.
"""
import argparse
import dataclasses
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.bench_model import load_average, load_interactions
from bench.timing import time_interleaved, verdict
from lightgcn_ext import Graph, distributed, propagate
from lightgcn_ext.data import read_dir, synthetic
from lightgcn_ext.distributed.graph import Block
from lightgcn_ext.training import LocalWorker, TrainConfig
from lightgcn_ext.training.run_files import atomic_write, git_commit

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
FLOAT_BYTES = 4
MEMORY_TARGET = 0.35  # the bound on a rank's peak over the single process's, P = 4


# ------------------------------------------------------------------ the plan
def halo_matrix(edge_index, bounds):
    """H[r, s]: the distinct sources in block s that rank r's rows touch (r != s)."""
    num_nodes = bounds[-1]
    src, dst = edge_index[0], edge_index[1]
    keys = torch.unique(distributed.owner_of(dst, bounds) * num_nodes + src)
    rank, source = keys // num_nodes, distributed.owner_of(keys % num_nodes, bounds)
    P = len(bounds) - 1
    matrix = torch.zeros(P * P, dtype=torch.long).index_add_(
        0, rank * P + source, torch.ones_like(rank)).view(P, P)
    return matrix.fill_diagonal_(0)


def expected_halo(user_degree, item_degree, bounds):
    """H[r, s] expected under random wiring with these degrees (see the module's doc)."""
    degree = torch.cat([user_degree, item_degree]).double()
    num_users = user_degree.numel()
    P = len(bounds) - 1
    block = lambda t, s: t[bounds[s]:bounds[s + 1]]  # noqa: E731
    is_user = torch.arange(degree.numel()) < num_users
    matrix = torch.zeros(P, P, dtype=torch.float64)
    for r in range(P):
        # the share of user and item edge ends in r's rows
        ends = block(degree, r)
        users_r = ends[block(is_user, r)].sum() / user_degree.sum()
        items_r = ends[~block(is_user, r)].sum() / item_degree.sum()
        share = torch.where(is_user, items_r, users_r)  # a user's neighbours are items
        touched = 1 - (1 - share).pow(degree)
        for s in range(P):
            if s != r:
                matrix[r, s] = block(touched, s).sum()
    return matrix


def plan_rows(degree, halo, bounds, dim, layers, batch_size, num_edges):
    """Per rank: rows, edges, bytes sent per layer and per step, and the
    bytes sent per multiply-add of its sweep."""
    rows = []
    P = len(bounds) - 1
    for r in range(P):
        edges = int(degree[bounds[r]:bounds[r + 1]].sum())
        sent_rows = float(halo[:, r].sum())  # what the others take from r
        per_layer = sent_rows * dim * FLOAT_BYTES
        fetch = 0 if P == 1 else min(3 * batch_size / P, bounds[r + 1] - bounds[r]) * dim * \
            FLOAT_BYTES
        per_step = 2 * layers * per_layer + 2 * fetch
        rows.append(dict(rank=r, nodes=bounds[r + 1] - bounds[r], edges=edges,
                         edge_share=edges / num_edges, rows_sent_per_layer=sent_rows,
                         bytes_sent_per_layer=per_layer, bytes_sent_per_step=per_step,
                         bytes_per_madd=per_layer / max(edges * dim, 1)))
    return rows


def interaction_degrees(data):
    degree = distributed.interaction_degree(data)
    return degree, degree[:data.num_users], degree[data.num_users:]


def big_degrees(num_users, num_items, num_interactions, exponent=0.8, seed=0):
    """Zipf-like degree sequences (synthetic's law) summing to about
    num_interactions on each side, at least 1, in random order."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for n in (num_users, num_items):
        weight = torch.arange(1, n + 1, dtype=torch.float64).pow(-exponent)
        degree = (weight / weight.sum() * (num_interactions - n)).floor().long() + 1
        out.append(degree[torch.randperm(n, generator=gen)])
    return out


def plan_report(name, data_or_degrees, worlds, args):
    """The plan of a graph for each P: exact (when the graph is built) and expected."""
    if isinstance(data_or_degrees, tuple):
        user_degree, item_degree = data_or_degrees
        degree, edge_index = torch.cat([user_degree, item_degree]), None
    else:
        degree, user_degree, item_degree = interaction_degrees(data_or_degrees)
        edge_index = data_or_degrees.edge_index()
    num_edges = int(degree.sum())
    report = dict(graph=name, num_nodes=degree.numel(), num_edges=num_edges, worlds={})
    for P in worlds:
        bounds = distributed.partition(degree, P)
        expected = expected_halo(user_degree, item_degree, bounds)
        exact = halo_matrix(edge_index, bounds) if edge_index is not None else None
        halo = exact if exact is not None else expected
        report["worlds"][P] = dict(
            bounds=bounds, ranks=plan_rows(degree, halo, bounds, args.dim, args.layers,
                                           args.batch_size, num_edges),
            halo_rows_exact=None if exact is None else int(exact.sum()),
            halo_rows_expected=float(expected.sum()))
    return report


# ------------------------------------------------------------ the launches
EVALUATED_EVERY = 1000  # users, in the memory runs' evaluation


def worker(args):
    """One process of a timing or memory run (under torchrun when P > 1)."""
    import torch.distributed as dist

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(args.threads)
    if world_size > 1:
        distributed.map_sub_round_buffers(args.dim)  # as train_distributed does, before the data
    data = read_dir(args.data_dir, "bench") if args.data_dir else load_interactions(args)
    if args.evaluate:  # every 1000th user's test items: the memory of a full evaluation,
        # whose time is in the number of users (all of them: minutes here)
        data = dataclasses.replace(data, test=data.test[:, data.test[0] % EVALUATED_EVERY == 0])
    config = TrainConfig(dim=args.dim, layers=args.layers, batch_size=args.batch_size, seed=0)
    if world_size > 1:
        distributed.init_process_group("gloo")
        trainee = distributed.DistributedWorker(config, data, torch.device("cpu"))
    else:
        trainee = LocalWorker(config, data, torch.device("cpu"))
    barrier = dist.barrier if world_size > 1 else (lambda: None)
    batches = trainee.sampler.epoch(trainee.generator)
    times, losses = [], []
    for _ in range(args.warmup + args.steps):
        batch = next(batches)
        barrier()
        start = time.perf_counter()
        loss = trainee.step(*batch)
        barrier()
        times.append((time.perf_counter() - start) * 1e3)
        if world_size > 1:
            dist.all_reduce(loss)
        losses.append(loss.item())
    result = dict(world_size=world_size, threads=args.threads, step_ms=times[args.warmup:],
                  losses=losses, peak_rss_mb=peak_rss_mib())
    if args.evaluate:  # then one evaluation (test split), whose peak may be higher
        result["metrics"] = trainee.evaluate("test")
        result["peak_rss_with_evaluation_mb"] = peak_rss_mib()
    results = [result]
    if world_size > 1:
        result.update(trainee.graph.plan(), **loopback(dist))
        results = [None] * world_size
        dist.all_gather_object(results, result)
        del trainee, batches
        distributed.close()
    if int(os.environ.get("RANK", "0")) == 0:
        Path(args.result_file).write_text(json.dumps(results))



def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def loopback(dist, rounds=20):
    """all_to_all_single's latency (empty) and bandwidth (8 MiB to each peer) here."""
    P = dist.get_world_size()

    def timed(rows):
        send = torch.zeros(rows * P, 64)
        receive = torch.empty_like(send)
        dist.all_to_all_single(receive, send)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(rounds):
            dist.all_to_all_single(receive, send)
        return (time.perf_counter() - start) / rounds, send.numel() * FLOAT_BYTES * (P - 1) / P

    latency, _ = timed(0)
    seconds, sent = timed(32768)
    return dict(latency_ms=latency * 1e3, bandwidth_gbs=sent / max(seconds - latency, 1e-9) / 1e9)


def launch(world_size, threads, args, data_dir=None, steps=None, evaluate=False):
    """Runs `worker` in world_size fresh processes; returns each rank's result."""
    with tempfile.TemporaryDirectory() as tmp:
        result_file = Path(tmp) / "result.json"
        options = ["--worker", "--threads", str(threads), "--result-file", str(result_file),
                   "--dim", str(args.dim), "--layers", str(args.layers), "--batch-size",
                   str(args.batch_size), "--steps", str(steps or args.steps), "--warmup",
                   str(args.warmup), "--data", args.data] + (["--quick"] if args.quick else []) \
            + (["--data-dir", str(data_dir)] if data_dir else []) \
            + (["--evaluate"] if evaluate else [])
        if world_size == 1:
            command = [sys.executable, "-m", "bench.bench_distributed", *options]
        else:
            command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                       str(world_size), "--master-port", str(free_port()),
                       "-m", "bench.bench_distributed", *options]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"error: the run with {world_size} processes failed:\n{done.stderr[-3000:]}")
        return json.loads(result_file.read_text())


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def check_losses(runs):
    """Every run's losses are the single process's (float32 rounding)."""
    reference = runs[0][0]["losses"]
    for ranks in runs[1:]:
        worst = max(abs(a - b) / abs(b) for a, b in zip(ranks[0]["losses"], reference))
        if worst > 1e-5:
            sys.exit(f"error: {ranks[0]['world_size']} processes' losses differ from 1 "
                     f"process's by {worst:.2e} (relative): nothing is reported")
        ranks[0]["loss_max_rel_diff"] = worst


def timing(args, plan, cores):
    single = launch(1, cores, args)
    single_one_thread = launch(1, 1, args)
    runs = [single] + [launch(P, max(1, cores // P), args) for P in args.worlds if P > 1]
    check_losses([single_one_thread] + runs)
    rows = []
    t1 = statistics.median(single_one_thread[0]["step_ms"])
    for ranks in runs:
        P = ranks[0]["world_size"]
        # a step is as slow as its slowest rank: the medians of the per-step maxima
        measured = statistics.median(max(r["step_ms"][i] for r in ranks)
                                     for i in range(len(ranks[0]["step_ms"])))
        row = dict(world_size=P, threads_per_process=ranks[0]["threads"],
                   measured_step_ms=measured, loss_max_rel_diff=ranks[0].get(
                       "loss_max_rel_diff", 0.0))
        if P > 1:
            ranks_plan = plan["worlds"][P]["ranks"]
            share = max(cost_share(plan, P, r) for r in range(P))
            compute = t1 * share * max(1.0, P / cores)
            latency = statistics.median(r["latency_ms"] for r in ranks)
            bandwidth = statistics.median(r["bandwidth_gbs"] for r in ranks)
            sent = max(r["bytes_sent_per_step"] for r in ranks_plan)
            collectives = 2 * args.layers * ranks[0]["collectives"] + 2
            comm = collectives * latency + sent / (bandwidth * 1e9) * 1e3
            row.update(predicted_step_ms=compute + comm, predicted_compute_ms=compute,
                       collectives_per_step=collectives,
                       predicted_comm_ms=comm, latency_ms=latency, bandwidth_gbs=bandwidth,
                       plan_matches=all(r["rows_sent"] == ranks_plan[r["rank"]][
                           "rows_sent_per_layer"] for r in ranks))
        rows.append(row)
    return dict(single_one_thread_step_ms=t1, rows=rows)


def cost_share(plan, P, r):
    """Rank r's share of the partition cost (its edges plus the average degree per row)."""
    ranks = plan["worlds"][P]["ranks"]
    mean_degree = plan["num_edges"] / plan["num_nodes"]
    cost = [x["edges"] + x["nodes"] * mean_degree for x in ranks]
    return cost[r] / sum(cost)


def memory(args, cores):
    """Peak RSS of every process for a few steps on a synthetic graph of
    args.memory_nodes nodes, written once to disk and read by each process."""
    users = int(args.memory_nodes * 0.7)
    data = synthetic(0, num_users=users, num_items=args.memory_nodes - users,
                     num_interactions=3 * users)
    with tempfile.TemporaryDirectory() as tmp:
        for split in ("train", "test"):
            write_lists(Path(tmp) / f"{split}.txt", getattr(data, split), data.num_users)
        description = dict(num_users=data.num_users, num_items=data.num_items,
                           num_train=int(data.train.shape[1]), num_nodes=data.num_nodes)
        del data
        single = launch(1, cores, args, data_dir=tmp, steps=args.memory_steps, evaluate=True)
        four = launch(4, max(1, cores // 4), args, data_dir=tmp, steps=args.memory_steps,
                      evaluate=True)
    check_losses([single, four])
    # Float32 rounding may flip a tie in a ranking: a hit of one user at most.
    if max(abs(four[0]["metrics"][k] - v) for k, v in single[0]["metrics"].items()) > 1e-4:
        sys.exit(f"error: 4 processes evaluate to {four[0]['metrics']}, 1 process to "
                 f"{single[0]['metrics']}: nothing is reported")
    peak = max(r["peak_rss_mb"] for r in four)
    return dict(graph=description, single_peak_rss_mb=single[0]["peak_rss_mb"],
                rank_peak_rss_mb=[r["peak_rss_mb"] for r in four],
                single_peak_with_evaluation_mb=single[0]["peak_rss_with_evaluation_mb"],
                rank_peak_with_evaluation_mb=[r["peak_rss_with_evaluation_mb"] for r in four],
                ratio=peak / single[0]["peak_rss_mb"], target=MEMORY_TARGET,
                step_ms_single=statistics.median(single[0]["step_ms"]),
                step_ms_four=statistics.median(four[0]["step_ms"]))


def round_choice(args):
    """One round as the memory graph's largest rank runs one (its owned rows,
    a halo of 300,000 rows, 10^6 edges of random wiring), applied both ways
    the design allows, interleaved, 1 thread (a rank's): our fused op on the
    square operator of max(owned, halo) rows (alpha = [0, 1], its output
    sliced and added to the layer's rows), and torch.sparse's in-place
    addmm_ on the rectangular block, which DistributedGraph runs."""
    owned, halo, edges = (3_000, 1_000, 10_000) if args.quick else (583_271, 300_000, 10**6)
    gen = torch.Generator().manual_seed(0)
    dst = torch.randint(0, owned, (edges,), generator=gen)
    src = torch.randint(0, halo, (edges,), generator=gen)
    weight = torch.rand(edges, generator=gen, dtype=torch.float64)
    size = max(owned, halo)
    # Unnormalized: the block's weights as they are, as the CsrOperator of a
    # weighted graph without normalization applies them.
    square = Graph.from_edge_index(torch.stack([src, dst]), size, weight, normalize=False)
    block = Block(src, dst, weight, halo, owned).matrices(torch.float32)[0]
    rows = torch.randn(size, args.dim, generator=gen)
    received = rows[:halo].contiguous()
    one_hop = torch.tensor([0.0, 1.0])
    layer = torch.zeros(owned, args.dim)
    fused = propagate(square, rows, one_hop)[:owned]
    difference = (fused - layer.addmm_(block, received)).abs().max().item()
    if difference > 1e-4 * fused.abs().max().item():
        sys.exit(f"error: the round's two products differ by {difference:.2e}: nothing is timed")
    del fused
    workloads = {"fused": lambda: layer.add_(propagate(square, rows, one_hop)[:owned]),
                 "addmm": lambda: layer.addmm_(block, received)}
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        times = time_interleaved(workloads, torch.device("cpu"), 3, 0.05 if args.quick else 1.0,
                                 1, min_runs=3)
    finally:
        torch.set_num_threads(previous)
    return dict(owned=owned, halo=halo, edges=edges, fused_op_ms=times["fused"],
                addmm_ms=times["addmm"])


def write_lists(path, pairs, num_users):
    """pairs in the LightGCN text format (one line per user), for read_dir."""
    order = torch.argsort(pairs[0], stable=True)
    users, items = pairs[0][order], pairs[1][order]
    counts = torch.bincount(users, minlength=num_users).tolist()
    items = items.tolist()
    with open(path, "w") as f:
        at = 0
        for user, count in enumerate(counts):
            f.write(" ".join(map(str, [user] + items[at:at + count])) + "\n")
            at += count


# ------------------------------------------------------------------ report
def mb(n):
    return f"{n / 2**20:,.1f}"


def format_report(results, args):
    lines = [f"# Distributed LightGCN on one machine ({results['when']})", "",
             f"- {results['machine']}, {results['cores']} cores, gloo over loopback, "
             f"load average {results['load']}",
             f"- d={args.dim}, L={args.layers}, float32, BPR batch {args.batch_size}; "
             f"torch {torch.__version__}, commit {results['commit']}", "",
             "## Traffic per rank (from the partition plan)", "",
             "| graph | P | rank | nodes | edges | rows sent / layer | MB sent / layer | "
             "MB sent / step | bytes sent per multiply-add | halo rows: plan / random-wiring "
             "formula |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for plan in results["plans"]:
        for P, world in plan["worlds"].items():
            exact = world["halo_rows_exact"]
            halo = f"{exact:,} / {world['halo_rows_expected']:,.0f}" if exact is not None else \
                f"- / {world['halo_rows_expected']:,.0f}"
            for row in world["ranks"]:
                lines.append(
                    f"| {plan['graph']} (N {plan['num_nodes']:,}, E {plan['num_edges']:,}) | {P} "
                    f"| {row['rank']} | {row['nodes']:,} | {row['edges']:,} | "
                    f"{row['rows_sent_per_layer']:,.0f} | {mb(row['bytes_sent_per_layer'])} | "
                    f"{mb(row['bytes_sent_per_step'])} | {row['bytes_per_madd']:.4f} | "
                    f"{halo if row['rank'] == 0 else ''} |")
    one = results["round"]
    lines += ["", f"## One round: {one['owned']:,} owned rows, {one['halo']:,} halo rows, "
              f"{one['edges']:,} edges, 1 thread", "",
              "| product | ms |", "|---|---:|",
              f"| our fused op, square over max(owned, halo) rows, output sliced and added | "
              f"{one['fused_op_ms']:.1f} |",
              f"| torch.sparse CSR addmm_, rectangular, in place (DistributedGraph's) | "
              f"{one['addmm_ms']:.1f} |"]
    timing_ = results["timing"]
    lines += ["", f"## Time per BPR step ({results['timing_graph']})", "",
              "| P | threads per process | measured ms | predicted ms (compute + communication) "
              "| max loss difference vs 1 process |", "|---:|---:|---:|---:|---:|"]
    for row in timing_["rows"]:
        predicted = "-" if "predicted_step_ms" not in row else \
            f"{row['predicted_step_ms']:.1f} ({row['predicted_compute_ms']:.1f} + " \
            f"{row['predicted_comm_ms']:.1f})"
        lines.append(f"| {row['world_size']} | {row['threads_per_process']} | "
                     f"{row['measured_step_ms']:.1f} | {predicted} | "
                     f"{row['loss_max_rel_diff']:.1e} |")
    loop = [r for r in timing_["rows"] if "latency_ms" in r]
    lines += ["", f"1 process, 1 thread: {timing_['single_one_thread_step_ms']:.1f} ms per step; "
              + "; ".join(f"P={r['world_size']}: {r['collectives_per_step']} collectives per "
                          f"step, loopback latency {r['latency_ms']:.3f} ms, "
                          f"bandwidth {r['bandwidth_gbs']:.2f} GB/s" for r in loop)]
    memory_ = results.get("memory")
    if memory_:
        g = memory_["graph"]
        judged = verdict(memory_["ratio"] <= memory_["target"], memory_["ratio"],
                         judged=not args.quick)
        lines += ["", f"## Peak memory, {g['num_nodes']:,} nodes ({g['num_users']:,} users, "
                  f"{g['num_train']:,} training pairs)", "",
                  "| run | peak RSS MiB per process |", "|---|---:|",
                  f"| 1 process | {memory_['single_peak_rss_mb']:,.0f} |",
                  f"| 4 processes | {', '.join(f'{m:,.0f}' for m in memory_['rank_peak_rss_mb'])} |",
                  f"| 1 process, then one evaluation (every {EVALUATED_EVERY}th user) | "
                  f"{memory_['single_peak_with_evaluation_mb']:,.0f} |",
                  f"| 4 processes, then one evaluation (every {EVALUATED_EVERY}th user) | "
                  f"{', '.join(f'{m:,.0f}' for m in memory_['rank_peak_with_evaluation_mb'])} |",
                  "", f"- the largest rank's peak is {memory_['ratio']:.3f}x the single "
                  f"process's (target <= {memory_['target']}): {judged}",
                  f"- with one evaluation after the steps: "
                  f"{max(memory_['rank_peak_with_evaluation_mb']) / memory_['single_peak_with_evaluation_mb']:.3f}x"]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", choices=["auto", "gowalla", "synthetic"], default="auto",
                        help="the timing graph: Gowalla when found, else synthetic Gowalla-sized")
    parser.add_argument("--quick", action="store_true", help="small graphs, few steps")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--worlds", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--memory-nodes", type=int, default=2_000_000)
    parser.add_argument("--memory-steps", type=int, default=3)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", default=str(RESULTS / "distributed"),
                        help="writes OUT.json and OUT.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--evaluate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.memory_nodes, args.memory_steps = 3, 1, 4000, 2
        args.batch_size = min(args.batch_size, 256)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    cores = len(os.sched_getaffinity(0))
    data = load_interactions(args)
    plans = [plan_report(data.name, data, args.worlds, args)]
    if not args.quick:
        plans.append(plan_report("synthetic 10^7 users x 10^8 interactions (formula)",
                                 tuple(big_degrees(10**7, 10**6, 10**8)), args.worlds, args))
    results = dict(when=time.strftime("%Y-%m-%d %H:%M:%S"), cores=cores, load=load_average(),
                   machine=next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                 if line.startswith("model name")), "cpu"),
                   commit=git_commit(short=True),
                   plans=plans, timing_graph=f"{data.name}, N {data.num_nodes:,}",
                   args=vars(args))
    results["round"] = round_choice(args)
    results["timing"] = timing(args, plans[0], cores)
    if not args.no_memory:
        results["memory"] = memory(args, cores)
    report = format_report(results, args)
    print(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out.with_suffix(".json"), json.dumps(results, indent=2))
    atomic_write(out.with_suffix(".md"), report + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
