"""BPR training of LightGCN on the fused kernels, with the paper's evaluation.

    from lightgcn_ext.train import TrainConfig, run
    results = run(TrainConfig(data="gowalla", epochs=1000, device="cuda", out="runs/gowalla"))

Each step propagates the whole graph once (one fused forward, one fused
backward), scores a batch of (user, positive, negative) triples and takes an
Adam step on the BPR loss, regularized on the batch's layer-0 embeddings as
in the paper. Every `eval_every` epochs the model is evaluated over the full
item ranking (recall, ndcg, precision and hit at k, training items excluded);
training stops early when recall@k[0] has not improved for `patience`
evaluations. Each epoch ends with a checkpoint (model, optimizer, epoch, every
random state) from which `resume` continues exactly, a results JSON and a
learning-curve PNG, all written atomically into the run directory.

On CUDA a step never synchronizes with the host: losses add up on the device
and are read once per epoch.

Launched by torchrun with several processes, the same loop (`train_loop`)
runs a lightgcn_ext.distributed worker on each, every process owning a block
of the nodes.
"""
import dataclasses
import json
import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from . import datasets, metrics
from .graph import Graph
from .model import LightGCN
from .sampling import BPRSampler

CHECKPOINT = "checkpoint.pt"
RESULTS = "results.json"
CURVE = "curve.png"
# The index of a checkpoint written by several processes (lightgcn_ext.distributed).
DIST_INDEX = "checkpoint.index.json"
_FORMAT = 1


