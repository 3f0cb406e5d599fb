"""The files of a run directory, each written atomically by `atomic_write`:

* `checkpoint.pt` (CHECKPOINT): a single process's checkpoint: format, the
  run's fingerprint, the loop's state, model, optimizer and random states;
* `checkpoint.index.json` (DIST_INDEX) and one shard per process: the
  checkpoint of a run of several processes (written by lightgcn_ext.distributed,
  named here so that each kind of run can tell the other's checkpoint apart);
* `results.json` (RESULTS) and `curve.png` (CURVE): see `results`;
* `best.pt` (BEST): the weights of the best evaluated epoch;
* `data.pt` (DATA): the data the run trains and evaluates on, its splits and
  the map from its dense ids to the raw ones (`Interactions.state_dict`);
* `progress.json` (PROGRESS): the last completed epoch, rewritten after every
  epoch (cheaply: not flushed to disk), so that a resume can say how many
  epochs after the checkpoint it trains again.

`run_directory` locks the directory for a run and decides what a run may do
with the files already there.

`atomic_write` and `git_commit` also serve the benchmarks' output files.
"""
import json
import os
import platform
import secrets
import subprocess
from pathlib import Path

import torch

from .resume import resume_changes, run_options

CHECKPOINT = "checkpoint.pt"
RESULTS = "results.json"
CURVE = "curve.png"
BEST = "best.pt"
DATA = "data.pt"
DIST_INDEX = "checkpoint.index.json"
PROGRESS = "progress.json"
# The version of the checkpoint files' layout (2: the run's options in the
# fingerprint, what a resume compares).
CHECKPOINT_FORMAT = 2


def atomic_write(path, content, durable=True):
    """Writes a file all or nothing: into a temporary file beside it, flushed
    to disk, then renamed over it. An interrupted write leaves the old file
    and, at worst, the temporary, which the next run that locks the directory
    removes (`run_directory.RunDirectory`). The temporary's name holds this
    process's id and a random token: no two writers ever share one.
    content: bytes, a str (written as UTF-8), or a function that writes into
    the open binary file. The folder is created when missing. durable=False
    skips the flushes to disk: the file is still whole or absent for any
    reader and after a kill, but a crash of the machine may lose it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    write = content if callable(content) else (lambda f: f.write(content))
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "wb") as f:
            write(f)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    if not durable:
        return
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_progress(out, epoch):
    """Records in out that `epoch` is completed (PROGRESS)."""
    atomic_write(Path(out) / PROGRESS, json.dumps(dict(epoch=epoch)), durable=False)


def read_progress(out):
    """The last completed epoch that PROGRESS in out records, or None."""
    try:
        return int(json.loads((Path(out) / PROGRESS).read_text())["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def git_commit(short=False):
    """The commit of the checkout this code runs from, or None outside git."""
    command = ["git", "rev-parse"] + (["--short"] if short else []) + ["HEAD"]
    try:
        return subprocess.run(command, cwd=Path(__file__).parent, capture_output=True,
                              text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def describe_device(device):
    """What results.json records of the device."""
    if device.type == "cuda":
        return dict(type="cuda", name=torch.cuda.get_device_name(device))
    return dict(type="cpu", name=platform.processor() or platform.machine(),
                threads=torch.get_num_threads())


# ------------------------------------------------------------ checkpoints
class DamagedCheckpoint(ValueError):
    """A file of a run that cannot be read (truncated, overwritten, not ours)."""


def load_file(path):
    """The object torch.save wrote into path (weights only, on the CPU);
    DamagedCheckpoint, in one line, when it cannot be read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # truncated, garbage, or a foreign pickle
        raise DamagedCheckpoint(damaged_message(Path(path), error)) from None


def damaged_message(path, error):
    """That path is damaged, how far its run directory's results.json got,
    and what to do."""
    epoch = results_epoch(path.parent)
    reached = "results.json records no completed epoch" if epoch is None else \
        f"results.json records {epoch} completed epoch{'s' * (epoch != 1)}"
    lines = str(error).strip().splitlines()
    why = (lines[0] if lines else type(error).__name__)[:80]
    return (f"--resume: {path} is damaged (truncated or not a checkpoint: {why}) and cannot "
            f"be resumed; {reached}. Start the run again with --overwrite (which deletes it), "
            f"or choose another --out")


def results_epoch(out):
    """The number of completed epochs results.json in out records, or None."""
    try:
        return int(json.loads((Path(out) / RESULTS).read_text())["epochs_done"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def fingerprint(data, config):
    """What a checkpoint must match to be resumed: the data, and the run's
    options (`resume.run_options`), which a resume may change only as
    `resume.RESUME_POLICY` says."""
    return dict(data=data.name, num_users=data.num_users, num_items=data.num_items,
                num_train=int(data.train.shape[1]), options=run_options(config))


def check_fingerprint(path, saved, expected):
    """Raises ValueError, in one line, when the checkpoint in path
    (fingerprint `saved`) cannot be continued by `expected`'s run: a fixed
    option changed (resume.ResumeRefused, naming each), or the data."""
    resume_changes(saved.get("options", {}), expected["options"], 0)
    differences = [f"{name}: checkpoint {saved.get(name)!r}, this run {value!r}"
                   for name, value in expected.items()
                   if name != "options" and saved.get(name) != value]
    if differences:
        raise ValueError(f"--resume: {path} was made with other data and cannot be resumed "
                         f"here ({'; '.join(differences)}); choose another --out or drop "
                         f"--resume")


def rng_state(generator):
    """The random states a run continues from: the sampler's and torch's."""
    return dict(sampler=generator.get_state(), torch=torch.get_rng_state())


def set_rng_state(generator, rng):
    """Sets the states that rng_state returned."""
    generator.set_state(rng["sampler"])
    torch.set_rng_state(rng["torch"])


def save_checkpoint(path, run_fingerprint, model, optimizer, generator, state):
    """A single process's checkpoint into path."""
    checkpoint = dict(format=CHECKPOINT_FORMAT, fingerprint=run_fingerprint, state=state,
                      model=model.state_dict(), optimizer=optimizer.state_dict(),
                      rng=rng_state(generator))
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def read_checkpoint(path, run_fingerprint):
    """The checkpoint in path, after checking that this run can continue it."""
    checkpoint = load_file(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a lightgcn_ext checkpoint of format "
                         f"{CHECKPOINT_FORMAT}")
    check_fingerprint(path, checkpoint["fingerprint"], run_fingerprint)
    return checkpoint
