"""lightgcn_ext: fused CSR SpMM kernels for LightGCN on CPU and CUDA.

    import lightgcn_ext
    graph = lightgcn_ext.Graph.from_edge_index(edge_index, num_nodes)
    out = lightgcn_ext.propagate(graph, x, alpha)   # sum_l alpha_l Â^l x
    run = lightgcn_ext.load_run("runs/demo")        # a trained run: .model, .graph, .data
"""
from ._extension import load_extension

load_extension()

from . import _ops  # noqa: E402  (registers fake kernels and autograd)
from .cache import clear_cache, prepare  # noqa: E402
from .graph import Graph  # noqa: E402
from .model import BPRLoss, LightGCN  # noqa: E402
from .propagation import propagate  # noqa: E402

__all__ = ["BPRLoss", "Graph", "LightGCN", "clear_cache", "load_run", "prepare", "propagate"]
__version__ = "0.1.0"


def __getattr__(name):
    """load_run (lightgcn_ext.inference.load_run), imported when first asked
    for: it needs the data and training code, which `import lightgcn_ext`
    does not load."""
    if name == "load_run":
        from .inference import load_run

        return load_run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
