"""The GPU targets of lightgcn_ext, side by side in one run (issue 9):

  * forward and forward + backward against torch.sparse.mm on a precomputed
    normalized CSR (cuSPARSE on CUDA, MKL on CPU) on Gowalla and on a graph
    with long rows (10,000 nodes, 1.3 million edges, item degrees in the
    thousands);
  * bfloat16 and float16 against our float32;
  * the merge-path item size (LIGHTGCN_EXT_CUDA_ITEM_SIZE), swept;
  * each sweep's achieved bandwidth: the bytes a sweep must move
    (bench_propagate.sweep_bytes) over its time, and on CUDA its time against
    those bytes at the measured DRAM and L2 bandwidths (gpu_floors);
  * a BPR step (batch 2048, Adam): eager, and captured in a CUDA graph
    (lightgcn_ext.training.cuda_graph.CapturedBPRStep), with the host synchronizations
    of the eager step counted (torch.cuda.set_sync_debug_mode("warn")).

    python -m bench.bench_cuda                    # CUDA, Gowalla when found
    python -m bench.bench_cuda --device cpu --quick   # the harness on a small graph

Times are medians of CUDA events (torch.utils.benchmark on CPU), every
implementation timed in interleaved rounds. Results: a markdown table on
stdout and in <results-dir>/cuda-<date>.md, with a JSON file beside it.
"""
import argparse
import copy
import datetime
import json
import os
import platform
import warnings
from pathlib import Path

import torch

import lightgcn_ext
from bench.bench_propagate import gowalla_root, gpu_floors, sweep_bytes
from bench.timing import sync, time_interleaved
from bench.reference import GOWALLA_SIZES, normalized_adjacency, sparse_propagate
from lightgcn_ext.data import BPRSampler, read_dir, synthetic
from lightgcn_ext.training import bpr_step
from lightgcn_ext.training.run_files import atomic_write, git_commit

REPO = Path(__file__).resolve().parents[1]
ITEM_SIZE_ENV = "LIGHTGCN_EXT_CUDA_ITEM_SIZE"
ITEM_SIZES = (32, 64, 128, 256, 512, 1024)
warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")


def graphs(args):
    """{name: Interactions}: Gowalla (or its synthetic stand-in) and the long-row graph."""
    if args.quick:
        return {"synthetic (quick)": synthetic(0, num_users=1000, num_items=1500,
                                                         num_interactions=20000),
                "long rows (quick)": synthetic(0, num_users=600, num_items=400,
                                               num_interactions=20000, communities=1,
                                               exponent=1.0)}
    found = gowalla_root()
    gowalla = (read_dir(found, "gowalla") if found is not None
               else synthetic(0, **GOWALLA_SIZES))
    name = "Gowalla train" if found is not None else "synthetic Gowalla-sized"
    # Movie-ratings-like: few nodes, many edges, Zipf item popularity.
    long_rows = synthetic(0, num_users=6000, num_items=4000, num_interactions=650_000,
                          communities=1, exponent=1.0)
    return {name: gowalla, "long rows (10k nodes, 1.3M edges)": long_rows}


