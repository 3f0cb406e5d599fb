"""A training step that never waits for the GPU.

On CUDA a host read of a device tensor (`.item()`, `bool(t)`, `.tolist()`,
`nonzero()`, `unique()`, boolean indexing, ...) stalls the host until the GPU
has caught up, and a LightGCN step is short enough that a few such stalls
double it. The step (the sampler's batch, forward, `recommendation_loss`,
backward, Adam) must make none once the graph is prepared.

On the CPU this is checked with a dispatch mode that records every op that
would synchronize on a GPU; the only ones allowed are the bounds checks of
label indices on CPU tensors (`model._check_index`), which read the range on
the host to give a clear error and cost nothing there (on a device the check
runs on the device). On CUDA it is checked for real, under
`torch.cuda.set_sync_debug_mode("error")`, and the step is captured in a
CUDA graph.
"""
import copy
import subprocess
import sys
import traceback

import pytest
import torch
from helpers import NEEDS_CUDA, REPO
from torch.utils._python_dispatch import TorchDispatchMode

from lightgcn_ext import Graph, LightGCN, prepare
from lightgcn_ext.data import BPRSampler, synthetic
from lightgcn_ext.training import bpr_step
from lightgcn_ext.training.cuda_graph import CapturedBPRStep

aten = torch.ops.aten
# Ops whose CUDA kernels wait for the GPU to tell the host a value or a size.
SYNCING_OPS = {aten._local_scalar_dense, aten.nonzero, aten._unique2, aten.unique_dim,
               aten.unique_consecutive, aten.masked_select, aten.equal, aten.is_nonzero,
               aten.bincount, aten.repeat_interleave}
# The CPU-only host range check of label ids, and the optimizer: Adam keeps
# its step count on the host unless capturable (the CUDA tests check both).
ALLOWED_CALLERS = ("_check_index", "torch.optim")


class HostReads(TorchDispatchMode):
    """Records the syncing ops run inside it, with the lightgcn_ext function
    that called each."""

    def __init__(self):
        super().__init__()
        self.reads = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        boolean_index = func is aten.index.Tensor and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])
        if func.overloadpacket in SYNCING_OPS or boolean_index:
            if func.overloadpacket is not aten.repeat_interleave or "output_size" not in kwargs:
                self.reads.append((str(func), _caller()))
        return func(*args, **kwargs)


def _caller():
    """The innermost lightgcn_ext function on the stack, or "torch.optim"
    when an optimizer's step made the call."""
    stack = traceback.extract_stack()
    if any("/torch/optim/" in frame.filename for frame in stack):
        return "torch.optim"
    names = [frame.name for frame in stack if "lightgcn_ext" in frame.filename]
    return names[-1] if names else "?"


def training_setup(device, batch_size=64):
    data = synthetic(0, num_users=40, num_items=60, num_interactions=400, communities=4)
    torch.manual_seed(0)
    model = LightGCN(data.num_nodes, 16, 3).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2,
                                 capturable=torch.device(device).type == "cuda")
    graph = Graph.from_edge_index(data.edge_index().to(device), data.num_nodes)
    sampler = BPRSampler(data.train, data.num_users, data.num_items, batch_size, device)
    generator = torch.Generator(device=device).manual_seed(0)
    return data, model, optimizer, graph, sampler, generator


def steps(data, model, optimizer, graph, batches, count):
    """`count` BPR steps plus a forward on the batch's pairs (the module's
    `forward`, which checks its labels too); returns the losses."""
    losses = []
    for _ in range(count):
        users, positives, negatives = next(batches)
        losses.append(bpr_step(model, graph, optimizer, data.num_users, users, positives,
                               negatives, 1e-4))
        model(graph, torch.stack([users, positives + data.num_users]))
    return losses


def test_the_detector_sees_host_reads():
    """The mode records what a host read does, and who did it."""
    with HostReads() as mode:
        t = torch.arange(5)
        bool(t.sum() > 3)
        t.nonzero()
        t[t > 2]
        t.repeat_interleave(t)
    assert [op for op, _ in mode.reads] == ["aten._local_scalar_dense.default",
                                            "aten.nonzero.default", "aten.index.Tensor",
                                            "aten.repeat_interleave.Tensor"]


