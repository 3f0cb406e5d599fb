"""User-item interaction data for LightGCN: the paper's text format, the paper's data
sets (downloaded once), a seeded synthetic generator with planted structure, and
torch_geometric's recommendation data sets.

    from lightgcn_ext import datasets
    data = datasets.load("gowalla")           # also "yelp2018", "amazon-book": downloaded on
                                              # first use into data_dir()/<name>, checksummed
    data = datasets.load("path/to/dir")       # train.txt, test.txt (optional valid.txt)
    data = datasets.synthetic(seed=0)         # the embedded default: no files, no network
    data = datasets.from_pyg(AmazonBook(root))  # torch_geometric's AmazonBook, MovieLens1M
    edge_index = data.edge_index()            # the LightGCN graph of data.train, [2, 2n]

Every source gives an `Interactions`: users 0..num_users-1, items 0..num_items-1, and
splits of (user, item) pairs with **item-local** ids. In the graph, user u is node u
and item i is node num_users + i.

The text format (the LightGCN/NGCF authors' files): one line per user,
`user item item ...`, non-negative integer ids separated by single spaces, lines
ending in `\\n` (or `\\r\\n`). A user line with no items (`user` or `user `, as in
amazon-book's test.txt) is allowed, and so is an empty line; both add no pair. Any
other line (a non-integer, a negative id, a tab, two spaces, a comma, a leading
space) raises `FormatError` naming the file and the line number: nothing is dropped
or repaired silently. Pairs keep the order of the file; a repeated line or pair is
kept as written. num_users is 1 + the largest user id of any line of any split (so a
user with an empty line counts), num_items 1 + the largest item id of any split.

As in the LightGCN authors' code, a user who has test (or validation) items but no
training item is kept: it is a node without edges, so its embedding is its layer-0
embedding times alpha_0, and it is evaluated on its test items like every other
user (it never gets a training triple, so it lowers the averages, as it would in the
authors' code; the paper's three data sets have no such user). `load()` refuses a
training or test file without any pair (`ValueError`): there would be nothing to
train on or nothing to evaluate. `Interactions` itself checks every id against
num_users and num_items, so item ids beyond the item count (or graph node ids
passed as item ids) are a `ValueError`, never a wrong metric later.
"""
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

__all__ = ["Interactions", "FormatError", "DownloadError", "ChecksumError", "load",
           "read_dir", "read_lists", "synthetic", "from_pyg", "bipartite_edge_index",
           "data_dir", "find", "NAMED", "DATA_ENV", "GOWALLA_SIZES"]

DATA_ENV = "LIGHTGCN_EXT_DATA"
SPLIT_FILES = {"train": "train.txt", "test": "test.txt", "valid": "valid.txt"}  # valid optional