@dataclass
class TrainConfig:
    """What a run does; the CLI's options, one for one (`python -m lightgcn_ext train --help`)."""

    data: str = "synthetic"  # "synthetic", a named data set ("gowalla", ...) or a directory
    dim: int = 64
    layers: int = 3
    epochs: int = 20
    batch_size: int = 2048
    lr: float = 1e-3
    reg: float = 1e-4  # the paper's lambda: reg / 2 * |ego embeddings of the batch|^2 / batch
    device: str = "auto"
    out: str = "runs/lightgcn"
    seed: int = 0
    eval_every: int = 1
    patience: int = 10  # evaluations without a better recall@k[0]; 0 never stops early
    topk: tuple = (20,)
    resume: bool = False
    progress: bool = True
    # Stop after this many epochs of this invocation (0: no limit), to run a
    # long training in resumable pieces that each fit a time slot.
    max_epochs_now: int = 0
    data_root: str = None  # where named data sets are kept (default: datasets.data_dir())
    # Under torchrun: how long a collective waits for the other processes
    # before it fails (a process that died or stalled), in seconds.
    dist_timeout: float = 120.0

    def check(self):
        positive = ("dim", "layers", "epochs", "batch_size", "eval_every")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("patience", "max_epochs_now"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a non-negative int, got {getattr(self, name)!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not (self.dist_timeout > 0 and math.isfinite(self.dist_timeout)):
            raise ValueError(f"dist_timeout must be a positive number of seconds, "
                             f"got {self.dist_timeout!r}")
        if not (self.reg >= 0 and math.isfinite(self.reg)):
            raise ValueError(f"reg must be a non-negative number, got {self.reg!r}")
        if not self.topk or any(not isinstance(k, int) or k < 1 for k in self.topk):
            raise ValueError(f"topk must be positive ints, got {self.topk!r}")
        return self


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}, but CUDA is not available here")
    return device


def load_data(spec, root=None):
    """The Interactions a --data value names: "synthetic", a data set name, or a directory."""
    if spec == "synthetic":
        return datasets.synthetic()
    return datasets.load(spec, root=root)


def bpr_step(model, graph, optimizer, num_users, users, positives, negatives, lambda_reg):
    """One optimizer step on a batch (item ids 0-based, items are nodes
    num_users + item); returns the loss, still on the device."""
    # First, so that the last step's gradient is not kept through this one.
    optimizer.zero_grad(set_to_none=True)
    embedding = model.get_embedding(graph)  # one fused propagation of the whole graph
    pos_nodes, neg_nodes = positives + num_users, negatives + num_users
    user_emb, pos_emb, neg_emb = embedding[users], embedding[pos_nodes], embedding[neg_nodes]
    del embedding  # the rows are copies: [N, d] less through the backward
    pos_scores = (user_emb * pos_emb).sum(dim=-1)
    neg_scores = (user_emb * neg_emb).sum(dim=-1)
    loss = model.recommendation_loss(pos_scores, neg_scores,
                                     node_id=torch.cat([users, pos_nodes, neg_nodes]),
                                     lambda_reg=lambda_reg)
    loss.backward()
    optimizer.step()
    return loss.detach()


@torch.no_grad()
def evaluate(model, graph, data, ks, split="test"):
    """Full-ranking metrics of the model on data.test (or data.valid), the
    training items (and, for test, the validation items) excluded."""
    embedding = model.get_embedding(graph)
    users, items = embedding[:data.num_users], embedding[data.num_users:]
    if split == "valid":
        return metrics.evaluate(users, items, data.valid, exclude=[data.train], ks=ks)
    exclude = [data.train] + ([] if data.valid is None else [data.valid])
    return metrics.evaluate(users, items, data.test, exclude=exclude, ks=ks)


def run(config, data=None):
    """Trains as `config` says (continuing the run in config.out with
    config.resume) and returns the results written to results.json.

    Launched by torchrun with more than one process (WORLD_SIZE > 1), it
    trains row-partitioned across them (lightgcn_ext.distributed); a single
    process imports none of that machinery."""
    config = config.check()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from . import distributed

        return distributed.run(config, data)
    device = resolve_device(config.device)
    data = load_data(config.data, config.data_root) if data is None else data
    return train_loop(config, data, _Worker(config, data, device))


class _Worker:
    """The model, optimizer, graph and sampler of a single-process run: what
    train_loop steps, evaluates and checkpoints."""

    is_main = True

    def __init__(self, config, data, device):
        self.config, self.data, self.device = config, data, device
        torch.manual_seed(config.seed)
        self.model = LightGCN(data.num_nodes, config.dim, config.layers).to(device)
        self.optimizer = make_optimizer(self.model.parameters(), config)
        self.graph = Graph.from_edge_index(data.edge_index().to(device), data.num_nodes)
        self.sampler, self.generator = make_sampler(config, data, device)
        self.num_parameters = self.model.embedding.weight.numel()

    def step(self, users, positives, negatives):
        return bpr_step(self.model, self.graph, self.optimizer, self.data.num_users, users,
                        positives, negatives, self.config.reg / 2)

    def mean_loss(self, loss_sum, steps):
        return loss_sum.item() / steps

    def evaluate(self, split):
        self.optimizer.zero_grad(set_to_none=True)  # the last step's: not kept through this
        return evaluate(self.model, self.graph, self.data, tuple(self.config.topk), split)

    def describe_device(self):
        return _describe_device(self.device)

    def save(self, out, fingerprint, state):
        _save_checkpoint(out / CHECKPOINT, fingerprint, self.model, self.optimizer,
                         self.generator, state)

    def load(self, out, fingerprint):
        path = out / CHECKPOINT
        if not path.exists() and (out / DIST_INDEX).exists():
            world_size = json.loads((out / DIST_INDEX).read_text())["world_size"]
            raise ValueError(f"{out} holds a checkpoint of {world_size} processes: resume it "
                             f"with torchrun --nproc-per-node {world_size} (one process "
                             f"cannot continue it exactly)")
        if not path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint in {out} ({path} is missing)")
        checkpoint = _read_checkpoint(path, fingerprint)
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        set_rng_state(self.generator, checkpoint["rng"])
        return checkpoint["state"]


def make_optimizer(params, config):
    """Adam, foreach=True (CUDA's default): its step needs one temporary per
    tensor where the single-tensor loop (CPU's default) needs two, and it
    gives the same numbers."""
    return torch.optim.Adam(params, lr=config.lr, foreach=True)


def make_sampler(config, data, device):
    """The BPR sampler and its generator: the same global batches for a seed."""
    if data.train.numel() == 0:
        raise ValueError(f"data {data.name!r} has no training interactions")
    sampler = BPRSampler(data.train, data.num_users, data.num_items, config.batch_size, device)
    return sampler, torch.Generator(device=device).manual_seed(config.seed)


def train_loop(config, data, worker):
    """Epochs of BPR steps with evaluation, early stopping, checkpoints and
    results, for a single-process or a distributed worker (whose main rank
    alone shows progress and writes the results)."""
    out = Path(config.out)
    if worker.is_main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(".*.tmp"):  # left by a run killed while writing
            stale.unlink()
    ks = tuple(config.topk)
    key = f"recall@{ks[0]}"
    state = dict(epoch=0, history=[], best=None, stale=0, stopped_early=False)
    fingerprint = _fingerprint(data, config)
    if config.resume:
        state = worker.load(out, fingerprint)

    results = dict(config=_jsonable(dataclasses.asdict(config)), data=_describe(data),
                   device=worker.describe_device(), versions=_versions(),
                   git_commit=_git_commit(), num_parameters=worker.num_parameters)
    if worker.is_main:
        results["popularity"] = metrics.popularity_baseline(
            data.train, data.num_users, data.num_items, data.test,
            exclude=[] if data.valid is None else [data.valid], ks=ks)

    from tqdm.auto import tqdm  # a training dependency, not the ops'

    disable = None if config.progress and worker.is_main else True
    write = tqdm.write if worker.is_main else (lambda line: None)
    sampler = worker.sampler
    epochs_now = 0
    epoch_bar = tqdm(total=config.epochs, initial=state["epoch"], desc="epochs", unit="epoch",
                     disable=disable)
    while state["epoch"] < config.epochs and not state["stopped_early"]:
        if config.max_epochs_now and epochs_now >= config.max_epochs_now:
            break
        epoch = state["epoch"] + 1
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=worker.device)
        steps = tqdm(sampler.epoch(worker.generator), total=len(sampler), desc=f"epoch {epoch}",
                     unit="step", leave=False, disable=disable)
        for users, positives, negatives in steps:
            loss_sum += worker.step(users, positives, negatives)
        loss = worker.mean_loss(loss_sum, len(sampler))  # the epoch's one host read
        record = dict(epoch=epoch, loss=loss, epoch_seconds=time.perf_counter() - started)
        if epoch % config.eval_every == 0 or epoch == config.epochs:
            started = time.perf_counter()
            split = "valid" if data.valid is not None else "test"
            scores = worker.evaluate(split)
            if split == "valid":
                record["valid"] = scores
                scores_test = worker.evaluate("test")
            else:
                scores_test = scores
            record.update(scores_test)
            record["eval_seconds"] = time.perf_counter() - started
            _early_stopping(state, record, scores[key], config.patience)
            if worker.is_main:
                write(_summary(record, results["popularity"], ks))
        state["history"].append(record)
        state["epoch"] = epoch
        epochs_now += 1
        worker.save(out, fingerprint, state)
        if worker.is_main:
            _write_results(out, results, state)
        epoch_bar.update(1)
        epoch_bar.set_postfix(loss=f"{loss:.4f}")
    epoch_bar.close()
    return _write_results(out, results, state) if worker.is_main else \
        _final_results(results, state)


