"""LightGCN's propagation and its full-ranking evaluation over a `DistributedGraph`:
`propagate_distributed` (differentiable in x, saving nothing) and
`evaluate_distributed`."""
import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable

from .. import validation
from ..evaluation import metric_sums, metrics_of_sums
from .exchange import collective


class _Propagate(torch.autograd.Function):
    """sum_l alpha_l Â^l x by Horner's rule, alpha_0 x + Â(alpha_1 x + Â(...
    + Â alpha_L x)), and its gradient, the same sum on Âᵀ. Nothing is saved:
    at most three [num_owned, d] tensors (x, the running sum, the next one)
    and one round's buffers are alive at once, forward and backward."""

    @staticmethod
    def forward(ctx, x, alpha, graph):
        ctx.graph = graph
        ctx.save_for_backward(alpha)
        return _horner(graph, x, alpha, transposed=False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (alpha,) = ctx.saved_tensors
        grad = grad if grad.is_sparse else grad.contiguous()
        return _horner(ctx.graph, grad, alpha, transposed=True), None, None


def _horner(graph, x, alpha, transposed):
    """x dense, or sparse (the gradient of a batch's rows: kept sparse)."""
    alpha = alpha.to(x.dtype).unbind()

    def scaled(a):
        return (x * a).to_dense() if x.is_sparse else x * a

    out = scaled(alpha[-1])
    for a in reversed(alpha[:-1]):
        inner, out = out, scaled(a)
        graph.add_layer(inner, out, transposed)
        del inner
    return out


def propagate_distributed(graph, x, alpha):
    """sum_l alpha_l Â^l x for the owned rows: x [num_owned, d] this rank's
    rows; differentiable in x (alpha is a constant, as LightGCN's buffer).
    Collective."""
    alpha = validation.layer_weights(alpha, x)
    if alpha.requires_grad and torch.is_grad_enabled():
        raise ValueError("alpha must not require grad: propagate_distributed is "
                         "differentiable in x only")
    if x.shape[0] != graph.num_owned:
        raise ValueError(f"x must have one row per owned node ({graph.num_owned}), "
                         f"got {x.shape[0]}")
    return _Propagate.apply(x.contiguous(), alpha, graph)


@torch.no_grad()
def evaluate_distributed(embedding, bounds, num_users, test, *, exclude=(), ks=(20,), group=None):
    """lightgcn_ext.evaluation.ranking_metrics of the whole embedding table, from this rank's rows
    (`embedding`, nodes bounds[rank] .. bounds[rank+1] - 1): each rank scores
    its own users against every item (each owner broadcasts its item rows into
    one table: an all_gather would need equal, padded pieces and a copy) and
    the sums over users are added up across ranks. Collective."""
    rank, P = dist.get_rank(group), dist.get_world_size(group)
    lo, hi = bounds[rank], bounds[rank + 1]
    num_items = bounds[-1] - num_users
    item_emb = embedding.new_empty(num_items, embedding.shape[1])
    for j in range(P):
        a, b = max(bounds[j], num_users), max(bounds[j + 1], num_users)  # rank j's items
        if a == b:
            continue
        rows = item_emb[a - num_users:b - num_users]
        if j == rank:
            rows.copy_(embedding[a - lo:b - lo])
        collective(dist.broadcast, rows, group=group, group_src=j)
    first, last = min(lo, num_users), min(hi, num_users)  # this rank's users

    def own(pairs):
        pairs = pairs.to(embedding.device)
        keep = (pairs[0] >= first) & (pairs[0] < last)
        return torch.stack([pairs[0][keep] - first, pairs[1][keep]])

    exclude = [exclude] if isinstance(exclude, torch.Tensor) else list(exclude)
    sums, count, ks = metric_sums(embedding[:last - first], item_emb, own(test),
                                  exclude=[own(e) for e in exclude], ks=ks)
    count = torch.tensor(float(count), dtype=torch.float64, device=sums.device)
    collective(dist.all_reduce, sums, group=group)
    collective(dist.all_reduce, count, group=group)
    if count.item() == 0:
        raise ValueError("test is empty: nothing to evaluate")
    return metrics_of_sums(sums, int(count.item()), ks)