# --------------------------------------------------------------- interactions
@dataclass(frozen=True)
class Interactions:
    """A user-item data set: users 0..num_users-1, items 0..num_items-1, and the
    train, test and (optional) valid splits as [2, n] int64 tensors of (user, item)
    rows, item ids item-local (0-based, not graph node ids).

    Construction checks the splits: [2, n] integer tensors (converted to int64),
    user ids in [0, num_users), item ids in [0, num_items); anything else is a
    ValueError. Empty splits are allowed here (the trainer refuses an empty train).
    """

    name: str
    num_users: int
    num_items: int
    train: torch.Tensor
    test: torch.Tensor
    valid: Optional[torch.Tensor] = None

    def __post_init__(self):
        for field in ("num_users", "num_items"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"Interactions {self.name!r}: {field} must be a "
                                 f"non-negative int, got {value!r}")
            object.__setattr__(self, field, int(value))
        for split in ("train", "test", "valid"):
            pairs = getattr(self, split)
            if pairs is None and split == "valid":
                continue
            object.__setattr__(self, split, self._checked(split, pairs))

    def _checked(self, split, pairs):
        where = f"Interactions {self.name!r}: {split}"
        if not isinstance(pairs, torch.Tensor) or pairs.dim() != 2 or pairs.shape[0] != 2:
            shape = list(pairs.shape) if isinstance(pairs, torch.Tensor) else type(pairs).__name__
            raise ValueError(f"{where} must be a [2, n] tensor of (user, item) rows, got {shape}")
        if pairs.dtype.is_floating_point or pairs.dtype.is_complex or pairs.dtype == torch.bool:
            raise ValueError(f"{where} must hold integer ids, got {pairs.dtype}")
        pairs = pairs.to(torch.int64)
        if pairs.numel():
            low, high = pairs.amin(dim=1).tolist(), pairs.amax(dim=1).tolist()
            for row, kind, count in ((0, "user", self.num_users), (1, "item", self.num_items)):
                if low[row] < 0:
                    raise ValueError(f"{where} has a negative {kind} id {low[row]}")
                if high[row] >= count:
                    hint = (" (item ids are item-local, 0..num_items-1, not graph node ids)"
                            if kind == "item" else "")
                    raise ValueError(f"{where} has {kind} id {high[row]}, but num_{kind}s is "
                                     f"{count}{hint}")
        return pairs

    @property
    def num_nodes(self):
        return self.num_users + self.num_items

    def edge_index(self):
        """The LightGCN graph of the training interactions: [2, 2n] int64, both
        directions; user u is node u and item i is node num_users + i."""
        return bipartite_edge_index(self.num_users, self.train)

    def __repr__(self):
        splits = ", ".join(f"{split} {getattr(self, split).shape[1]:,}"
                           for split in ("train", "test", "valid")
                           if getattr(self, split) is not None)
        return (f"Interactions({self.name!r}, {self.num_users:,} users, "
                f"{self.num_items:,} items, {splits})")


def bipartite_edge_index(num_users, pairs):
    """LightGCN's symmetric graph on N = U + I nodes: each (user, item) pair
    becomes the edges user -> U + item and U + item -> user. Returns [2, 2n] int64."""
    if not isinstance(pairs, torch.Tensor) or pairs.dim() != 2 or pairs.shape[0] != 2:
        raise ValueError(f"pairs must be a [2, n] tensor of (user, item) rows, got "
                         f"{list(pairs.shape) if isinstance(pairs, torch.Tensor) else type(pairs)}")
    if pairs.dtype.is_floating_point or pairs.dtype == torch.bool:
        raise TypeError(f"pairs must be an integer tensor, got {pairs.dtype}")
    users = pairs[0].long()
    items = pairs[1].long() + num_users
    return torch.stack([torch.cat([users, items]), torch.cat([items, users])])


# --------------------------------------------------------------------- reader
class FormatError(ValueError):
    """A malformed line of a data file; `path` and `line` (1-based) say where."""

    def __init__(self, path, line, message):
        self.path, self.line = Path(path), line
        super().__init__(f"{path}:{line}: {message}")


_NL, _CR, _SP, _ZERO = 10, 13, 32, 48
_MAX_ID = 2**31 - 1  # the largest id accepted: far above any real data set, and
_MAX_DIGITS = 10     # small enough that a typo cannot ask for an absurd embedding table
_POW10 = 10 ** np.arange(_MAX_DIGITS, dtype=np.int64)


# The reader parses a file in blocks of whole lines of about this many bytes:
# its vectorized parse needs ~45 bytes of temporaries per byte of text, which
# for a whole file of 10^7 lines would be gigabytes.
_BLOCK_BYTES = 1 << 22


def read_lists(path, *, block_bytes=_BLOCK_BYTES):
    """Reads one split file, `user item item ...` per line (see the module's doc).

    Returns ([2, n] int64 tensor of (user, item) pairs in file order, 1 + the
    largest user id of any line, 0 for a file without lines). Vectorized with
    numpy, one block of whole lines (about block_bytes) at a time, so that
    its working memory stays small however large the file: Gowalla's 810k
    training pairs take about 0.1 s.
    Raises FormatError (a ValueError) for a malformed line.
    """
    path = Path(path)
    blocks, num_users, lines_before = [], 0, 0
    pending = bytearray()  # a line not yet ended
    with open(path, "rb") as f:
        while True:
            chunk = f.read(block_bytes)
            pending += chunk
            if chunk:
                cut = pending.rfind(b"\n") + 1
                if cut == 0:
                    continue  # a line longer than a block: read on
                lines, pending = pending[:cut], pending[cut:]
            else:  # the end: the last line may lack its newline
                if pending and pending[-1] != _NL:
                    pending.append(_NL)
                lines, pending = pending, bytearray()
            if lines:
                buf = np.frombuffer(lines, dtype=np.uint8)
                pairs, users = _parse_lines(path, buf, lines_before)
                blocks.append(pairs)
                num_users = max(num_users, users)
                lines_before += int(np.count_nonzero(buf == _NL))
            if not chunk:
                break
    if not blocks:
        return torch.from_numpy(np.zeros((2, 0), dtype=np.int64)), 0
    return torch.from_numpy(np.concatenate(blocks, axis=1)), num_users


