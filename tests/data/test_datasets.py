"""lightgcn_ext.data: the LightGCN text format, load() of a directory and of a
named data set (downloaded from a local HTTP server, never from the network), the
synthetic generator, torch_geometric's data sets, and bad input."""
import hashlib
import http.server
import shutil
import subprocess
import threading

import numpy as np
import pytest
import torch

import lightgcn_ext
from helpers import REPO
from bench.reference import GOWALLA_SIZES
from lightgcn_ext.data import (DATA_ENV, NAMED, ChecksumError, DownloadError, FormatError,
                               Interactions, bipartite_edge_index, data_dir, find, from_pyg, load,
                               read_dir, read_lists, synthetic)
from lightgcn_ext.data import download, text_format

GOWALLA = REPO.parent / "shared" / "data" / "gowalla"  # the repository's copy, beside it
HAVE_GOWALLA = all((GOWALLA / file).is_file() for file in ("train.txt", "test.txt"))


def write(directory, **files):
    directory.mkdir(parents=True, exist_ok=True)
    for split, text in files.items():
        (directory / f"{split}.txt").write_bytes(text.encode() if isinstance(text, str) else text)
    return directory


# -------------------------------------------------------------------- reader
BLOCK_SIZES = [1, 4, text_format._BLOCK_BYTES]  # the reader's blocks: cut everywhere, or none


def test_read_lists(tmp_path):
    path = write(tmp_path, train="0 0 1 2\n1 2\n\n2 1\n3\n") / "train.txt"
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
    pairs, num_users = read_lists(write(tmp_path, train=text) / "train.txt",
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
    path = write(tmp_path, train=text) / "train.txt"
    whole, whole_users = read_lists(path, block_bytes=len(text) + 1)
    pairs, num_users = read_lists(path, block_bytes=block_bytes)
    assert torch.equal(pairs, whole) and num_users == whole_users
    expected = [(int(line.split()[0]), int(item)) for line in lines if line
                for item in line.split()[1:]]
    assert whole.t().tolist() == [list(pair) for pair in expected]


def test_read_lists_of_an_empty_file(tmp_path):
    for text in ["", "\n\n"]:
        pairs, num_users = read_lists(write(tmp_path, train=text) / "train.txt")
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
    path = write(tmp_path, train=text) / "train.txt"
    with pytest.raises(FormatError, match=match) as error:
        read_lists(path, block_bytes=block_bytes)
    assert error.value.line == line and error.value.path == path
    assert str(error.value).startswith(f"{path}:{line}: ")
    assert isinstance(error.value, ValueError)


@pytest.mark.skipif(not HAVE_GOWALLA, reason="the repository's Gowalla copy is not here")
def test_real_gowalla():
    data = read_dir(GOWALLA)
    assert data.name == "gowalla"
    assert (data.num_users, data.num_items) == (29858, 40981)
    assert (data.train.shape[1], data.test.shape[1]) == (810128, 217242) and data.valid is None
    assert data.num_nodes == 70839 and data.edge_index().shape == (2, 1620256)
    # The same pairs as a plain Python reading of the files.
    for split in ("train", "test"):
        users, items = [], []
        for line in (GOWALLA / f"{split}.txt").read_text().splitlines():
            ids = [int(token) for token in line.split()]
            users += ids[:1] * (len(ids) - 1)
            items += ids[1:]
        assert getattr(data, split).tolist() == [users, items]


# ------------------------------------------------------------ read_dir, load
def test_load_directory(tmp_path):
    root = write(tmp_path / "mine", train="0 0 1 2\n1 2\n2 1\n", test="0 3\n1 0\n3 1\n")
    data = load(root)
    assert data.name == "mine" and (data.num_users, data.num_items) == (4, 4)
    assert data.train.tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 2, 1]]
    assert data.test.tolist() == [[0, 1, 3], [3, 0, 1]] and data.valid is None
    assert load(str(root)).train.tolist() == data.train.tolist()
    write(root, valid="2 3\n4\n")
    data = load(root)
    assert data.valid.tolist() == [[2], [3]] and data.num_users == 5  # user 4's empty line


def test_user_in_test_but_not_in_train_is_kept(tmp_path):
    """As in the LightGCN authors' code: a node without edges, evaluated on its test items."""
    data = load(write(tmp_path, train="0 0 1\n1 1\n", test="0 2\n2 0 3\n"))
    assert (data.num_users, data.num_items) == (3, 4)
    assert data.test.tolist() == [[0, 2, 2], [2, 0, 3]]
    assert 2 not in data.train[0].tolist() and 2 not in data.edge_index()[0].tolist()


