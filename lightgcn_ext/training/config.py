"""What a training run does (`TrainConfig`, the CLI's options one for one), and
resolving its device and data."""
from dataclasses import dataclass

import torch

from .. import data as data_sources
from .. import validation


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
        return self


def resolve_device(name):
    """The torch.device a --device value names ("auto": CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r}, but CUDA is not available here")
    return device


def load_data(spec, root=None):
    """The Interactions a --data value names: "synthetic", a data set name, or a directory."""
    if spec == "synthetic":
        return data_sources.synthetic()
    return data_sources.load(spec, root=root)
