"""No sequence of starts, resumes, kills (SIGKILL, SIGINT) and concurrent
starts loses a completed epoch: a hypothesis state machine drives
`python -m lightgcn_ext train` processes on one run directory and a tiny data
set, and after every step checks that the last completed epoch's checkpoint
and results are there, whole and consistent.

Starts and resumes that run to their end run `lightgcn_ext.cli.main` in this
process (a second of work each); what needs a process of its own (a run to
kill, a run that holds the lock) runs `python -m lightgcn_ext`. The quick
variant (a few sequences of a few steps, about a minute) runs with the
suite; the slow one explores more."""
import contextlib
import io
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from helpers import REPO, toy_interactions
from lightgcn_ext import cli
from lightgcn_ext.training import run_files

TINY = ["--dim", "8", "--batch-size", "512", "--no-progress", "--patience", "0"]
LONG = 10_000  # epochs of a run that is stopped by a signal, never by its end


def write_data(path):
    data = toy_interactions(num_pairs=3000)
    path.mkdir(parents=True)
    for split in ("train", "test"):
        lines = {}
        for user, item in getattr(data, split).t().tolist():
            lines.setdefault(user, []).append(item)
        (path / f"{split}.txt").write_text(
            "".join(f"{u} {' '.join(map(str, i))}\n" for u, i in sorted(lines.items())))


class RunDirectoryMachine(RuleBasedStateMachine):
    """The model: the epochs completed in the run directory (None: no run
    there). Every step observes the directory and checks it against that."""

    @initialize()
    def setup(self):
        self.root = Path(tempfile.mkdtemp(prefix="lightgcn-machine-"))
        write_data(self.root / "data")
        self.out = self.root / "run"
        self.completed = None

    def teardown(self):
        shutil.rmtree(self.root, ignore_errors=True)

    # ---------------------------------------------------------- processes
    def argv(self, *options):
        return ["train", "--data", str(self.root / "data"), "--out", str(self.out), *TINY,
                *options]

    def run(self, *options):
        """(exit code, stderr) of a run in this process, to its end."""
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                code = cli.main(self.argv(*options))
            except SystemExit as exit:  # sys.exit(message): a user mistake
                code, message = 1, exit.code
                print(message, file=err)
        return code, err.getvalue()

    def background(self):
        """A process that continues (or starts) the run directory's run, for LONG epochs."""
        resume = ["--resume"] if self.completed else []
        argv = self.argv("--epochs", str(LONG), "--threads", "1", *resume)
        return subprocess.Popen([sys.executable, "-m", "lightgcn_ext", *argv], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait_for_epochs(self, process, more):
        """Waits until the process holds the run directory's lock and
        results.json records `more` epochs beyond the known ones (or the
        process ends). Before it holds the lock, a signal ends Python
        while it imports torch, before any of this package's code runs."""
        target = (self.completed or 0) + more
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if self.holder() == process.pid and (self.epochs_in_results() or 0) >= target:
                return
            time.sleep(0.02)

    def holder(self):
        try:
            return json.loads((self.out / ".lock").read_text())["pid"]
        except (OSError, ValueError, KeyError):
            return None

    def epochs_in_results(self):
        try:
            return json.loads((self.out / run_files.RESULTS).read_text())["epochs_done"]
        except (OSError, ValueError):
            return None

    def observe(self):
        """The completed epochs the directory holds now, after checking that
        nothing completed before was lost."""
        if not (self.out / run_files.CHECKPOINT).exists():
            assert not self.completed, f"the checkpoint of epoch {self.completed} is gone"
            return self.completed
        checkpoint = torch.load(self.out / run_files.CHECKPOINT, weights_only=True)
        epoch = checkpoint["state"]["epoch"]
        assert epoch >= (self.completed or 0), (epoch, self.completed)
        done = self.epochs_in_results()
        # A SIGKILL between the checkpoint and results.json leaves the results
        # one epoch behind, never more; the next run rewrites them.
        assert done in (epoch, epoch - 1), (done, epoch)
        return epoch

    # ---------------------------------------------------------------- rules
    @rule(epochs=st.integers(1, 2), overwrite=st.booleans())
    def start(self, epochs, overwrite):
        code, err = self.run("--epochs", str(epochs), *(["--overwrite"] if overwrite else []))
        if self.completed and not overwrite:
            assert code == 1 and "holds another run's checkpoint" in err, err
        else:
            assert code == 0, err
            self.completed = None  # a new run: what was there is deliberately gone
            assert self.observe() == epochs
        self.completed = self.observe()

    @rule(more=st.integers(1, 2))
    def resume(self, more):
        target = (self.completed or 0) + more
        code, err = self.run("--epochs", str(target), "--resume")
        if not self.completed:
            assert code == 1 and "holds no checkpoint" in err, err
        else:
            assert code == 0, err
            assert self.observe() == target
        self.completed = self.observe()

    @rule(how=st.sampled_from([signal.SIGKILL, signal.SIGINT]), epochs=st.integers(0, 2))
    def kill(self, how, epochs):
        fresh = not self.completed
        process = self.background()
        self.wait_for_epochs(process, epochs)
        process.send_signal(how)
        _, err = process.communicate(timeout=120)
        assert "Traceback" not in err, err
        assert process.returncode == (-signal.SIGKILL if how == signal.SIGKILL else 130), err
        if fresh:
            self.completed = None  # a new run started (over nothing, or --overwrite)
        self.completed = self.observe()

    @rule()
    def concurrent_start(self):
        process = self.background()
        fresh = not self.completed
        try:
            self.wait_for_epochs(process, 1)
            code, err = self.run("--epochs", "1", "--resume")
            assert code == 1 and f"is in use by another run (pid {process.pid} on " in err, err
        finally:
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=120)
        if fresh:
            self.completed = None
        self.completed = self.observe()

    @invariant()
    def no_completed_epoch_is_lost(self):
        if hasattr(self, "out"):
            self.observe()


@pytest.mark.filterwarnings("ignore::hypothesis.errors.NonInteractiveExampleWarning")
def test_no_sequence_of_starts_kills_and_resumes_loses_an_epoch():
    RunDirectoryMachine.TestCase.settings = settings(
        max_examples=4, stateful_step_count=5, deadline=None, derandomize=True,
        suppress_health_check=list(HealthCheck), database=None)
    RunDirectoryMachine.TestCase().runTest()


@pytest.mark.slow
def test_longer_sequences_lose_no_epoch_either():
    RunDirectoryMachine.TestCase.settings = settings(
        max_examples=10, stateful_step_count=8, deadline=None,
        suppress_health_check=list(HealthCheck), database=None)
    RunDirectoryMachine.TestCase().runTest()
