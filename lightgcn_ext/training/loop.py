"""BPR training of LightGCN on the fused kernels, with the paper's evaluation.

    from lightgcn_ext.training import TrainConfig, train
    results = train(TrainConfig(data="gowalla", epochs=1000, device="cuda", out="runs/gowalla"))

Each step propagates the whole graph once (one fused forward, one fused
backward), scores a batch of (user, positive, negative) triples and takes an
Adam step on the BPR loss, regularized on the batch's layer-0 embeddings as
in the paper. Every `eval_every` epochs the model is evaluated over the full
item ranking (recall, ndcg, precision and hit at k, training items excluded);
training stops early when recall@k[0] has not improved for `patience`
evaluations. The run's files, a checkpoint (model, optimizer, epoch, every
random state) from which `resume` continues exactly, the results JSON and the
learning-curve PNG (redrawn only after a new evaluation), with the best
epoch's weights when a new best was found since, are written
atomically into the run directory at the end of an epoch when they are due
(`BookkeepingClock`): every `checkpoint_every` epochs when it is set, else
once at least 50 times as long as their last writing took has passed (at most
2% of the time goes into them), and always at the end of the run or of this
invocation, and on Ctrl-C between epochs.

On CUDA a step never synchronizes with the host: losses add up on the device
and are read once per epoch.

The loop (`train_loop`) steps, evaluates and checkpoints a `Worker`: this
module's `LocalWorker` for one process, lightgcn_ext.distributed's for a
process of several; the loop knows nothing else of either.
"""
import json
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import torch

from ..evaluation import popularity_baseline, test_users
from ..graph import Graph
from ..model import LightGCN
from . import run_files
from .config import (check_table_fits, data_source, is_log, load_data,
                     resolve_device)
from .results import final_results, start_results, summary_line, write_results
from .resume import apply_lr, resume_changes, run_options
from .run_directory import RunDirectory
from .step import (bpr_step, evaluate_model, load_optimizer_state, make_optimizer,
                   make_sampler)
from .tensorboard_log import TensorBoardLog, remove_curves


class Worker(Protocol):
    """What train_loop drives: one process's model, optimizer, graph and sampler.

    is_main: whether this process shows progress and writes results.json and
        curve.png (every process of a run calls every method below, in the
        same order: a distributed worker's methods are collective).
    world_size: the number of processes of the run.
    device: where the batches and the summed losses live.
    sampler, generator: the BPR sampler (a `lightgcn_ext.data.BPRSampler`)
        and its generator; every process of a run draws the same batches.
    num_parameters: the model's parameter count, for results.json.
    """

    is_main: bool
    world_size: int
    device: torch.device
    num_parameters: int

    def step(self, users, positives, negatives):
        """One optimizer step on a batch; returns this process's loss on the device."""

    def mean_loss(self, loss_sum, steps):
        """The epoch's mean loss as a float, from this process's sum of step losses."""

    def evaluate(self, split):
        """The full-ranking metrics (a dict) on "test" or "valid"."""

    def describe_device(self):
        """What results.json records of the device(s), a dict."""

    def save(self, out, fingerprint, state):
        """Checkpoints the model, optimizer, random states and the loop's
        state (a dict) into the run directory out (a Path)."""

    def load(self, out, fingerprint):
        """Restores what save wrote in out, after checking it matches
        fingerprint; returns the loop's state."""

    def set_lr(self, lr):
        """Sets the optimizer's learning rate (a resume may change it)."""

    def keep_best(self, epoch):
        """Keeps the model's weights of `epoch`, the best so far, until
        save_best writes them; returns the name of the file they go to, or
        None where this worker keeps none."""

    def save_best(self, out):
        """Writes the weights keep_best kept last into out, if not yet
        written (with the checkpoint: when the run's files are due)."""

    def agree(self, flag):
        """The main process's flag, on every process (a run's processes must
        decide alike whether to write a checkpoint)."""


