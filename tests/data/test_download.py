"""lightgcn_ext.data.download: the named data sets, downloaded from a local HTTP
server (never from the network) once, checksummed, all or nothing."""
import hashlib
import http.server
import shutil
import subprocess
import threading

import pytest
import torch

from helpers import GOWALLA_COPY, HAVE_GOWALLA, write_splits
from lightgcn_ext.data import (DATA_ENV, NAMED, ChecksumError, DownloadError, data_dir, find, load,
                               download)


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
            srv.files[f"/data/gowalla/{file}"] = (GOWALLA_COPY / file).read_bytes()
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
        server.files[url_path] = (GOWALLA_COPY / "test.txt").read_bytes() if HAVE_GOWALLA else None
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
    write_splits(tmp_path / "yelp2018", train="0 1 2\n1 2 4\n", test="0 3\n1 0\n")
    with pytest.raises(ChecksumError, match=r"train.txt is corrupt .* Delete it and load again"):
        load("yelp2018", root=tmp_path)
    assert server.requests == []


def test_the_package_never_reads_the_repository_copy(server, tmp_path, monkeypatch):
    """With an empty home and data directory, "gowalla" is downloaded: neither
    ../shared/data/gowalla nor a ./gowalla of the current directory is read."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "empty"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    write_splits(tmp_path / "cwd" / "gowalla", train="0 1\n", test="0 2\n")
    monkeypatch.chdir(GOWALLA_COPY.parent if HAVE_GOWALLA else tmp_path / "cwd")
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
        assert download._file_checksum(GOWALLA_COPY / file, kind) == expected
    assert download._file_checksum(GOWALLA_COPY / "train.txt", "git-sha1") == \
        "a27782bd7a1d4d0744148dc0460ea94da74763f2"


@pytest.mark.skipif(shutil.which("git") is None, reason="no git")
def test_git_blob_sha1_is_gits(tmp_path):
    path = write_splits(tmp_path, train="0 1 2\n3 4\n") / "train.txt"
    expected = subprocess.run(["git", "hash-object", str(path)], capture_output=True,
                              text=True, check=True).stdout.strip()
    assert download._file_checksum(path, "git-sha1") == expected
