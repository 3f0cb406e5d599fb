"""lightgcn_ext: fused CSR SpMM kernels for LightGCN on CPU and CUDA.

    import lightgcn_ext
    graph = lightgcn_ext.Graph.from_edge_index(edge_index, num_nodes)
    out = lightgcn_ext.propagate(graph, x, alpha)   # sum_l alpha_l Â^l x
"""
from ._extension import load_extension

load_extension()

from . import _ops  # noqa: E402  (registers fake kernels and autograd)
from .cache import clear_cache, prepare  # noqa: E402
from .graph import Graph  # noqa: E402
from .model import BPRLoss, LightGCN  # noqa: E402
from .propagation import propagate  # noqa: E402

__all__ = ["BPRLoss", "Graph", "LightGCN", "clear_cache", "prepare", "propagate"]
__version__ = "0.1.0"
