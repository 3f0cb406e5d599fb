"""CUDA smoke test of the lightgcn_ext kernels: every op on CUDA against the CPU op.

Random CSR graphs with empty rows, duplicate edges, self-loops and a hub row;
x in float16, bfloat16, float32 and float64; col in int32 and int64; with and
without edge weights; alpha on the device in several dtypes; aligned,
misaligned and non-contiguous x; L = 0..3; n = 0 and d = 0. The CPU kernels
define the semantics, so the CUDA result is compared with the CPU op on the
same inputs (and float64 with an independent index_add reference too).

Prints the largest errors and exits non-zero on a mismatch. Run from the repo
root after `python setup.py build_ext --inplace`:

    python3 tools/cuda_smoke.py            # all cases, a few seconds on a GPU
    python3 tools/cuda_smoke.py --small    # small cases only (for compute-sanitizer)

It loads lightgcn_ext/_C*.so directly, so it needs nothing else of the package.
"""
import argparse
import glob
import itertools
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]


def load_ops(device):
    libs = sorted(glob.glob(os.path.join(ROOT, "lightgcn_ext", "_C*.so")))
    if not libs:
        sys.exit(f"no lightgcn_ext/_C*.so under {ROOT}: build it first")
    torch.ops.load_library(libs[0])
    ops = torch.ops.lightgcn_ext
    for op in ("propagate", "layer_dots"):
        if device == "cuda" and not torch._C._dispatch_has_kernel_for_dispatch_key(f"lightgcn_ext::{op}", "CUDA"):
            sys.exit(f"lightgcn_ext::{op} has no CUDA kernel: was it built with FORCE_CUDA=1?")
    return ops


def make_graph(n, avg_degree, gen, hub=0):
    """A CSR (rows = destinations) with ~20% empty rows, duplicates, self-loops
    and optionally a hub row 0 of `hub` extra edges; float64 weights > 0."""
    if n == 0:
        return torch.zeros(1, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64)
    counts = torch.poisson(torch.full((n,), float(avg_degree)), generator=gen).long()
    counts[torch.rand(n, generator=gen) < 0.2] = 0
    counts[0] += hub
    rowptr = torch.zeros(n + 1, dtype=torch.long)
    rowptr[1:] = counts.cumsum(0)
    num_edges = int(rowptr[-1])
    rows = torch.repeat_interleave(torch.arange(n), counts)
    col = torch.randint(0, n, (num_edges,), generator=gen)
    loops = torch.rand(num_edges, generator=gen) < 0.1
    col[loops] = rows[loops]
    # duplicate: the second edge of a row repeats the first, for half the rows with two or more
    starts = rowptr[:-1][(counts >= 2) & (torch.rand(n, generator=gen) < 0.5)]
    col[starts + 1] = col[starts]
    weight = torch.rand(num_edges, generator=gen, dtype=torch.float64) * 2 + 0.1
    return rowptr, col, weight


def degree_inv_sqrt(rowptr, weight, n):
    rows = torch.repeat_interleave(torch.arange(n), rowptr.diff())
    deg = torch.zeros(n, dtype=torch.float64).index_add_(0, rows, weight)
    return torch.where(deg > 0, deg.clamp_min(1e-300).rsqrt(), torch.zeros_like(deg))


def reference_propagate(rowptr, col, weight, dinv, x, alpha):
    """sum_l alpha_l M^l x in float64, M = D W D, straight from the definition."""
    n = x.shape[0]
    rows = torch.repeat_interleave(torch.arange(n), rowptr.diff())
    coef = dinv[rows] * weight * dinv[col]
    h, out = x.double(), alpha[0].double() * x.double()
    for a in alpha[1:]:
        h = torch.zeros_like(h).index_add_(0, rows, coef[:, None] * h[col])
        out = out + a.double() * h
    return out


