"""Interaction logs with raw ids: a user's own data as a table of interactions,
one per line, read into `Interactions` with dense ids and, in its `id_map`
(a `lightgcn_ext.data.ids.IdMap`), the map back to the raw ids, which a run
directory keeps beside the model.

Formats, by suffix (`sep` overrides the separator for any other name):

- `.csv` (comma) and `.tsv` (tab): a header line naming the columns, then one
  interaction per line; CSV quoting is understood.
- `.inter`: RecBole's atomic files, tab-separated, with `name:type` headers
  (`user_id:token`); the `:type` part is dropped.
- `.dat`: MovieLens `ratings.dat`, `user::item::rating::timestamp`, no header;
  its columns are called user, item, rating and timestamp.

Columns. `user` and `item` name their columns; by default the first header
name that is a usual one (compared in lower case, without `_`, `-` and
spaces: user, user_id, userId, uid, ...; item, item_id, itemId, movieId,
...). `rating` and `time` name numeric columns (default names rating, score,
...; timestamp, time, ts, unixtime), read only when used: the rating by
`min_rating`, the time by the temporal split. Ids may be anything: a side
whose ids are all canonical integers (`12`, not `012`) counts as integers.

From the rows to the data a run sees, in this order: interactions with a
rating below `min_rating` are dropped (implicit feedback); one interaction is
kept per (user, item) pair (at its earliest time, for the temporal split);
the k-core keeps users with at least `min_user_interactions` and items with
at least `min_item_interactions`, repeated until it holds for both; the
remaining users and items get dense ids 0, 1, ... in the **sorted
order of their raw ids** (numerically for integer ids, by code point for
strings), so the ids do not depend on the order of the lines; and each user's
interactions are split by `ratios` (train, valid, test): the last ones go to
test and the ones before them to valid, in time order (`split="temporal"`,
ties in file order) or in a seeded shuffle (`split="random"`), about
round(n * ratio) of the user's n interactions each, with at least one test
interaction (unless the test ratio is 0) and at least one training interaction
per user (see `log_split.split_counts`). Every user thus keeps its first
interactions for training.

Reading uses pyarrow's multithreaded CSV reader (an optional dependency:
`pip install pyarrow`), whose ids are dictionary-encoded, so memory stays at
tens of bytes per line: ten million lines take about 8 s of CPU time and
1.3 GiB at the peak, the interpreter included (`python -m bench.bench_read_log`).
"""
import math
import numbers
import re
from pathlib import Path

import numpy as np
import torch

from .. import validation
from . import log_split
from .ids import IdMap
from .interactions import Interactions
from .text_format import FormatError

# The names looked up when a column is not named, in this order, compared in
# lower case without '_', '-' and spaces.
COLUMN_NAMES = {
    "user": ("user", "userid", "uid", "users", "customerid", "reviewerid", "visitorid"),
    "item": ("item", "itemid", "iid", "items", "movieid", "movie", "productid", "product",
             "businessid", "asin", "bookid", "isbn", "trackid", "poiid", "locationid"),
    "rating": ("rating", "ratings", "score", "rate", "stars"),
    "time": ("timestamp", "time", "ts", "unixtime"),
}
SEPARATORS = {".csv": ",", ".tsv": "\t", ".inter": "\t", ".dat": "::"}
DAT_COLUMNS = ("user", "item", "rating", "timestamp")  # ratings.dat has no header


class LogFormatError(FormatError):
    """A malformed interaction log, where the reader cannot name the line."""

    def __init__(self, path, message):
        ValueError.__init__(self, f"{path}: {message}")
        self.path, self.line = Path(path), None


def read_log(path, *, user=None, item=None, rating=None, time=None, sep=None, min_rating=None,
             min_user_interactions=1, min_item_interactions=1, split="random",
             ratios=(0.8, 0.1, 0.1), seed=0, name=None):
    """Reads an interaction log (see the module's doc for the formats and the
    options). Returns Interactions whose id_map holds the raw ids. Raises
    ArgumentError for a bad option, FormatError for a malformed file (a
    missing column, a file with no header, a rating that is not a number),
    ValueError when nothing is left to train or test on, ImportError when
    pyarrow is missing."""
    interactions, _ = prepare_log(
        path, user=user, item=item, rating=rating, time=time, sep=sep, min_rating=min_rating,
        min_user_interactions=min_user_interactions,
        min_item_interactions=min_item_interactions, split=split, ratios=ratios, seed=seed,
        name=name)
    return interactions


