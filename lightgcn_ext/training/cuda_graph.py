"""A BPR training step captured in a CUDA graph.

A LightGCN step launches a few dozen small kernels, and on a fast GPU the
host spends longer launching them than the GPU spends running them. Once the
graph is prepared the step reads nothing back from the GPU (no host
synchronization), so it can be recorded once with `torch.cuda.graph` and
replayed: one launch per step.
"""
import torch

from .. import validation
from .step import bpr_step


class CapturedBPRStep:
    """`lightgcn_ext.training.bpr_step` for batches of exactly `batch_size` triples, recorded
    in a CUDA graph and replayed on each call.

    Args:
        model, graph, optimizer, num_users, lambda_reg: as for `bpr_step`;
            `graph` a prepared `Graph` on the model's CUDA device, and the
            optimizer built with ``capturable=True`` (Adam, AdamW, ...).
        batch_size: the number of triples of every batch it takes.
        warmup: eager steps on a side stream before the capture, on the
            first batch; the parameters and the optimizer's state are set back
            after them (state they created is zeroed: Adam's initial state).

    Call it with (users, positives, negatives) of `batch_size` entries each;
    it returns the loss (a fresh tensor on the device). A batch of another
    size (an epoch's last) runs eagerly through `bpr_step`.
    """

    def __init__(self, model, graph, optimizer, num_users, batch_size, lambda_reg, warmup=3):
        device = graph.device
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a graph on a CUDA device, got {device}")
        for group in optimizer.param_groups:
            if not group.get("capturable", False):
                raise ValueError(f"the optimizer must be built with capturable=True to be "
                                 f"captured, e.g. torch.optim.Adam(params, capturable=True); "
                                 f"{type(optimizer).__name__} has capturable="
                                 f"{group.get('capturable')}")
        batch_size = validation.positive_int(batch_size, "batch_size")
        self._step_args = (model, graph, optimizer, num_users)
        self._lambda_reg = lambda_reg
        self.batch_size = batch_size
        self._warmup = warmup
        self._batch = [torch.zeros(batch_size, dtype=torch.long, device=device)
                       for _ in range(3)]
        self._graph = None
        self._loss = None

    def __call__(self, users, positives, negatives):
        batch = (users, positives, negatives)
        if any(t.shape != (self.batch_size,) for t in batch):
            return bpr_step(*self._step_args, *batch, self._lambda_reg)
        for static, t in zip(self._batch, batch):
            static.copy_(t, non_blocking=True)
        if self._graph is None:
            return self._capture()
        self._graph.replay()
        return self._loss.clone()

    def _capture(self):
        """Records the step. CUDA graphs need a few eager steps first (to
        settle the allocator and create the optimizer's state); they run on
        the first batch, and the model and the optimizer's state are then set
        back, so that training is the same as without the capture."""
        model, _, optimizer, _ = self._step_args
        params = [p.detach().clone() for p in model.parameters()]
        state = {id(t): t.clone() for t in _state_tensors(optimizer)}
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self._warmup):
                bpr_step(*self._step_args, *self._batch, self._lambda_reg)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for p, saved in zip(model.parameters(), params):
                p.copy_(saved)
            for t in _state_tensors(optimizer):
                # State the warm-up created starts at zero, as Adam's does.
                t.copy_(state[id(t)]) if id(t) in state else t.zero_()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._loss = bpr_step(*self._step_args, *self._batch, self._lambda_reg)
        self._graph = graph
        graph.replay()  # the recording ran nothing: this is the first batch's step
        return self._loss.clone()


def _state_tensors(optimizer):
    return [t for state in optimizer.state.values() for t in state.values()
            if isinstance(t, torch.Tensor)]
