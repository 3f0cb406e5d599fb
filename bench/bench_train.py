"""A BPR training epoch, lightgcn_ext vs torch_geometric, side by side in one process.

    python -m bench.bench_train --threads 2                 # Gowalla when found, else synthetic
    python -m bench.bench_train --threads 2 --parity-epochs 1   # and recall@20 after 1 epoch
    python -m bench.bench_train --quick                     # a small graph: the smoke test

Per step: 2048 (user, positive, negative) triples from the device-side
sampler, the BPR loss with its L2 term, backward and the trainer's Adam step
(fused: one pass over the weights and both moments), for
  * ours: lightgcn_ext.LightGCN on the prepared graph;
  * ours, bf16: the same with --precision bf16 (the layers the propagation
    gathers stored in bfloat16);
  * PyG, CSR adj_t: torch_geometric's LightGCN with a torch.sparse CSR adj_t;
  * PyG, edge_index: torch_geometric's LightGCN with the [2, E] edge_index.
The loop is the trainer's (lightgcn_ext.training.bpr_step): ours computes
the batch's rows of the propagation only; PyG's models, which cannot, the
whole propagation indexed at the batch's rows.
On the CPU the same run times the floor: six float32 bare-gather sweeps of
the graph (lightgcn_ext::_bare_gather, no weights, no normalization), what the
forward and backward of a three-layer propagation over the whole graph would
read at the least; a step (float32 and bf16) is reported as a multiple of it.
Each model starts from the same weights and draws its own batches from its own
sampler with the same seed. Steps are timed in interleaved rounds (every
implementation once per round, the median over rounds); an epoch's time is
the steps per epoch times the median step (a PyG edge_index epoch on Gowalla
takes about 20 minutes). Ours is also timed over one whole epoch.

With --parity-epochs N, ours and PyG with the CSR adj_t each train N whole
epochs from the same start and are evaluated (recall@20, ndcg@20 over the
full ranking): the same loop must reach the same quality. Ours in bf16 is
trained and evaluated too, and shown beside them.
"""
import argparse
import json
import time
from pathlib import Path

import torch

import lightgcn_ext
from bench.bench_model import describe, load_interactions
from bench.timing import time_interleaved, verdict
from lightgcn_ext import LightGCN
from lightgcn_ext.data import BPRSampler
from lightgcn_ext.evaluation import ranking_metrics
from lightgcn_ext.training import bpr_step, make_optimizer
from lightgcn_ext.training.run_files import atomic_write

REPO = Path(__file__).resolve().parents[1]
# Minimum epoch speedup of ours (float32) over each reference.
TARGETS = {"pyg_csr": 12.0, "pyg_edge_index": 15.0}
# Maximum step time of ours, as a multiple of six float32 bare-gather sweeps.
FLOOR_TARGETS = {"ours": 1.0, "ours_bf16": 0.7}
PARITY_TOLERANCE = 1e-3  # on recall@20 and ndcg@20 after --parity-epochs
LABELS = {
    "ours": "lightgcn_ext.LightGCN, prepared graph (ours)",
    "ours_bf16": "lightgcn_ext.LightGCN, prepared graph, --precision bf16 (ours)",
    "pyg_csr": "torch_geometric LightGCN, torch.sparse CSR adj_t",
    "pyg_edge_index": "torch_geometric LightGCN, edge_index",
}


