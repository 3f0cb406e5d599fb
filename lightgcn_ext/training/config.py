"""What a training run does (`TrainConfig`, the CLI's options one for one), and
resolving its device and data, and whether its model fits on the device."""
import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from .. import data as data_sources
from .. import validation
from ..data.ids import ID_MODES
from ..data.logs import SEPARATORS as LOG_SUFFIXES
from ..data.sampling import SAMPLING
from ..propagation import PRECISIONS

# The options of reading an interaction log (lightgcn_ext.data.read_log's,
# TrainConfig's fields of the same names); the random split's seed is the
# run's seed.
LOG_OPTIONS = ("user", "item", "rating", "time", "sep", "min_rating", "min_user_interactions",
               "min_item_interactions", "split", "ratios")


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
    # How an epoch's BPR triples are drawn: lightgcn_ext.data.sampling.SAMPLING.
    sampling: str = "interactions"
    # How a training step's propagation stores the layers it gathers:
    # "float32", or "bf16" (bfloat16 layers, float32 sums, weights and Adam
    # state; evaluation in float32): lightgcn_ext.propagation.PRECISIONS.
    precision: str = "float32"
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
    # Curves for TensorBoard in <out>/tensorboard (needs the tensorboard package).
    tensorboard: bool = False
    # Reading an interaction log (data a .csv, .tsv, .inter or .dat file):
    # read_log's options (LOG_OPTIONS), checked by read_log itself. Other data
    # refuses values other than these defaults.
    user: str = None  # the user column; None: the first usual name
    item: str = None
    rating: str = None
    time: str = None
    sep: str = None  # None: by the file's suffix
    min_rating: float = None
    min_user_interactions: int = 1
    min_item_interactions: int = 1
    split: str = "random"
    ratios: tuple = (0.8, 0.1, 0.1)

    def log_options(self):
        """The keyword arguments of read_log for this run's log."""
        return dict({name: getattr(self, name) for name in LOG_OPTIONS}, seed=self.seed)

    def check(self):
        """self, each field checked (ArgumentError, a ValueError, naming the
        first bad one), and the options that do not apply to the data refused,
        before anything is read or written."""
        for name in ("dim", "layers", "epochs", "batch_size", "eval_every"):
            validation.positive_int(getattr(self, name), name)
        for name in ("patience", "max_epochs_now"):
            validation.non_negative_int(getattr(self, name), name)
        validation.positive_number(self.lr, "lr")
        validation.positive_number(self.dist_timeout, "dist_timeout", unit="seconds")
        validation.non_negative_number(self.reg, "reg")
        validation.positive_ints(self.topk, "topk")
        validation.choice(self.ids, "ids", ID_MODES)
        validation.choice(self.sampling, "sampling", SAMPLING)
        validation.choice(self.precision, "precision", PRECISIONS)
        if self.threads is not None:
            validation.positive_int(self.threads, "threads")
        if self.checkpoint_every is not None:
            validation.positive_int(self.checkpoint_every, "checkpoint_every")
        if self.tensorboard:
            check_tensorboard()
        self._check_data_options()
        return self

    def _check_data_options(self):
        path = Path(self.data).expanduser()
        if not is_log(self.data):
            defaults = {f.name: f.default for f in fields(self)}
            given = [name for name in LOG_OPTIONS
                     if _listed(getattr(self, name)) != _listed(defaults[name])]
            if given:
                options = ", ".join(f"--{name.replace('_', '-')}" for name in given)
                raise ValueError(f"{options} {'apply' if len(given) > 1 else 'applies'} to an "
                                 f"interaction log (--data a {', '.join(LOG_SUFFIXES)} file), "
                                 f"not to --data {self.data}")
            return
        if not path.is_file():
            raise FileNotFoundError(f"--data {self.data}: no such file (an interaction log "
                                    f"was expected)")
        if path.suffix not in LOG_SUFFIXES and self.sep is None:
            raise ValueError(f"--data {self.data} is a file, but not an interaction log by "
                             f"its suffix ({', '.join(LOG_SUFFIXES)}): give --sep to read it "
                             f"as one, or for the LightGCN text format the directory that "
                             f"holds train.txt and test.txt")
        if self.ids == "given":
            raise ValueError(f"--keep-ids applies to a directory in the LightGCN text format; "
                             f"an interaction log's raw ids (--data {self.data}) are always "
                             f"numbered 0, 1, ..., and data.pt keeps their map")
        if self.data_root is not None:
            raise ValueError(f"--data-root applies to the named data sets, not to the "
                             f"interaction log --data {self.data}")


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


def check_precision(precision, world_size):
    """Refuses, in one line, a --precision that this number of processes
    cannot train with: the distributed propagation is float32. (bf16 has
    CPU and CUDA kernels: any device of one process takes it.)"""
    if precision == "float32":
        return
    if world_size > 1:
        raise ValueError(f"--precision {precision} trains in one process only: use --precision "
                         f"float32 under torchrun ({world_size} processes)")


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


def is_log(spec):
    """Whether a --data value is an interaction log: a file, or a name ending
    in a log's suffix (TrainConfig.check says when there is no such file)."""
    if spec == "synthetic" or spec in data_sources.NAMED:  # names win, as in data_source
        return False
    path = Path(spec).expanduser()
    return path.is_file() or (path.suffix in LOG_SUFFIXES and not path.is_dir())


def load_data(spec, root=None, ids="dense", log_options=None):
    """The Interactions a --data value names (see data_source); an
    interaction log is read by read_log with log_options (its keyword
    arguments, TrainConfig.log_options)."""
    if is_log(spec):
        try:
            return data_sources.read_log(spec, **(log_options or {}))
        except ImportError as error:  # pyarrow, an optional dependency
            raise ValueError(f"--data {spec}: {error}") from None
    source, _ = data_source(spec, root)
    if source == "synthetic":
        return data_sources.synthetic()
    return data_sources.load(source, root=root, ids=ids)


def check_tensorboard():
    """Raises ValueError, in one line, when --tensorboard cannot write
    (the tensorboard package is an optional dependency)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install "
                         "tensorboard") from None


def _listed(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def check_table_fits(data, config, device):
    """Refuses, in one line, a model whose embedding table and Adam's state
    (4 float32 copies) cannot fit in the device's memory, before allocating
    it: ids taken as given (--keep-ids) can ask for billions of rows."""
    rows = data.num_nodes
    need = rows * config.dim * 4 * 4
    if device.type == "cuda":
        have = torch.cuda.get_device_properties(device).total_memory
    else:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if need > have:
        hint = ("; the ids are taken as given (--keep-ids): drop it to number the ids in use "
                "0, 1, ..." if config.ids == "given" else "")
        raise ValueError(f"the model needs {rows:,} embedding rows of {config.dim} "
                         f"(about {need / 2**30:,.0f} GiB with Adam's state), more than the "
                         f"{have / 2**30:,.0f} GiB of memory of {device}{hint}")