def _parse_lines(path, buf, lines_before):
    """The pairs and 1 + the largest user id of buf, whole lines each ending in
    a newline that are lines lines_before + 1, ... of the file."""
    if (buf == _CR).any():  # \r\n line ends: drop the \r (a lone \r is an error)
        cr = buf == _CR
        lone = cr & (np.append(buf[1:], np.uint8(_NL)) != _NL)
        if lone.any():
            _raise_format_error(path, buf, int(np.argmax(lone)), lines_before=lines_before)
        buf = buf[~cr]
    empty = np.zeros((2, 0), dtype=np.int64)

    digit = (buf - np.uint8(_ZERO)) < 10  # uint8 arithmetic wraps: one comparison
    newline, space = buf == _NL, buf == _SP
    prev = np.empty_like(buf)
    prev[0], prev[1:] = _NL, buf[:-1]
    # Allowed: digits, newlines, and single spaces after a digit (between ids, or
    # one trailing space, as in amazon-book's test.txt).
    bad = ~(digit | newline | space) | (space & ((prev == _NL) | (prev == _SP)))
    if bad.any():
        _raise_format_error(path, buf, int(np.argmax(bad)), lines_before=lines_before)
    del prev, bad

    prev_digit = np.zeros_like(digit)
    prev_digit[1:] = digit[:-1]
    next_digit = np.zeros_like(digit)
    next_digit[:-1] = digit[1:]
    starts = np.flatnonzero(digit & ~prev_digit)
    if starts.size == 0:
        return empty, 0
    ends = np.flatnonzero(digit & ~next_digit)  # inclusive
    lengths = ends - starts + 1
    if (lengths > _MAX_DIGITS).any():
        _raise_format_error(path, buf, int(starts[np.argmax(lengths > _MAX_DIGITS)]),
                            f"id too large (at most {_MAX_ID})", lines_before=lines_before)
    # Each token's value: its digits times powers of ten, summed per token.
    positions = np.flatnonzero(digit)
    token_of_digit = np.repeat(np.arange(starts.size), lengths)
    terms = (buf[positions] - np.uint8(_ZERO)).astype(np.int64)
    terms *= _POW10[ends[token_of_digit] - positions]
    del positions, token_of_digit
    first_digit = np.zeros(starts.size, dtype=np.int64)
    np.cumsum(lengths[:-1], out=first_digit[1:])
    values = np.add.reduceat(terms, first_digit)
    del terms
    if values.max() > _MAX_ID:
        _raise_format_error(path, buf, int(starts[np.argmax(values > _MAX_ID)]),
                            f"id too large (at most {_MAX_ID})", lines_before=lines_before)

    # The first token of each line is its user; the others are its items.
    line = np.searchsorted(np.flatnonzero(newline), starts)
    first = np.ones(starts.size, dtype=bool)
    first[1:] = line[1:] != line[:-1]
    user_ids = values[first]
    users = user_ids[np.cumsum(first) - 1][~first]
    return np.stack([users, values[~first]]), int(user_ids.max()) + 1