class Trainee:
    """A model, its graph input, its optimizer and its own batches."""

    def __init__(self, cls, graph, data, args, device, precision="float32"):
        torch.manual_seed(0)
        self.precision = precision
        self.model = cls(data.num_nodes, args.dim, args.layers).to(device)
        self.graph = graph
        self.optimizer = make_optimizer(self.model.parameters(), args)  # the trainer's
        self.sampler = BPRSampler(data.train, data.num_users, data.num_items, args.batch_size,
                                  device)
        self.generator = torch.Generator(device=device).manual_seed(0)
        self.num_users, self.reg = data.num_users, args.reg
        self._batches = iter(())

    def step(self):
        batch = next(self._batches, None)
        if batch is None:  # a new epoch
            self._batches = self.sampler.epoch(self.generator)
            batch = next(self._batches)
        return self._step(*batch)

    def epoch(self):
        for batch in self.sampler.epoch(self.generator):
            self._step(*batch)

    def _step(self, users, positives, negatives):
        return bpr_step(self.model, self.graph, self.optimizer, self.num_users, users, positives,
                        negatives, self.reg / 2, self.precision)

    @torch.no_grad()
    def evaluate(self, data):
        emb = self.model.get_embedding(self.graph)
        return ranking_metrics(emb[:data.num_users], emb[data.num_users:], data.test,
                               exclude=[data.train])


def six_sweeps(graph, dim):
    """Six bare-gather sweeps of the graph's CSR over [N, dim] float32
    features: the floor a step is held against (CPU only)."""
    x = torch.randn(graph.num_nodes, dim)

    def run():
        for _ in range(6):
            torch.ops.lightgcn_ext._bare_gather(graph.rowptr, graph.col, x)
    return run


def trainees(data, args, device):
    from torch_geometric.nn.models import LightGCN as PygLightGCN
    from torch_geometric.utils import to_torch_csr_tensor

    edge_index = data.edge_index().to(device)
    n = data.num_nodes
    adj_t = to_torch_csr_tensor(edge_index.flip(0), size=(n, n))
    graph = lightgcn_ext.Graph.from_edge_index(edge_index, n)
    chosen = {"ours": (LightGCN, graph, "float32"), "ours_bf16": (LightGCN, graph, "bf16"),
              "pyg_csr": (PygLightGCN, adj_t, "float32"),
              "pyg_edge_index": (PygLightGCN, edge_index, "float32")}
    return {name: Trainee(cls, g, data, args, device, precision)
            for name, (cls, g, precision) in chosen.items()
            if name == "ours" or name not in args.skip}


