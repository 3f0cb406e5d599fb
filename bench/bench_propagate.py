"""LightGCN propagation, sum_l alpha_l Â^l x: lightgcn_ext vs torch_geometric and
torch.sparse, side by side on one graph, in one process and one run.

    python -m bench.bench_propagate --threads 2      # Gowalla when found, else synthetic
    python -m bench.bench_propagate --device cuda
    python -m bench.bench_propagate --quick          # a small graph: the smoke test

Every implementation is checked against ours before anything is timed.
Times are medians of torch.utils.benchmark's blocked_autorange (CPU) or of
CUDA events (GPU), after a warm-up. Peak memory is what one forward+backward
adds on top of its inputs (with --memory-with-prepare, the graph's preparation
too): on CPU the peak RSS (VmHWM) of a fresh subprocess per implementation, on
CUDA torch.cuda.max_memory_allocated.
The table goes to stdout and to bench/results/<device>_<timestamp>.md.
"""
import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import lightgcn_ext
from bench.bench_model import sample_bpr_batch
from bench.output import results_stem
from bench.timing import run_times_ms, sync, time_interleaved, verdict
from bench.reference import GOWALLA_SIZES, normalized_adjacency, sparse_propagate
from lightgcn_ext import BPRLoss
from lightgcn_ext.data import find, read_dir, synthetic
from lightgcn_ext.training.run_files import atomic_write

OPS = torch.ops.lightgcn_ext
REPO = Path(__file__).resolve().parents[1]
GOWALLA_DIR = REPO.parent / "shared" / "data" / "gowalla"  # the repository's copy, beside it


def gowalla_root():
    """The user's data directory when it holds Gowalla, else GOWALLA_DIR when
    it does, else None."""
    if find("gowalla") is not None:
        return find("gowalla")
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
    label_index: torch.Tensor  # a BPR batch: [2, 2B] (user, positive), then (user, negative)


# The power-law graphs of --data powerlaw: Gowalla's average degree (22.9) and
# share of users among the nodes (0.42), rounded.
POWERLAW_DEGREE = 20
POWERLAW_USER_SHARE = 0.42
MIN_POWERLAW_EDGES = 2000


