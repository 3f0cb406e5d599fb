"""The LightGCN module, lightgcn_ext vs torch_geometric, side by side in one
process: `get_embedding` and a full BPR training step.

    python -m bench.bench_model --threads 2     # Gowalla when found, else synthetic
    python -m bench.bench_model --device cuda
    python -m bench.bench_model --quick         # a small synthetic graph: the smoke test

Implementations (one seed, one state_dict, so the same weights):
  * ours: lightgcn_ext.LightGCN with the [2, E] edge_index (prepared once, cached);
  * PyG, edge_index: torch_geometric.nn.models.LightGCN with the same edge_index;
  * PyG, CSR adj_t: the same PyG model with `to_torch_csr_tensor(edge_index.flip(0))`
    (rows = destinations, PyG's documented sparse form).
A BPR step is what PyG's examples/lightgcn.py does per batch: 2048 (user, positive
item, negative item) triples, `model(edge_index, edge_label_index)` on the 2048
positive and 2048 negative pairs, `recommendation_loss(pos, neg, node_id=...)`,
backward. The batch is sampled once, outside the timed region; no optimizer step.
Graph preparation is outside the times too: ours prepares (and caches) its CSR on
the first call, as PyG's CSR adj_t is built once before timing.
Outputs and gradients are checked equal before anything is timed. Times are medians
of torch.utils.benchmark's blocked_autorange (CPU) or of CUDA events (GPU), after a
warm-up call, measured in interleaved rounds (every workload once per round; the
median over the rounds), so that the drift of a shared machine hits all alike.
"""
import argparse
import platform
import sys
import time
from pathlib import Path

import torch

import lightgcn_ext
from bench.timing import time_interleaved, verdict
from bench.reference import GOWALLA_SIZES
from lightgcn_ext import LightGCN
from lightgcn_ext.data import BPRSampler, find, read_dir, synthetic

REPO = Path(__file__).resolve().parents[1]
GOWALLA_DIR = REPO.parent / "shared" / "data" / "gowalla"
# Largest accepted max abs difference to ours, relative to max |reference|.
TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-9}
# (reference, minimum speedup of ours) for both get_embedding and the BPR step.
TARGETS = {"pyg_edge_index": 10.0, "pyg_csr": 3.0}
LABELS = {
    "ours": "lightgcn_ext.LightGCN, edge_index (ours)",
    "pyg_edge_index": "torch_geometric LightGCN, edge_index",
    "pyg_csr": "torch_geometric LightGCN, torch.sparse CSR adj_t",
}


# ------------------------------------------------------------------- data
def load_interactions(args):
    """The quick graph, else Gowalla (the user's data directory, else the
    repository's copy GOWALLA_DIR), else the synthetic Gowalla-sized graph."""
    if args.quick:
        return synthetic(0, num_users=300, num_items=500, num_interactions=4000)
    if args.data in ("auto", "gowalla"):
        root = find("gowalla")
        if root is None and (GOWALLA_DIR / "train.txt").is_file():
            root = GOWALLA_DIR
        if root is not None:
            return read_dir(root, "gowalla")
        if args.data == "gowalla":
            sys.exit("error: --data gowalla, but the Gowalla files were not found")
        print("Gowalla not found: a synthetic Gowalla-sized graph instead")
    return synthetic(0, **GOWALLA_SIZES)


def sample_bpr_batch(data, batch_size, seed=0):
    """batch_size (user, positive item, negative item) triples as [2, 2 * batch_size]
    node-id pairs (positives, then negatives), drawn by the trainer's sampler."""
    sampler = BPRSampler(data.train, data.num_users, data.num_items, batch_size)
    users, pos, neg = next(sampler.epoch(torch.Generator().manual_seed(seed)))
    offset = data.num_users
    return torch.cat([torch.stack([users, pos + offset]), torch.stack([users, neg + offset])],
                     dim=1)


# --------------------------------------------------------------- workload
def get_embedding(model, graph):
    return model.get_embedding(graph)


def bpr_step(model, graph, edge_label_index, node_id):
    """One training step of PyG's examples/lightgcn.py, without the optimizer."""
    model.embedding.weight.grad = None
    pos_rank, neg_rank = model(graph, edge_label_index).chunk(2)
    loss = model.recommendation_loss(pos_rank, neg_rank, node_id=node_id)
    loss.backward()
    return loss


# --------------------------------------------------------------- checks
def max_rel_error(actual, expected):
    scale = expected.abs().max().item() or 1.0
    return (actual.detach() - expected.detach()).abs().max().item() / scale


def check_outputs(models, graphs, edge_label_index, node_id, dtype):
    """get_embedding, the BPR loss and its embedding gradient of every
    implementation vs PyG with edge_index; exits on a mismatch."""
    results = {}
    for name, model in models.items():
        with torch.no_grad():
            emb = get_embedding(model, graphs[name])
        loss = bpr_step(model, graphs[name], edge_label_index, node_id)
        results[name] = (emb, loss.detach(), model.embedding.weight.grad.clone())
        model.embedding.weight.grad = None
    reference = results["pyg_edge_index"]
    print(f"correctness vs PyG with edge_index (max abs error / max |reference|, "
          f"tolerance {TOLERANCE[dtype]:.0e}):")
    bad = []
    for name, (emb, loss, grad) in results.items():
        if name == "pyg_edge_index":
            continue
        errors = [max_rel_error(a, b) for a, b in zip((emb, loss, grad), reference)]
        ok = all(e <= TOLERANCE[dtype] for e in errors)
        print(f"  {LABELS[name]}: get_embedding {errors[0]:.1e}, BPR loss {errors[1]:.1e}, "
              f"grad {errors[2]:.1e}{'' if ok else '  MISMATCH'}")
        if not ok:
            bad.append(name)
    if bad:
        sys.exit(f"error: {', '.join(LABELS[n] for n in bad)} disagree(s) with PyG; "
                 "nothing was timed")
    print(f"PASS: {len(results) - 1} implementation(s) agree with PyG with edge_index")