def check_same_first_step(runs):
    """The first step's loss agrees across implementations (same weights, same
    batch): to float32 rounding, and bf16's to bfloat16 rounding."""
    losses = {name: float(run.step()) for name, run in runs.items()}
    for name, loss in losses.items():
        rtol = 1e-3 if runs[name].precision == "bf16" else 1e-5
        assert abs(loss - losses["ours"]) <= rtol * abs(losses["ours"]), losses
    return losses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", choices=["auto", "gowalla", "synthetic"], default="auto")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--reg", type=float, default=1e-4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-run-time", type=float, default=2.0,
                        help="seconds per implementation and round")
    parser.add_argument("--skip", nargs="*", default=[],
                        choices=["ours_bf16", "pyg_csr", "pyg_edge_index"])
    parser.add_argument("--parity-epochs", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a small graph, short runs")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    args.dtype = "float32"
    if args.quick:
        args.batch_size, args.rounds, args.min_run_time = 256, 1, 0.05
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    data = load_interactions(args)
    runs = trainees(data, args, device)
    header = describe(args, device, data, data.edge_index())
    header[0] = f"# BPR training epoch benchmark ({time.strftime('%Y-%m-%d %H:%M:%S')})"
    print("\n".join(header), flush=True)
    check_same_first_step(runs)

    workloads = {name: run.step for name, run in runs.items()}
    if device.type == "cpu":
        workloads["six_sweeps"] = six_sweeps(runs["ours"].graph, args.dim)
    step_ms = time_interleaved(workloads, device, args.rounds, args.min_run_time, args.threads,
                               probe=True)
    floor_ms = step_ms.pop("six_sweeps", None)
    steps = len(runs["ours"].sampler)
    started = time.perf_counter()
    runs["ours"].epoch()
    whole_epoch_s = time.perf_counter() - started

    lines = ["", f"{steps} steps per epoch of {args.batch_size} triples.", "",
             "| implementation | step ms | epoch s (steps x step) | ours faster |",
             "|---|---:|---:|---:|"]
    report = dict(header=header, steps_per_epoch=steps, step_ms=step_ms,
                  ours_whole_epoch_s=whole_epoch_s, targets={})
    for name, ms in step_ms.items():
        lines.append(f"| {LABELS[name]} | {ms:.1f} | {ms * steps / 1e3:.1f} | "
                     f"{ms / step_ms['ours']:.2f}x |")
    lines += ["", f"Ours over one whole epoch, sampler and Adam included: {whole_epoch_s:.1f} s."]
    if floor_ms is not None:
        report["six_sweeps_ms"] = floor_ms
        report["step_vs_six_sweeps"] = {name: step_ms[name] / floor_ms
                                        for name in FLOOR_TARGETS if name in step_ms}
        shown = ", ".join(f"{ratio:.2f}x ({'bf16' if name == 'ours_bf16' else 'float32'})"
                          for name, ratio in report["step_vs_six_sweeps"].items())
        lines += ["", f"Six float32 bare-gather sweeps of the graph (the floor): "
                      f"{floor_ms:.1f} ms; our step is {shown} that."]
    lines += ["", "Targets:", ""]
    for name, maximum in FLOOR_TARGETS.items():
        if floor_ms is not None and name in step_ms:
            ratio = step_ms[name] / floor_ms
            report["targets"][f"{name}_vs_six_sweeps"] = dict(maximum=maximum, ratio=ratio,
                                                             passed=ratio <= maximum)
            lines.append(f"- step of {LABELS[name]} <= {maximum:.1f}x six float32 sweeps: "
                         f"{verdict(ratio <= maximum, ratio, judged=not args.quick)}")
    for name, minimum in TARGETS.items():
        if name in step_ms:
            ratio = step_ms[name] / step_ms["ours"]
            report["targets"][name] = dict(minimum=minimum, ratio=ratio, passed=ratio >= minimum)
            lines.append(f"- epoch vs {LABELS[name]} >= {minimum:.0f}x: "
                         f"{verdict(ratio >= minimum, ratio, judged=not args.quick)}")
    if args.parity_epochs:
        lines += ["", f"After {args.parity_epochs} epoch(s) from the same start:", ""]
        for name in ("ours", "ours_bf16", "pyg_csr"):
            if name not in runs:
                continue
            fresh = Trainee(type(runs[name].model), runs[name].graph, data, args, device,
                            runs[name].precision)
            for _ in range(args.parity_epochs):
                fresh.epoch()
            scores = fresh.evaluate(data)
            report[f"parity_{name}"] = scores
            lines.append(f"- {LABELS[name]}: recall@20 {scores['recall@20']:.4f}, "
                         f"ndcg@20 {scores['ndcg@20']:.4f}")
        if "parity_pyg_csr" in report:
            # The same loop from the same start: the same ranking quality, up to
            # float32 rounding flipping a few ranks.
            gap = max(abs(report["parity_ours"][k] - report["parity_pyg_csr"][k])
                      for k in ("recall@20", "ndcg@20"))
            report["parity_passed"] = gap <= PARITY_TOLERANCE
            lines += ["", f"- {'PASS' if gap <= PARITY_TOLERANCE else 'FAIL'}: ours and "
                      f"{LABELS['pyg_csr']} agree on recall@20 and ndcg@20 within "
                      f"{PARITY_TOLERANCE:g} (largest difference {gap:.1e})"]
    print("\n".join(lines[1:]))
    args.results_dir.mkdir(parents=True, exist_ok=True)
    stem = args.results_dir / f"train-{args.device}-{time.strftime('%Y%m%d-%H%M%S')}"
    atomic_write(stem.with_suffix(".md"), "\n".join(header + lines))
    atomic_write(stem.with_suffix(".json"), json.dumps(report, indent=2))
    print(f"\nwritten to {stem}.md and .json")


if __name__ == "__main__":
    main()
