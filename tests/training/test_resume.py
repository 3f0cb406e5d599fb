"""lightgcn_ext.training.resume: what a resumed run may change, on its own."""
import dataclasses

import pytest
import torch

from lightgcn_ext.training import TrainConfig, resume
from lightgcn_ext.training.resume import ResumeRefused


def one_line(error):
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_every_option_has_a_resume_policy():
    options = {field.name for field in dataclasses.fields(TrainConfig)}
    missing = options - set(resume.RESUME_POLICY)
    assert not missing, f"options without a resume policy: {sorted(missing)}"
    assert set(resume.RESUME_POLICY.values()) == {"applied", "fixed", "invocation"}
    for option in ("lr", "reg", "epochs", "eval_every", "patience", "max_epochs_now",
                   "progress", "threads"):
        assert resume.RESUME_POLICY[option] == "applied"
    for option in ("dim", "layers", "batch_size", "seed", "data"):
        assert resume.RESUME_POLICY[option] == "fixed"


SAVED = dict(data="synthetic", dim=64, layers=3, batch_size=2048, seed=0, lr=1e-3, reg=1e-4,
             epochs=20, topk=[20], out="runs/a", resume=False)


def test_applied_changes_are_recorded_with_their_first_epoch():
    now = dict(SAVED, lr=1e-2, epochs=40, topk=(20,), out="runs/b", resume=True)
    assert resume.resume_changes(SAVED, now, epoch=5) == [
        {"option": "lr", "from": 1e-3, "to": 1e-2, "epoch": 6},
        {"option": "epochs", "from": 20, "to": 40, "epoch": 6}]
    assert resume.resume_changes(SAVED, dict(SAVED), epoch=5) == []


def test_fixed_changes_are_refused_by_name():
    with pytest.raises(ResumeRefused) as error:
        resume.resume_changes(SAVED, dict(SAVED, dim=32, seed=1, lr=0.1), epoch=5)
    assert one_line(error) == ("--resume cannot change --dim 32 (the run has 64); --seed 1 "
                               "(the run has 0): resume with the run's values, or start a new "
                               "run in another --out")
    with pytest.raises(KeyError):
        resume.resume_changes(SAVED, dict(SAVED, new_option=1), epoch=0)


def test_the_same_data_directory_by_another_path_is_no_change(tmp_path, monkeypatch):
    (tmp_path / "mine").mkdir()
    monkeypatch.chdir(tmp_path)
    saved = dict(SAVED, data=str(tmp_path / "mine"))
    assert resume.resume_changes(saved, dict(saved, data="./mine"), epoch=1) == []
    with pytest.raises(ResumeRefused, match="--data other"):
        resume.resume_changes(saved, dict(saved, data="other"), epoch=1)


def test_apply_lr_reaches_adams_step():
    """A resumed optimizer loads the run's lr with its state: apply_lr then
    sets the new one, and the next step uses it."""
    weight = torch.nn.Parameter(torch.zeros(3))
    saved = torch.optim.Adam([weight], lr=1e-3).state_dict()
    optimizer = torch.optim.Adam([weight], lr=0.5)
    optimizer.load_state_dict(saved)
    assert optimizer.param_groups[0]["lr"] == 1e-3  # what --resume did with a new --lr
    resume.apply_lr(optimizer, 0.5)
    weight.grad = torch.ones(3)
    optimizer.step()
    # Adam's first step moves each weight by lr (the normalized gradient is 1).
    assert torch.allclose(weight.detach(), torch.full((3,), -0.5), atol=1e-6)


def test_run_options_leave_out_the_invocation():
    options = resume.run_options(TrainConfig(topk=(10, 20), resume=True))
    assert options["topk"] == [10, 20] and "resume" not in options and "out" not in options


def test_an_option_newer_than_the_checkpoint_counts_as_its_default():
    # A checkpoint written before --sampling and --precision existed ran with
    # their defaults: a resume may give those, and is refused anything else.
    assert resume.resume_changes(SAVED, dict(SAVED, sampling="interactions",
                                             precision="float32"), epoch=5) == []
    with pytest.raises(ResumeRefused) as error:
        resume.resume_changes(SAVED, dict(SAVED, sampling="users"), epoch=5)
    assert "--sampling users (the run has interactions)" in one_line(error)
