"""lightgcn_ext.training.run_directory on its own: the lock, the checks before a run
starts, atomic writes and their temporaries, and damaged checkpoints. Fakes stand in for a run: a checkpoint is any torch.save'd
dict, a holder any process that opens the directory."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import REPO
from lightgcn_ext.training import run_files
from lightgcn_ext.training import run_directory as rd
from lightgcn_ext.training.run_files import DamagedCheckpoint
from lightgcn_ext.training.run_directory import RunDirectory, RunDirectoryError, RunLocked


def fake_run(path, epochs=3):
    """A directory that holds a run: a checkpoint and results at `epochs`."""
    path.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": epochs}, path / rd.CHECKPOINT)
    torch.save({"weights": torch.ones(2)}, path / rd.BEST)
    (path / rd.RESULTS).write_text(json.dumps({"epochs_done": epochs}))
    (path / rd.CURVE).write_bytes(b"png")
    return path


def one_line(error):
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# -------------------------------------------------------------------- lock
def test_a_second_open_fails_at_once_naming_the_directory_and_holder(tmp_path):
    out = tmp_path / "run"
    with RunDirectory.open(out) as run:
        assert run.path == out and (out / rd.LOCK).is_file()
        holder = json.loads((out / rd.LOCK).read_text())
        assert holder["pid"] == os.getpid() and holder["host"]
        started = time.perf_counter()
        with pytest.raises(RunLocked) as error:
            RunDirectory.open(out, resume=True)
        assert time.perf_counter() - started < 1.0
        message = one_line(error)
        assert message.startswith(f"--out {out} is in use by another run (pid {os.getpid()} on ")
        assert "started 20" in message and "choose another --out" in message
    with RunDirectory.open(out):  # released at the end of the with block
        pass


HOLDER = """
import sys, time
from lightgcn_ext.training.run_directory import RunDirectory
run = RunDirectory.open(sys.argv[1])
print("locked", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_the_lock_goes_with_its_process_however_it_ends(tmp_path, how):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=f"pid {holder.pid} on "):
            RunDirectory.open(out)
    finally:
        holder.send_signal(how)
        holder.wait(timeout=30)
    with RunDirectory.open(out):
        pass


# ------------------------------------------------------- before the start
def test_out_that_is_a_file_or_under_one(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(RunDirectoryError) as error:
        RunDirectory.open(afile)
    assert one_line(error) == f"--out {afile} is a file, not a directory; choose a directory"
    with pytest.raises(RunDirectoryError) as error:
        RunDirectory.open(afile / "run")
    assert one_line(error) == (f"--out {afile / 'run'} is under {afile}, a file, not a "
                               f"directory; choose a directory")


def test_out_that_cannot_be_created_or_written():
    with pytest.raises(RunDirectoryError) as error:
        RunDirectory.open("/sys/x")
    assert one_line(error).startswith("--out /sys/x: cannot create it (")
    # An existing directory that cannot be written, even by root.
    with pytest.raises(RunDirectoryError) as error:
        RunDirectory.open("/sys/kernel")
    assert one_line(error) == ("--out /sys/kernel: cannot write into it (Permission denied); "
                               "choose a writable directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_read_only_out(tmp_path):
    out = fake_run(tmp_path / "run")
    out.chmod(0o555)
    try:
        with pytest.raises(RunDirectoryError, match="cannot write into it"):
            RunDirectory.open(out, resume=True)
    finally:
        out.chmod(0o755)


def test_a_run_is_never_started_over_another_ones_checkpoint(tmp_path):
    out = fake_run(tmp_path / "run", epochs=5)
    with pytest.raises(RunDirectoryError) as error:
        RunDirectory.open(out)
    assert one_line(error) == (
        f"--out {out} holds another run's checkpoint (5 completed epochs): continue it with "
        f"--resume, delete it and start again with --overwrite, or choose another --out")
    assert torch.load(out / rd.CHECKPOINT) == {"epoch": 5}  # untouched
    with RunDirectory.open(out, resume=True):
        assert (out / rd.CHECKPOINT).exists()
    with RunDirectory.open(out, overwrite=True):
        left = sorted(p.name for p in out.iterdir())
    assert left == [rd.LOCK]
    with RunDirectory.open(out):  # nothing left to protect
        pass


def test_a_distributed_checkpoint_is_protected_too(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / rd.DIST_INDEX).write_text("{}")
    (out / "checkpoint.epoch2.rank0-of-2.pt").write_bytes(b"x")
    with pytest.raises(RunDirectoryError, match="holds another run's checkpoint"):
        RunDirectory.open(out)
    with RunDirectory.open(out, overwrite=True):
        assert [p.name for p in out.iterdir()] == [rd.LOCK]


def test_resume_needs_a_checkpoint_and_excludes_overwrite(tmp_path):
    with pytest.raises(RunDirectoryError) as error:
        RunDirectory.open(tmp_path / "new", resume=True)
    assert one_line(error) == (f"--resume: --out {tmp_path / 'new'} holds no checkpoint to "
                               f"continue (checkpoint.pt is missing); start the run without "
                               f"--resume")
    with pytest.raises(RunDirectoryError, match="--resume and --overwrite exclude each other"):
        RunDirectory.open(tmp_path / "new", resume=True, overwrite=True)
    # A refused start leaves the directory unlocked.
    with RunDirectory.open(tmp_path / "new"):
        pass


# ------------------------------------------------------------- temporaries
def test_temporaries_of_two_writers_never_collide(tmp_path, monkeypatch):
    names = []
    original = open

    def recording_open(path, *args, **kwargs):
        names.append(os.path.basename(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", recording_open)
    for _ in range(2):  # the same process twice: the random token differs
        run_files.atomic_write(tmp_path / "curve.png", lambda f: f.write(b"x"))
    monkeypatch.undo()
    assert len(set(names)) == 2 and all(n.startswith(f".curve.png.{os.getpid()}.")
                                        for n in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curve.png"]


def test_an_interrupted_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "results.json"
    run_files.atomic_write(path, lambda f: f.write(b"old"))

    def failing(f):
        f.write(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_files.atomic_write(path, failing)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [path.name]


def test_only_the_lock_holder_removes_stale_temporaries(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    stale = out / ".checkpoint.pt.12345.abcd.tmp"
    stale.write_bytes(b"partial")
    with RunDirectory.open(out):
        assert not stale.exists()  # a dead run's: removed by the new holder
        stale.write_bytes(b"in flight")  # the holder's own, being written
        with pytest.raises(RunLocked):
            RunDirectory.open(out)
        assert stale.exists()  # a refused run touches nothing


# ------------------------------------------------------- damaged checkpoint
@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_checkpoint_is_reported_in_one_line(tmp_path, damage):
    out = fake_run(tmp_path / "run", epochs=3)
    path = out / rd.CHECKPOINT
    whole = path.read_bytes()
    path.write_bytes({"truncated": whole[:len(whole) // 2], "garbage": b"\x80\x02garbage" * 50,
                      "empty": b""}[damage])
    with RunDirectory.open(out, resume=True):
        with pytest.raises(DamagedCheckpoint) as error:
            run_files.load_file(path)
        assert run_files.load_file(out / rd.BEST)["weights"].tolist() == [1.0, 1.0]
    message = one_line(error)
    assert message.startswith(f"--resume: {path} is damaged (truncated or not a checkpoint: ")
    assert "results.json records 3 completed epochs" in message
    assert message.endswith("Start the run again with --overwrite (which deletes it), or "
                            "choose another --out")
