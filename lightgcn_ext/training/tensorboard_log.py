"""A run's curves for TensorBoard (`--tensorboard`), in `<out>/tensorboard/`.

The main process writes them once per epoch, from the epoch's record, when
the epoch's checkpoint is written: no training step pays for them, and a
resumed run continues them from its first epoch without repeating one.
Scalars, against the epoch:

* `loss`: the epoch's mean BPR loss;
* `time/step_ms`: the epoch's mean step time; `time/epoch_seconds`, and
  `time/eval_seconds` for an evaluated epoch;
* `test/<metric>` and, with a validation split, `valid/<metric>`: every
  metric of every evaluation (`recall@20`, `ndcg@20`, `precision@20`, ...).

The tensorboard package is an optional dependency (`pip install tensorboard`);
`config.check_tensorboard` refuses `--tensorboard` without it before the run starts.
"""
from pathlib import Path

DIRECTORY = "tensorboard"
_EVENTS = "events.out.tfevents.*"


class TensorBoardLog:
    """Writes each epoch's record as TensorBoard scalars into out/tensorboard.
    A run that starts afresh (fresh=True) first removes the event files that
    an earlier run of the directory left, whose curves would mix with its own."""

    def __init__(self, out, fresh):
        from torch.utils.tensorboard import SummaryWriter

        directory = Path(out) / DIRECTORY
        if fresh:
            for events in directory.glob(_EVENTS):
                events.unlink()
        self._writer = SummaryWriter(log_dir=str(directory))

    def write(self, record, steps):
        """The scalars of an epoch's record (train_loop's), whose training
        took `steps` steps; flushed, so that a running TensorBoard shows them."""
        epoch, add = record["epoch"], self._writer.add_scalar
        add("loss", record["loss"], epoch)
        add("time/step_ms", 1000 * record["epoch_seconds"] / steps, epoch)
        add("time/epoch_seconds", record["epoch_seconds"], epoch)
        if "eval_seconds" in record:
            add("time/eval_seconds", record["eval_seconds"], epoch)
        # The test metrics are the record's own "name@k" entries; the valid ones its "valid".
        for split, scores in (("test", record), ("valid", record.get("valid", {}))):
            for metric, value in scores.items():
                if "@" in metric:
                    add(f"{split}/{metric}", value, epoch)
        self._writer.flush()

    def close(self):
        self._writer.close()
