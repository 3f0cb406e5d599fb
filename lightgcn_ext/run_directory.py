"""The run directory of a training run: who may write it, what it holds, and
what a resumed run may change.

    with RunDirectory.open("runs/x", resume=False, overwrite=False) as run:
        ...                                  # before any data is read
        run.write_atomic(CHECKPOINT, lambda f: torch.save(checkpoint, f))

`RunDirectory.open` makes the directory, checks that it can be written,
and locks it for the life of the run (fcntl.flock on its `.lock` file: the
kernel releases the lock when the process ends, however it ends, SIGKILL
included), so that a second run into the same directory fails at once and
names the run that holds it. It refuses to start over a directory that holds
another run's checkpoint unless the user says --resume (continue it) or
--overwrite (delete it first). All of this happens before any data is read,
so a mistake costs seconds, not an epoch.

Every file is written all or nothing (`write_atomic`): into a temporary file
beside it whose name no other process uses, then renamed over it. Only the
lock holder removes temporaries that a killed run left behind.

The files: checkpoint.pt (the last completed epoch: what --resume continues
from), best.pt (the weights of the best evaluated epoch, what a recommendation
uses), results.json and curve.png (the history), ids.pt (the map from dense
to raw ids), the shards and index of a checkpoint written by several
processes, and .lock.

Errors that a user can fix are `RunDirectoryError`s (ValueErrors) whose
message is one line naming the option, the value and what to do.
"""
import errno
import fcntl
import json
import os
import secrets
import socket
import time
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
RESULTS = "results.json"
CURVE = "curve.png"
IDS = "ids.pt"
# The index of a checkpoint written by several processes, and its shards.
DIST_INDEX = "checkpoint.index.json"
DIST_SHARDS = "checkpoint.epoch*.rank*-of-*.pt"
LOCK = ".lock"
# The files of a run, which --overwrite deletes (the lock file stays: it is
# the lock).
RUN_FILES = (CHECKPOINT, BEST, RESULTS, CURVE, IDS, DIST_INDEX)
_TEMPORARY = ".*.tmp"


class RunDirectoryError(ValueError):
    """A mistake about the run directory that the user can fix; one line."""


class RunLocked(RunDirectoryError):
    """Another run holds the directory."""


class DamagedCheckpoint(RunDirectoryError):
    """A checkpoint that cannot be read (truncated, overwritten, not ours)."""


class ResumeRefused(RunDirectoryError):
    """A resumed run asks to change what a resume cannot change."""