def _raise_format_error(path, buf, pos, reason=None, *, lines_before=0):
    """Raises FormatError for the byte at pos: its line number (buf starting
    after lines_before lines of the file), what is wrong, the line."""
    line_start = int(np.flatnonzero(buf[:pos] == _NL)[-1]) + 1 if (buf[:pos] == _NL).any() else 0
    line_end = pos + int(np.argmax(buf[pos:] == _NL)) if (buf[pos:] == _NL).any() else buf.size
    lineno = lines_before + int(np.count_nonzero(buf[:line_start] == _NL)) + 1
    text = bytes(buf[line_start:line_end]).decode("utf-8", errors="replace")
    shown = repr(text if len(text) <= 80 else text[:77] + "...")
    if reason is None:
        char = int(buf[pos])
        follows = int(buf[pos + 1]) if pos + 1 < buf.size else _NL
        token_start = pos
        while token_start > line_start and buf[token_start - 1] != _SP:
            token_start -= 1
        token_end = pos
        while token_end < line_end and buf[token_end] != _SP:
            token_end += 1
        token = bytes(buf[token_start:token_end]).decode("utf-8", errors="replace")
        if char == ord("-") and _ZERO <= follows < _ZERO + 10:
            reason = f"negative id {token!r}: ids must be non-negative integers"
        elif char == _SP:
            where = "a leading space" if pos == line_start else "two spaces"
            reason = f"wrong separator ({where}): ids must be separated by single spaces"
        elif char == ord("\t"):
            reason = "wrong separator (a tab): ids must be separated by single spaces"
        elif char in b",;|:":
            reason = f"wrong separator ({chr(char)!r}): ids must be separated by single spaces"
        elif char == _CR:
            reason = "a carriage return inside the line"
        else:
            reason = f"not an integer id: {token!r}"
    raise FormatError(path, lineno, f"{reason}, in line {shown}")


def read_dir(directory, name=None):
    """The Interactions of a directory in the LightGCN format: train.txt and
    test.txt, and valid.txt when present (see the module's doc for the format).
    name defaults to the directory's name. Raises FileNotFoundError when a
    required file is missing, FormatError for a malformed line, ValueError
    when train.txt, test.txt (or a present valid.txt) holds no pair."""
    directory = Path(directory).expanduser()
    required = [SPLIT_FILES["train"], SPLIT_FILES["test"]]
    missing = [file for file in required if not (directory / file).is_file()]
    if missing:
        raise FileNotFoundError(f"{directory} lacks {' and '.join(missing)}: a data directory "
                                f"holds {' and '.join(required)} (and optionally "
                                f"{SPLIT_FILES['valid']}), one line `user item item ...` per user")
    splits, num_users, num_items = {}, 0, 0
    for split, file in SPLIT_FILES.items():
        path = directory / file
        if split == "valid" and not path.is_file():
            continue
        pairs, users = read_lists(path)
        if pairs.shape[1] == 0:
            what = "to train on" if split == "train" else "to evaluate"
            raise ValueError(f"{path} holds no (user, item) pair: nothing {what}")
        splits[split] = pairs
        num_users = max(num_users, users)
        num_items = max(num_items, int(pairs[1].max()) + 1)
    return Interactions(name or directory.resolve().name, num_users, num_items, **splits)


# ------------------------------------------------------------- named sets
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


