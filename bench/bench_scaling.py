"""How the cost of LightGCN propagation grows with the graph: lightgcn_ext vs
torch_geometric and torch.sparse on seeded synthetic power-law graphs, with the
floor beside them.

    python -m bench.bench_scaling                   # CPU, 2 threads: ~15-20 minutes
    python -m bench.bench_scaling --device cuda     # adds bfloat16 and 3e7, 1e8 edges
    python -m bench.bench_scaling --quick           # the smoke test: under 2 minutes

The grid is not the full cartesian product (3 x 4 x 7 sizes x 5 references
would take hours on 2 cores and say little more): a size sweep at d = 64, L = 3,
then d in {32, 64, 128} and L in {1, 2, 3, 4} at one size (1e6 edges), each
varying one setting around that point. On a GPU, the size sweep is repeated in
bfloat16.

Each case is bench_propagate's: the graph forms prepared, every implementation
checked against ours, then forward, forward+backward and a BPR step (2048
triples, no optimizer) timed side by side with the floor (CPU: one sweep of
lightgcn_ext::_bare_gather; GPU: the bytes a sweep must move at the DRAM and L2
bandwidths), and the peak memory one forward+backward adds (a fresh process
each on CPU). Both copies of our CPU sweep (AVX2, baseline x86-64) are timed.

A reference whose call would take longer than --time-limit, or need more than
--memory-limit-gb, extrapolated from its last case by edges x d x L, is not run
and is reported out of time / out of memory with the last size it ran at; one
that runs out of memory in its probe is reported so too.

Writes bench/results/<device>-<date>.md (the tables, also on stdout), .json
(every number), -time.png and -memory.png (log-log, one line per
implementation).
"""
import argparse
import concurrent.futures
import json
import os
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import lightgcn_ext
from bench import bench_propagate as bp
from bench.output import results_stem
from lightgcn_ext.training.run_files import atomic_write

MODE_LABELS = {"forward": "forward", "fwd_bwd": "forward + backward", "bpr": "BPR step"}
SIZES = {"cpu": [10**4, 3 * 10**4, 10**5, 3 * 10**5, 10**6, 3 * 10**6, 10**7],
         "cuda": [10**4, 10**5, 10**6, 3 * 10**6, 10**7, 3 * 10**7, 10**8]}
QUICK_SIZES = [10**4, 3 * 10**4]
OUT_OF_TIME, OUT_OF_MEMORY, OK = "out of time", "out of memory", "ok"


@dataclass(frozen=True)
class Case:
    sweep: str  # "edges", "dim" or "layers": what this case varies
    edges: int
    dim: int
    layers: int
    dtype: str

    def work(self):
        """What time and memory are extrapolated by (they grow about linearly
        in each: E d L for the references that keep every layer)."""
        return self.edges * self.dim * self.layers

    def title(self):
        return f"E={self.edges:.0e} d={self.dim} L={self.layers} {self.dtype}"


@dataclass
class Result:
    status: str = OK
    note: str = ""
    ms: dict = field(default_factory=dict)  # mode -> median ms
    memory: int = None  # peak added bytes
    last_ok_edges: int = None  # the largest size it ran at, when not OK


# ------------------------------------------------------------- the grid
def build_grid(args):
    cases = []
    for i, dtype in enumerate(args.dtypes):
        cases += [Case("edges", e, args.dim, args.layers, dtype) for e in args.sizes]
        if i == 0:  # the d and L sweeps in the first dtype only
            cases += [Case("dim", args.sweep_size, d, args.layers, dtype)
                      for d in args.dims if d != args.dim]
            cases += [Case("layers", args.sweep_size, args.dim, num_layers, dtype)
                      for num_layers in args.layer_counts if num_layers != args.layers]
    return cases


def base_case(case, args):
    """The case a d or L sweep varies from (its row in the size sweep)."""
    return Case("edges", args.sweep_size, args.dim, args.layers, case.dtype)


def earlier_results(name, case, history, args):
    """[(case, result)] of `name` in the cases that `case` extrapolates from:
    the smaller sizes of its size sweep, or the base point of a d or L sweep."""
    if case.sweep == "edges":
        earlier = [c for c in history if c.sweep == "edges" and c.dtype == case.dtype
                   and c.edges < case.edges]
    else:
        earlier = [base_case(case, args)]
    return [(c, history[c][name]) for c in earlier if c in history and name in history[c]]