def test_load_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks test.txt"):
        load(write(tmp_path / "a", train="0 1\n"))
    with pytest.raises(ValueError, match="train.txt holds no .user, item. pair: nothing to train"):
        load(write(tmp_path / "b", train="0\n1 \n", test="0 1\n"))
    with pytest.raises(ValueError, match="test.txt holds no .user, item. pair: nothing to eval"):
        load(write(tmp_path / "c", train="0 1\n", test=""))
    with pytest.raises(FormatError, match=r"valid.txt:2: negative"):
        load(write(tmp_path / "d", train="0 1\n", test="0 2\n", valid="0 3\n1 -3\n"))
    with pytest.raises(FileNotFoundError, match="neither a named data set"):
        load(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="root"):
        load(write(tmp_path / "e", train="0 1\n", test="0 2\n"), root=tmp_path)


def test_load_synthetic_by_name():
    assert torch.equal(load("synthetic").train, synthetic().train)


# ---------------------------------------------------------------- interactions
def test_interactions_check_their_ids():
    pairs = torch.tensor([[0, 1], [0, 2]])
    data = Interactions("x", 2, 3, pairs, pairs.int())
    assert data.test.dtype == torch.int64 and data.num_nodes == 5
    assert data.edge_index().tolist() == [[0, 1, 2, 4], [2, 4, 0, 1]]
    assert repr(data) == "Interactions('x', 2 users, 3 items, train 2, test 2)"
    with pytest.raises(ValueError, match=r"test has item id 2, but num_items is 2 \(item ids "
                                         r"are item-local"):
        Interactions("x", 2, 2, pairs[:, :1], pairs)
    with pytest.raises(ValueError, match="train has user id 1, but num_users is 1"):
        Interactions("x", 1, 3, pairs, pairs[:, :1])
    with pytest.raises(ValueError, match="valid has a negative item id -1"):
        Interactions("x", 2, 3, pairs, pairs, torch.tensor([[0], [-1]]))
    with pytest.raises(ValueError, match=r"\[2, n\]"):
        Interactions("x", 2, 3, torch.zeros(3, 2, dtype=torch.int64), pairs)
    with pytest.raises(ValueError, match="integer ids"):
        Interactions("x", 2, 3, pairs.float(), pairs)
    with pytest.raises(ValueError, match="num_items must be a non-negative int"):
        Interactions("x", 2, -1, pairs, pairs)
    empty = Interactions("empty", 0, 0, torch.empty(2, 0, dtype=torch.int64),
                         torch.empty(2, 0, dtype=torch.int64))
    assert empty.edge_index().shape == (2, 0)  # allowed here; the trainer refuses it


def test_bipartite_edge_index_is_symmetric():
    pairs = torch.tensor([[0, 0, 1, 2], [0, 1, 1, 0]])
    edge_index = bipartite_edge_index(3, pairs)
    assert edge_index.shape == (2, 8) and edge_index.dtype == torch.int64
    edges = set(map(tuple, edge_index.t().tolist()))
    assert edges == {(d, s) for s, d in edges}
    assert edges == {(0, 3), (0, 4), (1, 4), (2, 3), (3, 0), (4, 0), (4, 1), (3, 2)}
    assert lightgcn_ext.Graph.from_edge_index(edge_index, 5).is_symmetric


def test_bipartite_edge_index_checks_its_input():
    with pytest.raises(ValueError, match=r"\[2, n\]"):
        bipartite_edge_index(3, torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="integer"):
        bipartite_edge_index(3, torch.zeros(2, 2))


