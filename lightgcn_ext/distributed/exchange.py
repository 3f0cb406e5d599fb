"""Rows exchanged between ranks: the collectives with an error that says what
most likely happened, and the differentiable fetch of a batch's rows."""
import torch
import torch.distributed as dist
from torch.autograd.function import once_differentiable


def collective(collective, *args, **kwargs):
    """A torch.distributed collective whose failure says what most likely
    happened: gloo reports a dead peer or a timeout as a bare RuntimeError
    (NCCL as DistBackendError, a RuntimeError too)."""
    try:
        return collective(*args, **kwargs)
    except RuntimeError as error:
        raise ConnectionError(
            f"rank {dist.get_rank()} of {dist.get_world_size()}: {collective.__name__} failed, most "
            f"likely because another process died or stalled for longer than the process "
            f"group's timeout (--dist-timeout); see that process's output. ({error})") from error


def exchange_rows(rows, send_splits, recv_splits, group):
    """all_to_all_single of rows: send_splits[j] of them to rank j; returns
    the rows received, recv_splits[j] from rank j, in rank order."""
    out = rows.new_empty(sum(recv_splits), rows.shape[1])
    collective(dist.all_to_all_single, out, rows, recv_splits, send_splits, group=group)
    return out


class _Exchange(torch.autograd.Function):
    """Rows of x sent to other ranks: x[send_index], send_splits[j] of them to
    rank j; returns the rows received, recv_splits[j] from rank j, in rank
    order. The backward sends the gradients of the received rows back: x's
    gradient is a sparse COO tensor of those rows (a batch's rows are few,
    and a dense [num_rows, d] one would stay alive through the propagation's
    backward)."""

    @staticmethod
    def forward(ctx, x, send_index, send_splits, recv_splits, group):
        ctx.save_for_backward(send_index)
        ctx.num_rows, ctx.splits, ctx.group = x.shape[0], (send_splits, recv_splits), group
        return exchange_rows(x[send_index], send_splits, recv_splits, group)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (send_index,) = ctx.saved_tensors
        send_splits, recv_splits = ctx.splits
        returned = exchange_rows(grad.contiguous(), recv_splits, send_splits, ctx.group)
        # send_index holds owned rows, each in [0, num_rows): the invariants
        # hold, and checking them would cost a pass per step (said
        # explicitly, so that torch does not warn on every rank).
        grad_x = torch.sparse_coo_tensor(send_index.unsqueeze(0), returned,
                                         (ctx.num_rows, grad.shape[1]), check_invariants=False)
        return grad_x, None, None, None, None


def fetch_rows(embedding, nodes, bounds, group=None):
    """The rows of this rank's slice of a global batch of node ids.

    nodes [..., B] is the same on every rank; rank r's slice is the columns
    B * r // P .. B * (r + 1) // P - 1. Each owner sends the distinct nodes of
    every slice that it owns (it knows them all: no request is sent), and the
    gradients of the rows go back to it. Returns [..., b, d]. Collective."""
    rank, P = dist.get_rank(group), dist.get_world_size(group)
    size = nodes.shape[-1]
    cuts = [size * j // P for j in range(P + 1)]
    requests = [torch.unique(nodes[..., cuts[j]:cuts[j + 1]], return_inverse=j == rank)
                for j in range(P)]
    requests[rank], inverse = requests[rank]
    bounds_t = torch.tensor(bounds, device=nodes.device)
    at = torch.stack([torch.searchsorted(request, bounds_t) for request in requests]).tolist()
    lo = bounds[rank]
    send_index = torch.cat([requests[j][at[j][rank]:at[j][rank + 1]] for j in range(P)]) - lo
    send_splits = [at[j][rank + 1] - at[j][rank] for j in range(P)]
    recv_splits = [at[rank][s + 1] - at[rank][s] for s in range(P)]
    rows = _Exchange.apply(embedding, send_index, send_splits, recv_splits, group)
    return rows[inverse]
