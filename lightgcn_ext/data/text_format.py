"""The LightGCN text format: one split file per split, read fast (`read_lists`),
and a directory of them (`read_dir`).

The text format (the LightGCN/NGCF authors' files): one line per user,
`user item item ...`, non-negative integer ids separated by single spaces, lines
ending in `\\n` (or `\\r\\n`). A user line with no items (`user` or `user `, as in
amazon-book's test.txt) is allowed, and so is an empty line; both add no pair. Any
other line (a non-integer, a negative id, a tab, two spaces, a comma, a leading
space) raises `FormatError` naming the file and the line number: nothing is dropped
or repaired silently. Pairs keep the order of the file; a repeated line or pair is
kept as written. By default `read_dir` renumbers the ids that occur in some pair
0, 1, ... in ascending order (`lightgcn_ext.data.ids.densify`: ids that are already
0..n-1 stay as they are), and `Interactions.id_map` maps them back to the raw ids;
with ids="given" they are taken literally: num_users is 1 + the largest user id of
any line of any split (so a user with an empty line counts), num_items 1 + the
largest item id of any split.
"""
from pathlib import Path

import numpy as np
import torch

from .ids import ID_MODES, densify
from .interactions import Interactions

SPLIT_FILES = {"train": "train.txt", "test": "test.txt", "valid": "valid.txt"}  # valid optional


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


def read_dir(directory, name=None, *, ids="dense"):
    """The Interactions of a directory in the LightGCN format: train.txt and
    test.txt, and valid.txt when present (see the module's doc for the format).
    name defaults to the directory's name.

    ids="dense" (the default) renumbers the ids that occur densely and keeps
    the map back to the raw ids in `id_map`; ids="given" takes them literally,
    so that raw id k is row k of the model (see the module's doc).

    Raises FileNotFoundError when a required file is missing, FormatError for
    a malformed line, ValueError when train.txt, test.txt (or a present
    valid.txt) holds no pair."""
    if ids not in ID_MODES:
        raise ValueError(f"ids must be one of {ID_MODES}, got {ids!r}")
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
    id_map = None
    if ids == "dense":
        splits, id_map = densify(splits)
        num_users, num_items = id_map.num_users, id_map.num_items
    return Interactions(name or directory.resolve().name, num_users, num_items, **splits,
                        id_map=id_map)