class Interrupted(Exception):
    """Ctrl-C stopped the run during an epoch; the run's files were left
    whole, the checkpoint holding epoch `saved` (the files are written only
    when due, so it may be behind the last completed epoch)."""

    def __init__(self, epoch, out, saved):
        self.epoch, self.out, self.saved = epoch, out, saved  # epoch: the one running
        repeated = epoch - 1 - saved
        again = "" if repeated <= 0 else (
            f" (a resume trains the {repeated} epoch{'s' * (repeated != 1)} after it again)")
        super().__init__(
            f"interrupted during epoch {epoch}: " + (
                f"the checkpoint of epoch {saved} in {out} is intact{again}" if saved else
                "no epoch was checkpointed, so there is nothing to resume"))


def train(config, data=None):
    """Trains as `config` says in this process (continuing the run in
    config.out with config.resume) and returns the results written to
    results.json. data: Interactions, else config.data is loaded.

    The run directory is locked, and checked (writable, free of another
    run's checkpoint unless config.resume or config.overwrite) before
    anything is loaded (`RunDirectory.open`); only an interaction log is
    read before, so that a mistake in it leaves the directory untouched.

    Under torchrun with several processes, use
    lightgcn_ext.distributed.train_distributed (the CLI chooses for you)."""
    config = config.check()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        raise ValueError(f"WORLD_SIZE is {world_size}: training across processes is "
                         f"lightgcn_ext.distributed.train_distributed (or the CLI), not "
                         f"lightgcn_ext.training.train")
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    if data is None and is_log(config.data):
        data = load_run_data(config)
    with RunDirectory.open(config.out, resume=config.resume, overwrite=config.overwrite):
        data = load_run_data(config) if data is None else data
        check_table_fits(data, config, device)
        return train_loop(config, data, LocalWorker(config, data, device))


def load_run_data(config):
    """The data of config.data, saying which source a name that is also a
    directory resolved to."""
    _, note = data_source(config.data, config.data_root)
    if note:
        print(note, flush=True)
    return load_data(config.data, config.data_root, config.ids, config.log_options())


class LocalWorker:
    """The `Worker` of a single-process run: the whole model, optimizer, graph
    and sampler in this process."""

    is_main = True
    world_size = 1

    def __init__(self, config, data, device):
        self.config, self.data, self.device = config, data, device
        torch.manual_seed(config.seed)
        self.model = LightGCN(data.num_nodes, config.dim, config.layers).to(device)
        self.optimizer = make_optimizer(self.model.parameters(), config)
        self.graph = Graph.from_edge_index(data.edge_index().to(device), data.num_nodes)
        self.sampler, self.generator = make_sampler(config, data, device)
        self.num_parameters = self.model.embedding.weight.numel()
        self._best = None  # the best weights not yet written (keep_best)

    def step(self, users, positives, negatives):
        return bpr_step(self.model, self.graph, self.optimizer, self.data.num_users, users,
                        positives, negatives, self.config.reg / 2, self.config.precision)

    def mean_loss(self, loss_sum, steps):
        return loss_sum.item() / steps

    def evaluate(self, split):
        self.optimizer.zero_grad(set_to_none=True)  # the last step's: not kept through this
        return evaluate_model(self.model, self.graph, self.data, tuple(self.config.topk), split)

    def describe_device(self):
        return run_files.describe_device(self.device)

    def save(self, out, fingerprint, state):
        run_files.save_checkpoint(out / run_files.CHECKPOINT, fingerprint, self.model,
                                self.optimizer, self.generator, state)

    def set_lr(self, lr):
        apply_lr(self.optimizer, lr)

    def agree(self, flag):
        return flag

    def keep_best(self, epoch):
        # A copy in memory (on the model's device), so that best.pt is written
        # with the other files, on the bookkeeping clock, not at every new best.
        weights = {name: value.detach().clone() for name, value in self.model.state_dict().items()}
        self._best = dict(format=run_files.CHECKPOINT_FORMAT, epoch=epoch, model=weights)
        return run_files.BEST

    def save_best(self, out):
        if self._best is not None:
            run_files.atomic_write(out / run_files.BEST, lambda f: torch.save(self._best, f))
            self._best = None

    def load(self, out, fingerprint):
        path, index = out / run_files.CHECKPOINT, out / run_files.DIST_INDEX
        if not path.exists() and index.exists():
            world_size = json.loads(index.read_text())["world_size"]
            raise ValueError(f"{out} holds a checkpoint of {world_size} processes: resume it "
                             f"with torchrun --nproc-per-node {world_size} (one process "
                             f"cannot continue it exactly)")
        if not path.exists():
            raise FileNotFoundError(f"--resume: no checkpoint in {out} ({path} is missing)")
        checkpoint = run_files.read_checkpoint(path, fingerprint)
        self.model.load_state_dict(checkpoint["model"])
        load_optimizer_state(self.optimizer, checkpoint["optimizer"])
        run_files.set_rng_state(self.generator, checkpoint["rng"])
        return checkpoint["state"]