def last_ok_edges(earlier):
    return max((c.edges for c, r in earlier if r.status == OK), default=None)


def predicted_status(name, case, history, args, memory_limit):
    """(status, note) of `name` before running `case`: out of time or memory
    when an earlier case said so, or when its last successful case, scaled by
    the work, exceeds a limit; else OK."""
    earlier = earlier_results(name, case, history, args)
    failed = [r for _, r in earlier if r.status != OK]
    if failed:
        return failed[-1].status, failed[-1].note
    ok = [(c, r) for c, r in earlier if r.status == OK and r.ms]
    if not ok:
        return OK, ""
    last_case, last = ok[-1]
    scale = case.work() / last_case.work()
    slowest = max(last.ms.values()) * scale / 1e3
    if slowest > args.time_limit:
        return OUT_OF_TIME, (f"a call would take ~{slowest:.0f} s (limit {args.time_limit:g} s), "
                             f"extrapolated from {last_case.title()}")
    if last.memory is not None and last.memory * scale > memory_limit:
        return OUT_OF_MEMORY, (f"would need ~{last.memory * scale / 2**30:.1f} GiB (limit "
                               f"{memory_limit / 2**30:.1f} GiB), extrapolated from "
                               f"{last_case.title()}")
    return OK, ""


# ------------------------------------------------------------- one case
def case_args(case, args):
    """bench_propagate's arguments for one case."""
    argv = ["--device", args.device, "--threads", str(args.threads), "--data", "powerlaw",
            "--edges", str(case.edges), "--dim", str(case.dim), "--layers", str(case.layers),
            "--dtype", case.dtype, "--min-run-time", str(args.min_run_time),
            "--rounds", str(args.rounds)]
    if args.skip_references:
        argv += ["--skip-references", args.skip_references]
    return bp.parse_args(argv)


def measure_memory(impl, cargs, device, memory_limit, p):
    """Peak added bytes of one forward+backward, or raises bp.OutOfMemory."""
    if device.type == "cuda":
        try:
            return bp.measure_memory_here(impl, cargs, device, p)
        except torch.cuda.OutOfMemoryError as error:
            raise bp.OutOfMemory(str(error).splitlines()[0]) from error
        finally:
            torch.cuda.empty_cache()
    return bp.measure_memory_subprocess(impl.name, cargs, memory_limit)


