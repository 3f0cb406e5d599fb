"""The run directory of a training run: who may write it, and what a run may
do with what it holds (what a resumed run may change: `resume`).

    with RunDirectory.open("runs/x", resume=False, overwrite=False):
        ...                                  # load the data, train: the run

`RunDirectory.open` makes the directory, checks that it can be written,
and locks it for the life of the run (fcntl.flock on its `.lock` file: the
kernel releases the lock when the process ends, however it ends, SIGKILL
included), so that a second run into the same directory fails at once and
names the run that holds it. It refuses to start over a directory that holds
another run's checkpoint unless the user says --resume (continue it) or
--overwrite (delete it first). All of this happens before any data is read,
so a mistake costs seconds, not an epoch.

Every file is written all or nothing (`run_files.atomic_write`): into a
temporary file beside it whose name no other process uses, then renamed over
it. Only the lock holder removes temporaries that a killed run left behind.

The files: checkpoint.pt (the last completed epoch: what --resume continues
from), best.pt (the weights of the best evaluated epoch, what a recommendation
uses), results.json and curve.png (the history), data.pt (the splits and the
map from dense to raw ids), progress.json (the last completed epoch), the shards and index of a checkpoint written by several
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

from .run_files import (BEST, CHECKPOINT, CURVE, DATA, DIST_INDEX, PROGRESS, RESULTS,
                        results_epoch)

# The shards of a checkpoint written by several processes.
DIST_SHARDS = "checkpoint.epoch*.rank*-of-*.pt"
LOCK = ".lock"
# The files of a run, which --overwrite deletes (the lock file stays: it is
# the lock).
RUN_FILES = (CHECKPOINT, BEST, RESULTS, CURVE, DATA, DIST_INDEX, PROGRESS)
_TEMPORARY = ".*.tmp"


class RunDirectoryError(ValueError):
    """A mistake about the run directory that the user can fix; one line."""


class RunLocked(RunDirectoryError):
    """Another run holds the directory."""


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

    # -------------------------------------------------------------- files
    def has_checkpoint(self):
        return (self.path / CHECKPOINT).exists() or (self.path / DIST_INDEX).exists()

    def results_epoch(self):
        """The number of completed epochs results.json records, or None."""
        return results_epoch(self.path)

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