# ------------------------------------------------------------ bookkeeping
def _early_stopping(state, record, score, patience):
    if state["best"] is None or score > state["best"]["score"]:
        state["best"] = dict(score=score, epoch=record["epoch"])
        state["stale"] = 0
    else:
        state["stale"] += 1
        state["stopped_early"] = patience > 0 and state["stale"] >= patience


def _summary(record, popularity, ks):
    parts = [f"epoch {record['epoch']}: loss {record['loss']:.4f}"]
    for k in ks:
        for name in ("recall", "ndcg"):
            metric = f"{name}@{k}"
            parts.append(f"{metric} {record[metric]:.4f} (popularity {popularity[metric]:.4f})")
    return "  ".join(parts)


def _fingerprint(data, config):
    """What a checkpoint must match to be resumed."""
    return dict(data=data.name, num_users=data.num_users, num_items=data.num_items,
                num_train=int(data.train.shape[1]), dim=config.dim, layers=config.layers,
                batch_size=config.batch_size, seed=config.seed)


def _save_checkpoint(path, fingerprint, model, optimizer, generator, state):
    checkpoint = dict(format=_FORMAT, fingerprint=fingerprint, state=state,
                      model=model.state_dict(), optimizer=optimizer.state_dict(),
                      rng=rng_state(generator))
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def rng_state(generator):
    """The random states a run continues from: the sampler's and torch's."""
    return dict(sampler=generator.get_state(), torch=torch.get_rng_state())