# ------------------------------------------------------------ named data sets
class Server:
    """A local HTTP server of files, each served whole, corrupted, cut off
    halfway (with or without a Content-Length), or not at all (404)."""

    def __init__(self):
        self.files, self.modes, self.requests = {}, {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body, mode = server.files.get(self.path), server.modes.get(self.path, "ok")
                if body is None:
                    self.send_error(404)
                    return
                if mode == "corrupt":
                    body = body[:100] + bytes([body[100] ^ 1]) + body[101:]
                self.send_response(200)
                if mode != "no-length":
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:len(body) // 2] if mode in ("drop", "no-length") else body)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/data"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch, tmp_path):
    """A server of the named sets' files at download.BASE_URL: a copy of the
    repository's Gowalla when present (its real md5s), else small generated
    files whose checksums replace the known ones; also a small "yelp2018" whose
    train.txt is checked by git's blob SHA-1, as the real one is."""
    srv = Server()
    monkeypatch.setattr(download, "BASE_URL", srv.url)
    if HAVE_GOWALLA:
        for file in ("train.txt", "test.txt"):
            srv.files[f"/data/gowalla/{file}"] = (GOWALLA / file).read_bytes()
    else:
        srv.files["/data/gowalla/train.txt"] = "".join(
            f"{u} " + " ".join(str((u + k) % 500) for k in range(20)) + "\n"
            for u in range(300)).encode()
        srv.files["/data/gowalla/test.txt"] = "".join(
            f"{u} {(u + 30) % 500}\n" for u in range(300)).encode()
        monkeypatch.setitem(NAMED, "gowalla", {
            file: ("md5", hashlib.md5(srv.files[f"/data/gowalla/{file}"]).hexdigest())
            for file in ("train.txt", "test.txt")})
    train, test = b"0 1 2\n1 2 3\n", b"0 3\n1 0\n"
    srv.files.update({"/data/yelp2018/train.txt": train, "/data/yelp2018/test.txt": test})
    monkeypatch.setitem(NAMED, "yelp2018", {
        "train.txt": ("git-sha1", hashlib.sha1(b"blob %d\0" % len(train) + train).hexdigest()),
        "test.txt": ("md5", hashlib.md5(test).hexdigest())})
    yield srv
    srv.close()


def no_partial_files(directory):
    return not any(path.name.endswith(".part") for path in directory.rglob("*"))


def test_named_set_is_downloaded_once_into_root(server, tmp_path):
    data = load("gowalla", root=tmp_path, progress=False)
    assert data.name == "gowalla" and data.train.shape[1] > 0
    if HAVE_GOWALLA:
        assert (data.num_users, data.num_items, data.train.shape[1]) == (29858, 40981, 810128)
    assert sorted(server.requests) == ["/data/gowalla/test.txt", "/data/gowalla/train.txt"]
    for file in ("train.txt", "test.txt"):
        assert (tmp_path / "gowalla" / file).read_bytes() == server.files[f"/data/gowalla/{file}"]
    assert find("gowalla", root=tmp_path) == tmp_path / "gowalla"
    again = load("gowalla", root=tmp_path)  # from the cache: no request
    assert len(server.requests) == 2 and torch.equal(again.train, data.train)
    assert no_partial_files(tmp_path)


def test_named_set_goes_into_the_data_dir(server, tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "cache"))
    data = load("yelp2018", progress=True)  # a git blob SHA-1 checked file, a bar
    assert data.train.tolist() == [[0, 0, 1, 1], [1, 2, 2, 3]]
    assert (tmp_path / "cache" / "yelp2018" / "train.txt").is_file()
    assert find("yelp2018") == tmp_path / "cache" / "yelp2018"


