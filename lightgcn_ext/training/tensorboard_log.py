"""A run's curves for TensorBoard (`--tensorboard`), in `<out>/tensorboard/`.

The main process writes them once per epoch, from the epoch's record: no
training step pays for them, and a resumed run continues them from the
epoch after its checkpoint, replacing what a killed run wrote after it.
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


def remove_curves(out):
    """Removes the event files that an earlier run left in out/tensorboard:
    a run that starts afresh in out (--overwrite, or after a run killed in
    its first epoch) would mix its curves with theirs."""
    for events in (Path(out) / DIRECTORY).glob(_EVENTS):
        events.unlink()


class TensorBoardLog:
    """Writes each epoch's record as TensorBoard scalars into out/tensorboard."""

    def __init__(self, out, first_epoch=1):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: a resumed run trains again the epochs after its
        # checkpoint, which an earlier invocation may have written already;
        # TensorBoard drops those, so that each epoch shows once.
        self._writer = SummaryWriter(log_dir=str(Path(out) / DIRECTORY),
                                     purge_step=first_epoch)

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
