"""What a training run does (`TrainConfig`, the CLI's options one for one), and
resolving its device and data."""
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import data as data_sources
from .. import validation
from ..data.ids import ID_MODES


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
    data_root: str = None  # where named data sets are kept (default: data.data_dir())
    # Under torchrun: how long a collective waits for the other processes
    # before it fails (a process that died or stalled), in seconds.
    dist_timeout: float = 120.0
    # Start over in a run directory that holds another run's checkpoint,
    # deleting it (without this, or resume, such a directory is refused).
    overwrite: bool = False
    # How a data directory's ids are read: "dense" (renumbered, the default)
    # or "given" (id k is row k of the model: --keep-ids).
    ids: str = "dense"
    threads: int = None  # CPU threads (torch.set_num_threads); None: torch's default
    # Write the checkpoint and results every this many epochs (and at the end);
    # None: when at least 50 times their last writing time has passed (2%).
    checkpoint_every: int = None

    def check(self):
        """self, each field checked (ArgumentError, a ValueError, naming the first bad one)."""
        for name in ("dim", "layers", "epochs", "batch_size", "eval_every"):
            validation.positive_int(getattr(self, name), name)
        for name in ("patience", "max_epochs_now"):
            validation.non_negative_int(getattr(self, name), name)
        validation.positive_number(self.lr, "lr")
        validation.positive_number(self.dist_timeout, "dist_timeout", unit="seconds")
        validation.non_negative_number(self.reg, "reg")
        validation.positive_ints(self.topk, "topk")
        validation.choice(self.ids, "ids", ID_MODES)
        if self.threads is not None:
            validation.positive_int(self.threads, "threads")
        if self.checkpoint_every is not None:
            validation.positive_int(self.checkpoint_every, "checkpoint_every")
        return self


def resolve_device(name):
    """The torch.device a --device value names ("auto": CUDA when available);
    a ValueError in one line for a name that is not a device here."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {name!r} is not a device: expected 'auto', 'cpu', 'cuda' "
                         f"or 'cuda:N'") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: lightgcn_ext runs on 'cpu' and 'cuda' only; "
                         f"use --device cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: CUDA is not available here; use --device cpu "
                         f"(or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name!r}: this machine has {torch.cuda.device_count()} "
                         f"CUDA device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return device


def data_source(spec, root=None):
    """(what to load, a note or None) for a --data value, by one rule: a value
    that is the name of an existing directory is that directory, unless
    --data-root (which only named data sets use) is given; any other value
    is "synthetic", a data set's name or a directory. The note says which was
    chosen when the value was also a data set's name."""
    path = Path(spec).expanduser()
    if spec in data_sources.NAMED and root is None and path.is_dir():
        return path, (f"--data {spec}: the directory {path.resolve()} (also the name of a "
                      f"data set: give --data-root to load that one)")
    return spec, None


def load_data(spec, root=None, ids="dense"):
    """The Interactions a --data value names (see data_source)."""
    source, _ = data_source(spec, root)
    if source == "synthetic":
        return data_sources.synthetic()
    return data_sources.load(source, root=root, ids=ids)
