"""The files of a run directory, each written atomically by `atomic_write`:

* `checkpoint.pt` (CHECKPOINT): a single process's checkpoint: format, the
  run's fingerprint, the loop's state, model, optimizer and random states;
* `checkpoint.index.json` (DIST_INDEX) and one shard per process: the
  checkpoint of a run of several processes (written by lightgcn_ext.distributed,
  named here so that each kind of run can tell the other's checkpoint apart);
* `results.json` (RESULTS) and `curve.png` (CURVE): see `results`.

`atomic_write` and `git_commit` also serve the benchmarks' output files.
"""
import os
import platform
import subprocess
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"
RESULTS = "results.json"
CURVE = "curve.png"
DIST_INDEX = "checkpoint.index.json"
CHECKPOINT_FORMAT = 1  # the version of the checkpoint files' layout


def atomic_write(path, content):
    """Writes a file all or nothing: into a temporary file beside it, flushed
    to disk, then renamed over it. An interrupted write leaves the old file.
    content: bytes, a str (written as UTF-8), or a function that writes into
    the open binary file. The folder is created when missing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    write = content if callable(content) else (lambda f: f.write(content))
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


def remove_stale_temporaries(out):
    """Deletes the temporary files that a run killed inside atomic_write left."""
    for stale in Path(out).glob(".*.tmp"):
        stale.unlink()


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
def fingerprint(data, config):
    """What a checkpoint must match to be resumed."""
    return dict(data=data.name, num_users=data.num_users, num_items=data.num_items,
                num_train=int(data.train.shape[1]), dim=config.dim, layers=config.layers,
                batch_size=config.batch_size, seed=config.seed)


def check_fingerprint(path, saved, expected):
    """Raises ValueError, naming every difference, when the checkpoint in path
    (fingerprint `saved`) was made by another run than `expected`'s."""
    differences = [f"{name}: checkpoint {saved.get(name)!r}, this run {value!r}"
                   for name, value in expected.items() if saved.get(name) != value]
    if differences:
        raise ValueError(f"{path} was made by another run and cannot be resumed here ("
                         + "; ".join(differences) + "); choose another --out or drop --resume")


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
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file
        raise ValueError(f"{path} is not a readable lightgcn_ext checkpoint ({error}); "
                         f"delete it or choose another --out") from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a lightgcn_ext checkpoint of format "
                         f"{CHECKPOINT_FORMAT}")
    check_fingerprint(path, checkpoint["fingerprint"], run_fingerprint)
    return checkpoint