def test_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "mine"))
    assert data_dir() == tmp_path / "mine"
    monkeypatch.delenv(DATA_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "lightgcn_ext"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir() == tmp_path / "home" / ".cache" / "lightgcn_ext"


@pytest.mark.parametrize("mode, match", [
    ("corrupt", "md5 is [0-9a-f]{32}, not [0-9a-f]{32} .a corrupt or changed file"),
    ("drop", "the connection closed after [0-9,]+ of [0-9,]+ bytes"),
    ("no-length", "md5 is [0-9a-f]{32}, not"),  # cut off, and no length to tell: the md5 does
    ("missing", "HTTP 404"),
])
def test_failed_download_leaves_nothing_and_says_what_to_do(server, tmp_path, mode, match):
    url_path = "/data/gowalla/test.txt"
    if mode == "missing":
        del server.files[url_path]
    else:
        server.modes[url_path] = mode
    with pytest.raises(DownloadError, match=match) as error:
        load("gowalla", root=tmp_path, progress=False)
    message = str(error.value)
    target = tmp_path / "gowalla" / "test.txt"
    assert "nothing was saved" in message and "Retry, or download it by hand" in message
    assert f"save {server.url}/gowalla/test.txt as {target}" in message
    assert not target.exists() and no_partial_files(tmp_path)
    server.modes.clear()  # the retry the message suggests works
    if mode == "missing":
        server.files[url_path] = (GOWALLA / "test.txt").read_bytes() if HAVE_GOWALLA else None
        if not HAVE_GOWALLA:
            return
    assert load("gowalla", root=tmp_path, progress=False).test.shape[1] > 0


def test_unreachable_server(tmp_path, monkeypatch):
    server = Server()
    server.close()  # nothing listens there any more
    monkeypatch.setattr(download, "BASE_URL", server.url)
    with pytest.raises(DownloadError, match="Retry, or download it by hand"):
        load("amazon-book", root=tmp_path, progress=False)
    assert no_partial_files(tmp_path) and not (tmp_path / "amazon-book" / "train.txt").exists()


def test_corrupt_cached_file_is_refused(server, tmp_path):
    write(tmp_path / "yelp2018", train="0 1 2\n1 2 4\n", test="0 3\n1 0\n")
    with pytest.raises(ChecksumError, match=r"train.txt is corrupt .* Delete it and load again"):
        load("yelp2018", root=tmp_path)
    assert server.requests == []


def test_the_package_never_reads_the_repository_copy(server, tmp_path, monkeypatch):
    """With an empty home and data directory, "gowalla" is downloaded: neither
    ../shared/data/gowalla nor a ./gowalla of the current directory is read."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "empty"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    write(tmp_path / "cwd" / "gowalla", train="0 1\n", test="0 2\n")
    monkeypatch.chdir(GOWALLA.parent if HAVE_GOWALLA else tmp_path / "cwd")
    assert find("gowalla") is None
    load("gowalla", progress=False)
    assert len(server.requests) == 2
    assert (tmp_path / "empty" / "gowalla" / "train.txt").is_file()


def test_unknown_name():
    with pytest.raises(ValueError, match="unknown data set 'movielens'"):
        find("movielens")


@pytest.mark.skipif(not HAVE_GOWALLA, reason="the repository's Gowalla copy is not here")
def test_checksums_of_the_repository_copy():
    """The table's md5s are those of the published files, and the git blob SHA-1
    the authors' tree records for Gowalla's train.txt is what _file_checksum computes."""
    for file, (kind, expected) in NAMED["gowalla"].items():
        assert download._file_checksum(GOWALLA / file, kind) == expected
    assert download._file_checksum(GOWALLA / "train.txt", "git-sha1") == \
        "a27782bd7a1d4d0744148dc0460ea94da74763f2"


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_git_blob_sha1_is_gits(tmp_path):
    path = write(tmp_path, train="0 1 2\n3 4\n") / "train.txt"
    expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True,
                              text=True, check=True).stdout.strip()
    assert download._file_checksum(path, "git-sha1") == expected


# ------------------------------------------------------------------ synthetic
def test_synthetic_default():
    data = synthetic()
    assert data.name == "synthetic" and (data.num_users, data.num_items) == (6000, 4000)
    assert data.train.shape == (2, 120_000) and data.valid is None
    assert 0.18 < data.test.shape[1] / (data.train.shape[1] + data.test.shape[1]) < 0.22


def test_synthetic_is_deterministic_by_seed():
    sizes = dict(num_users=300, num_items=400, num_interactions=5000, communities=4)
    a, b, c = (synthetic(seed, **sizes) for seed in (7, 7, 8))
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)


@pytest.mark.parametrize("sizes", [
    {},
    dict(num_users=500, num_items=800, num_interactions=12_000, communities=4),
    dict(num_users=40, num_items=60, num_interactions=400, communities=2, in_community=1.0),
])
def test_synthetic_structure(sizes):
    data = synthetic(3, **sizes)
    communities = sizes.get("communities", 20)
    train, test = data.train.numpy(), data.test.numpy()
    assert train.shape[1] == sizes.get("num_interactions", 120_000)
    train_degree = np.bincount(train[0], minlength=data.num_users)
    test_degree = np.bincount(test[0], minlength=data.num_users)
    assert train_degree.min() >= 2 and test_degree.min() >= 1  # every user, both splits
    if data.num_users >= 500:
        assert train_degree.max() > 5 * np.median(train_degree)  # a heavy tail
    keys = np.concatenate([train[0] * data.num_items + train[1],
                           test[0] * data.num_items + test[1]])
    assert np.unique(keys).size == keys.size  # no repeated pair, no pair in both splits
    assert (np.diff(keys[:train.shape[1]]) > 0).all()  # sorted
    # The planted communities: most interactions within, against 1/communities at random.
    within = np.mean(np.concatenate([train[0] % communities == train[1] % communities,
                                     test[0] % communities == test[1] % communities]))
    assert abs(within - sizes.get("in_community", 0.65)) < 0.03


def test_synthetic_is_learnable():
    """The planted structure predicts the test items far better than popularity:
    the generator's rule (the user's community's items by training popularity)
    against global popularity, training items excluded, recall@20."""
    data = synthetic()
    count = np.bincount(data.train[1].numpy(), minlength=data.num_items).astype(float)
    train, test = data.train.numpy(), data.test.numpy()

    def recall(score_of_user):
        total = 0.0
        for user in range(0, data.num_users, 10):  # every 10th user: enough, and fast
            score = score_of_user(user).copy()
            score[train[1][train[0] == user]] = -np.inf
            top = np.argsort(-score, kind="stable")[:20]
            relevant = test[1][test[0] == user]
            total += np.isin(relevant, top).sum() / relevant.size
        return total / len(range(0, data.num_users, 10))

    items = np.arange(data.num_items)
    popularity = recall(lambda user: count)
    community = recall(lambda user: count + 1e9 * (items % 20 == user % 20))
    assert community > 3 * popularity and community > 0.2


def test_synthetic_gowalla_sized():
    data = synthetic(0, **GOWALLA_SIZES)
    assert (data.num_users, data.num_items, data.train.shape[1]) == (29858, 40981, 810128)
    assert data.edge_index().shape == (2, 1620256)


def test_synthetic_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="num_interactions"):
        synthetic(num_users=10, num_items=100, num_interactions=19)  # < 2 per user
    with pytest.raises(ValueError, match="num_interactions"):
        synthetic(num_users=10, num_items=100, num_interactions=1000,
                  communities=2)  # a user has at most 50 items
    with pytest.raises(ValueError, match="communities"):
        synthetic(num_users=10, num_items=5, num_interactions=20)
    with pytest.raises(ValueError, match="num_users must be a positive int"):
        synthetic(num_users=0)


# ------------------------------------------------------------ torch_geometric
def amazon_book_like():
    """A HeteroData with AmazonBook's layout: edge_index the train split,
    edge_label_index the test split, a reverse edge type."""
    from torch_geometric.data import HeteroData

    data = HeteroData()
    data["user"].num_nodes, data["book"].num_nodes = 4, 6
    train = torch.tensor([[0, 0, 1, 2, 2], [0, 1, 1, 3, 4]])
    data["user", "rates", "book"].edge_index = train
    data["book", "rated_by", "user"].edge_index = train.flip([0])
    data["user", "rates", "book"].edge_label_index = torch.tensor([[0, 1, 3], [2, 5, 0]])
    return data


def movielens_like(num_users=30, num_movies=40, seed=0):
    """A HeteroData with MovieLens1M's layout: features, and every rating in
    edge_index with its rating and time."""
    from torch_geometric.data import HeteroData

    gen = torch.Generator().manual_seed(seed)
    keys = torch.randperm(num_users * num_movies, generator=gen)[:300].sort().values
    edge_index = torch.stack([keys // num_movies, keys % num_movies])
    data = HeteroData()
    data["movie"].x = torch.rand(num_movies, 18, generator=gen)
    data["user"].x = torch.rand(num_users, 30, generator=gen)
    store = data["user", "rates", "movie"]
    store.edge_index = edge_index
    store.rating = torch.randint(1, 6, (300,), generator=gen)
    store.time = torch.randperm(300, generator=gen) + 10**9
    data["movie", "rated_by", "user"].edge_index = edge_index.flip([0])
    return data


def test_from_pyg_amazon_book_layout():
    pytest.importorskip("torch_geometric")
    data = amazon_book_like()
    converted = from_pyg(data)
    assert (converted.name, converted.num_users, converted.num_items) == ("pyg", 4, 6)
    assert converted.train.tolist() == data["user", "rates", "book"].edge_index.tolist()
    assert converted.test.tolist() == [[0, 1, 3], [2, 5, 0]]

    class AmazonBook:  # a data set: indexing gives its HeteroData, the name is the class's
        def __getitem__(self, index):
            return data

    assert from_pyg(AmazonBook()).name == "AmazonBook"


def test_from_pyg_movielens_layout():
    pytest.importorskip("torch_geometric")
    data = movielens_like()
    store = data["user", "rates", "movie"]
    all_pairs = set(map(tuple, store.edge_index.t().tolist()))
    for split in ("random", "time"):
        converted = from_pyg(data, name="ml", split=split, seed=1)
        assert (converted.name, converted.num_users, converted.num_items) == ("ml", 30, 40)
        train = set(map(tuple, converted.train.t().tolist()))
        test = set(map(tuple, converted.test.t().tolist()))
        assert train | test == all_pairs and not train & test
        degree = torch.bincount(store.edge_index[0], minlength=30)
        test_degree = torch.bincount(converted.test[0], minlength=30)
        assert (test_degree[degree >= 2] >= 1).all() and (test_degree < degree.clamp(min=1)).all()
        assert 0.15 < len(test) / len(all_pairs) < 0.3
    # split="time": each user's test items are its latest.
    time = {pair: int(t) for pair, t in zip(map(tuple, store.edge_index.t().tolist()), store.time)}
    converted = from_pyg(data, split="time")
    for user in range(30):
        train_times = [time[p] for p in map(tuple, converted.train.t().tolist()) if p[0] == user]
        test_times = [time[p] for p in map(tuple, converted.test.t().tolist()) if p[0] == user]
        if test_times:
            assert min(test_times) > max(train_times)
    assert torch.equal(from_pyg(data, seed=1).test, from_pyg(data, seed=1).test)
    high = from_pyg(data, min_rating=4)
    assert high.train.shape[1] + high.test.shape[1] == int((store.rating >= 4).sum())


def test_from_pyg_bad_input():
    pytest.importorskip("torch_geometric")
    data = amazon_book_like()
    data["user", "buys", "book"].edge_index = torch.tensor([[0], [0]])
    with pytest.raises(ValueError, match="exactly one edge type"):
        from_pyg(data)
    data = amazon_book_like()
    data["book"].num_nodes = 5  # item 5 in the test split is then out of range
    with pytest.raises(ValueError, match="test has item id 5, but num_items is 5"):
        from_pyg(data)
    with pytest.raises(ValueError, match="no time"):
        from_pyg(_without_time(movielens_like()), split="time")
    with pytest.raises(TypeError, match="HeteroData"):
        from_pyg([torch.zeros(2)])


def _without_time(data):
    del data["user", "rates", "movie"].time
    return data


def test_from_pyg_real_classes_process_local_files(tmp_path):
    """torch_geometric's AmazonBook processes raw files put in its raw/ directory
    (nothing is downloaded), and converts to the same Interactions as load()."""
    pytest.importorskip("pandas")  # AmazonBook.process reads with pandas
    tg_datasets = pytest.importorskip("torch_geometric.datasets")
    raw = tmp_path / "amazon" / "raw"
    write(raw, train="0 0 1\n1 1 2\n2 3\n", test="0 2\n1 0\n2 1\n")
    (raw / "user_list.txt").write_text("org_id remap_id\na 0\nb 1\nc 2\n")
    (raw / "item_list.txt").write_text("org_id remap_id\nw 0\nx 1\ny 2\nz 3\n")
    converted = from_pyg(tg_datasets.AmazonBook(str(tmp_path / "amazon")))
    loaded = load(raw)
    assert converted.name == "AmazonBook"
    assert (converted.num_users, converted.num_items) == (loaded.num_users, loaded.num_items)
    assert torch.equal(converted.train, loaded.train) and torch.equal(converted.test, loaded.test)


def test_from_pyg_real_movielens_class_processes_local_files(tmp_path):
    """torch_geometric's MovieLens1M on raw files in its raw/ directory (nothing is
    downloaded): every rating an interaction, each user's latest ones test."""
    pytest.importorskip("pandas")
    tg_datasets = pytest.importorskip("torch_geometric.datasets")
    raw = tmp_path / "ml" / "raw"
    raw.mkdir(parents=True)
    (raw / "movies.dat").write_text("10::A (2000)::Comedy\n20::B (2001)::Drama|Comedy\n"
                                    "30::C (2002)::Drama\n")
    (raw / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (raw / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978302109\n"
                                     "1::30::4::978301968\n2::20::5::978300275\n"
                                     "2::30::1::978300100\n")
    data = from_pyg(tg_datasets.MovieLens1M(str(tmp_path / "ml")), split="time")
    assert (data.name, data.num_users, data.num_items) == ("MovieLens1M", 2, 3)
    # Users and movies are numbered in file order: user 1 -> 0, movie 20 -> 1.
    assert data.train.tolist() == [[0, 0, 1], [0, 2, 2]] and data.test.tolist() == [[0, 1], [1, 1]]
