"""lightgcn_ext.data.text_format: the LightGCN text format read fast and exactly
(read_lists), directories of it (read_dir, load), and malformed lines named by file
and line."""
import numpy as np
import pytest
import torch

from helpers import GOWALLA_COPY, HAVE_GOWALLA, write_splits
from lightgcn_ext.data import FormatError, load, read_dir, read_lists, synthetic, text_format


# -------------------------------------------------------------------- reader
BLOCK_SIZES = [1, 4, text_format._BLOCK_BYTES]  # the reader's blocks: cut everywhere, or none


def test_read_lists(tmp_path):
    path = write_splits(tmp_path, train="0 0 1 2\n1 2\n\n2 1\n3\n") / "train.txt"
    pairs, num_users = read_lists(path)
    assert pairs.dtype == torch.int64 and pairs.tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 1]]
    assert num_users == 4  # user 3 has a line, and no item


@pytest.mark.parametrize("text", [
    "5 7 8\n6\n7 \n",          # amazon-book's test.txt: a user, a space, no item
    "5 7 8\r\n6\r\n7\r\n",     # Windows line ends
    "5 7 8\n6\n7",             # no newline at the end
    "5 7 8 \n\n6\n\n7\n\n",    # a trailing space, empty lines
    "05 007 8\n6\n7\n",        # leading zeros
])
@pytest.mark.parametrize("block_bytes", BLOCK_SIZES)
def test_read_lists_accepts(tmp_path, text, block_bytes):
    pairs, num_users = read_lists(write_splits(tmp_path, train=text) / "train.txt",
                                  block_bytes=block_bytes)
    assert pairs.tolist() == [[5, 5], [7, 8]] and num_users == 8


@pytest.mark.parametrize("block_bytes", [1, 2, 5, 64, 1000])
def test_read_lists_in_blocks_reads_what_one_block_reads(tmp_path, block_bytes):
    """Blocks cut anywhere (inside ids, inside a \r\n, across empty lines, in
    lines longer than a block) give the pairs and user count of one block."""
    rng = np.random.default_rng(block_bytes)
    lines = [" ".join(map(str, rng.integers(0, 10**rng.integers(1, 9), rng.integers(1, 40))))
             + (" " if rng.random() < 0.1 else "") if rng.random() > 0.1 else ""
             for _ in range(300)]
    text = "\r\n".join(lines)  # no final newline
    path = write_splits(tmp_path, train=text) / "train.txt"
    whole, whole_users = read_lists(path, block_bytes=len(text) + 1)
    pairs, num_users = read_lists(path, block_bytes=block_bytes)
    assert torch.equal(pairs, whole) and num_users == whole_users
    expected = [(int(line.split()[0]), int(item)) for line in lines if line
                for item in line.split()[1:]]
    assert whole.t().tolist() == [list(pair) for pair in expected]


def test_read_lists_of_an_empty_file(tmp_path):
    for text in ["", "\n\n"]:
        pairs, num_users = read_lists(write_splits(tmp_path, train=text) / "train.txt")
        assert pairs.shape == (2, 0) and pairs.dtype == torch.int64 and num_users == 0


@pytest.mark.parametrize("text, line, match", [
    ("0 1\n1 x\n", 2, "not an integer id: 'x'"),
    ("0 1\n1 2 1.5\n", 2, "not an integer id: '1.5'"),
    ("0 1\n1 -2\n", 2, "negative id '-2'"),
    ("0 1\n2 3\n-1 2\n", 3, "negative id '-1'"),
    ("0\t1\n", 1, r"wrong separator \(a tab\)"),
    ("0 1\n1  2\n", 2, r"wrong separator \(two spaces\)"),
    ("0 1\n 1 2\n", 2, r"wrong separator \(a leading space\)"),
    ("0,1\n", 1, r"wrong separator \(','\)"),
    ("0 1\r2\n", 1, "carriage return"),
    ("0 1\n\n\n3 99999999999\n", 4, "id too large"),
    ("0 1\n3 2147483648\n", 2, "id too large"),
    ("0 1\n1 2\n2 3 4 5 6 7 8 9 a\n", 3, "not an integer id: 'a'"),
    ("0 1\n1 \xe9\n", 2, "not an integer id"),
])
@pytest.mark.parametrize("block_bytes", BLOCK_SIZES)
def test_read_lists_names_file_and_line_of_a_malformed_line(tmp_path, text, line, match,
                                                            block_bytes):
    path = write_splits(tmp_path, train=text) / "train.txt"
    with pytest.raises(FormatError, match=match) as error:
        read_lists(path, block_bytes=block_bytes)
    assert error.value.line == line and error.value.path == path
    assert str(error.value).startswith(f"{path}:{line}: ")
    assert isinstance(error.value, ValueError)


