"""The main job, end to end, on the embedded synthetic data:

    python -m lightgcn_ext.demo            # Gowalla-sized power-law graph, < 1 min on 2 cores
    python -m lightgcn_ext.demo --quick    # a small graph, a few seconds

Builds the LightGCN graph, runs the fused forward and backward, checks both
against a float64 torch.sparse reference (exit status 1 when they disagree),
and times them against torch.sparse.mm and torch_geometric (when installed).
"""
import argparse
import statistics
import sys
import time

import torch

import lightgcn_ext
from lightgcn_ext.data import bipartite_edge_index, synthetic_interactions
from lightgcn_ext.reference import normalized_adjacency, sparse_propagate

TOLERANCE = 1e-4  # max abs error of float32 results, relative to max |reference|


def pyg_propagate(edge_index, x, alpha):
    """torch_geometric.nn.models.LightGCN.get_embedding with x as the embedding."""
    from torch_geometric.nn.conv import LGConv

    conv = LGConv()
    out = x * alpha[0]
    for a in alpha[1:]:
        x = conv(x, edge_index)
        out = out + x * a
    return out


def median_seconds(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_backward(propagate, x, grad):
    def run():
        x.grad = None
        propagate(x).backward(grad)
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small graph")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--layers", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    data = synthetic_interactions(1000, 1500, 20000) if args.quick else synthetic_interactions()
    edge_index = bipartite_edge_index(data.num_users, data.train)
    generated = time.perf_counter() - start
    start = time.perf_counter()
    graph = lightgcn_ext.Graph.from_edge_index(edge_index, data.num_nodes)
    prepared = time.perf_counter() - start
    alpha = [1.0 / (args.layers + 1)] * (args.layers + 1)
    print("lightgcn_ext demo: fused LightGCN propagation on the embedded synthetic data")
    print(f"  graph  {data.num_users:,} users + {data.num_items:,} items = {data.num_nodes:,} "
          f"nodes, {edge_index.shape[1]:,} edges (generated in {generated:.2f} s, "
          f"prepared in {prepared * 1e3:.0f} ms, first call)")
    print(f"  model  d={args.dim}, L={args.layers}, alpha={alpha[0]:.3g} each, float32, "
          f"{args.threads} threads")

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(data.num_nodes, args.dim, generator=gen).requires_grad_()
    grad = torch.randn(data.num_nodes, args.dim, generator=gen)
    out = lightgcn_ext.propagate(graph, x, alpha)
    out.backward(grad)

    # The reference: the same sums in float64 with torch.sparse; the gradient
    # is sum_l alpha_l (Âᵀ)^l grad.
    adj64 = normalized_adjacency(edge_index, data.num_nodes, torch.float64,
                                 layout=torch.sparse_csr)
    adj64_t = normalized_adjacency(edge_index.flip(0), data.num_nodes, torch.float64,
                                   layout=torch.sparse_csr)
    expected = sparse_propagate(adj64, x.detach().double(), alpha)
    expected_grad = sparse_propagate(adj64_t, grad.double(), alpha)
    failed = False
    checks = [("forward", out.detach(), expected), ("gradient", x.grad, expected_grad)]
    for what, got, want in checks:
        error = (got.double() - want).abs().max().item()
        tolerance = TOLERANCE * max(1.0, want.abs().max().item())
        ok = error <= tolerance
        failed |= not ok
        print(f"  check  {what:8} max abs error {error:.2e} vs float64 torch.sparse "
              f"(tolerance {tolerance:.0e}): {'OK' if ok else 'FAILED'}")
    if failed:
        print("error: the fused propagation disagrees with the reference", file=sys.stderr)
        return 1

    x_plain = x.detach()
    adj32 = normalized_adjacency(edge_index, data.num_nodes, torch.float32,
                                 layout=torch.sparse_csr)
    candidates = [
        ("lightgcn_ext (fused)", lambda v: lightgcn_ext.propagate(graph, v, alpha), 5),
        ("torch.sparse.mm, CSR", lambda v: sparse_propagate(adj32, v, alpha), 2),
    ]
    try:
        import torch_geometric  # noqa: F401
        candidates.append(
            ("torch_geometric LGConv", lambda v: pyg_propagate(edge_index, v, alpha), 1))
    except ImportError:
        print("  (torch_geometric is not installed: not timed)")
    print("  time   (median, after a warm-up)      forward    fwd+bwd")
    ours = None
    for name, propagate, repeats in candidates:
        with torch.no_grad():
            forward = median_seconds(lambda: propagate(x_plain), repeats)
        both = median_seconds(forward_backward(propagate, x, grad), repeats)
        ours = ours or (forward, both)
        slower = "" if ours == (forward, both) else \
            f"   ours is {forward / ours[0]:.1f}x / {both / ours[1]:.1f}x faster"
        print(f"         {name:30} {forward * 1e3:8.1f} ms {both * 1e3:8.1f} ms{slower}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