class Report:
    def __init__(self):
        self.worst = {}
        self.failures = []
        self.cases = 0

    def check(self, name, key, got, want, rtol, atol):
        """|got - want| <= rtol * |want| + atol, elementwise."""
        self.cases += 1
        got, want = got.detach().cpu().double(), want.detach().cpu().double()
        if got.shape != want.shape:
            self.failures.append(f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}")
            return
        if got.numel() == 0:
            return
        if not torch.isfinite(got).all():
            self.failures.append(f"{name}: non-finite values")
            return
        diff = (got - want).abs()
        scale = want.abs().max().item()
        ratio = (diff / (rtol * want.abs() + atol)).max().item()  # <= 1 passes
        rel = diff.max().item() / max(scale, 1e-300)
        if ratio > self.worst.get(key, (-1.0, 0.0, ""))[0]:
            self.worst[key] = (ratio, rel, name)
        if ratio > 1:
            self.failures.append(f"{name}: max |diff| {diff.max().item():.3e} "
                                 f"(max |ref| {scale:.3e}, {ratio:.2f}x the tolerance)")


def tolerance(dtype, want):
    """(rtol, atol) for propagate. CPU and CUDA both accumulate in float32 or
    float64 and round once at the end: outputs may differ by an ulp of the
    output dtype, plus the accumulation's rounding (the edge order is the same)."""
    scale = want.double().abs().max().item() if want.numel() else 0.0
    eps = torch.finfo(dtype).eps
    rtol, atol = {torch.float16: (2 * eps, 1e-4), torch.bfloat16: (2 * eps, 1e-4),
                  torch.float32: (1e-5, 1e-6), torch.float64: (1e-12, 1e-13)}[dtype]
    return rtol, atol * scale + 1e-30


