"""lightgcn_ext.data.ids: raw ids renumbered densely, the map back, and
read_dir's ids="dense" (the default) and ids="given"."""
import resource
import subprocess
import sys

import pytest
import torch

from helpers import REPO
from lightgcn_ext import data as datasets
from lightgcn_ext.data.ids import IdMap, densify


def write(directory, **files):
    directory.mkdir(parents=True, exist_ok=True)
    for split, text in files.items():
        (directory / f"{split}.txt").write_text(text)
    return directory


def test_densify_renumbers_in_ascending_raw_order():
    train = torch.tensor([[2_000_005, 2_000_001, 2_000_005], [90, 7, 7]])
    test = torch.tensor([[2_000_001, 2_000_009], [500, 90]])
    dense, ids = densify({"train": train, "test": test, "valid": None})
    assert dense["valid"] is None
    assert ids.users.tolist() == [2_000_001, 2_000_005, 2_000_009]
    assert ids.items.tolist() == [7, 90, 500]
    assert dense["train"].tolist() == [[1, 0, 1], [1, 0, 0]]
    assert dense["test"].tolist() == [[0, 2], [2, 1]]
    # The map leads back to the raw ids, and the raw ids to the dense ones.
    for split, raw in (("train", train), ("test", test)):
        assert torch.equal(ids.raw_users(dense[split][0]), raw[0])
        assert torch.equal(ids.raw_items(dense[split][1]), raw[1])
        assert torch.equal(ids.dense_users(raw[0]), dense[split][0])
    assert ids.unused == (2_000_010 - 3, 501 - 3)
    assert not ids.is_identity
    assert ids.describe() == ("ids: 3 users (raw ids up to 2,000,009, 2,000,007 unused) and "
                              "3 items (raw ids up to 500, 498 unused), renumbered 0..n-1")
    with pytest.raises(ValueError, match="user id 2000002 does not occur in the data"):
        ids.dense_users([2_000_001, 2_000_002])


def test_dense_ids_stay_as_they_are():
    train = torch.tensor([[0, 1, 2, 2], [3, 0, 1, 2]])
    dense, ids = densify({"train": train})
    assert torch.equal(dense["train"], train) and ids.is_identity
    assert ids.unused[0] == 0 and ids.describe().endswith("kept as they are")


def test_state_dict_round_trip():
    _, ids = densify({"train": torch.tensor([[5, 9], [1, 4]])})
    again = IdMap.from_state_dict(ids.state_dict())
    assert again == ids and again.users.tolist() == [5, 9]


def test_read_dir_remaps_offset_ids_by_default(tmp_path):
    root = write(tmp_path / "offset", train="2000000 2000003 2000004\n2000001 2000004\n",
                 test="2000000 2000005\n2000001 2000003\n")
    data = datasets.read_dir(root)
    assert (data.num_users, data.num_items) == (2, 3)
    assert data.train.tolist() == [[0, 0, 1], [0, 1, 1]]
    assert data.test.tolist() == [[0, 1], [2, 0]]
    assert data.id_map.users.tolist() == [2000000, 2000001]
    assert data.id_map.unused == (2000000, 2000003)
    given = datasets.read_dir(root, ids="given")
    assert given.id_map is None and (given.num_users, given.num_items) == (2000002, 2000006)
    assert torch.equal(datasets.load(root).train, data.train)
    assert datasets.load(root, ids="given").num_users == 2000002
    with pytest.raises(ValueError, match="ids must be one of"):
        datasets.read_dir(root, ids="raw")


def test_an_empty_user_line_is_an_unused_id(tmp_path):
    root = write(tmp_path / "d", train="0 0\n1 1\n", test="0 1\n", valid="1 0\n4\n")
    assert datasets.read_dir(root).num_users == 2
    assert datasets.read_dir(root, ids="given").num_users == 5


def test_an_id_of_2e9_allocates_nothing_of_its_size(tmp_path):
    """Reading and remapping an id of 2e9 takes memory of the pairs' size: in
    a process that may map at most 2 GiB of data (a table of 2e9 rows would
    need 8 GiB for its int32 ids alone)."""
    root = write(tmp_path / "huge", train="0 1\n2000000000 2000000000\n",
                 test="2000000000 1\n")
    script = ("from lightgcn_ext import data as datasets; "
              f"d = datasets.read_dir({str(root)!r}); "
              "print(d.num_users, d.num_items, d.id_map.unused[0], d.train.tolist())")
    limit = 2 << 30

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit * 4, limit * 4))  # torch maps a lot
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, preexec_fn=cap, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split(" ", 3)[:3] == ["2", "2", "1999999999"]
    assert result.stdout.strip().endswith("[[0, 1], [0, 1]]")