def run_case(case, impls, history, args, device, memory_limit, log):
    """({name: Result} of every implementation on one case, the floors, N)."""
    cargs = case_args(case, args)
    results, live = {}, []

    def stopped(name, status, note):
        last = last_ok_edges(earlier_results(name, case, history, args))
        return Result(status, note, last_ok_edges=last)

    for impl in impls:
        status, note = predicted_status(impl.name, case, history, args, memory_limit)
        if status == OK:
            live.append(impl)
        else:
            results[impl.name] = stopped(impl.name, status, note)
    p = bp.build_problem(cargs, device)
    probed = [impl for impl in live if not impl.other_isa]  # the other copy: ours' memory
    # Threads only wait on the probes' processes; on CUDA the probes run here, one at a time.
    jobs = args.probe_jobs if device.type == "cpu" else 1
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        probes = [pool.submit(measure_memory, impl, cargs, device, memory_limit // jobs, p)
                  for impl in probed]
    for impl, probe in zip(probed, probes):
        try:
            results[impl.name] = Result(memory=probe.result())
        except bp.OutOfMemory as error:
            live.remove(impl)
            results[impl.name] = stopped(impl.name, OUT_OF_MEMORY, "its memory probe failed: "
                                         + str(error).strip().splitlines()[-1][:200])
    if bp.IMPLS["ours"] not in live:
        return results, {}, p.num_nodes
    rows, _, floors, skipped = bp.measure_case(p, live, device, cargs, args.min_run_time, log)
    for name, why in skipped.items():
        results[name] = stopped(name, OUT_OF_MEMORY if bp.is_out_of_memory(why) else "failed",
                                why)
    for name, ms in rows.items():
        result = results.setdefault(name, Result())
        result.ms = ms
        if bp.IMPLS[name].other_isa:
            result.memory = results["ours"].memory
    return results, floors, p.num_nodes


# --------------------------------------------------------------- report
def fmt_edges(edges):
    return f"{edges:.0e}".replace("e+0", "e").replace("e+", "e")


def cell(result, key, layers=None, floors=None, name=None):
    if result is None:
        return ""
    if result.status != OK:
        since = f", ran up to E={fmt_edges(result.last_ok_edges)}" \
            if result.last_ok_edges else ""
        return f"{result.status}{since}"
    if key == "memory":
        return bp.fmt(result.memory, ".1f", 2**20)
    text = bp.fmt(result.ms.get(key), ".3g")
    ratio = bp.times_floor(result.ms.get(key), key, name, floors or {}, layers)
    return text if ratio is None or name not in bp.OURS else f"{text} ({ratio:.2f}x)"


def sweep_tables(records, sweep, impls, dtype, args):
    """The markdown tables of one sweep: one per mode and one of memory."""
    if sweep == "edges":
        rows = [r for r in records if r["case"].sweep == "edges" and r["case"].dtype == dtype]
        key_name, key = "E", lambda c: fmt_edges(c.edges)
    else:
        rows = [r for r in records if r["case"].dtype == dtype and (
            r["case"].sweep == sweep or r["case"] == base_case(r["case"], args))]
        if not any(r["case"].sweep == sweep for r in rows):
            return []
        key_name = "d" if sweep == "dim" else "L"
        key = lambda c: str(getattr(c, sweep))  # noqa: E731
        rows.sort(key=lambda r: getattr(r["case"], sweep))
    labels = [bp.IMPLS[i.name].label for i in impls]
    lines = []
    for what in list(bp.MODES) + ["memory"]:
        unit = "peak added memory, MB" if what == "memory" else f"{MODE_LABELS[what]}, ms"
        floor_col = "" if what == "memory" else " | floor |"
        lines += ["", f"**{unit}**" + ("" if what == "memory" else
                                       " (ours: time / floor in parentheses, each copy of the sweep against "
                                       "the bare gather on the same copy; the floor column: the "
                                       "chosen copy's)"), "",
                  f"| {key_name} | N | " + " | ".join(labels) + (floor_col or " |"),
                  "|---:|---:|" + "---:|" * len(labels) + ("---:|" if floor_col else "")]
        for r in rows:
            c = r["case"]
            cells = [cell(r["results"].get(i.name), what, c.layers, r["floors"], i.name)
                     for i in impls]
            floor = ""
            if what != "memory":
                one = bp.floor_of("ours", r["floors"]) if r["floors"] else None
                floor = f" {bp.fmt(one and bp.sweeps(what, c.layers) * one, '.3g')} |"
            lines.append(f"| {key(c)} | {r['num_nodes'] or ''} | " + " | ".join(cells) + " |"
                         + floor)
    return lines


def notes(records, impls):
    """One line per implementation that stopped running, with why."""
    lines = []
    for impl in impls:
        for r in records:
            result = r["results"].get(impl.name)
            if result is not None and result.status != OK:
                lines.append(f"- {impl.label}: {result.status} from {r['case'].title()} "
                             f"({result.note})")
                break
    return lines


def format_report(records, impls, header, args):
    lines = list(header)
    for dtype in args.dtypes:
        for sweep, title in (("edges", f"Size sweep (d={args.dim}, L={args.layers}, {dtype})"),
                             ("dim", f"d sweep (E={fmt_edges(args.sweep_size)}, L={args.layers}, "
                                     f"{dtype})"),
                             ("layers", f"L sweep (E={fmt_edges(args.sweep_size)}, d={args.dim}, "
                                        f"{dtype})")):
            tables = sweep_tables(records, sweep, impls, dtype, args)
            if tables:
                lines += ["", f"## {title}"] + tables
    stopped = notes(records, impls)
    if stopped:
        lines += ["", "## References that stopped", ""] + stopped
    return "\n".join(lines)


def plot(records, impls, args, stem):
    """-time.png (one panel per mode) and -memory.png of the size sweep in the
    first dtype: log-log, one line per implementation, ours highlighted."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    size_records = [r for r in records if r["case"].sweep == "edges"
                    and r["case"].dtype == args.dtypes[0]]

    def series(name, key):
        points = [(r["case"].edges, r["results"][name])
                  for r in size_records if name in r["results"]]
        ok = [(e, res.memory if key == "memory" else res.ms.get(key))
              for e, res in points if res.status == OK]
        stopped = next((res for _, res in points if res.status != OK), None)
        return [(e, v) for e, v in ok if v is not None], stopped

    # Red is ours alone: the others take the rest of matplotlib's palette.
    others = iter(["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown",
                   "tab:olive", "tab:cyan", "tab:pink"])
    colors = {impl.name: "crimson" if impl.name in bp.OURS else next(others) for impl in impls}

    def draw(ax, key):
        for impl in impls:
            points, stopped = series(impl.name, key)
            if not points:
                continue
            ours = impl.name == "ours"
            label = impl.label + (f" ({stopped.status})" if stopped else "")
            ax.plot(*zip(*points), marker="o", markersize=4 if ours else 3,
                    linewidth=3 if ours else 1.2, color=colors[impl.name],
                    linestyle="--" if impl.other_isa else "-", zorder=3 if ours else 2,
                    label=label)
            if stopped:
                ax.plot(*points[-1], marker="x", markersize=10, color="black", zorder=4)
        if key != "memory":
            floor = [(r["case"].edges, bp.sweeps(key, r["case"].layers)
                      * bp.floor_of("ours", r["floors"]))
                     for r in size_records if r["floors"]]
            if floor:
                ax.plot(*zip(*floor), color="gray", linestyle=":", linewidth=2,
                        label="floor (" + ("bare gather" if args.device == "cpu"
                                           else "bytes at DRAM bandwidth") + ")")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("edges (both directions)")
        ax.grid(True, which="both", alpha=0.3)

    title = (f"LightGCN propagation, d={args.dim}, L={args.layers}, {args.dtypes[0]}, "
             f"{machine_name(args)}")
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.5))
    for ax, key in zip(axes, bp.MODES):
        draw(ax, key)
        ax.set_title(MODE_LABELS[key])
        ax.set_ylabel("ms")
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(title + " (x: the last size a reference ran at)")
    fig.tight_layout()
    save_png(fig, Path(f"{stem}-time.png"))
    fig, ax = plt.subplots(figsize=(8, 5.5))
    draw(ax, "memory")
    ax.set_title("peak added memory of one forward+backward")
    ax.set_ylabel("bytes")
    ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    save_png(fig, Path(f"{stem}-memory.png"))
    plt.close("all")


def save_png(fig, path):
    import io
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write(path, buffer.getvalue())


def machine_name(args):
    if args.device == "cuda":
        return bp.machine_name(torch.device("cuda"))
    return bp.machine_name(torch.device(args.device)) + f", {args.threads} threads"


def to_json(records, impls, header, args, duration_s, command):
    return {
        "command": command,
        "header": header,
        "duration_s": duration_s,
        "implementations": {i.name: i.label for i in impls},
        "cases": [{
            "sweep": r["case"].sweep, "edges": r["case"].edges, "num_nodes": r["num_nodes"],
            "dim": r["case"].dim, "layers": r["case"].layers, "dtype": r["case"].dtype,
            "floor_ms_per_sweep": r["floors"],
            "results": {name: {"status": res.status, "note": res.note, "ms": res.ms,
                               "memory_bytes": res.memory, "last_ok_edges": res.last_ok_edges,
                               "times_floor": {m: bp.times_floor(res.ms.get(m), m, name,
                                                                 r["floors"], r["case"].layers)
                                               for m in bp.MODES} if res.ms else {}}
                        for name, res in r["results"].items()},
        } for r in records],
    }


# ----------------------------------------------------------------- main
def int_list(text):
    """An argparse type: comma-separated positive ints (1e6 is allowed)."""
    try:
        values = [int(float(v)) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, "
                                         f"got {text!r}")
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, "
                                         f"got {text!r}")
    return values


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--threads", type=bp.positive(int), default=2)
    parser.add_argument("--dtypes", default=None,
                        help="comma-separated (default float32; float32,bfloat16 on cuda)")
    parser.add_argument("--sizes", type=int_list, default=None,
                        help="edges of the size sweep (default: CPU 1e4 to 1e7, GPU 1e4 to "
                        "1e8, in half decades where it is quick)")
    parser.add_argument("--dim", type=bp.positive(int), default=64, help="d of the size sweep")
    parser.add_argument("--layers", type=bp.positive(int), default=3,
                        help="L of the size sweep")
    parser.add_argument("--dims", type=int_list, default=[32, 64, 128],
                        help="d of the d sweep, at --sweep-size edges")
    parser.add_argument("--layer-counts", type=int_list, default=[1, 2, 3, 4],
                        help="L of the L sweep, at --sweep-size edges")
    parser.add_argument("--sweep-size", type=int_list, default=None,
                        help="edges of the d and L sweeps, one of --sizes (default 1e6)")
    parser.add_argument("--time-limit", type=bp.positive(float), default=10.0,
                        help="seconds a single call may take (default 10)")
    parser.add_argument("--memory-limit-gb", type=bp.positive(float), default=None,
                        help="memory a call may add (default: 3/4 of the machine's "
                        "or the GPU's memory)")
    parser.add_argument("--min-run-time", type=bp.positive(float), default=None,
                        help="seconds of runs per implementation and mode, over all rounds "
                        "(default 0.6, 0.02 with --quick); at least 3 runs each")
    parser.add_argument("--rounds", type=bp.positive(int), default=None,
                        help="interleaved timing rounds per case (default 2, 1 with --quick): "
                        "a busy spell of a shared machine then hits all implementations")
    parser.add_argument("--skip-references", default="",
                        help=f"comma-separated, of: {','.join(bp.SKIPPABLE)}")
    parser.add_argument("--probe-jobs", type=bp.positive(int), default=None,
                        help="memory probes run at once on CPU, each given 1/jobs of the "
                        "memory limit (default 1, 2 with --quick; no timing runs meanwhile)")
    parser.add_argument("--quick", action="store_true",
                        help=f"sizes {QUICK_SIZES}, d in {{32, 64}} and L in {{1, 3}} at 1e4 "
                        "edges, short runs: the smoke test")
    parser.add_argument("--results-dir", type=Path, default=bp.REPO / "bench" / "results")
    parser.add_argument("--verbose", action="store_true",
                        help="print each case's checks and steps")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    if args.dtypes is None:
        args.dtypes = "float32,bfloat16" if args.device == "cuda" else "float32"
    args.dtypes = args.dtypes.split(",")
    unknown = [d for d in args.dtypes if d not in bp.DTYPES]
    if unknown:
        parser.error(f"--dtypes: unknown {unknown}; choose from {list(bp.DTYPES)}")
    if args.device == "cpu" and any(bp.DTYPES[d] in (torch.float16, torch.bfloat16)
                                    for d in args.dtypes):
        parser.error("--dtypes: float16/bfloat16 are for --device cuda (on CPU the references "
                     "and the floor run in float32/float64 only)")
    if args.quick:
        args.sizes = args.sizes or QUICK_SIZES
        args.dims, args.layer_counts = [32, 64], [1, 3]
        args.min_run_time = args.min_run_time or 0.02
        args.probe_jobs = args.probe_jobs or 2
        args.rounds = args.rounds or 1
    args.rounds = args.rounds or 2
    args.probe_jobs = args.probe_jobs or 1
    args.sizes = sorted(set(args.sizes or SIZES[args.device]))
    if args.sizes[0] < bp.MIN_POWERLAW_EDGES:
        parser.error(f"--sizes: at least {bp.MIN_POWERLAW_EDGES} edges, got {args.sizes[0]}")
    if args.sweep_size is None:
        args.sweep_size = [args.sizes[0] if args.quick else 10**6]
    if len(args.sweep_size) != 1:
        parser.error(f"--sweep-size: one size, got {args.sweep_size}")
    args.sweep_size = args.sweep_size[0]
    if args.sweep_size not in args.sizes:
        parser.error(f"--sweep-size {args.sweep_size} must be one of --sizes {args.sizes}")
    args.min_run_time = args.min_run_time or 0.6
    skipped = {s for s in args.skip_references.split(",") if s}
    if skipped - set(bp.SKIPPABLE):
        parser.error(f"--skip-references: unknown {sorted(skipped - set(bp.SKIPPABLE))}; "
                     f"choose from {bp.SKIPPABLE}")
    return args


def default_memory_limit(device):
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[1] * 3 // 4
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 3 // 4


def describe(args, device, memory_limit, command):
    try:
        import torch_geometric
        pyg = torch_geometric.__version__
    except ImportError:
        pyg = "not installed"
    return [
        f"# LightGCN propagation: scaling ({time.strftime('%Y-%m-%d %H:%M:%S')})",
        "",
        f"- command: `{command}`",
        f"- device: {device} ({machine_name(args)})",
        f"- torch {torch.__version__}, torch_geometric {pyg}, lightgcn_ext "
        f"{lightgcn_ext.__version__} ({bp.build_id()})",
        *([f"- CPU sweep: the {bp.CHOSEN_ISA} copy; the {bp.OTHER_ISA} copy is timed beside "
           f"it (dashed in the plots)"] if device.type == "cpu" and bp.OTHER_ISA else []),
        f"- graphs: seeded synthetic power-law user-item graphs, average degree "
        f"{bp.POWERLAW_DEGREE}, {bp.POWERLAW_USER_SHARE:.0%} users (E counts both directions)",
        f"- grid: sizes {', '.join(fmt_edges(e) for e in args.sizes)} at d={args.dim}, "
        f"L={args.layers}; d in {args.dims} and L in {args.layer_counts} at "
        f"E={fmt_edges(args.sweep_size)}; {', '.join(args.dtypes)}",
        f"- times: medians of the runs of {args.rounds} interleaved round(s), "
        f"{args.min_run_time:g} s or 3 runs per implementation and mode in all ("
        + ("CUDA events" if device.type == "cuda" else "blocked_autorange")
        + "); BPR step: forward, 2048 triples' scores, BPR loss, backward (no optimizer)",
        "- memory: peak added by one forward+backward ("
        + ("torch.cuda.max_memory_allocated" if device.type == "cuda" else
           "VmHWM - VmRSS, a fresh process each") + ")",
        f"- limits: {args.time_limit:g} s per call, {memory_limit / 2**30:.1f} GiB "
        "(extrapolated from the previous case by E x d x L)",
        "- floor: " + ("one sweep of lightgcn_ext::_bare_gather (our loop without weights, "
                       "normalization or epilogue) times the sweeps: L forward, 2L with "
                       "backward" if device.type == "cpu" else
                       "the bytes a sweep must move over the DRAM bandwidth (the L2 one in "
                       "the JSON)"),
    ]


def main(argv=None):
    from tqdm import tqdm

    command = "python -m bench.bench_scaling " + " ".join(
        shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    memory_limit = int(args.memory_limit_gb * 2**30) if args.memory_limit_gb else \
        default_memory_limit(device)
    impls = bp.selected_impls(case_args(Case("edges", args.sizes[0], args.dim, args.layers,
                                             args.dtypes[0]), args))
    header = describe(args, device, memory_limit, command)
    print("\n".join(header), flush=True)
    cases = build_grid(args)
    load_at_start = os.getloadavg()[0]
    history, records = {}, []
    start = time.perf_counter()
    bar = tqdm(cases, unit="case", file=sys.stderr, dynamic_ncols=True)
    log = (lambda text: bar.write(text)) if args.verbose else (lambda text: None)
    for case in bar:
        bar.set_postfix_str(case.title())
        results, floors, num_nodes = run_case(case, impls, history, args, device,
                                              memory_limit, log)
        history[case] = results
        records.append({"case": case, "results": results, "floors": floors,
                        "num_nodes": num_nodes})
    bar.close()
    duration = time.perf_counter() - start
    header.append(f"- duration: {duration / 60:.1f} min for {len(cases)} cases"
                  + (f"; load average {load_at_start:.2f} at the start, "
                     f"{os.getloadavg()[0]:.2f} at the end" if device.type == "cpu" else ""))
    report = format_report(records, impls, header, args)
    print()
    print(report)
    stem = args.results_dir / results_stem(device)
    atomic_write(stem.with_suffix(".md"), report + "\n")
    atomic_write(stem.with_suffix(".json"), json.dumps(
        to_json(records, impls, header, args, duration, command), indent=1) + "\n")
    try:  # not a dependency of torch_geometric: a GPU machine may lack it
        import matplotlib  # noqa: F401
    except ImportError:
        print(f"\nwritten: {stem}.md, .json (matplotlib is not installed: no plots)")
        return
    plot(records, impls, args, stem)
    print(f"\nwritten: {stem}.md, .json, -time.png, -memory.png")


if __name__ == "__main__":
    main()