def prepare_log(path, *, user=None, item=None, rating=None, time=None, sep=None,
                min_rating=None, min_user_interactions=1, min_item_interactions=1,
                split="random", ratios=(0.8, 0.1, 0.1), seed=0, name=None):
    """read_log's work: (Interactions, what was dropped at each step)."""
    if min_rating is not None:
        min_rating = _finite(min_rating, "min_rating")
    min_user = validation.positive_int(min_user_interactions, "min_user_interactions")
    min_item = validation.positive_int(min_item_interactions, "min_item_interactions")
    split = validation.choice(split, "split", log_split.SPLITS)
    ratios = log_split.checked_ratios(ratios)
    seed = validation.non_negative_int(seed, "seed")
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (an interaction log was expected)")
    columns = _read(path, sep, {"user": user, "item": item, "rating": rating, "time": time},
                    needs_rating=min_rating is not None, needs_time=split == "temporal")
    users, items = columns["user"][0], columns["item"][0]
    report = {"read": int(users.size)}
    options = (f"min_rating={min_rating}, min_user_interactions={min_user}, "
               f"min_item_interactions={min_item}")

    def left(users):
        if users.size == 0:
            raise ValueError(f"{path}: no interaction is left of {report['read']:,} after "
                             f"{options}")

    times = columns.get("time")
    if min_rating is not None:
        keep = columns["rating"] >= min_rating
        users, items = users[keep], items[keep]
        times = times[keep] if times is not None else None
        report["below min_rating"] = int(keep.size - keep.sum())
        left(users)
    read = users.size
    users, items, times = log_split.one_per_pair(users, items, times)
    report["repeated pairs"] = int(read - users.size)
    core = log_split.k_core(users, items, min_user, min_item)
    report["outside the k-core"] = int(core.size - core.sum())
    users, items = users[core], items[core]
    times = times[core] if times is not None else None
    left(users)
    users, user_codes = log_split.dense(users)
    items, item_codes = log_split.dense(items)
    part = log_split.split_per_user(users, times, ratios, split, seed)
    for kind, number in (("train", 0), ("test", 2)):
        if not (part == number).any():
            raise ValueError(f"{path}: the {kind} split is empty with ratios={list(ratios)} "
                             f"(each user's split is about round(n * ratio) of its n "
                             f"interactions) after {options}")
    pairs = {kind: torch.from_numpy(np.stack([users[part == number], items[part == number]]))
             for kind, number in (("train", 0), ("valid", 1), ("test", 2))}
    id_map = IdMap(_raw(columns["user"][1], user_codes), _raw(columns["item"][1], item_codes))
    interactions = Interactions(name or path.stem, int(user_codes.size), int(item_codes.size),
                                pairs["train"], pairs["test"],
                                pairs["valid"] if ratios[1] > 0 else None, id_map=id_map)
    return interactions, report


def _finite(value, name):
    """value as a finite float (negative allowed: some logs rate -1 and 1)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise validation.ArgumentError(name, "a finite number", value)
    return float(value)


def _arrow():
    """pyarrow's modules, or one line saying how to install it."""
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.csv
    except ImportError:
        raise ImportError("reading an interaction log needs pyarrow: pip install pyarrow") \
            from None
    return pyarrow


def _normal(name):
    return re.sub(r"[\s_-]", "", name).lower()


def _header(path, sep):
    """The column names of a log: its header line's, or ratings.dat's."""
    if path.suffix == ".dat" and sep == "::":
        return list(DAT_COLUMNS), False
    with open(path, "rb") as f:
        first = f.readline().decode("utf-8-sig", errors="replace").rstrip("\r\n")
    if not first.strip():
        raise FormatError(path, 1, "no header line (the file or its first line is empty); "
                                   "a log needs a header naming its columns")
    fields = [field.strip().strip('"') for field in first.split(sep)]
    if path.suffix == ".inter":
        fields = [field.split(":")[0] for field in fields]
    return fields, True