def load(name_or_path, root=None, *, progress=True):
    """The Interactions of a named data set or of a directory.

    name_or_path: "gowalla", "yelp2018" or "amazon-book" (the LightGCN paper's
        splits), "synthetic" (`synthetic()`), or a directory in the LightGCN
        format (a str or a Path; names win, so write "./gowalla" for a directory
        of that name).
    root: where named data sets are kept (default `data_dir()`); each in <root>/<name>/.
    progress: show a progress bar (tqdm) while downloading.

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
        return read_dir(directory, name)
    if root is not None:
        raise ValueError(f"root={root!r} applies to the named data sets ({', '.join(NAMED)}), "
                         f"not to the directory {name_or_path!r}")
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return read_dir(path)
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


# ------------------------------------------------------------------ synthetic
# The size of Gowalla's training graph: the benchmarks' graph where Gowalla is absent.
GOWALLA_SIZES = dict(num_users=29858, num_items=40981, num_interactions=810128)


def synthetic(seed=0, *, num_users=6000, num_items=4000, num_interactions=120_000,
              communities=20, in_community=0.65, test_fraction=0.2, exponent=0.8,
              min_train=2):
    """A seeded synthetic data set with planted structure, so that a model has
    something to learn: the embedded default when no data is given.

    User u belongs to community u % communities and item i to community
    i % communities (the ids carry no other meaning: a model sees only the graph).
    Item popularity is Zipf-like within each community, (rank + n/1000)^-exponent
    over a random order of its n items. A user's degree is Zipf-like too, over a
    random order of the users, with a floor of min_train training items and at
    least one test item, and at most the size of the smallest community. Each of a
    user's items is from its own community with probability in_community and from
    the other communities otherwise, drawn by popularity without repeats. Each
    user's items are
    then split at random: about test_fraction of them (at least one) to test.

    num_interactions is the number of *training* pairs (the graph's size: the
    benchmarks' `synthetic(**GOWALLA_SIZES)`, num_interactions=810128, has
    Gowalla's graph size); the test split adds about
    test_fraction / (1 - test_fraction) of that.

    The default (6,000 users, 4,000 items, 120,000 training and about 30,000 test
    pairs) trains 20 epochs with 20 full evaluations in about 17 s on 2 idle CPU
    threads (`python -m lightgcn_ext train`, batches of 2048). LightGCN's recall@20
    climbs from about 0.11 after the first epoch to about 0.27 after 20, against
    0.07 for the popularity baseline and 0.29 for the generator's own rule (the
    user's community's items by popularity); untrained, it scores 0.006. With
    in_community=0.7 or more, training reaches the rule's level within a few
    epochs: 0.65 leaves a learning curve to watch.
    Deterministic for a seed (numpy's PCG64); vectorized: the Gowalla-sized one
    takes about a second. Returns Interactions named "synthetic", pairs sorted.
    """
    for label, value in (("num_users", num_users), ("num_items", num_items),
                         ("communities", communities), ("min_train", min_train)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{label} must be a positive int, got {value!r}")
    if communities > num_items:
        raise ValueError(f"communities ({communities}) must be at most num_items ({num_items})")
    if not 0 <= in_community <= 1 or not 0 < test_fraction < 1 or not exponent >= 0:
        raise ValueError(f"need 0 <= in_community <= 1, 0 < test_fraction < 1 and exponent >= 0, "
                         f"got {in_community}, {test_fraction}, {exponent}")
    test_ratio = test_fraction / (1 - test_fraction)
    # A user's total degree is at most the size of the smallest community.
    cap_total = num_items // communities
    candidates = np.arange(cap_total + 1)
    fits = candidates + np.maximum(1, np.rint(candidates * test_ratio)) <= cap_total
    cap_train = int(candidates[fits].max()) if fits.any() else 0
    if cap_train < min_train or not min_train * num_users <= num_interactions <= \
            cap_train * num_users:
        raise ValueError(
            f"num_interactions (training pairs) must be in [min_train * num_users, "
            f"{cap_train} * num_users] = [{min_train * num_users}, {cap_train * num_users}] "
            f"for {num_items} items in {communities} communities (a user has at most "
            f"{cap_total} items, test included), got {num_interactions}")
    rng = np.random.default_rng(seed)

    # Items ordered by community, then at random: rank within the community.
    item_community = np.arange(num_items) % communities
    order = np.lexsort((rng.random(num_items), item_community))  # sorted position -> item
    sizes = np.bincount(item_community, minlength=communities)
    begin = np.concatenate([[0], np.cumsum(sizes)])
    rank = np.arange(num_items) - np.repeat(begin[:-1], sizes) + 1
    weight = (rank + np.repeat(sizes, sizes) / 1000.0) ** -exponent  # in sorted order
    cdf = np.cumsum(weight)
    low = np.concatenate([[0.0], cdf])[begin[:-1]]  # each community's cdf range
    high = cdf[begin[1:] - 1]

    train_degree = _degrees(num_interactions, min_train,
                            _zipf_weights(num_users, exponent, rng), cap_train, rng)
    degree = train_degree + np.maximum(1, np.rint(train_degree * test_ratio)).astype(np.int64)

    # How many of each user's items are from its own community: Binomial(degree,
    # in_community), as far as the other communities have enough items.
    own_size = sizes[np.arange(num_users) % communities]
    inside = np.clip(rng.binomial(degree, in_community), degree - (num_items - own_size), degree)

    def draw_inside(users):  # by popularity, from the user's community
        community = users % communities
        u = low[community] + rng.random(users.size) * (high[community] - low[community])
        position = np.searchsorted(cdf, u, side="right")
        return order[np.clip(position, begin[community], begin[community + 1] - 1)]

    def draw_outside(users):  # by popularity, from the other communities
        community = users % communities
        u = rng.random(users.size) * (cdf[-1] - (high[community] - low[community]))
        u = np.where(u >= low[community], u + high[community] - low[community], u)
        return order[np.minimum(np.searchsorted(cdf, u, side="right"), num_items - 1)]

    keys = np.sort(np.concatenate([
        _distinct(inside, draw_inside, lambda c: item_community == c, communities, rng),
        _distinct(degree - inside, draw_outside, lambda c: item_community != c, communities,
                  rng)]))

    # Split each user's items at random: its first train_degree in a random order train.
    users, items = keys // num_items, keys % num_items
    shuffled = np.lexsort((rng.random(keys.size), users))
    starts = np.concatenate([[0], np.cumsum(degree)[:-1]])
    is_train = np.empty(keys.size, dtype=bool)
    is_train[shuffled] = np.arange(keys.size) - starts[users[shuffled]] < train_degree[
        users[shuffled]]
    pairs = torch.from_numpy(np.stack([users, items]))
    mask = torch.from_numpy(is_train)
    return Interactions("synthetic", num_users, num_items, pairs[:, mask].contiguous(),
                        pairs[:, ~mask].contiguous())


def _distinct(need, draw, in_pool, communities, rng):
    """Sorted keys user * num_items + item, need[u] distinct items for each user u,
    drawn by draw(users) (one item each) and redrawn while they repeat; after 50
    rounds, the few users still short get the rest uniformly from their pool (the
    items where in_pool(community of u) is true) less the items they have."""
    num_items = in_pool(0).size
    owners = np.arange(need.size, dtype=np.int64)
    keys = np.empty(0, dtype=np.int64)
    for _ in range(50):
        missing = need - np.bincount(keys // num_items, minlength=need.size)
        if not missing.any():
            return keys
        users = np.repeat(owners, missing)
        keys = _sorted_unique(np.concatenate([keys, users * num_items + draw(users)]))
    missing = need - np.bincount(keys // num_items, minlength=need.size)
    extra = [keys]
    for user in np.flatnonzero(missing):
        have = keys[np.searchsorted(keys, user * num_items):
                    np.searchsorted(keys, (user + 1) * num_items)] % num_items
        free = np.setdiff1d(np.flatnonzero(in_pool(user % communities)), have)
        extra.append(user * num_items + rng.choice(free, missing[user], replace=False))
    return _sorted_unique(np.concatenate(extra))


def _sorted_unique(keys):
    # np.sort and a mask: several times faster than np.unique (hash-based in numpy 2.3+).
    keys = np.sort(keys)
    first = np.ones(keys.size, dtype=bool)
    first[1:] = keys[1:] != keys[:-1]
    return keys[first]


def _zipf_weights(n, exponent, rng):
    """Zipf-Mandelbrot weights (rank + n/1000)^-exponent in a random order."""
    return ((np.arange(1, n + 1) + n / 1000.0) ** -exponent)[rng.permutation(n)]


def _degrees(total, floor, weight, cap, rng):
    """floor + the rest shared in proportion to weight (rounded at random), each at
    most cap; the degrees sum to total (which must be <= cap * len(weight))."""
    degree = np.full(weight.size, floor, dtype=np.int64)
    rest = total - floor * weight.size
    while rest > 0:
        share = weight * (degree < cap)
        share *= rest / share.sum()
        whole = np.floor(share)
        degree += whole.astype(np.int64)
        left = rest - int(whole.sum())
        if left > 0:
            fraction = np.cumsum(share - whole)
            picks = np.searchsorted(fraction, rng.random(left) * fraction[-1], side="right")
            degree += np.bincount(np.minimum(picks, weight.size - 1), minlength=weight.size)
        excess = np.maximum(degree - cap, 0)
        degree -= excess
        rest = int(excess.sum())
    return degree


# -------------------------------------------------------------- torch_geometric
def from_pyg(dataset, *, name=None, user_type="user", item_type=None, test_fraction=0.2,
             split="random", seed=0, min_rating=None):
    """Interactions from a torch_geometric recommendation data set (optional
    dependency): `AmazonBook`, `MovieLens1M`, or a HeteroData of the same layout.

    The (user_type, *, item) edge type whose source is the user type is the
    interactions (item_type picks one when there are several); the node counts
    are `data[user_type].num_nodes` and `data[item].num_nodes`. The reverse edge
    type, features, ratings and timestamps are not used, except as below.

    * With `edge_label_index` on that edge type (AmazonBook: the LightGCN paper's
      split), `edge_index` is train and `edge_label_index` is test.
    * Otherwise (MovieLens1M: all ratings in `edge_index`) every rating is an
      interaction (only those with `rating >= min_rating` when min_rating is given)
      and each user's interactions are split, seeded: about test_fraction of them
      (at least one, when the user has two or more) to test, chosen at random
      (split="random") or the latest by the edges' `time` (split="time").
    name defaults to the data set's class name ("AmazonBook", "MovieLens1M").
    """
    try:
        from torch_geometric.data import HeteroData
    except ImportError as error:
        raise ImportError("from_pyg needs torch_geometric (pip install torch_geometric)") \
            from error
    data = dataset if isinstance(dataset, HeteroData) else dataset[0]
    if not isinstance(data, HeteroData):
        raise TypeError(f"from_pyg expects a HeteroData or a data set of one, got "
                        f"{type(data).__name__}")
    if name is None:
        name = type(dataset).__name__ if dataset is not data else "pyg"
    edge_types = [edge_type for edge_type in data.edge_types
                  if edge_type[0] == user_type and edge_type[2] != user_type
                  and (item_type is None or edge_type[2] == item_type)]
    if len(edge_types) != 1:
        raise ValueError(f"from_pyg: need exactly one edge type from {user_type!r} to "
                         f"{item_type or 'an item type'}, found {edge_types} among "
                         f"{data.edge_types}; pass user_type= and item_type=")
    edge_type = edge_types[0]
    store = data[edge_type]
    num_users, num_items = data[user_type].num_nodes, data[edge_type[2]].num_nodes
    train = store.edge_index.long()
    if "edge_label_index" in store:
        test = store.edge_label_index.long()
    else:
        keep = torch.ones(train.shape[1], dtype=torch.bool)
        if min_rating is not None:
            if "rating" not in store:
                raise ValueError(f"min_rating given, but {edge_type} has no rating")
            keep = store.rating >= min_rating
        if split == "time" and "time" not in store:
            raise ValueError(f"split='time', but {edge_type} has no time")
        if split not in ("random", "time"):
            raise ValueError(f"split must be 'random' or 'time', got {split!r}")
        pairs = train[:, keep].numpy()
        rng = np.random.default_rng(seed)
        within = (store.time[keep].numpy() if split == "time" else rng.random(pairs.shape[1]))
        order = np.lexsort((within, pairs[0]))  # by user, then earliest / at random
        users = pairs[0][order]
        count = np.bincount(users, minlength=int(users.max(initial=-1)) + 1)
        num_test = np.where(count >= 2, np.maximum(1, np.rint(count * test_fraction)), 0)
        num_test = np.minimum(num_test, count - 1).astype(np.int64)
        starts = np.concatenate([[0], np.cumsum(count)[:-1]])
        position = np.arange(users.size) - starts[users]
        is_test = np.empty(users.size, dtype=bool)
        is_test[order] = position >= count[users] - num_test[users]  # the last ones
        train = torch.from_numpy(pairs[:, ~is_test].copy())
        test = torch.from_numpy(pairs[:, is_test].copy())
    both = torch.cat([train, test], dim=1)
    if num_users is None:
        num_users = int(both[0].max()) + 1 if both.numel() else 0
    if num_items is None:
        num_items = int(both[1].max()) + 1 if both.numel() else 0
    return Interactions(name, num_users, num_items, train, test)