def powerlaw_interactions(num_edges, seed=0):
    """A seeded synthetic user-item graph of num_edges edges (both directions,
    rounded down to even) and average degree POWERLAW_DEGREE: synthetic's
    Zipf-like user degrees and item popularities, without its communities."""
    num_nodes = num_edges // POWERLAW_DEGREE
    num_users = round(num_nodes * POWERLAW_USER_SHARE)
    return synthetic(seed, num_users=num_users, num_items=num_nodes - num_users,
                     num_interactions=num_edges // 2, communities=1, in_community=1.0)


def build_problem(args, device):
    if args.quick and args.data != "powerlaw":
        data, name = synthetic(
            0, num_users=1000, num_items=1500, num_interactions=20000), "synthetic (quick)"
    elif args.data == "gowalla":
        data, name = read_dir(gowalla_root(), "gowalla"), "Gowalla train"
    elif args.data == "powerlaw":
        data, name = powerlaw_interactions(args.edges), "synthetic power-law"
    else:
        data, name = synthetic(0, **GOWALLA_SIZES), "synthetic Gowalla-sized"
    edge_index = data.edge_index().to(device)
    gen = torch.Generator().manual_seed(0)
    dtype = DTYPES[args.dtype]
    x = torch.randn(data.num_nodes, args.dim, generator=gen).to(device, dtype)
    grad = torch.randn(data.num_nodes, args.dim, generator=gen).to(device, dtype)
    alpha = [1.0 / (args.layers + 1)] * (args.layers + 1)  # LightGCN's default
    label_index = sample_bpr_batch(data, BPR_BATCH).to(device)
    return Problem(name, data.num_nodes, edge_index, x, grad, alpha, label_index)


def tiny_problem(args, device):
    """A few hundred nodes: warms up kernels and threads before a memory probe."""
    quick = argparse.Namespace(**{**vars(args), "quick": True})
    problem = build_problem(quick, device)
    keep = problem.edge_index[0] < 300
    problem.edge_index = problem.edge_index[:, keep & (problem.edge_index[1] < 300)]
    problem.num_nodes = 300
    problem.x, problem.grad = problem.x[:300].contiguous(), problem.grad[:300].contiguous()
    problem.label_index = problem.label_index[:, (problem.label_index < 300).all(0)]
    return problem


# ---------------------------------------------------------- implementations
def ours_prepare(p):
    return lightgcn_ext.Graph.from_edge_index(p.edge_index, p.num_nodes)


def _cpu_isas():
    """(the copy of the CPU sweep that lightgcn_ext runs by default, the next
    narrower copy (the baseline's: AVX2) where this CPU can run it, else None)."""
    chosen = OPS._cpu_isa()
    other = {"avx512": "avx2", "avx2": "baseline", "baseline": "avx2"}[chosen]
    try:
        OPS._cpu_isa(other)
    except RuntimeError:  # a baseline-only CPU
        other = None
    OPS._cpu_isa(chosen)
    return chosen, other


CHOSEN_ISA, OTHER_ISA = _cpu_isas()


def ours_forward_on(isa):
    """Our forward with the CPU sweep's `isa` copy: each call sets it, so that
    the interleaved workloads of both copies each run their own (the backward
    runs in the same call of fwd_bwd, under the same setting)."""
    def forward(graph, x, alpha):
        OPS._cpu_isa(isa)
        return lightgcn_ext.propagate(graph, x, alpha)
    return forward


ours_forward = ours_forward_on(CHOSEN_ISA)


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
    # CPU only: the copy of our sweep that is not chosen (its memory is ours).
    other_isa: bool = False


IMPLS = {impl.name: impl for impl in [
    Impl("ours", "lightgcn_ext.propagate (ours)", ours_prepare, ours_forward),
    *([Impl(f"ours_{OTHER_ISA}", f"lightgcn_ext.propagate, {OTHER_ISA} sweep (not chosen)",
            ours_prepare, ours_forward_on(OTHER_ISA), other_isa=True)] if OTHER_ISA else []),
    Impl("pyg_edge_index", "torch_geometric LGConv, edge_index", pyg_edge_index_prepare,
         pyg_forward, "torch_geometric"),
    Impl("pyg_csr", "torch_geometric LGConv, torch.sparse CSR adj_t", pyg_csr_prepare,
         pyg_forward, "torch_geometric"),
    Impl("sparse_csr", "torch.sparse.mm, precomputed normalized CSR", sparse_csr_prepare,
         sparse_propagate),
    Impl("sparse_coo", "torch.sparse.mm, normalized COO (LightGCN-PyTorch)", sparse_coo_prepare,
         sparse_coo_forward),
]}
OURS = [name for name in IMPLS if name.startswith("ours")]
REFERENCES = [name for name in IMPLS if name not in OURS]
SKIPPABLE = [name for name in IMPLS if name != "ours"]
BPR_BATCH = 2048  # triples per BPR step, as torch_geometric's examples/lightgcn.py


def fwd_bwd(impl, state, x, alpha, grad):
    x.grad = None
    impl.forward(state, x, alpha).backward(grad)


def bpr_step(impl, state, x, alpha, label_index):
    """LightGCN's training step without the optimizer (the same Adam for all):
    propagate, score the batch's positive and negative pairs, BPR loss, backward."""
    x.grad = None
    out = impl.forward(state, x, alpha)
    scores = (out[label_index[0]] * out[label_index[1]]).sum(-1)
    BPRLoss()(*scores.chunk(2)).backward()


def bare_gather(graph, x, isa):
    """One sweep of the floor: lightgcn_ext::_bare_gather over our CSR, on the
    CPU sweep's `isa` copy."""
    OPS._cpu_isa(isa)
    return OPS._bare_gather(graph.rowptr, graph.col, x)


def floor_applies(device, dtype):
    return device.type == "cpu" and dtype in (torch.float32, torch.float64)


# ----------------------------------------------------------- the GPU floor
def sweep_bytes(graph, x):
    """The bytes one sweep must move at the least: rowptr and the column
    indices (and weights, if any) once, the gathered row of every edge, one
    read of x and one write of the output."""
    n, d = x.shape
    edges = graph.col.numel()
    weights = 0 if graph.weight is None else graph.weight.numel() * graph.weight.element_size()
    return (graph.rowptr.numel() * graph.rowptr.element_size()
            + edges * graph.col.element_size() + weights
            + (edges + 2 * n) * d * x.element_size())


_GPU_BANDWIDTHS = {}  # measured once per device


def gpu_bandwidths(device):
    """{"DRAM": GB/s, "L2": GB/s, "DRAM nominal": GB/s or None} of a CUDA
    device: device-to-device copies (bytes read + written over the time) of
    1 GiB (DRAM) and of a quarter of the L2 cache, 100 times per timed call
    (L2: the launches' gaps make it a lower bound)."""
    props = torch.cuda.get_device_properties(device)

    def copy_gbps(nbytes, repeat):
        src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
        dst = torch.empty_like(src)

        def run():
            for _ in range(repeat):
                dst.copy_(src)
        ms = statistics.median(run_times_ms(run, device, 0.2, 1, min_runs=5, warm_up=2))
        return 2 * src.nbytes * repeat / (ms * 1e-3) / 1e9

    if device not in _GPU_BANDWIDTHS:
        clock_khz = getattr(props, "memory_clock_rate", None)
        bus_bits = getattr(props, "memory_bus_width", None)
        _GPU_BANDWIDTHS[device] = {
            "DRAM": copy_gbps(2**30, 1), "L2": copy_gbps(props.L2_cache_size // 4, 100),
            # double data rate: two transfers per clock
            "DRAM nominal": 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9
            if clock_khz and bus_bits else None}
    return _GPU_BANDWIDTHS[device]


def gpu_floors(graph, x):
    """{"DRAM": ms, "L2": ms}: one sweep's bytes at each bandwidth."""
    nbytes = sweep_bytes(graph, x)
    return {level: nbytes / (gbps * 1e9) * 1e3
            for level, gbps in gpu_bandwidths(x.device).items() if level in ("DRAM", "L2")}


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


def measure_memory_here(impl, args, device, p=None):
    """Bytes one forward+backward adds to what its inputs hold (run in a fresh
    process on CPU, where the measure is the peak RSS), on problem p (default:
    build_problem's)."""
    # Load the code and threads that the first call touches, on a tiny graph.
    tiny = tiny_problem(args, device)
    fwd_bwd(impl, impl.prepare(tiny), tiny.x.clone().requires_grad_(), tiny.alpha, tiny.grad)
    del tiny
    if p is None:
        p = build_problem(args, device)
    with_prepare = args.memory_with_prepare
    state = None if with_prepare else impl.prepare(p)
    x = p.x.clone().requires_grad_()
    gc.collect()

    def run():
        fwd_bwd(impl, impl.prepare(p) if with_prepare else state, x, p.alpha, p.grad)

    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        run()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - before
    _release_free_heap()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
    before = _proc_status_kb("VmRSS")
    run()
    return (_proc_status_kb("VmHWM") - before) * 1024


def _release_free_heap():
    """Returns freed heap memory to the OS, so that the baseline RSS holds only
    live data (glibc; elsewhere a no-op)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class OutOfMemory(RuntimeError):
    """An implementation ran out of memory (or of the memory limit given it)."""


def is_out_of_memory(text):
    return any(sign in text for sign in ("can't allocate memory", "out of memory",
                                          "Cannot allocate memory", "MemoryError"))


def measure_memory_subprocess(name, args, memory_limit=None):
    """Peak added bytes of one forward+backward of `name`, in a fresh process;
    with memory_limit (bytes), the process may map at most that much data
    (RLIMIT_DATA), and OutOfMemory is raised when it needs more."""
    command = [sys.executable, "-m", "bench.bench_propagate", "--only", name, "--measure-memory",
               "--device", args.device, "--threads", str(args.threads), "--dim", str(args.dim),
               "--layers", str(args.layers), "--data", args.data, "--dtype", args.dtype]
    if args.edges is not None:
        command += ["--edges", str(args.edges)]
    if args.quick:
        command.append("--quick")
    if args.memory_with_prepare:
        command.append("--memory-with-prepare")
    # A fixed mmap threshold makes glibc map every large tensor and unmap it when
    # freed, so the peak RSS follows the live tensors instead of heap reuse
    # (without it the same probe gave 36 or 72 MB for ours, run to run).
    env = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024), **os.environ}

    def limit():
        resource.setrlimit(resource.RLIMIT_DATA, (memory_limit, memory_limit))

    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                            preexec_fn=limit if memory_limit else None)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        # SIGKILL: the kernel's OOM killer, the only way a probe dies of it.
        error = OutOfMemory if result.returncode == -9 or is_out_of_memory(result.stderr) \
            else RuntimeError
        raise error(f"memory probe of {name} failed (exit {result.returncode}):\n"
                    f"{result.stderr[-2000:]}")
    return json.loads(lines[-1])["added_bytes"]


# ----------------------------------------------------------------- checks
def check_against_ours(impls, states, p, log=print):
    """Forward and gradient of every implementation vs ours; returns (the ones
    that run, {name: why not} of the others) after logging their max abs
    errors. Exits on a mismatch."""
    ours = IMPLS["ours"]
    x = p.x.clone().requires_grad_()
    expected = ours.forward(states["ours"], x, p.alpha)
    expected.backward(p.grad)
    expected, expected_grad = expected.detach(), x.grad
    tolerance = TOLERANCE[p.x.dtype] * max(1.0, expected.abs().max().item(),
                                           expected_grad.abs().max().item())
    log(f"correctness vs ours (max abs error, tolerance {tolerance:.1e}):")
    working, failed, skipped = [], [], {}
    for impl in impls:
        if impl.name == "ours":
            working.append(impl)
            continue
        x = p.x.clone().requires_grad_()
        try:
            out = impl.forward(states[impl.name], x, p.alpha)
            out.backward(p.grad)
        except (RuntimeError, NotImplementedError) as error:
            skipped[impl.name] = str(error).splitlines()[0]
            log(f"  {impl.label}: does not run here, skipped ({skipped[impl.name]})")
            continue
        err_out = (out.detach() - expected).abs().max().item()
        err_grad = (x.grad - expected_grad).abs().max().item()
        ok = err_out <= tolerance and err_grad <= tolerance
        log(f"  {impl.label}: forward {err_out:.2e}, grad {err_grad:.2e}"
            f"{'' if ok else '  MISMATCH'}")
        (working if ok else failed).append(impl)
    if failed:
        sys.exit(f"error: {', '.join(i.label for i in failed)} disagree(s) with ours; "
                 "nothing was timed")
    log(f"PASS: {len(working) - 1} implementation(s) agree with ours")
    return working, skipped


# -------------------------------------------------------------- one case
MODES = ("forward", "fwd_bwd", "bpr")


def sweeps(mode, layers):
    """Sweeps over the graph of one call: L forward, L more backward."""
    return layers if mode == "forward" else 2 * layers


def measure_case(p, impls, device, args, min_run_time, log=print):
    """Prepares every implementation's graph form (timed: a once-per-graph
    cost), checks it against ours, and times its forward, forward+backward and
    BPR step side by side with the floor. Returns (rows {name: {mode: ms}},
    prep {name: ms}, floors {isa: ms of one bare-gather sweep}, skipped
    {name: why it did not run})."""
    states, skipped = {}, {}
    for impl in [IMPLS["ours"]] + [i for i in impls if i.name != "ours"]:
        try:
            states[impl.name] = impl.prepare(p)
        except RuntimeError as error:  # out of memory, mostly
            skipped[impl.name] = str(error).splitlines()[0]
    prep = time_side_by_side({impl.name: (lambda impl=impl: impl.prepare(p)) for impl in impls
                              if impl.name in states and not impl.other_isa},
                             device, args, min_run_time / 4)
    impls, failed = check_against_ours([i for i in impls if i.name in states], states, p, log)
    skipped.update(failed)
    x_plain, x_grad = p.x, p.x.clone().requires_grad_()

    def forward(impl):
        with torch.no_grad():
            impl.forward(states[impl.name], x_plain, p.alpha)

    cases = {}
    for impl in impls:
        state = states[impl.name]
        cases[impl.name, "forward"] = lambda impl=impl: forward(impl)
        cases[impl.name, "fwd_bwd"] = lambda impl=impl, state=state: fwd_bwd(
            impl, state, x_grad, p.alpha, p.grad)
        cases[impl.name, "bpr"] = lambda impl=impl, state=state: bpr_step(
            impl, state, x_grad, p.alpha, p.label_index)
    isas = [isa for isa in (CHOSEN_ISA, OTHER_ISA) if isa] \
        if floor_applies(device, p.x.dtype) else []
    for isa in isas:
        cases["floor", isa] = lambda isa=isa: bare_gather(states["ours"], x_plain, isa)
    log(f"timing, {args.rounds} interleaved round(s) ...")
    medians = time_side_by_side(cases, device, args, min_run_time)
    OPS._cpu_isa(CHOSEN_ISA)
    rows = {impl.name: {mode: medians[impl.name, mode] for mode in MODES} for impl in impls}
    floors = {isa: medians["floor", isa] for isa in isas}
    if device.type == "cuda":
        floors = gpu_floors(states["ours"], p.x)
    return rows, prep, floors, skipped


def floor_of(name, floors):
    """The floor (ms of one sweep) that `name` is held against. CPU: the bare
    gather on the same copy of the sweep for ours, the chosen copy's for the
    references (the least a sweep costs on this CPU). GPU: the sweep's bytes
    at the DRAM bandwidth (gpu_floors; the L2 one is reported beside it)."""
    if "DRAM" in floors:
        return floors["DRAM"]
    isa = OTHER_ISA if IMPLS[name].other_isa else CHOSEN_ISA
    return floors.get(isa)


def floor_label(key):
    return f"bare-gather floor ({key} sweep)" if key in ("avx512", "avx2", "baseline") else \
        f"the sweeps' bytes at {key} bandwidth"


def floor_description(floors, device):
    """What the floors are, with their values, for a report."""
    per_sweep = ", ".join(f"{key}: {ms:.3g} ms" for key, ms in floors.items())
    if "DRAM" not in floors:
        return (f"The floor: lightgcn_ext::_bare_gather, one sweep of our loop with no weights, "
                f"normalization or epilogue ({per_sweep} per sweep), times the sweeps of each "
                f"column: L forward, 2L with the backward.")
    bandwidths = ", ".join(f"{key} {gbps:.0f} GB/s" for key, gbps in
                           gpu_bandwidths(device).items() if gbps)
    return (f"The floor: the bytes one sweep must move (rowptr, col, the gathered row of every "
            f"edge, one read of x, one write of the output) over the bandwidth ({bandwidths}; "
            f"DRAM and L2 from device copies, nominal from the memory clock): {per_sweep} per "
            f"sweep. time / floor is against DRAM; below 1 means the rows came from L2.")


def times_floor(ms, mode, name, floors, layers):
    """ms over the floor of its sweeps (1.0: as fast as the bare gather), or None."""
    floor = floor_of(name, floors)
    if ms is None or not floor:
        return None
    return ms / (sweeps(mode, layers) * floor)


# ----------------------------------------------------------------- report
# The issue's targets (issue 10): (what, key, ratio, at least (True) or at most).
SWEEP_TARGET = 1.3  # each of our sweeps within 1.3x of the bare-gather floor


def target_checks(rows, floors, layers):
    """(description, measured ratio or None, target ratio, True when the
    ratio must be at least the target, False when at most) of the targets."""
    ours = rows["ours"]
    refs = {name: row for name, row in rows.items() if name in REFERENCES}

    def ratio(name, key):
        row = refs.get(name)
        return None if row is None or not ours[key] else row[key] / ours[key]

    def extreme(key):
        values = [(row[key], name) for name, row in refs.items() if row.get(key) is not None]
        return min(values) if values and ours.get(key) else None

    fastest, lightest = extreme("fwd_bwd"), extreme("memory")
    checks = [
        ("forward vs torch.sparse.mm CSR", ratio("sparse_csr", "forward"), 1.5, True),
        ("forward vs PyG edge_index", ratio("pyg_edge_index", "forward"), 10.0, True),
        (f"fwd+bwd vs the fastest reference"
         f"{f' ({IMPLS[fastest[1]].label})' if fastest else ''}",
         fastest[0] / ours["fwd_bwd"] if fastest else None, 6.0, True),
        (f"memory vs the lightest reference"
         f"{f' ({IMPLS[lightest[1]].label})' if lightest else ''}",
         lightest[0] / ours["memory"] if lightest else None, 2.0, True),
    ]
    if floors:
        checks += [(f"{what}, time of one sweep over the bare-gather floor",
                    times_floor(ours[mode], mode, "ours", floors, layers), SWEEP_TARGET, False)
                   for mode, what in (("forward", "forward"), ("fwd_bwd", "fwd+bwd"))]
    return checks


def target_verdict(measured, target, at_least, judged=True):
    if measured is None:
        return "n/a (not measured)"
    return verdict(measured >= target if at_least else measured <= target, measured, judged)


def fmt(value, spec, scale=1.0):
    return "n/a" if value is None else format(value / scale, spec)


def format_report(rows, prep, floors, header, layers, device, quick=False):
    ours = rows["ours"]
    labels = {"forward": "fwd", "fwd_bwd": "fwd+bwd", "bpr": "BPR"}

    def ratios(row, keys, over_ours=True):
        return " / ".join("n/a" if row.get(k) is None or not ours.get(k) else
                          f"{(row[k] / ours[k] if over_ours else ours[k] / row[k]):.2f}x"
                          for k in keys)

    lines = header + [
        "",
        "| implementation | forward ms | fwd+bwd ms | BPR step ms | peak added memory MB "
        "| ours faster (fwd / fwd+bwd / BPR) | memory ratio (this / ours) "
        "| time / floor (fwd / fwd+bwd / BPR) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        x_floor = " / ".join(fmt(times_floor(row.get(m), m, name, floors, layers), ".2f")
                             + ("x" if floors else "") for m in MODES)
        lines.append(
            f"| {IMPLS[name].label} | {fmt(row.get('forward'), '.1f')} "
            f"| {fmt(row.get('fwd_bwd'), '.1f')} | {fmt(row.get('bpr'), '.1f')} "
            f"| {fmt(row.get('memory'), '.1f', 2**20)} | {ratios(row, MODES)} "
            f"| {ratios(row, ['memory'])} | {x_floor} |")
    for key, ms in floors.items():
        lines.append(f"| {floor_label(key)} | {layers * ms:.1f} "
                     f"| {2 * layers * ms:.1f} | {2 * layers * ms:.1f} | | | | "
                     f"{fmt(ms / floor_of('ours', floors), '.2f')}x |")
    if floors:
        lines += ["", floor_description(floors, device)]
    lines += ["", "Graph preparation, once per graph (not in the times above):", ""]
    lines += [f"- {IMPLS[name].label}: {ms:.1f} ms" for name, ms in prep.items()]
    lines += ["", "Targets:", ""]
    for what, measured, target, at_least in target_checks(rows, floors, layers):
        lines.append(f"- {what} {'>=' if at_least else '<='} {target:g}x: "
                     f"{target_verdict(measured, target, at_least, judged=not quick)}")
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


def machine_name(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with open("/proc/cpuinfo") as f:
        return next((line.split(":", 1)[1].strip() for line in f
                     if line.startswith("model name")), platform.processor())


def describe(args, device, p):
    machine = machine_name(device)
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
        *([f"- CPU sweep: the {CHOSEN_ISA} copy (the other: {OTHER_ISA or 'none on this CPU'}; "
           f"LIGHTGCN_EXT_CPU_ISA={os.environ.get('LIGHTGCN_EXT_CPU_ISA') or 'unset'})"]
          if device.type == "cpu" else []),
        "- memory: peak added by "
        + ("the graph's preparation and " if args.memory_with_prepare else "")
        + "one forward+backward over its inputs ("
        + ("torch.cuda.max_memory_allocated)" if device.type == "cuda" else
           "VmHWM - VmRSS in a fresh process each, glibc mmap threshold 64 KiB)"),
    ]


# -------------------------------------------------------------------- main
def positive(kind):
    """An argparse type: a number of `kind` (int or float) above 0."""
    def parse(text):
        try:
            value = kind(float(text)) if kind is int and "e" in text.lower() else kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value
    return parse


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=positive(int), default=2, help="torch.set_num_threads")
    parser.add_argument("--dim", type=positive(int), default=64)
    parser.add_argument("--layers", type=positive(int), default=3)
    parser.add_argument("--data", choices=["gowalla", "synthetic", "powerlaw"], default=None,
                        help="default: gowalla when found, else synthetic (Gowalla-sized); "
                        "powerlaw: a synthetic power-law graph of --edges edges")
    parser.add_argument("--edges", type=positive(int), default=None,
                        help=f"edges of --data powerlaw (both directions, at least "
                        f"{MIN_POWERLAW_EDGES}; 1e6 is fine)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="float32")
    parser.add_argument("--quick", action="store_true",
                        help="a small synthetic graph and short runs (smoke test)")
    parser.add_argument("--only", choices=list(IMPLS), help="time only this implementation")
    parser.add_argument("--skip-references", default="",
                        help=f"comma-separated, of: {','.join(SKIPPABLE)}")
    parser.add_argument("--min-run-time", type=positive(float), default=None,
                        help="seconds of runs per implementation and mode, over all rounds "
                        "(default 2, 0.02 with --quick); at least 3 runs each")
    parser.add_argument("--rounds", type=positive(int), default=None,
                        help="interleaved timing rounds (default 3, 1 with --quick)")
    parser.add_argument("--results-dir", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--memory-with-prepare", action="store_true",
                        help="count each implementation's graph preparation in its peak added "
                        "memory (what its prepared form keeps, and the peak of making it)")
    parser.add_argument("--measure-memory", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.data is None:
        args.data = "gowalla" if gowalla_root() is not None else "synthetic"
    if args.data == "gowalla" and gowalla_root() is None:
        parser.error(f"--data gowalla: no Gowalla files in $LIGHTGCN_EXT_DATA, "
                     f"~/.cache/lightgcn_ext or {GOWALLA_DIR}")
    if (args.data == "powerlaw") != (args.edges is not None):
        parser.error("--edges goes with --data powerlaw, and --data powerlaw needs --edges")
    if args.edges is not None and args.edges < MIN_POWERLAW_EDGES:
        parser.error(f"--edges must be at least {MIN_POWERLAW_EDGES}, got {args.edges}")
    if args.min_run_time is None:
        args.min_run_time = 0.02 if args.quick else 2.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    skipped = {s for s in args.skip_references.split(",") if s}
    unknown = skipped - set(SKIPPABLE)
    if unknown:
        parser.error(f"--skip-references: unknown {sorted(unknown)}; choose from {SKIPPABLE}")
    args.skipped = skipped
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    return args


def selected_impls(args, log=print):
    if args.only:
        names = [args.only]
    else:
        names = [n for n in IMPLS if n not in args.skipped]
    impls = []
    for name in names:
        impl = IMPLS[name]
        if impl.other_isa and args.device != "cpu":
            continue
        if impl.needs:
            try:
                __import__(impl.needs)
            except ImportError:
                log(f"{impl.label}: skipped, {impl.needs} is not installed")
                continue
        impls.append(impl)
    return impls


def measure_memory(impls, args, device, log=print):
    """{name: peak added bytes of one forward+backward} (the other copy of our
    sweep allocates what ours does: measured once)."""
    memory = {}
    for impl in impls:
        if impl.other_isa:
            continue
        log(f"measuring memory of {impl.label} ...")
        if device.type == "cuda":
            memory[impl.name] = measure_memory_here(impl, args, device)
            torch.cuda.empty_cache()
        else:
            memory[impl.name] = measure_memory_subprocess(impl.name, args)
    for impl in impls:
        if impl.other_isa:
            memory[impl.name] = memory.get("ours")
    return memory


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
    log = lambda text: print(text, flush=True)  # noqa: E731
    rows, prep, floors, _ = measure_case(p, impls, device, args, args.min_run_time, log)
    impls = [impl for impl in impls if impl.name in rows]
    del p
    gc.collect()
    for name, added in measure_memory(impls, args, device, log).items():
        rows[name]["memory"] = added

    if "ours" not in rows:  # --only a reference: a row of ours without numbers, no ratios
        rows = {"ours": {}, **rows}
    if device.type == "cpu":  # a busy machine shows here: compare with the start's
        header.append(f"- load average at the end: {os.getloadavg()[0]:.2f}")
    report = format_report(rows, prep, floors, header, args.layers, device, args.quick)
    print()
    print(report)
    stem = args.results_dir / f"propagate-{results_stem(device)}"
    atomic_write(stem.with_suffix(".md"), report + "\n")
    atomic_write(stem.with_suffix(".json"), json.dumps(
        {"header": header, "layers": args.layers, "rows": rows, "prep_ms": prep,
         "floor_ms_per_sweep": floors}, indent=1) + "\n")
    print(f"\nwritten to {stem}.md and .json")


if __name__ == "__main__":
    main()
