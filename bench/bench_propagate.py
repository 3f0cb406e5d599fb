"""LightGCN propagation, sum_l alpha_l Â^l x: lightgcn_ext vs torch_geometric and
torch.sparse, side by side on one graph, in one process and one run.

    python -m bench.bench_propagate --threads 2      # Gowalla when found, else synthetic
    python -m bench.bench_propagate --device cuda
    python -m bench.bench_propagate --quick          # a small graph: the smoke test

Every implementation is checked against ours before anything is timed.
Times are medians of torch.utils.benchmark's blocked_autorange (CPU) or of
CUDA events (GPU), after a warm-up. Peak memory is what one forward+backward
adds on top of its inputs: on CPU the peak RSS (VmHWM) of a fresh subprocess
per implementation, on CUDA torch.cuda.max_memory_allocated.
The table goes to stdout and to bench/results/<device>_<timestamp>.md.
"""
import argparse
import ctypes
import gc
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import lightgcn_ext
from bench.timing import sync, time_interleaved
from lightgcn_ext import datasets
from lightgcn_ext.reference import normalized_adjacency, sparse_propagate

REPO = Path(__file__).resolve().parents[1]
GOWALLA_DIR = REPO.parent / "shared" / "data" / "gowalla"  # the repository's copy, beside it


def gowalla_root():
    """The user's data directory when it holds Gowalla, else GOWALLA_DIR when
    it does, else None."""
    if datasets.find("gowalla") is not None:
        return datasets.find("gowalla")
    return GOWALLA_DIR if (GOWALLA_DIR / "train.txt").is_file() else None
DTYPES = {"float32": torch.float32, "float64": torch.float64,
          "float16": torch.float16, "bfloat16": torch.bfloat16}
# Largest accepted max abs difference to ours, relative to max |output|.
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}
# torch.sparse's notices, raised by the references' graph preparation.
warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
warnings.filterwarnings("ignore", "Sparse invariant checks are implicitly disabled")


# ------------------------------------------------------------------ problem
@dataclass
class Problem:
    data: str
    num_nodes: int
    edge_index: torch.Tensor
    x: torch.Tensor
    grad: torch.Tensor
    alpha: list


def build_problem(args, device):
    if args.quick:
        data, name = datasets.synthetic(
            0, num_users=1000, num_items=1500, num_interactions=20000), "synthetic (quick)"
    elif args.data == "gowalla":
        data, name = datasets.read_dir(gowalla_root(), "gowalla"), "Gowalla train"
    else:
        data, name = datasets.synthetic(0, **datasets.GOWALLA_SIZES), "synthetic Gowalla-sized"
    edge_index = data.edge_index().to(device)
    gen = torch.Generator().manual_seed(0)
    dtype = DTYPES[args.dtype]
    x = torch.randn(data.num_nodes, args.dim, generator=gen).to(device, dtype)
    grad = torch.randn(data.num_nodes, args.dim, generator=gen).to(device, dtype)
    alpha = [1.0 / (args.layers + 1)] * (args.layers + 1)  # LightGCN's default
    return Problem(name, data.num_nodes, edge_index, x, grad, alpha)


def tiny_problem(args, device):
    """A few hundred nodes: warms up kernels and threads before a memory probe."""
    quick = argparse.Namespace(**{**vars(args), "quick": True})
    problem = build_problem(quick, device)
    keep = problem.edge_index[0] < 300
    problem.edge_index = problem.edge_index[:, keep & (problem.edge_index[1] < 300)]
    problem.num_nodes = 300
    problem.x, problem.grad = problem.x[:300].contiguous(), problem.grad[:300].contiguous()
    return problem


# ---------------------------------------------------------- implementations
def ours_prepare(p):
    return lightgcn_ext.Graph.from_edge_index(p.edge_index, p.num_nodes)


def ours_forward(graph, x, alpha):
    return lightgcn_ext.propagate(graph, x, alpha)


def pyg_edge_index_prepare(p):
    from torch_geometric.nn.conv import LGConv

    return p.edge_index, torch.nn.ModuleList(LGConv() for _ in p.alpha[1:])


def pyg_csr_prepare(p):
    from torch_geometric.nn.conv import LGConv
    from torch_geometric.utils import to_torch_csr_tensor

    ones = torch.ones(p.edge_index.shape[1], dtype=p.x.dtype, device=p.x.device)
    adj_t = to_torch_csr_tensor(p.edge_index.flip(0), ones, size=(p.num_nodes, p.num_nodes))
    return adj_t, torch.nn.ModuleList(LGConv() for _ in p.alpha[1:])