def test_training_step_reads_nothing_back():
    """Steady state: batches, forward, loss, backward and Adam make no host
    read but the CPU-only label range checks (and Adam's host step count)."""
    data, model, optimizer, graph, sampler, generator = training_setup("cpu")
    batches = iter(sampler.epoch(generator))
    steps(data, model, optimizer, graph, batches, 2)  # prepares and caches
    with HostReads() as mode:
        steps(data, model, optimizer, graph, batches, 3)
    unexpected = [read for read in mode.reads if read[1] not in ALLOWED_CALLERS]
    assert not unexpected, f"host reads in a training step: {unexpected}"
    assert mode.reads, "the CPU label checks should have been seen (is the mode working?)"


def test_learnable_edge_weight_step_keeps_the_csr():
    """Steps on a learnable edge_weight reuse the prepared CSR (no new sort)."""
    data, model, _, _, _, _ = training_setup("cpu")
    edge_index = data.edge_index()
    weight = torch.nn.Parameter(torch.ones(edge_index.shape[1]))
    optimizer = torch.optim.Adam([*model.parameters(), weight], lr=1e-2)
    pairs = edge_index[:, :32]
    graphs = []
    for _ in range(3):
        loss = model(edge_index, pairs, edge_weight=weight).sigmoid().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        graphs.append(prepare(edge_index, data.num_nodes, weight))
    assert all(g is graphs[0] for g in graphs)


# ------------------------------------------------------------------ CUDA
def needs_cuda(test):
    for mark in NEEDS_CUDA:
        test = mark(test)
    return test


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_training_step_never_synchronizes(dtype):
    data, model, optimizer, graph, sampler, generator = training_setup("cuda")
    model.to(dtype)
    batches = iter(sampler.epoch(generator))
    steps(data, model, optimizer, graph, batches, 2)
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = steps(data, model, optimizer, graph, batches, 3)
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert torch.isfinite(torch.stack(losses)).all()


@needs_cuda
def test_cuda_out_of_range_label_still_fails():
    """The device-side check: an out-of-range id stops the program (in a
    subprocess: a device-side assert ends the CUDA context)."""
    code = (
        "import torch\n"
        "from lightgcn_ext import LightGCN\n"
        "edge_index = torch.tensor([[0, 1], [1, 0]], device='cuda')\n"
        "model = LightGCN(2, 4, 2).cuda()\n"
        "model(edge_index, torch.tensor([[0], [2]], device='cuda'))\n"
        "torch.cuda.synchronize()\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode != 0
    # torch may print the check's own message or only CUDA's assert report.
    assert "edge_label_index" in result.stderr or "device-side assert" in result.stderr, \
        result.stderr[-2000:]


@needs_cuda
def test_cuda_graph_captured_step_trains_as_eager():
    """The step captured in a CUDA graph gives the losses and the embeddings
    of the eager step, and its replays make no host synchronization."""
    data, model, optimizer, graph, sampler, generator = training_setup("cuda", batch_size=64)
    eager_model = copy.deepcopy(model)
    eager_optimizer = torch.optim.Adam(eager_model.parameters(), lr=1e-2, capturable=True)
    batches = [b for b in sampler.epoch(generator) if b[0].numel() == 64][:6]
    captured = CapturedBPRStep(model, graph, optimizer, data.num_users, 64, 1e-4)
    eager, replayed = [], []
    for i, batch in enumerate(batches):
        eager.append(bpr_step(eager_model, graph, eager_optimizer, data.num_users, *batch, 1e-4))
        if i == 2:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        try:
            replayed.append(captured(*batch))
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.testing.assert_close(torch.stack(replayed), torch.stack(eager), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(model.get_embedding(graph), eager_model.get_embedding(graph),
                               rtol=1e-4, atol=1e-6)


def test_captured_step_refuses_what_it_cannot_capture():
    data, model, optimizer, graph, _, _ = training_setup("cpu")
    with pytest.raises(ValueError, match="CUDA device"):
        CapturedBPRStep(model, graph, optimizer, data.num_users, 64, 1e-4)