def run(ops, small, seed, device):
    gen = torch.Generator().manual_seed(seed)
    dev = torch.device(device)
    report = Report()
    # (n, d, average degree, extra edges of row 0)
    shapes = [(0, 8, 3, 0), (7, 0, 2, 0), (1, 1, 1, 0), (9, 3, 1, 0), (13, 4, 2, 0), (40, 8, 3, 4),
              (33, 64, 5, 0), (50, 100, 3, 20), (17, 130, 4, 0)]
    big_shapes = [(300, 300, 6, 100), (200, 520, 3, 50), (5000, 64, 12, 3000), (20000, 64, 20, 20000)]
    layer_configs = [(0, torch.float32), (1, torch.float64), (2, torch.float16), (3, torch.float32),
                     (3, torch.int64)]
    layouts = ["plain", "offset", "transposed"]
    plan = []
    for shape in shapes:
        for L, alpha_dtype in (layer_configs[::2] if small else layer_configs):
            plan += [(shape, L, alpha_dtype, layout)
                     for layout in (layouts if not small or L == 2 else layouts[:1])]
    if not small:
        plan += [(shape, 3, torch.float64, "plain") for shape in big_shapes]
        plan += [(shape, 2, torch.float32, "offset") for shape in big_shapes[:2]]
    for (n, d, deg, hub), L, alpha_dtype, layout in plan:
        rowptr, col64, weight64 = make_graph(n, deg, gen, hub)
        for dtype, index_dtype, weighted in itertools.product(
                DTYPES, [torch.int32, torch.int64], [False, True]):
            acc = torch.float64 if dtype == torch.float64 else torch.float32
            w = weight64 if weighted else torch.ones_like(weight64)
            dinv = degree_inv_sqrt(rowptr, w, n).to(acc)
            weight = w.to(acc) if weighted else None
            col = col64.to(index_dtype)
            x = torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype)
            grad = torch.randn(n, d, generator=gen, dtype=torch.float64).to(dtype)
            if alpha_dtype == torch.int64:
                alpha = torch.randint(0, 3, (L + 1,), generator=gen)
            else:
                alpha = (torch.rand(L + 1, generator=gen, dtype=torch.float64) + 0.1).to(alpha_dtype)

            def on_cuda(t):
                if t is None:
                    return None
                if layout == "offset" and t.dim() == 2:  # contiguous but not 16-byte aligned
                    buf = torch.empty(t.numel() + 1, dtype=t.dtype, device=dev)
                    out = buf[1:].view(t.shape)
                    out.copy_(t)
                    return out
                if layout == "transposed" and t.dim() == 2:  # not contiguous
                    return t.t().contiguous().to(dev).t()
                return t.to(dev)

            graph_cpu = (rowptr, col, weight, dinv)
            graph_cuda = tuple(None if t is None else t.to(dev) for t in graph_cpu)
            name = (f"n={n} d={d} L={L} {str(dtype)[6:]} col={str(index_dtype)[6:]} "
                    f"{'weighted' if weighted else 'unweighted'} alpha={str(alpha_dtype)[6:]} {layout}")
            want = ops.propagate(*graph_cpu, x, alpha)
            rtol, atol = tolerance(dtype, want)
            got = ops.propagate(*graph_cuda, on_cuda(x), alpha.to(dev))
            if got.dtype != dtype or got.device.type != dev.type:
                report.failures.append(f"propagate {name}: got {got.dtype} on {got.device}")
            report.check("propagate " + name, ("propagate", dtype), got, want, rtol, atol)
            if dtype == torch.float64:
                ref = reference_propagate(rowptr, col64, w, dinv, x, alpha)
                report.check("propagate vs reference " + name, ("propagate vs reference", dtype),
                             got, ref, 1e-12, tolerance(dtype, ref)[1])
            again = ops.propagate(*graph_cuda, on_cuda(x), alpha.to(dev))
            if not torch.equal(got, again):
                report.failures.append(f"propagate {name}: two runs differ")

            want = ops.layer_dots(*graph_cpu, x, grad, L)
            got = ops.layer_dots(*graph_cuda, on_cuda(x), on_cuda(grad), L)
            if got.dtype != acc or got.shape != (L + 1,):
                report.failures.append(f"layer_dots {name}: got {got.dtype} {tuple(got.shape)}")
            # Dots cancel: scale the tolerance by sum |x_l| |grad| ~ ||x|| ||grad||.
            dot_scale = x.double().norm() * grad.double().norm() + 1e-30
            dot_tol = 1e-12 if dtype == torch.float64 else 1e-4
            report.check("layer_dots " + name, ("layer_dots", dtype), got / dot_scale,
                         want / dot_scale, 0.0, dot_tol)
            again = ops.layer_dots(*graph_cuda, on_cuda(x), on_cuda(grad), L)
            if not torch.equal(got, again):
                report.failures.append(f"layer_dots {name}: two runs differ (not deterministic)")
    if dev.type == "cuda":
        torch.cuda.synchronize()
    else:
        return report

    # Errors at the boundary still come from the shared checks.
    rowptr, col, weight = make_graph(10, 3, gen)
    dinv = degree_inv_sqrt(rowptr, weight, 10).float()
    try:
        ops.propagate(rowptr.cuda(), col.cuda(), None, dinv.cuda(), torch.randn(10, 4),
                      torch.ones(3, device=dev))
        report.failures.append("propagate accepted x on the CPU with a CUDA graph")
    except RuntimeError as e:
        if "device" not in str(e):
            report.failures.append(f"unexpected message for a device mismatch: {e}")
    return report


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="small cases only (compute-sanitizer)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda",
                        help="cuda; cpu only checks this script (CPU op against itself and the reference)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device")
    ops = load_ops(args.device)
    print(f"torch {torch.__version__}, "
          f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}")
    report = run(ops, args.small, args.seed, args.device)
    print(f"{report.cases} comparisons")
    print(f"{'op':<24}{'dtype':<16}{'max rel err':>14}{'of tolerance':>14}  worst case")
    for (op, dtype), (ratio, rel, name) in sorted(report.worst.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        print(f"{op:<24}{str(dtype)[6:]:<16}{rel:>14.3e}{ratio:>14.3f}  {name}")
    if report.failures:
        print(f"\n{len(report.failures)} FAILURES:")
        for f in report.failures[:50]:
            print("  " + f)
        sys.exit(1)
    print("cuda_smoke: OK")


if __name__ == "__main__":
    main()