def pyg_forward(state, x, alpha):
    """torch_geometric.nn.models.LightGCN.get_embedding, with x as the embedding."""
    adj, convs = state
    out = x * alpha[0]
    for conv, a in zip(convs, alpha[1:]):
        x = conv(x, adj)
        out = out + x * a
    return out


def sparse_csr_prepare(p):
    return normalized_adjacency(p.edge_index, p.num_nodes, p.x.dtype, layout=torch.sparse_csr)


def sparse_coo_prepare(p):
    if len(set(p.alpha)) != 1:
        raise ValueError("the LightGCN-PyTorch reference averages the layers: "
                         "alpha must be uniform")
    return normalized_adjacency(p.edge_index, p.num_nodes, p.x.dtype)


def sparse_coo_forward(adj, x, alpha):
    """LightGCN-PyTorch's computer(): stack the layers, take their mean."""
    embs = [x]
    for _ in alpha[1:]:
        x = torch.sparse.mm(adj, x)
        embs.append(x)
    return torch.stack(embs, dim=1).mean(dim=1)


@dataclass
class Impl:
    name: str
    label: str
    prepare: Callable
    forward: Callable
    needs: str = ""  # a module that must import


IMPLS = {impl.name: impl for impl in [
    Impl("ours", "lightgcn_ext.propagate (ours)", ours_prepare, ours_forward),
    Impl("pyg_edge_index", "torch_geometric LGConv, edge_index", pyg_edge_index_prepare,
         pyg_forward, "torch_geometric"),
    Impl("pyg_csr", "torch_geometric LGConv, torch.sparse CSR adj_t", pyg_csr_prepare,
         pyg_forward, "torch_geometric"),
    Impl("sparse_csr", "torch.sparse.mm, precomputed normalized CSR", sparse_csr_prepare,
         sparse_propagate),
    Impl("sparse_coo", "torch.sparse.mm, normalized COO (LightGCN-PyTorch)", sparse_coo_prepare,
         sparse_coo_forward),
]}
REFERENCES = [name for name in IMPLS if name != "ours"]


def fwd_bwd(impl, state, x, alpha, grad):
    x.grad = None
    impl.forward(state, x, alpha).backward(grad)