def set_rng_state(generator, rng):
    generator.set_state(rng["sampler"])
    torch.set_rng_state(rng["torch"])


def _read_checkpoint(path, fingerprint):
    """The checkpoint in path, after checking that this run can continue it."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file
        raise ValueError(f"{path} is not a readable lightgcn_ext checkpoint ({error}); "
                         f"delete it or choose another --out") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != _FORMAT:
        raise ValueError(f"{path} is not a lightgcn_ext checkpoint of format {_FORMAT}")
    check_fingerprint(path, checkpoint["fingerprint"], fingerprint)
    return checkpoint


def check_fingerprint(path, saved, fingerprint):
    differences = [f"{name}: checkpoint {saved.get(name)!r}, this run {value!r}"
                   for name, value in fingerprint.items() if saved.get(name) != value]
    if differences:
        raise ValueError(f"{path} was made by another run and cannot be resumed here ("
                         + "; ".join(differences) + "); choose another --out or drop --resume")


def _final_results(results, state):
    return dict(results, history=state["history"], best=state["best"],
                stopped_early=state["stopped_early"], epochs_done=state["epoch"])


def _write_results(out, results, state):
    results = _final_results(results, state)
    atomic_write(out / RESULTS, lambda f: f.write(json.dumps(results, indent=2).encode()))
    _plot(out / CURVE, results)
    return results


def _plot(path, results):
    """The learning curve: the metrics per evaluation beside the popularity
    baseline, and the training loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = results["history"]
    ks = results["config"]["topk"]
    fig, (ax_metrics, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    evaluated = [r for r in history if f"recall@{ks[0]}" in r]
    for index, name in enumerate(("recall", "ndcg")):
        metric = f"{name}@{ks[0]}"
        color = f"C{index}"
        ax_metrics.plot([r["epoch"] for r in evaluated], [r[metric] for r in evaluated],
                        marker="o", markersize=3, color=color, label=f"LightGCN {metric}")
        ax_metrics.axhline(results["popularity"][metric], color=color, linestyle="--",
                           label=f"popularity {metric}")
    ax_metrics.set_xlabel("epoch")
    ax_metrics.set_title(f"{results['data']['name']}: test metrics")
    ax_metrics.legend(fontsize=8)
    ax_loss.plot([r["epoch"] for r in history], [r["loss"] for r in history], color="C2")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("BPR loss (training)")
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)


def atomic_write(path, write):
    """Writes a file all or nothing: into a temporary file beside it, flushed
    to disk, then renamed over it. An interrupted write leaves the old file."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def _describe(data):
    return dict(name=data.name, num_users=data.num_users, num_items=data.num_items,
                num_train=int(data.train.shape[1]), num_test=int(data.test.shape[1]),
                num_valid=0 if data.valid is None else int(data.valid.shape[1]))


def _describe_device(device):
    if device.type == "cuda":
        return dict(type="cuda", name=torch.cuda.get_device_name(device))
    return dict(type="cpu", name=platform.processor() or platform.machine(),
                threads=torch.get_num_threads())


def _versions():
    from . import __version__

    return dict(lightgcn_ext=__version__, torch=torch.__version__,
                python=platform.python_version())


def _git_commit():
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _jsonable(value):
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value