def train_loop(config, data, worker):
    """Epochs of BPR steps with evaluation, early stopping, checkpoints and
    results, for any `Worker` (whose main process alone shows progress and
    writes the results) in the run directory config.out, which the caller
    has checked and locked. Returns the final results. Ctrl-C raises
    Interrupted once the epoch's files, if any were being written, are whole."""
    out = Path(config.out)
    ks = tuple(config.topk)
    key = f"recall@{ks[0]}"
    options = run_options(config)
    state = dict(epoch=0, history=[], best=None, stale=0, stopped_early=False, options=options,
                 changes=[])
    fingerprint = run_files.fingerprint(data, config)
    say = print if worker.is_main else (lambda *args, **kwargs: None)
    if config.resume:
        state = worker.load(out, fingerprint)  # refuses the options a resume cannot change
        changes = resume_changes(state.get("options", {}), options, state["epoch"])
        state["changes"] = state.get("changes", []) + changes
        state["options"] = options
        worker.set_lr(config.lr)
        for change in changes:
            say(f"--resume: {change['option']} {change['from']} -> {change['to']} from epoch "
                f"{change['epoch']}")
        repeated = (run_files.read_progress(out) or 0) - state["epoch"]
        if repeated > 0:
            say(f"--resume: the checkpoint holds epoch {state['epoch']}; the {repeated} "
                f"epoch{'s' * (repeated != 1)} completed after it (not checkpointed when the "
                f"run stopped) are trained again")
    if worker.is_main:
        _describe_data(data, out, say)

    results = start_results(config, data, worker.describe_device(), worker.num_parameters)
    if worker.is_main:
        results["popularity"] = popularity_baseline(
            data.train, data.num_users, data.num_items, data.test,
            exclude=[] if data.valid is None else [data.valid], ks=ks)

    from tqdm.auto import tqdm  # a training dependency, not the ops'

    disable = None if config.progress and worker.is_main else True
    write = tqdm.write if worker.is_main else (lambda line: None)
    sampler = worker.sampler
    epochs_now = 0
    clock = BookkeepingClock(config.checkpoint_every)
    saved_epoch = state["epoch"]  # the epoch that the checkpoint in out holds
    plotted = False  # whether curve.png is up to date (the first writing draws it)
    # Whether the model is that of state["epoch"] (not inside an epoch's steps),
    # so that a checkpoint now holds it exactly.
    between_epochs = True

    def save():
        nonlocal saved_epoch, plotted
        with _interrupts_deferred(), clock.writing():  # the files, whole or not at all
            worker.save_best(out)  # before the results that name its epoch
            worker.save(out, fingerprint, state)
            if worker.is_main:
                write_results(out, results, state, plot=not plotted)
            saved_epoch, plotted = state["epoch"], True

    epoch_bar = tqdm(total=config.epochs, initial=state["epoch"], desc="epochs", unit="epoch",
                     disable=disable)
    if worker.is_main and not config.resume:
        remove_curves(out)
    board = (TensorBoardLog(out, first_epoch=state["epoch"] + 1)
             if config.tensorboard and worker.is_main else None)
    try:
        while state["epoch"] < config.epochs and not state["stopped_early"]:
            if config.max_epochs_now and epochs_now >= config.max_epochs_now:
                break
            epoch = state["epoch"] + 1
            started = time.perf_counter()
            loss_sum = torch.zeros((), device=worker.device)
            steps = tqdm(sampler.epoch(worker.generator), total=len(sampler),
                         desc=f"epoch {epoch}", unit="step", leave=False, disable=disable)
            between_epochs = False
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
                _early_stopping(state, record, scores[key], config.patience, split)
                if state["best"]["epoch"] == epoch:
                    state["best"]["weights"] = worker.keep_best(epoch)
                plotted = False
                if worker.is_main:
                    write(summary_line(record, results["popularity"], ks))
            state["history"].append(record)
            state["epoch"] = epoch
            between_epochs = True
            epochs_now += 1
            if worker.is_main:
                run_files.write_progress(out, epoch)
            if board:
                board.write(record, len(sampler))
            last = (epoch >= config.epochs or state["stopped_early"]
                    or epochs_now == config.max_epochs_now)
            if worker.agree(last or clock.due(epoch)):
                save()
            epoch_bar.update(1)
            epoch_bar.set_postfix(loss=f"{loss:.4f}")
    except KeyboardInterrupt:
        epoch_bar.close()
        # A single process saves what it completed; the processes of a
        # distributed run may not all have been stopped, so none writes alone.
        if between_epochs and saved_epoch != state["epoch"] and worker.world_size == 1:
            try:
                save()
            except KeyboardInterrupt:
                pass  # a second Ctrl-C: the files are whole either way
        raise Interrupted(state["epoch"] + 1, out, saved_epoch) from None
    finally:
        if board:
            board.close()
    epoch_bar.close()
    if epochs_now == 0 and worker.is_main:  # nothing trained: the results, resume changes
        write_results(out, results, state)
    return final_results(results, state)