# ------------------------------------------------------------------ timing
def time_side_by_side(cases, device, args, min_run_time):
    """{name: median ms} of the functions in `cases`, each run about 3 times or more
    for min_run_time in all, in interleaved rounds so that a busy spell of the
    machine spreads over all of them."""
    return time_interleaved(cases, device, args.rounds, min_run_time / args.rounds, args.threads,
                            min_runs=-(-3 // args.rounds), probe=True, pool=True)


# ------------------------------------------------------------------ memory
def _proc_status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure_memory_here(impl, args, device):
    """Bytes one forward+backward adds to what its inputs hold (run in a fresh
    process on CPU, where the measure is the peak RSS)."""
    # Load the code and threads that the first call touches, on a tiny graph.
    tiny = tiny_problem(args, device)
    fwd_bwd(impl, impl.prepare(tiny), tiny.x.clone().requires_grad_(), tiny.alpha, tiny.grad)
    del tiny
    p = build_problem(args, device)
    state = impl.prepare(p)
    x = p.x.clone().requires_grad_()
    gc.collect()
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fwd_bwd(impl, state, x, p.alpha, p.grad)
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    _release_free_heap()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    before = _proc_status_kb("VmRSS")
    fwd_bwd(impl, state, x, p.alpha, p.grad)
    return (_proc_status_kb("VmHWM") - before) * 1024


def _release_free_heap():
    """Returns freed heap memory to the OS, so that the baseline RSS holds only
    live data (glibc; elsewhere a no-op)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def measure_memory_subprocess(name, args):
    command = [sys.executable, "-m", "bench.bench_propagate", "--only", name, "--measure-memory",
               "--device", args.device, "--threads", str(args.threads), "--dim", str(args.dim),
               "--layers", str(args.layers), "--data", args.data, "--dtype", args.dtype]
    if args.quick:
        command.append("--quick")
    # A fixed mmap threshold makes glibc map every large tensor and unmap it when
    # freed, so the peak RSS follows the live tensors instead of heap reuse
    # (without it the same probe gave 36 or 72 MB for ours, run to run).
    env = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024), **os.environ}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"memory probe of {name} failed (exit {result.returncode}):\n"
                           f"{result.stderr[-2000:]}")
    return json.loads(lines[-1])["added_bytes"]


# ----------------------------------------------------------------- checks
def check_against_ours(impls, states, p):
    """Forward and gradient of every implementation vs ours; returns the ones
    that run, after printing their max abs errors. Exits on a mismatch."""
    ours = IMPLS["ours"]
    x = p.x.clone().requires_grad_()
    expected = ours.forward(states["ours"], x, p.alpha)
    expected.backward(p.grad)
    expected, expected_grad = expected.detach(), x.grad
    tolerance = TOLERANCE[p.x.dtype] * max(1.0, expected.abs().max().item(),
                                           expected_grad.abs().max().item())
    print(f"correctness vs ours (max abs error, tolerance {tolerance:.1e}):")
    working, failed = [], []
    for impl in impls:
        if impl.name == "ours":
            working.append(impl)
            continue
        x = p.x.clone().requires_grad_()
        try:
            out = impl.forward(states[impl.name], x, p.alpha)
            out.backward(p.grad)
        except (RuntimeError, NotImplementedError) as error:
            print(f"  {impl.label}: does not run here, skipped ({str(error).splitlines()[0]})")
            continue
        err_out = (out.detach() - expected).abs().max().item()
        err_grad = (x.grad - expected_grad).abs().max().item()
        ok = err_out <= tolerance and err_grad <= tolerance
        print(f"  {impl.label}: forward {err_out:.2e}, grad {err_grad:.2e}"
              f"{'' if ok else '  MISMATCH'}")
        (working if ok else failed).append(impl)
    if failed:
        sys.exit(f"error: {', '.join(i.label for i in failed)} disagree(s) with ours; "
                 "nothing was timed")
    return working


# ----------------------------------------------------------------- report
def target_checks(rows):
    """(description, measured ratio or None, target ratio) of the issue's targets."""
    ours = rows["ours"]
    refs = {name: row for name, row in rows.items() if name != "ours"}

    def ratio(name, key):
        row = refs.get(name)
        return None if row is None or not ours[key] else row[key] / ours[key]

    fastest = min((row["fwd_bwd"], name) for name, row in refs.items()) \
        if refs and ours["fwd_bwd"] else None
    lightest = min((row["memory"], name) for name, row in refs.items()) \
        if refs and ours["memory"] else None
    return [
        ("forward vs torch.sparse.mm CSR", ratio("sparse_csr", "forward"), 4.0),
        ("forward vs PyG edge_index", ratio("pyg_edge_index", "forward"), 10.0),
        (f"fwd+bwd vs the fastest reference"
         f"{f' ({IMPLS[fastest[1]].label})' if fastest else ''}",
         fastest[0] / ours["fwd_bwd"] if fastest else None, 6.0),
        (f"memory vs the lightest reference"
         f"{f' ({IMPLS[lightest[1]].label})' if lightest else ''}",
         lightest[0] / ours["memory"] if lightest else None, 2.0),
    ]


def format_report(rows, prep, header):
    ours = rows["ours"]
    fmt_ms = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    fmt_mb = lambda v: "n/a" if v is None else f"{v / 2**20:.1f}"  # noqa: E731

    def fmt_ratio(a, b):
        return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}x"

    lines = header + [
        "",
        "| implementation | forward ms | fwd+bwd ms | peak added memory MB "
        "| forward speedup of ours vs this | fwd+bwd speedup | memory ratio (this / ours) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        lines.append(
            f"| {IMPLS[name].label} | {fmt_ms(row['forward'])} | {fmt_ms(row['fwd_bwd'])} "
            f"| {fmt_mb(row['memory'])} | {fmt_ratio(row['forward'], ours['forward'])} "
            f"| {fmt_ratio(row['fwd_bwd'], ours['fwd_bwd'])} "
            f"| {fmt_ratio(row['memory'], ours['memory'])} |")
    lines += ["", "Graph preparation, once per graph (not in the times above):", ""]
    lines += [f"- {IMPLS[name].label}: {ms:.1f} ms" for name, ms in prep.items()]
    lines += ["", "Targets:", ""]
    for what, measured, target in target_checks(rows):
        if measured is None:
            verdict = "n/a (not measured)"
        else:
            verdict = f"{'PASS' if measured >= target else 'FAIL'}: {measured:.2f}x"
        lines.append(f"- {what} >= {target:g}x: {verdict}")
    return "\n".join(lines)


def build_id():
    """The git commit of the checkout and when the loaded extension was built."""
    so = Path(lightgcn_ext._C.__file__)
    built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(so.stat().st_mtime))
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return f"git {commit}, {so.name} built {built}"