def _looks_like_data(fields):
    """Whether a first line is data rather than a header: a column name is
    seldom a number, a rating or a timestamp always is."""
    for field in fields:
        try:
            float(field)
            return True
        except ValueError:
            pass
    return False


def _column(path, fields, role, given, required, why=""):
    """The index of role's column in fields, or None for an absent optional one."""
    shown = ", ".join(fields)
    if given is not None:
        if given not in fields:
            raise validation.ArgumentError(role, f"a column of {path} ({shown})", given)
        return fields.index(given)
    normal = [_normal(field) for field in fields]
    for candidate in COLUMN_NAMES[role]:
        if candidate in normal:
            return normal.index(candidate)
    if not required:
        return None
    if _looks_like_data(fields):
        raise FormatError(path, 1, f"no header line: the first line {', '.join(fields)!r} is "
                                   f"data; a {path.suffix or 'log'} file needs a header line "
                                   f"naming its columns (user, item, ...)")
    raise FormatError(path, 1, f"no {role} column{why}: none of the header's columns ({shown}) "
                               f"has a usual {role} name; name it with {role}=... (--{role})")


def _read(path, sep, given, needs_rating, needs_time):
    """{role: column} of the log: user and item as (codes in the sorted order
    of the raw ids, the sorted distinct raw ids), rating and time (when
    needed) as float64 arrays."""
    if sep is None:
        if path.suffix not in SEPARATORS:
            raise validation.ArgumentError(
                "sep", f"given for {path.name}, whose suffix is none of "
                       f"{', '.join(SEPARATORS)}", None)
        sep = SEPARATORS[path.suffix]
    if not isinstance(sep, str) or not (len(sep) == 1 or sep == "::") or sep in "\"\r\n":
        raise validation.ArgumentError("sep", "one character, or '::'", sep)
    pa = _arrow()
    fields, has_header = _header(path, sep)
    roles = {"user": _column(path, fields, "user", given["user"], True),
             "item": _column(path, fields, "item", given["item"], True)}
    # The rating and the time are read only when used: a log's other columns
    # may hold anything.
    for role, needed, why in (("rating", needs_rating, " (min_rating needs one)"),
                              ("time", needs_time, " (the temporal split needs one)")):
        if needed:
            roles[role] = _column(path, fields, role, given[role], True, why)
        elif given[role] is not None:
            _column(path, fields, role, given[role], False)  # a misspelt name is still named
    if len(set(roles.values())) < len(roles):
        raise validation.ArgumentError("user, item, rating and time", "different columns",
                                       {role: fields[i] for role, i in roles.items()})
    # '::' is read as ':' with an empty column between any two: 2k - 1 columns.
    stride = 2 if sep == "::" else 1
    names = [f"c{i}" for i in range(stride * (len(fields) - 1) + 1)]
    ids = pa.dictionary(pa.int32(), pa.string())
    types = {names[stride * i]: ids if role in ("user", "item") else pa.float64()
             for role, i in roles.items()}
    try:
        table = pa.csv.read_csv(
            path,
            read_options=pa.csv.ReadOptions(column_names=names, skip_rows=int(has_header),
                                            block_size=1 << 24),
            parse_options=pa.csv.ParseOptions(delimiter=sep[0], quote_char='"' if sep == ","
                                              else False),
            convert_options=pa.csv.ConvertOptions(include_columns=list(types),
                                                  column_types=types,
                                                  strings_can_be_null=False))
    except pa.ArrowInvalid as error:
        message = str(error).splitlines()[0]
        column = re.search(r"CSV column #(\d+)", message)
        value = re.search(r"invalid value .*", message)
        if column and value:
            role = next(r for r, i in roles.items() if stride * i == int(column.group(1)))
            raise LogFormatError(path, f"the {role} column {fields[roles[role]]!r} must be "
                                         f"numeric, but has an {value.group()}") from None
        if stride == 2:  # say the fields of the '::' file, not the ':' columns read
            message = re.sub(r"Expected (\d+) columns, got (\d+)", lambda m: (
                f"Expected {(int(m[1]) + 1) // 2} fields, got {(int(m[2]) + 1) // 2}"), message)
        raise LogFormatError(path, f"not a well-formed {sep!r}-separated log: "
                                     f"{message}") from None
    if table.num_rows == 0:
        raise ValueError(f"{path}: no interaction (the file has no data line)")
    columns = {}
    for role, i in roles.items():
        column = table.column(names[stride * i])
        if role in ("user", "item"):
            columns[role] = _codes(pa, column, path, role)
        else:
            if column.null_count:
                raise LogFormatError(path, f"the {role} column {fields[i]!r} has "
                                             f"{column.null_count:,} empty values")
            columns[role] = column.to_numpy()
    return columns