class BookkeepingClock:
    """When the run's files (checkpoint, results.json, curve.png) are due at
    the end of an epoch: every `every` epochs when it is set, else once the
    time since their last writing is at least 1 / SHARE times what that
    writing took, so that at most SHARE of the run's time goes into them (the
    first epoch always writes: nothing is measured yet)."""

    SHARE = 0.02

    def __init__(self, every=None):
        self.every = every
        self.finished = None  # when the last writing ended
        self.took = 0.0  # how long it took

    def due(self, epoch):
        if self.every is not None:
            return epoch % self.every == 0
        return (self.finished is None
                or time.perf_counter() - self.finished >= self.took / self.SHARE)

    @contextmanager
    def writing(self):
        started = time.perf_counter()
        yield
        self.finished = time.perf_counter()
        self.took = self.finished - started


@contextmanager
def _interrupts_deferred():
    """Holds a Ctrl-C (SIGINT) until the block is done, then raises it: an
    epoch's checkpoint and results are written both, or neither."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield  # Ctrl-C is ignored here, or handled by someone else
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _describe_data(data, out, say):
    """Keeps the data (splits and id map) in the run directory, says how the
    ids were read, how many users each evaluation averages over, and warns
    when an evaluation can only give 0."""
    run_files.atomic_write(out / run_files.DATA, lambda f: torch.save(data.state_dict(), f))
    if data.id_map is not None:
        say(data.id_map.describe())
    valid = [] if data.valid is None else [data.valid]
    for split, pairs, exclude in (("valid", data.valid, [data.train]),
                                  ("test", data.test, [data.train] + valid)):
        if pairs is None:
            continue
        users, rankable = test_users(pairs, data.num_items, exclude)
        say(f"{split}: {users:,} users evaluated")
        if rankable == 0:
            print(f"warning: no {split} user has a {split} item that is not also one of its "
                  f"training items: every {split} metric will be 0, whatever the model",
                  file=sys.stderr, flush=True)
        elif rankable < users:
            print(f"warning: {users - rankable:,} of the {users:,} {split} users have only "
                  f"{split} items that are also their training items: they score 0",
                  file=sys.stderr, flush=True)


def _early_stopping(state, record, score, patience, split):
    if state["best"] is None or score > state["best"]["score"]:
        state["best"] = dict(score=score, epoch=record["epoch"], split=split)
        state["stale"] = 0
    else:
        state["stale"] += 1
        state["stopped_early"] = patience > 0 and state["stale"] >= patience
