"""Prints the command to try after `make demo`: the top 10 items for one
user of the demo run, named by its raw id as the run's data.pt keeps it,
in the `python -m lightgcn_ext` form, which needs no `make install`.

    python tools/demo_next.py RUN_DIR [PYTHON]
"""
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository's lightgcn_ext

import torch  # noqa: E402

from lightgcn_ext.data import Interactions  # noqa: E402
from lightgcn_ext.training.run_files import DATA  # noqa: E402


def next_command(run, python="python"):
    data = Interactions.from_state_dict(torch.load(Path(run) / DATA, weights_only=True))
    user = int(data.test[0].min())  # a user the run was evaluated on
    if data.id_map is not None:
        user = data.id_map.raw_users([user])[0]
    user = user.item() if isinstance(user, torch.Tensor) else user
    return shlex.join([python, "-m", "lightgcn_ext", "recommend", "--run", str(run),
                       "--users", str(user), "--k", "10"])


if __name__ == "__main__":
    print(f"next, the top 10 items for a user of the demo data:\n  {next_command(*sys.argv[1:])}")