# ----------------------------------------------------------------- report
def format_report(rows, header, quick=False):
    ours = rows["ours"]
    lines = header + [
        "",
        "| implementation | get_embedding ms | BPR step ms | speedup of ours "
        "(get_embedding / BPR step) |",
        "|---|---:|---:|---:|",
    ]
    for name, row in rows.items():
        speedup = "1.00x / 1.00x" if name == "ours" else \
            f"{row['embed'] / ours['embed']:.2f}x / {row['bpr'] / ours['bpr']:.2f}x"
        lines.append(f"| {LABELS[name]} | {row['embed']:.1f} | {row['bpr']:.1f} | {speedup} |")
    lines += ["", "Targets:", ""]
    verdicts = []
    for name, target in TARGETS.items():
        if name not in rows:
            continue
        for key, what in (("embed", "get_embedding"), ("bpr", "BPR step")):
            ratio = rows[name][key] / ours[key]
            if not quick:
                verdicts.append(ratio >= target)
            lines.append(f"- {what}, ours >= {target:g}x faster than {LABELS[name]}: "
                         f"{verdict(ratio >= target, ratio, judged=not quick)}")
    return "\n".join(lines), all(verdicts)


def load_average():
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


def describe(args, device, data, edge_index):
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    else:
        machine = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                        if line.startswith("model name")), platform.processor())
    import torch_geometric
    return [
        f"# LightGCN module benchmark ({time.strftime('%Y-%m-%d %H:%M:%S')})",
        "",
        f"- device: {device} ({machine}), {args.threads} threads",
        f"- graph: {data.name}, {data.num_users:,} users + {data.num_items:,} items = "
        f"N {data.num_nodes:,}, E {edge_index.shape[1]:,} (both directions)",
        f"- d={args.dim}, L={args.layers}, alpha default, {args.dtype}; "
        f"BPR batch {args.batch_size} triples",
        f"- torch {torch.__version__}, torch_geometric {torch_geometric.__version__}, "
        f"lightgcn_ext {lightgcn_ext.__version__}",
        f"- times: medians after warm-up "
        f"({'CUDA events' if device.type == 'cuda' else 'blocked_autorange'}), "
        f"{args.rounds} interleaved rounds, load average before: {load_average()}",
    ]


# ------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--data", choices=["auto", "gowalla", "synthetic"], default="auto",
                        help="auto: Gowalla when found, else a synthetic Gowalla-sized graph")
    parser.add_argument("--quick", action="store_true",
                        help="a small synthetic graph and short runs (smoke test)")
    parser.add_argument("--min-run-time", type=float, default=None,
                        help="seconds per measurement and round (default 1, 0.01 with --quick)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds of interleaved measurements (default 3, 1 with --quick)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when a speed target is missed")
    args = parser.parse_args(argv)
    if args.min_run_time is None:
        args.min_run_time = 0.01 if args.quick else 1.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    if args.quick:
        args.batch_size = min(args.batch_size, 256)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    from torch_geometric.nn.models import LightGCN as PygLightGCN
    from torch_geometric.utils import to_torch_csr_tensor

    data = load_interactions(args)
    edge_index = data.edge_index().to(device)
    n = data.num_nodes
    header = describe(args, device, data, edge_index)
    print("\n".join(header), flush=True)

    torch.manual_seed(0)
    pyg = PygLightGCN(n, args.dim, args.layers).to(device, dtype)
    torch.manual_seed(0)
    ours = LightGCN(n, args.dim, args.layers).to(device, dtype)
    ours.load_state_dict(pyg.state_dict())
    ones = torch.ones(edge_index.shape[1], dtype=dtype, device=device)
    adj_t = to_torch_csr_tensor(edge_index.flip(0), ones, size=(n, n))
    models = {"ours": ours, "pyg_edge_index": pyg, "pyg_csr": pyg}
    graphs = {"ours": edge_index, "pyg_edge_index": edge_index, "pyg_csr": adj_t}
    edge_label_index = sample_bpr_batch(data, args.batch_size).to(device)
    node_id = edge_label_index.unique()

    check_outputs(models, graphs, edge_label_index, node_id, dtype)

    def no_grad(fn):
        def run():
            with torch.no_grad():
                return fn()
        return run

    workloads = {}
    for name, model in models.items():
        graph = graphs[name]
        workloads[name, "embed"] = no_grad(lambda model=model, graph=graph:
                                           get_embedding(model, graph))
        workloads[name, "bpr"] = (lambda model=model, graph=graph:
                                  bpr_step(model, graph, edge_label_index, node_id))
    times = time_interleaved(workloads, device, args.rounds, args.min_run_time, args.threads,
                             progress=True)
    rows = {name: {"embed": times[name, "embed"], "bpr": times[name, "bpr"]} for name in models}

    report, passed = format_report(rows, header, args.quick)
    print()
    print(report)
    if args.strict and not passed:
        sys.exit(1)


if __name__ == "__main__":
    main()
