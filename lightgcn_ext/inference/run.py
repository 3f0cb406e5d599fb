"""A trained run, loaded back: `load_run(DIR)` gives the model with the weights
of the best evaluated epoch (or of the last one), the prepared graph of the
training interactions, the data the run trained on (its splits and id map)
and its results.json.

    run = load_run("runs/demo")                  # best.pt's weights
    embedding = run.model.get_embedding(run.graph)

A run of one process keeps the best epoch's weights in best.pt and the last
epoch's in checkpoint.pt. A run of several processes keeps only the last
epoch, as one shard of rows per process (checkpoint.index.json names them);
`load_run(..., checkpoint="last")` joins the shards into one model, and
checkpoint="best" is refused in one line.

Every mistake (a directory that is not a run, a run without a model, a
missing or damaged data.pt) is a ValueError of one line that names --run and
the path, as the command line shows it.
"""
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..data import Interactions
from ..graph import Graph
from ..model import LightGCN
from ..training.config import resolve_device
from ..training.run_files import BEST, CHECKPOINT, DATA, DIST_INDEX, RESULTS

CHECKPOINTS = ("best", "last")


@dataclass
class Run:
    """A trained run (`load_run`).

    path: the run directory.
    model: a `lightgcn_ext.LightGCN` holding the chosen epoch's weights, in
        eval mode.
    graph: the prepared graph of the training interactions, what
        `model.get_embedding(graph)` takes (user u is node u, item i node
        num_users + i).
    data: the `Interactions` the run trained and evaluated on; data.id_map
        maps dense ids to raw ids (None: the ids are the raw ids).
    results: results.json's contents.
    checkpoint: "best" or "last", which weights these are.
    epoch: the epoch of those weights.
    """

    path: Path
    model: LightGCN
    graph: Graph
    data: Interactions
    results: dict
    checkpoint: str
    epoch: int

    @property
    def config(self):
        """The run's options (results.json's "config")."""
        return self.results["config"]

    @property
    def id_map(self):
        return self.data.id_map

    @property
    def record(self):
        """results.json's record of this epoch (loss and, when it was
        evaluated, its metrics), or None."""
        return next((r for r in self.results.get("history", []) if r["epoch"] == self.epoch),
                    None)


def load_run(path, checkpoint="best", device="cpu"):
    """The run in the directory `path` (written by `lightgcn-ext train --out`),
    with the weights of its best evaluated epoch (checkpoint="best", from
    best.pt) or of its last epoch (checkpoint="last", from checkpoint.pt or a
    run of several processes' shards), on `device` ("cpu", "cuda", "auto")."""
    path = Path(path).expanduser()
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"--checkpoint must be 'best' or 'last', got {checkpoint!r}")
    device = resolve_device(str(device))
    _check_is_run(path)
    results = _read_results(path)
    data = _read_data(path)
    state, epoch = (_best_weights if checkpoint == "best" else _last_weights)(path)
    model = _model(path, state, data)
    # Built as the trainer builds it, on the device: the same graph, the same numbers.
    graph = Graph.from_edge_index(data.edge_index().to(device), data.num_nodes)
    return Run(path=path, model=model.to(device).eval(), graph=graph, data=data,
               results=results, checkpoint=checkpoint, epoch=int(epoch))


def _check_is_run(path):
    if not path.is_dir():
        what = "does not exist" if not path.exists() else "is not a directory"
        raise ValueError(f"--run {path} {what}: expected the --out directory of a "
                         f"lightgcn-ext train run")
    if not any((path / name).exists() for name in (RESULTS, CHECKPOINT, BEST, DIST_INDEX)):
        raise ValueError(f"--run {path} is not a run directory (it holds no {RESULTS}, "
                         f"{CHECKPOINT} or {BEST}): expected the --out directory of a "
                         f"lightgcn-ext train run")


def _read_results(path):
    try:
        results = json.loads((path / RESULTS).read_text())
    except FileNotFoundError:
        raise ValueError(f"--run {path} holds no {RESULTS}: the run completed no epoch, so "
                         f"it has no model yet") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"--run {path}: {RESULTS} cannot be read ({_first_line(error)})") \
            from None
    if not isinstance(results, dict) or "config" not in results:
        raise ValueError(f"--run {path}: {RESULTS} is not the results of a lightgcn-ext run")
    return results