def time_propagation(label, data, args, device, rows):
    """Forward and forward + backward of ours (each dtype) and of torch.sparse.mm."""
    edge_index = data.edge_index().to(device)
    n = data.num_nodes
    graph = lightgcn_ext.Graph.from_edge_index(edge_index, n)
    alpha = [1.0 / (args.layers + 1)] * (args.layers + 1)
    gen = torch.Generator().manual_seed(0)
    x32 = torch.randn(n, args.dim, generator=gen).to(device)
    grad32 = torch.randn(n, args.dim, generator=gen).to(device)
    adj = normalized_adjacency(edge_index, n, torch.float32, layout=torch.sparse_csr)

    workloads, inputs = {}, {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = x32.to(dtype).requires_grad_()
        grad = grad32.to(dtype)
        inputs[dtype] = x
        workloads[f"ours {_short(dtype)} forward"] = \
            lambda x=x: lightgcn_ext.propagate(graph, x.detach(), alpha)
        workloads[f"ours {_short(dtype)} fwd+bwd"] = \
            lambda x=x, grad=grad: lightgcn_ext.propagate(graph, x, alpha).backward(grad)
    xs = x32.clone().requires_grad_()
    workloads["torch.sparse.mm CSR f32 forward"] = lambda: sparse_propagate(adj, x32, alpha)
    workloads["torch.sparse.mm CSR f32 fwd+bwd"] = \
        lambda: sparse_propagate(adj, xs, alpha).backward(grad32)

    want = sparse_propagate(normalized_adjacency(edge_index, n, torch.float64, torch.sparse_csr),
                            x32.double(), alpha)
    got = lightgcn_ext.propagate(graph, x32, alpha)
    error = ((got.double() - want).abs().max() / want.abs().max()).item()
    times = time_interleaved(workloads, device, args.rounds, args.min_run_time, args.threads)

    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        fwd = times[f"ours {_short(dtype)} forward"]
        per_sweep_s = fwd / args.layers / 1e3
        x_low = x32.to(dtype)
        moved = sweep_bytes(graph, x_low)
        floors = gpu_floors(graph, x_low) if device.type == "cuda" else {}
        got_low = lightgcn_ext.propagate(graph, x_low, alpha).double()
        rows.append(dict(
            graph=_graph_name(label, data, args), implementation=f"lightgcn_ext {_short(dtype)}",
            forward_ms=fwd, fwd_bwd_ms=times[f"ours {_short(dtype)} fwd+bwd"],
            forward_vs_cusparse=times["torch.sparse.mm CSR f32 forward"] / fwd,
            fwd_bwd_vs_cusparse=times["torch.sparse.mm CSR f32 fwd+bwd"] /
            times[f"ours {_short(dtype)} fwd+bwd"],
            vs_our_float32=times["ours f32 forward"] / fwd,
            sweep_GBps=moved / per_sweep_s / 1e9,
            **{f"sweep_vs_{level}_floor": per_sweep_s * 1e3 / ms for level, ms in floors.items()},
            max_rel_error_vs_float64=((got_low - want).abs().max() / want.abs().max()).item()))
    rows.append(dict(graph=_graph_name(label, data, args), implementation="torch.sparse.mm CSR f32",
                     forward_ms=times["torch.sparse.mm CSR f32 forward"],
                     fwd_bwd_ms=times["torch.sparse.mm CSR f32 fwd+bwd"]))
    if error > 1e-4:
        raise AssertionError(f"ours and torch.sparse disagree on {data.name}: {error:.2e}")


def time_item_sizes(data, args, device):
    """{item size: forward ms} of ours in float32 (CUDA only: the CPU has no items)."""
    edge_index = data.edge_index().to(device)
    graph = lightgcn_ext.Graph.from_edge_index(edge_index, data.num_nodes)
    x = torch.randn(data.num_nodes, args.dim, device=device)
    alpha = [1.0 / (args.layers + 1)] * (args.layers + 1)
    reference = lightgcn_ext.propagate(graph, x, alpha)

    def with_size(size):
        def run():
            os.environ[ITEM_SIZE_ENV] = str(size)
            try:
                return lightgcn_ext.propagate(graph, x, alpha)
            finally:
                os.environ.pop(ITEM_SIZE_ENV, None)
        return run

    for size in ITEM_SIZES:
        torch.testing.assert_close(with_size(size)(), reference, rtol=1e-4, atol=1e-5)
    times = time_interleaved({size: with_size(size) for size in ITEM_SIZES}, device,
                             args.rounds, args.min_run_time, args.threads)
    return {str(size): ms for size, ms in times.items()}


def time_bpr_step(data, args, device):
    """The BPR step (batch 2048, Adam) eager and, on CUDA, captured; and the
    host synchronizations of the eager step."""
    edge_index = data.edge_index().to(device)
    graph = lightgcn_ext.Graph.from_edge_index(edge_index, data.num_nodes)
    torch.manual_seed(0)
    model = lightgcn_ext.LightGCN(data.num_nodes, args.dim, args.layers).to(device)
    sampler = BPRSampler(data.train, data.num_users, data.num_items, args.batch_size, device)
    generator = torch.Generator(device=device).manual_seed(0)
    batches = [b for b in sampler.epoch(generator) if b[0].numel() == args.batch_size][:32]
    cycle = {"i": 0}

    def next_batch():
        cycle["i"] = (cycle["i"] + 1) % len(batches)
        return batches[cycle["i"]]

    eager_model = copy.deepcopy(model)
    eager_optimizer = torch.optim.Adam(eager_model.parameters(), lr=1e-3)
    workloads = {"eager": lambda: bpr_step(eager_model, graph, eager_optimizer, data.num_users,
                                           *next_batch(), 1e-4)}
    result = {}
    if device.type == "cuda":
        from lightgcn_ext.training.cuda_graph import CapturedBPRStep
        captured_optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, capturable=True)
        captured = CapturedBPRStep(model, graph, captured_optimizer, data.num_users,
                                   args.batch_size, 1e-4)
        workloads["captured in a CUDA graph"] = lambda: captured(*next_batch())
        for _ in range(3):
            workloads["eager"]()
        sync(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                for _ in range(10):
                    workloads["eager"]()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        result["host_syncs_per_eager_step"] = sum(
            "synchroniz" in str(w.message) for w in caught) / 10
    times = time_interleaved(workloads, device, args.rounds, args.min_run_time, args.threads)
    result.update({f"{name} ms": ms for name, ms in times.items()})
    return result


def _short(dtype):
    return {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}[dtype]


def _graph_name(label, data, args):
    return f"{label}: {data.num_nodes} nodes, d={args.dim}, L={args.layers}"


def report(results):
    lines = [f"# lightgcn_ext on {results['device']} ({results['date']}, "
             f"commit {results['commit']})", "",
             "| graph | implementation | forward ms | fwd+bwd ms | forward vs torch.sparse | "
             "fwd+bwd vs torch.sparse | vs our f32 | GB/s per sweep | sweep / DRAM floor | "
             "sweep / L2 floor | max rel. error vs f64 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in results["propagation"]:
        cells = [row["graph"], row["implementation"], f"{row['forward_ms']:.3f}",
                 f"{row['fwd_bwd_ms']:.3f}"]
        for key, fmt in (("forward_vs_cusparse", "{:.2f}x"), ("fwd_bwd_vs_cusparse", "{:.2f}x"),
                         ("vs_our_float32", "{:.2f}x"), ("sweep_GBps", "{:.1f}"),
                         ("sweep_vs_DRAM_floor", "{:.2f}x"), ("sweep_vs_L2_floor", "{:.2f}x"),
                         ("max_rel_error_vs_float64", "{:.1e}")):
            cells.append(fmt.format(row[key]) if key in row else "")
        lines.append("| " + " | ".join(cells) + " |")
    for graph, sizes in results.get("item_sizes", {}).items():
        lines += ["", f"Merge-path item size, float32 forward ms, {graph}: " +
                  ", ".join(f"{size}: {ms:.3f}" for size, ms in sizes.items())]
    lines += ["", "BPR step (batch {}, Adam): ".format(results["batch_size"]) +
              ", ".join(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}"
                        for k, v in results["bpr_step"].items())]
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="small graphs: the smoke test")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--results-dir", default=str(REPO / "bench" / "results"))
    args = parser.parse_args(argv)
    if args.device not in ("cuda", "cpu"):
        parser.error(f"--device must be cuda or cpu, got {args.device!r}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible (use --device cpu)")
    for name in ("dim", "layers", "batch_size", "rounds", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.quick:
        args.rounds, args.min_run_time, args.batch_size = 1, 0.05, min(args.batch_size, 256)
    return args


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    results = dict(
        device=torch.cuda.get_device_name(device) if device.type == "cuda"
        else platform.processor() or platform.machine(),
        date=datetime.date.today().isoformat(), commit=_commit(), torch=torch.__version__,
        dim=args.dim, layers=args.layers, batch_size=args.batch_size, propagation=[])
    data_sets = graphs(args)
    for label, data in data_sets.items():
        time_propagation(label, data, args, device, results["propagation"])
        if device.type == "cuda":
            results.setdefault("item_sizes", {})[label] = time_item_sizes(data, args, device)
    first = next(iter(data_sets.values()))
    results["bpr_step"] = time_bpr_step(first, args, device)
    text = report(results)
    print(text)
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{'cuda' if device.type == 'cuda' else 'cpu'}-{results['date']}"
    atomic_write(out / f"{stem}.md", text)
    atomic_write(out / f"{stem}.json", json.dumps(results, indent=1))
    return results


def _commit():
    return git_commit(short=True) or "unknown"


if __name__ == "__main__":
    main()
