"""The paper's named data sets (gowalla, yelp2018, amazon-book), downloaded once
into the user's data directory and checksummed, and `load`, which resolves a
name, "synthetic" or a directory to its Interactions."""
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from .synthetic import synthetic
from .text_format import read_dir

DATA_ENV = "LIGHTGCN_EXT_DATA"


class DownloadError(OSError):
    """A download failed or gave a corrupt file; nothing was saved."""


class ChecksumError(ValueError):
    """A file of a named data set in the cache does not have its known checksum."""


# The authors' repository, pinned to the commit whose files the checksums are of.
_COMMIT = "947ca2b3b1d2d3545b114145710cb06c4e57b3d2"
BASE_URL = f"https://raw.githubusercontent.com/gusye1234/LightGCN-PyTorch/{_COMMIT}/data"
TIMEOUT = 60  # seconds without progress before a download gives up
# Each file's checksum: the md5 where known; else the SHA-1 that git records for the
# file in the authors' repository (`git hash-object FILE`), read from its tree at
# _COMMIT. The training files of yelp2018 and amazon-book (the largest files) were
# absent from the snapshot of that repository these values were read from, so their
# md5 is unknown, but their SHA-1 is in its tree. The md5s of the test files are
# those of the snapshot's files. gowalla's train.txt has the SHA-1
# a27782bd7a1d4d0744148dc0460ea94da74763f2 there, and the file with the md5 below
# has that SHA-1: the two checks agree.
NAMED = {
    "gowalla": {"train.txt": ("md5", "5eec1eb2edb8dd648377d348b8e136cf"),
                "test.txt": ("md5", "c04e2c4bcd2389f53ed8281816166149")},
    "yelp2018": {"train.txt": ("git-sha1", "cda12361055ba448ae4bd1070f6000c16dea8f22"),
                 "test.txt": ("md5", "0d57d7399862c32152b045ec5d2698e7")},
    "amazon-book": {"train.txt": ("git-sha1", "6ef55159c5f1fd7f6d86eb9ff290d0cc2854ac99"),
                    "test.txt": ("md5", "30f8ccfea18d25007ba9fb9aba4e174d")},
}


def data_dir():
    """The user's data directory, where named data sets are kept: $LIGHTGCN_EXT_DATA,
    else $XDG_CACHE_HOME/lightgcn_ext (~/.cache/lightgcn_ext). It need not exist.
    Nothing relative to the package or the current directory is ever looked in."""
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "lightgcn_ext"


def find(name, root=None):
    """The directory of a named data set (root or data_dir(), then <name>/) when
    all its files are there, else None. Downloads and verifies nothing."""
    if name not in NAMED:
        raise ValueError(f"unknown data set {name!r}; named data sets: {', '.join(NAMED)}")
    directory = (Path(root).expanduser() if root is not None else data_dir()) / name
    return directory if all((directory / file).is_file() for file in NAMED[name]) else None


def load(name_or_path, root=None, *, progress=True, ids="dense"):
    """The Interactions of a named data set or of a directory.

    name_or_path: "gowalla", "yelp2018" or "amazon-book" (the LightGCN paper's
        splits), "synthetic" (`synthetic()`), or a directory in the LightGCN
        format (a str or a Path; names win, so write "./gowalla" for a directory
        of that name).
    root: where named data sets are kept (default `data_dir()`); each in <root>/<name>/.
    progress: show a progress bar (tqdm) while downloading.
    ids: "dense" or "given", how a directory's ids are read (see read_dir).

    A named data set's files are downloaded on first use from the LightGCN authors'
    repository (gusye1234/LightGCN-PyTorch, pinned commit), into a temporary file
    beside the target, checksummed, then renamed into place: an interrupted or
    corrupt download leaves no file behind and raises DownloadError, which says what
    to do. Files already there are checksummed on every load (ChecksumError when
    they do not match). Nothing is downloaded for a directory.
    """
    if isinstance(name_or_path, str) and name_or_path == "synthetic":
        if root is not None:
            raise ValueError("root applies to named data sets, not to 'synthetic'")
        return synthetic()
    if isinstance(name_or_path, str) and name_or_path in NAMED:
        name = name_or_path
        directory = (Path(root).expanduser() if root is not None else data_dir()) / name
        for file, checksum in NAMED[name].items():
            path, url = directory / file, f"{BASE_URL}/{name}/{file}"
            if path.is_file():
                _check_cached(path, checksum, url)
            else:
                _download(url, path, checksum, progress)
        return read_dir(directory, name, ids=ids)
    if root is not None:
        raise ValueError(f"root={root!r} applies to the named data sets ({', '.join(NAMED)}), "
                         f"not to the directory {name_or_path!r}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return read_dir(path, ids=ids)
    raise FileNotFoundError(f"{name_or_path!r} is neither a named data set ("
                            f"{', '.join(NAMED)}, synthetic) nor a directory")


def _file_checksum(path, kind):
    if kind == "md5":
        digest = hashlib.md5()
    elif kind == "git-sha1":  # git's blob id: sha1 of "blob <size>\0" + the contents
        digest = hashlib.sha1(b"blob %d\0" % os.path.getsize(path))
    else:
        raise ValueError(f"unknown checksum kind {kind!r}")
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _describe(kind):
    return "md5" if kind == "md5" else "git blob SHA-1 (`git hash-object FILE`)"


def _check_cached(path, checksum, url):
    kind, expected = checksum
    actual = _file_checksum(path, kind)
    if actual != expected:
        raise ChecksumError(
            f"{path} is corrupt or not the expected file: its {_describe(kind)} is {actual}, "
            f"not {expected}. Delete it and load again to download it afresh from {url}")


def _download(url, path, checksum, progress):
    """url into path, all or nothing (see load())."""
    kind, expected = checksum
    by_hand = (f"Retry, or download it by hand: save {url} as {path} "
               f"(its {_describe(kind)} must be {expected})")
    path.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"lightgcn_ext: downloading {url} to {path}", file=sys.stderr)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                size = response.headers.get("Content-Length")
                size = int(size) if size and size.isdigit() else None
                bar = _progress_bar(progress, size, f"{path.parent.name}/{path.name}")
                received = 0
                try:
                    while chunk := response.read(1 << 16):
                        out.write(chunk)
                        received += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                finally:
                    if bar is not None:
                        bar.close()
            if size is not None and received != size:
                raise DownloadError(f"the connection closed after {received:,} of "
                                    f"{size:,} bytes")
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, 0o644)  # mkstemp's 0600 is for the temporary file only
        actual = _file_checksum(temporary, kind)
        if actual != expected:
            raise ChecksumError(f"its {_describe(kind)} is {actual}, not {expected} "
                                f"(a corrupt or changed file)")
        os.replace(temporary, path)
    except BaseException as error:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        if not isinstance(error, Exception):  # KeyboardInterrupt: the partial file is gone
            raise
        if isinstance(error, urllib.error.HTTPError):
            reason = f"HTTP {error.code} {error.reason}"
        elif isinstance(error, urllib.error.URLError):
            reason = str(error.reason)
        else:
            reason = str(error) or type(error).__name__
        raise DownloadError(f"downloading {url} failed: {reason}; nothing was saved. "
                            f"{by_hand}") from error


def _progress_bar(progress, size, description):
    if not progress or size is None:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a training dependency; without it, no bar
        return None
    return tqdm(total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=description,
                leave=False)
