"""What a resumed run may change: for every option of a run, whether a
resume may give it a new value (`RESUME_POLICY`), the changes a resume makes
(`resume_changes`, recorded in results.json with the epoch they took effect)
and the one change that needs more than the new value (`apply_lr`)."""
from dataclasses import fields
from pathlib import Path

from .config import TrainConfig


class ResumeRefused(ValueError):
    """A resumed run asks to change what a resume cannot change."""


# For every option of a run (TrainConfig's fields and the command line's
# --threads), whether a resumed run may give it a new value:
#   "applied": yes; the new value holds from the first epoch of the resume,
#              and the change is recorded in results.json with that epoch;
#   "fixed":   no; a different value is refused by name (it changes the
#              model, the data, the sampler's batches or what the history
#              means, so the run could not continue exactly);
#   "invocation": says how to start this invocation; not part of the run.
RESUME_POLICY = {
    "data": "fixed",  # compared as given, a directory or a file by its resolved path
    "data_root": "applied",  # where named data sets are kept: the data itself must match
    "ids": "fixed",
    "dim": "fixed",
    "layers": "fixed",
    "batch_size": "fixed",
    "sampling": "fixed",
    "precision": "fixed",  # the steps' rounding: a run continues as it began
    "seed": "fixed",
    "topk": "fixed",  # early stopping and the history compare recall@topk[0]
    "lr": "applied",  # set in the optimizer's parameter groups
    "reg": "applied",
    "epochs": "applied",
    "eval_every": "applied",
    "patience": "applied",
    "max_epochs_now": "applied",
    "checkpoint_every": "applied",
    "progress": "applied",
    "threads": "applied",
    "device": "applied",  # the checkpoint is loaded onto the new device
    "dist_timeout": "applied",
    "tensorboard": "applied",  # the curves written from the first epoch of the resume on
    # Reading an interaction log: they make the data.
    "user": "fixed",
    "item": "fixed",
    "rating": "fixed",
    "time": "fixed",
    "sep": "fixed",
    "min_rating": "fixed",
    "min_user_interactions": "fixed",
    "min_item_interactions": "fixed",
    "split": "fixed",
    "ratios": "fixed",
    "out": "invocation",
    "resume": "invocation",
    "overwrite": "invocation",
}


_DEFAULTS = {field.name: field.default for field in fields(TrainConfig)}


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
        if policy == "invocation" or (option not in saved and option not in _DEFAULTS):
            continue
        # A checkpoint from before an option existed ran with its default.
        before, now = saved.get(option, _DEFAULTS.get(option)), config[option]
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
        return a.exists() and b.exists() and a.resolve() == b.resolve()
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


def run_options(config):
    """The options of a TrainConfig that make up the run (all but the
    invocation's), as JSON values: what a checkpoint keeps to compare a
    resume with."""
    return {name: list(value) if isinstance(value, tuple) else value
            for name, value in vars(config).items() if RESUME_POLICY[name] != "invocation"}