def _codes(pa, column, path, role):
    """(each row's rank among the sorted distinct raw ids, those ids sorted:
    int64 numpy when all are canonical integers, else an arrow string array)."""
    column = column.unify_dictionaries()
    dictionary = column.chunk(0).dictionary
    indices = np.concatenate([chunk.indices.to_numpy(zero_copy_only=False)
                              for chunk in column.chunks]).astype(np.int64)
    if pa.compute.any(pa.compute.equal(dictionary, "")).as_py():
        raise LogFormatError(path, f"an empty {role} id")
    try:
        numbers = pa.compute.cast(dictionary, pa.int64())
        canonical = pa.compute.all(pa.compute.equal(pa.compute.cast(numbers, pa.string()),
                                                    dictionary)).as_py()
    except pa.ArrowInvalid:
        canonical = False
    if canonical:
        numbers = numbers.to_numpy()
        order = np.argsort(numbers, kind="stable")
        raw = numbers[order]
    else:
        order = pa.compute.sort_indices(dictionary).to_numpy()
        raw = dictionary.take(pa.array(order))
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    return rank[indices], raw


def _raw(sorted_ids, codes):
    """The raw ids of the given codes (ranks), as an IdMap side: an int64
    tensor, or a tuple of str."""
    if isinstance(sorted_ids, np.ndarray):
        return torch.from_numpy(sorted_ids[codes])
    return tuple(sorted_ids.take(codes).to_pylist())


def describe(path, **options):
    """What a run would see of a log after filtering and splitting (options as
    read_log's): counts, density, what each step dropped, the split, and the
    degree distribution (min, median, p90, max) of users and items in the
    training graph."""
    interactions, report = prepare_log(path, **options)
    sizes = {kind: 0 if getattr(interactions, kind) is None else
             int(getattr(interactions, kind).shape[1]) for kind in ("train", "valid", "test")}
    total = sum(sizes.values())
    degrees = {}
    for side, row, count in (("users", 0, interactions.num_users),
                             ("items", 1, interactions.num_items)):
        degree = np.bincount(interactions.train[row].numpy(), minlength=count)
        degrees[side] = {"min": int(degree.min()), "median": float(np.median(degree)),
                         "p90": float(np.percentile(degree, 90)), "max": int(degree.max())}
    return {"path": str(path), "users": interactions.num_users, "items": interactions.num_items,
            "interactions": total,
            "density": total / (interactions.num_users * interactions.num_items),
            "read": report.pop("read"), "dropped": report,
            "split": options.get("split", "random"), **sizes, "train_degree": degrees}


def format_description(description):
    """describe()'s dict as a few lines of text."""
    d = description
    dropped = ", ".join(f"{n:,} {why}" for why, n in d["dropped"].items())
    lines = [f"{d['path']}: {d['read']:,} interactions read; dropped {dropped}",
             f"users {d['users']:,}  items {d['items']:,}  interactions {d['interactions']:,}"
             f"  density {d['density']:.3g}",
             f"split ({d['split']}): train {d['train']:,}  valid {d['valid']:,}  "
             f"test {d['test']:,}",
             f"{'train degree':<14}{'min':>8}{'median':>10}{'p90':>10}{'max':>10}"]
    for side, s in d["train_degree"].items():
        lines.append(f"{side:<14}{s['min']:>8,}{s['median']:>10,.1f}{s['p90']:>10,.1f}"
                     f"{s['max']:>10,}")
    return "\n".join(lines)