# ----------------------------------------------------------------- writing
def write_atomic(path, write):
    """Writes path all or nothing: write(f) into a temporary file beside it
    (named with this process's id and a random token, so that no two
    processes ever share one), flushed to disk, then renamed over path. An
    interrupted write leaves the old file and, at worst, the temporary, which
    the next run that locks the directory removes."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
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


# ------------------------------------------------------------------- lock
class RunDirectory:
    """A run directory locked by this process (see the module's doc)."""

    def __init__(self, path, lock_fd):
        self.path = Path(path)
        self._lock_fd = lock_fd

    @classmethod
    def open(cls, path, *, resume=False, overwrite=False, option="--out"):
        """Makes and locks the run directory `path` for a run, after checking
        that it can be written, that no other run holds it, and that it holds
        no other run's checkpoint (unless resume or overwrite). With
        overwrite, the files of the run it held are deleted. Raises
        RunDirectoryError (RunLocked when another run holds it)."""
        path = Path(path).expanduser()
        if resume and overwrite:
            raise RunDirectoryError("--resume and --overwrite exclude each other: --resume "
                                    "continues the run in --out, --overwrite deletes it")
        _make_directory(path, option)
        fd = _lock(path, option)
        run = cls(path, fd)
        try:
            run._check_writable(option)
            run._remove_stale_temporaries()
            run._check_start(resume, overwrite, option)
        except BaseException:
            run.release()
            raise
        return run

    def release(self):
        """Releases the lock (which the end of the process does too)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def __truediv__(self, name):
        return self.path / name

    # -------------------------------------------------------------- files
    def write_atomic(self, name, write):
        write_atomic(self.path / name, write)

    def save(self, name, obj):
        """torch.save(obj) into the file `name`, atomically."""
        self.write_atomic(name, lambda f: torch.save(obj, f))

    def has_checkpoint(self):
        return (self.path / CHECKPOINT).exists() or (self.path / DIST_INDEX).exists()

    def results_epoch(self):
        """The last epoch that results.json records, or None (no file, or
        not readable)."""
        try:
            return int(json.loads((self.path / RESULTS).read_text())["epochs_done"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def load(self, name=CHECKPOINT):
        """The object in the file `name` (torch.load, weights only, on the
        CPU); DamagedCheckpoint, one line, when it cannot be read."""
        path = self.path / name
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as error:  # truncated, garbage, or a foreign pickle
            raise DamagedCheckpoint(self.damaged_message(name, error)) from None

    def damaged_message(self, name, error=None):
        """What to say of a damaged file `name`: that it is damaged, how far
        results.json got, and what to do."""
        epoch = self.results_epoch()
        reached = (f"results.json records {epoch} completed epoch{'s' * (epoch != 1)}"
                   if epoch is not None else "results.json records no completed epoch")
        why = _short_reason(error)
        return (f"--resume: {self.path / name} is damaged ({why}) and cannot be resumed; "
                f"{reached}. Start the run again with --overwrite (which deletes it), or "
                f"choose another --out")

    # --------------------------------------------------------------- checks
    def _check_writable(self, option):
        probe = self.path / f".write-check.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:
            with open(probe, "wb") as f:
                f.write(b"0")
            probe.unlink()
        except OSError as error:
            raise RunDirectoryError(
                f"{option} {self.path}: cannot write into it ({_strerror(error)}); choose a "
                f"writable directory") from None

    def _remove_stale_temporaries(self):
        """Temporaries of runs that died while writing: this process holds
        the lock, so no other run is writing one."""
        for stale in self.path.glob(_TEMPORARY):
            try:
                stale.unlink()
            except FileNotFoundError:
                pass

    def _check_start(self, resume, overwrite, option):
        if resume and not self.has_checkpoint():
            raise RunDirectoryError(
                f"--resume: {option} {self.path} holds no checkpoint to continue "
                f"({CHECKPOINT} is missing); start the run without --resume")
        if resume or not self.has_checkpoint():
            return
        if not overwrite:
            epoch = self.results_epoch()
            done = f" ({epoch} completed epoch{'s' * (epoch != 1)})" if epoch else ""
            raise RunDirectoryError(
                f"{option} {self.path} holds another run's checkpoint{done}: continue it "
                f"with --resume, delete it and start again with --overwrite, or choose "
                f"another {option}")
        for name in RUN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for shard in self.path.glob(DIST_SHARDS):
            shard.unlink(missing_ok=True)


def _make_directory(path, option):
    for parent in [path, *path.parents]:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                where = "is a file" if parent == path else f"is under {parent}, a file"
                raise RunDirectoryError(f"{option} {path} {where}, not a directory; choose "
                                        f"a directory")
            break
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirectoryError(f"{option} {path}: cannot create it ({_strerror(error)}); "
                                f"choose a writable directory") from None


def _lock(path, option):
    """An open file descriptor of path/.lock, exclusively locked; the
    holder's pid, host and start time written into it."""
    lock_path = path / LOCK
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as error:
        raise RunDirectoryError(f"{option} {path}: cannot write into it ({_strerror(error)}); "
                                f"choose a writable directory") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        holder = _read_holder(fd)
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise RunLocked(f"{option} {path} is in use by another run ({holder}); wait for "
                            f"it to end, or choose another {option}") from None
        raise RunDirectoryError(f"{option} {path}: cannot lock it ({_strerror(error)}); "
                                f"choose a directory on a local file system") from None
    holder = dict(pid=os.getpid(), host=socket.gethostname(),
                  started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode() + b"\n", 0)
    return fd


def _read_holder(fd):
    """Who holds the lock, as a phrase, from the lock file's contents."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "null")
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that has not said who it is yet"


def _strerror(error):
    return error.strerror or str(error)


def _short_reason(error):
    if error is None:
        return "unreadable"
    text = str(error).strip().splitlines()
    first = text[0] if text else type(error).__name__
    if isinstance(error, (EOFError, OSError)) or "Invalid argument" in first \
            or "central directory" in first or "failed finding" in first:
        return f"truncated or not a checkpoint: {first[:80]}"
    return f"not a readable checkpoint: {first[:80]}"


# --------------------------------------------------------- resume policy
# For every option of a run (TrainConfig's fields and the command line's
# --threads), whether a resumed run may give it a new value:
#   "applied": yes; the new value holds from the first epoch of the resume,
#              and the change is recorded in results.json with that epoch;
#   "fixed":   no; a different value is refused by name (it changes the
#              model, the data, the sampler's batches or what the history
#              means, so the run could not continue exactly);
#   "invocation": says how to start this invocation; not part of the run.
RESUME_POLICY = {
    "data": "fixed",  # compared as given, a directory by its resolved path
    "data_root": "applied",  # where named data sets are kept: the data itself must match
    "ids": "fixed",
    "dim": "fixed",
    "layers": "fixed",
    "batch_size": "fixed",
    "seed": "fixed",
    "topk": "fixed",  # early stopping and the history compare recall@topk[0]
    "lr": "applied",  # set in the optimizer's parameter groups
    "reg": "applied",
    "epochs": "applied",
    "eval_every": "applied",
    "patience": "applied",
    "max_epochs_now": "applied",
    "progress": "applied",
    "threads": "applied",
    "device": "applied",  # the checkpoint is loaded onto the new device
    "dist_timeout": "applied",
    "out": "invocation",
    "resume": "invocation",
    "overwrite": "invocation",
}


def resume_changes(saved, config, epoch):
    """The options that a resume changes: saved and config are {option:
    value} of the run so far and of this invocation, epoch the last
    completed one. Returns [{"option", "from", "to", "epoch"}] for the
    applied ones, epoch being the first epoch they hold for; raises
    ResumeRefused naming every fixed option that differs. An option without
    a policy is a bug (KeyError)."""
    refused, changes = [], []
    for option in config:
        policy = RESUME_POLICY[option]
        if policy == "invocation" or option not in saved:
            continue
        before, now = saved[option], config[option]
        if _same(option, before, now):
            continue
        if policy == "fixed":
            refused.append(f"--{option.replace('_', '-')} {_shown(now)} (the run has "
                           f"{_shown(before)})")
        else:
            changes.append({"option": option, "from": before, "to": now, "epoch": epoch + 1})
    if refused:
        raise ResumeRefused(f"--resume cannot change {'; '.join(refused)}: resume with the "
                            f"run's values, or start a new run in another --out")
    return changes


def _same(option, before, now):
    if isinstance(before, (list, tuple)) and isinstance(now, (list, tuple)):
        return list(before) == list(now)
    if option == "data" and isinstance(before, str) and isinstance(now, str) and before != now:
        a, b = Path(before).expanduser(), Path(now).expanduser()
        return a.is_dir() and b.is_dir() and a.resolve() == b.resolve()
    return before == now


def _shown(value):
    if isinstance(value, (list, tuple)):
        return " ".join(map(str, value))
    return str(value)


def apply_lr(optimizer, lr):
    """Sets the learning rate of every parameter group: what a resumed run
    with a new --lr changes (the optimizer's state stays)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