def _read_data(path):
    file = path / DATA
    if not file.exists():
        raise ValueError(f"--run {path} holds no {DATA} (the data the run trained on, which "
                         f"runs of earlier versions did not keep): train the run again to "
                         f"use it")
    state = _read(file, path)
    try:
        return Interactions.from_state_dict(state)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"--run {path}: {DATA} is damaged ({_first_line(error)})") from None


def _best_weights(path):
    """(model state, epoch) of best.pt."""
    if not (path / BEST).exists():
        if (path / DIST_INDEX).exists():
            raise ValueError(f"--run {path} is a run of several processes, which keeps no "
                             f"best epoch's weights ({BEST}), only the last epoch's: use "
                             f"--checkpoint last")
        raise ValueError(f"--run {path} holds no {BEST}: no epoch was evaluated yet (use "
                         f"--checkpoint last for the last epoch's weights)")
    best = _read(path / BEST, path)
    if not isinstance(best, dict) or "model" not in best:
        raise ValueError(f"--run {path}: {BEST} holds no model weights")
    return best["model"], best.get("epoch", 0)


def _last_weights(path):
    """(model state, epoch) of checkpoint.pt, or of a run of several
    processes' shards, whose rows the index's bounds place."""
    if (path / CHECKPOINT).exists():
        checkpoint = _read(path / CHECKPOINT, path)
        if not isinstance(checkpoint, dict) or "model" not in checkpoint:
            raise ValueError(f"--run {path}: {CHECKPOINT} holds no model weights")
        return checkpoint["model"], checkpoint.get("state", {}).get("epoch", 0)
    if not (path / DIST_INDEX).exists():
        raise ValueError(f"--run {path} holds no model ({CHECKPOINT} is missing)")
    try:
        index = json.loads((path / DIST_INDEX).read_text())
        shards, bounds = index["shards"], index["bounds"]
        layers = index["fingerprint"]["options"]["layers"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"--run {path}: {DIST_INDEX} is damaged ({_first_line(error)})") \
            from None
    rows = []
    for rank, name in enumerate(shards):
        weight = _read(path / name, path).get("weight")
        if not isinstance(weight, torch.Tensor) or \
                weight.shape[0] != bounds[rank + 1] - bounds[rank]:
            raise ValueError(f"--run {path}: {name} does not hold the rows {bounds[rank]} to "
                             f"{bounds[rank + 1] - 1} that {DIST_INDEX} gives it")
        rows.append(weight)
    # The processes' layer weights are LightGCN's default, 1 / (L + 1) each.
    alpha = LightGCN(1, 1, layers).alpha
    return {"alpha": alpha, "embedding.weight": torch.cat(rows)}, index.get("epoch", 0)


def _model(path, state, data):
    """A LightGCN holding `state` (a state_dict), after checking that it has
    a row for every node of the data."""
    weight, alpha = state.get("embedding.weight"), state.get("alpha")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or \
            not isinstance(alpha, torch.Tensor) or alpha.dim() != 1:
        raise ValueError(f"--run {path}: the weights are not those of a LightGCN model")
    if weight.shape[0] != data.num_nodes:
        raise ValueError(f"--run {path}: the weights have {weight.shape[0]:,} rows, but "
                         f"{DATA} has {data.num_users:,} users + {data.num_items:,} items; "
                         f"the run directory mixes files of different runs")
    model = LightGCN(weight.shape[0], weight.shape[1], alpha.numel() - 1)
    model.load_state_dict(state)
    return model


def _read(file, path):
    """What torch.save wrote into file (weights only, onto the CPU); a
    one-line ValueError naming --run when it cannot be read."""
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"--run {path}: {file.name} is missing") from None
    except Exception as error:  # truncated, garbage, or a foreign pickle
        raise ValueError(f"--run {path}: {file.name} is damaged (truncated or not a file of "
                         f"a run: {_first_line(error)[:80]})") from None


def _first_line(error):
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