@pytest.mark.skipif(not HAVE_GOWALLA, reason="the repository's Gowalla copy is not here")
def test_real_gowalla():
    data = read_dir(GOWALLA_COPY)
    assert data.name == "gowalla"
    assert (data.num_users, data.num_items) == (29858, 40981)
    assert (data.train.shape[1], data.test.shape[1]) == (810128, 217242) and data.valid is None
    assert data.num_nodes == 70839 and data.edge_index().shape == (2, 1620256)
    # The same pairs as a plain Python reading of the files.
    for split in ("train", "test"):
        users, items = [], []
        for line in (GOWALLA_COPY / f"{split}.txt").read_text().splitlines():
            ids = [int(token) for token in line.split()]
            users += ids[:1] * (len(ids) - 1)
            items += ids[1:]
        assert getattr(data, split).tolist() == [users, items]


# ------------------------------------------------------------ read_dir, load
def test_load_directory(tmp_path):
    root = write_splits(tmp_path / "mine", train="0 0 1 2\n1 2\n2 1\n", test="0 3\n1 0\n3 1\n")
    data = load(root)
    assert data.name == "mine" and (data.num_users, data.num_items) == (4, 4)
    assert data.train.tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 1]]
    assert data.test.tolist() == [[0, 1, 3], [3, 0, 1]] and data.valid is None
    assert load(str(root)).train.tolist() == data.train.tolist()
    write_splits(root, valid="2 3\n4\n")
    data = load(root)
    assert data.valid.tolist() == [[2], [3]] and data.num_users == 4
    # Ids as given: user 4's empty line counts.
    assert load(root, ids="given").num_users == 5


def test_user_in_test_but_not_in_train_is_kept(tmp_path):
    """As in the LightGCN authors' code: a node without edges, evaluated on its test items."""
    data = load(write_splits(tmp_path, train="0 0 1\n1 1\n", test="0 2\n2 0 3\n"))
    assert (data.num_users, data.num_items) == (3, 4)
    assert data.test.tolist() == [[0, 2, 2], [2, 0, 3]]
    assert 2 not in data.train[0].tolist() and 2 not in data.edge_index()[0].tolist()


def test_load_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks test.txt"):
        load(write_splits(tmp_path / "a", train="0 1\n"))
    with pytest.raises(ValueError, match="train.txt holds no .user, item. pair: nothing to train"):
        load(write_splits(tmp_path / "b", train="0\n1 \n", test="0 1\n"))
    with pytest.raises(ValueError, match="test.txt holds no .user, item. pair: nothing to eval"):
        load(write_splits(tmp_path / "c", train="0 1\n", test=""))
    with pytest.raises(FormatError, match=r"valid.txt:2: negative"):
        load(write_splits(tmp_path / "d", train="0 1\n", test="0 2\n", valid="0 3\n1 -3\n"))
    with pytest.raises(FileNotFoundError, match="neither a named data set"):
        load(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="root"):
        load(write_splits(tmp_path / "e", train="0 1\n", test="0 2\n"), root=tmp_path)


def test_load_synthetic_by_name():
    assert torch.equal(load("synthetic").train, synthetic().train)