def describe(args, device, p):
    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    else:
        machine = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                        if line.startswith("model name")), platform.processor())
    try:
        import torch_geometric
        pyg = torch_geometric.__version__
    except ImportError:
        pyg = "not installed"
    return [
        f"# LightGCN propagation benchmark ({time.strftime('%Y-%m-%d %H:%M:%S')})",
        "",
        f"- device: {device} ({machine}), {args.threads} threads"
        + (f", load average {os.getloadavg()[0]:.2f} at start" if device.type == "cpu" else ""),
        f"- graph: {p.data}, N={p.num_nodes:,}, E={p.edge_index.shape[1]:,} (both directions)",
        f"- d={args.dim}, L={args.layers}, alpha={p.alpha[0]:.4g} each, {args.dtype}",
        f"- torch {torch.__version__}, torch_geometric {pyg}, "
        f"lightgcn_ext {lightgcn_ext.__version__} ({build_id()})",
        f"- times: medians after warm-up, {args.rounds} interleaved round(s) ("
        + ("CUDA events)" if device.type == "cuda" else "blocked_autorange)"),
        "- memory: peak added by one forward+backward over its inputs ("
        + ("torch.cuda.max_memory_allocated)" if device.type == "cuda" else
           "VmHWM - VmRSS in a fresh process each, glibc mmap threshold 64 KiB)"),
    ]


# -------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--data", choices=["gowalla", "synthetic"], default=None,
                        help="default: gowalla when found, else synthetic")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--quick", action="store_true",
                        help="a small synthetic graph and short runs (smoke test)")
    parser.add_argument("--only", choices=list(IMPLS), help="time only this implementation")
    parser.add_argument("--skip-references", default="",
                        help=f"comma-separated, of: {','.join(REFERENCES)}")
    parser.add_argument("--min-run-time", type=float, default=None,
                        help="seconds of runs per implementation and mode, over all rounds "
                        "(default 2, 0.02 with --quick); at least 3 runs each")
    parser.add_argument("--rounds", type=int, default=None,
                        help="interleaved timing rounds (default 3, 1 with --quick)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--measure-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.data is None:
        args.data = "gowalla" if gowalla_root() is not None else "synthetic"
    if args.min_run_time is None:
        args.min_run_time = 0.02 if args.quick else 2.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    skipped = {s for s in args.skip_references.split(",") if s}
    unknown = skipped - set(REFERENCES)
    if unknown:
        parser.error(f"--skip-references: unknown {sorted(unknown)}; choose from {REFERENCES}")
    args.skipped = skipped
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def selected_impls(args):
    if args.only:
        names = [args.only]
    else:
        names = [n for n in IMPLS if n not in args.skipped]
    impls = []
    for name in names:
        impl = IMPLS[name]
        if impl.needs:
            try:
                __import__(impl.needs)
            except ImportError:
                print(f"{impl.label}: skipped, {impl.needs} is not installed")
                continue
        impls.append(impl)
    return impls


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if args.measure_memory:
        added = measure_memory_here(IMPLS[args.only], args, device)
        print(json.dumps({"name": args.only, "added_bytes": added}))
        return

    impls = selected_impls(args)
    p = build_problem(args, device)
    header = describe(args, device, p)
    print("\n".join(header), flush=True)

    # Prepare every graph form (timed: ours is a once-per-graph cost), then check.
    states = {}
    for impl in [IMPLS["ours"]] + [i for i in impls if i.name != "ours"]:
        states[impl.name] = impl.prepare(p)
    prep = time_side_by_side({name: (lambda impl=IMPLS[name]: impl.prepare(p))
                              for name in states}, device, args, args.min_run_time / 4)
    impls = check_against_ours(impls, states, p)

    print(f"timing, {args.rounds} interleaved round(s) ...", flush=True)
    x_plain, x_grad = p.x, p.x.clone().requires_grad_()

    def forward(impl):
        with torch.no_grad():
            impl.forward(states[impl.name], x_plain, p.alpha)

    cases = {(impl.name, "forward"): (lambda impl=impl: forward(impl)) for impl in impls}
    cases.update({(impl.name, "fwd_bwd"):
                  (lambda impl=impl: fwd_bwd(impl, states[impl.name], x_grad, p.alpha, p.grad))
                  for impl in impls})
    medians = time_side_by_side(cases, device, args, args.min_run_time)
    rows = {impl.name: {"forward": medians[impl.name, "forward"],
                        "fwd_bwd": medians[impl.name, "fwd_bwd"]} for impl in impls}
    del states
    gc.collect()

    for impl in impls:
        print(f"measuring memory of {impl.label} ...", flush=True)
        if device.type == "cuda":
            rows[impl.name]["memory"] = measure_memory_here(impl, args, device)
            torch.cuda.empty_cache()
        else:
            rows[impl.name]["memory"] = measure_memory_subprocess(impl.name, args)

    if "ours" not in rows:  # --only a reference: a row of ours without numbers, no ratios
        rows = {"ours": {"forward": None, "fwd_bwd": None, "memory": None}, **rows}
    report = format_report(rows, prep, header)
    print()
    print(report)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    path = args.results_dir / f"{device.type}_{time.strftime('%Y%m%d-%H%M%S')}.md"
    path.write_text(report + "\n")
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
