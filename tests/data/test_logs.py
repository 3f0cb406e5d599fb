"""lightgcn_ext.data.logs: interaction logs with raw ids (CSV, TSV, RecBole
.inter, MovieLens ratings.dat) read into Interactions and id maps; the
threshold, the k-core and the splits checked against plain-Python references;
bad input named in one line, by the function and by `lightgcn-ext data describe`."""
import random
import re
import subprocess
import sys
from collections import Counter, defaultdict

import numpy as np
import pytest
import torch

from helpers import REPO, write_splits
from lightgcn_ext.data import FormatError, IdMap, describe, format_description, read_dir, read_log
from lightgcn_ext.cli import main
from lightgcn_ext.data import log_split
from lightgcn_ext.validation import ArgumentError

pytest.importorskip("pyarrow", reason="interaction logs need pyarrow (tools/install_deps.py)")

HEADER = "userId,movieId,rating,timestamp"


def make_rows(seed=0, users=60, items=50, lines=900):
    """MovieLens-like rows (user, item, rating, time): string ids whose sorted
    order is not their first appearance, skewed activity, repeated pairs,
    ratings 0.5-5, distinct times."""
    rng = random.Random(seed)
    user_names = [f"user-{rng.randrange(10**6):06d}" for _ in range(users)]
    item_names = [f"m{rng.randrange(10**4)}x" for _ in range(items)]
    times = rng.sample(range(10**9, 10**9 + 10**7), lines)
    return [(user_names[int(users * rng.random() ** 3)], item_names[int(items * rng.random() ** 2)],
             rng.randrange(1, 11) / 2, times[k]) for k in range(lines)]


def write_csv(path, rows, header=HEADER, sep=","):
    path.write_text("\n".join([header] + [sep.join(str(v) for v in row) for row in rows]) + "\n")
    return path


@pytest.fixture(scope="module")
def rows():
    return make_rows()


@pytest.fixture
def csv_log(tmp_path, rows):
    return write_csv(tmp_path / "ratings.csv", rows)


def read(path, **options):
    """(Interactions, its id map)."""
    interactions = read_log(path, **options)
    return interactions, interactions.id_map


def as_list(ids):
    """An id map's side (an int64 tensor, or a tuple of str) as a list."""
    return ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)


def raw_pairs(interactions, ids, split):
    pairs = getattr(interactions, split)
    return list(zip(as_list(ids.raw_users(pairs[0])), as_list(ids.raw_items(pairs[1]))))


def all_raw_pairs(interactions, ids):
    return [p for split in ("train", "valid", "test") for p in raw_pairs(interactions, ids, split)]


def same_data(ia, ib):
    assert (ia.num_users, ia.num_items) == (ib.num_users, ib.num_items)
    assert ia.id_map == ib.id_map
    for split in ("train", "valid", "test"):
        assert torch.equal(getattr(ia, split), getattr(ib, split)), split


# ----------------------------------------------------------------- the maps
def test_the_maps_lose_or_duplicate_no_raw_id(csv_log, rows):
    interactions, ids = read(csv_log)
    assert ids.users == tuple(sorted({r[0] for r in rows}))  # sorted, each once
    assert ids.items == tuple(sorted({r[1] for r in rows}))
    pairs = all_raw_pairs(interactions, ids)
    assert len(pairs) == len(set(pairs))  # one interaction per pair
    assert set(pairs) == {(r[0], r[1]) for r in rows}


def test_integer_ids_are_sorted_as_numbers_and_kept_as_ints(tmp_path):
    path = write_csv(tmp_path / "log.csv", [(10, 2, 1, 1), (9, 2, 1, 2), (9, 100, 1, 3),
                                            (10, "007", 1, 4)], header="user,item,rating,time")
    interactions, ids = read(path, ratios=(0.5, 0, 0.5))
    assert ids.users.tolist() == [9, 10] and ids.users.dtype == torch.int64
    assert ids.items == ("007", "100", "2")  # "007" is not the integer 7: strings


def test_columns_that_are_not_used_are_not_read(tmp_path, rows):
    """A text rating and a date are fine when neither min_rating nor the
    temporal split asks for them; a misspelt column is named all the same."""
    path = write_csv(tmp_path / "log.csv", [(u, i, "liked", "2020-01-01") for u, i, *_ in rows],
                     header="user,item,rating,timestamp")
    same_data(read_log(path), read_log(write_csv(tmp_path / "ratings.csv", rows)))
    with pytest.raises(ArgumentError, match="time must be a column of"):
        read_log(path, time="when")


def test_the_id_map_round_trips_through_a_saved_state_and_looks_up(tmp_path, csv_log):
    """The map a run directory saves (torch.save of its state_dict, loaded
    with weights_only=True), with string ids and with integer ids."""
    _, ids = read(csv_log)
    numeric = IdMap(torch.tensor([3, 7, 42]), ("a", "b"))
    for id_map in (ids, numeric):
        torch.save(id_map.state_dict(), tmp_path / "ids.pt")
        loaded = IdMap.from_state_dict(torch.load(tmp_path / "ids.pt", weights_only=True))
        assert loaded == id_map and loaded != IdMap(torch.tensor([3]), ("a", "b"))
    assert numeric.dense_users([42, 3]).tolist() == [2, 0]
    assert numeric.dense_items(["b", "a"]).tolist() == [1, 0]
    assert numeric.raw_items(torch.tensor([1, 0])) == ["b", "a"]
    assert ids.dense_items(ids.items[::-1]).tolist() == list(range(len(ids.items)))[::-1]
    assert f"{len(ids.users)} users (string ids)" in ids.describe() and not ids.is_identity
    with pytest.raises(ValueError, match="item id 'c' does not occur in the data"):
        numeric.dense_items(["a", "c"])


# -------------------------------------------------- threshold and the k-core
def brute_force_core(pairs, min_user, min_item):
    """The k-core by removing one offending user or item at a time, in any
    order (the k-core is the largest subgraph that satisfies both bounds)."""
    pairs = set(pairs)
    while True:
        users, items = Counter(u for u, _ in pairs), Counter(i for _, i in pairs)
        rare_user = next((u for u, n in users.items() if n < min_user), None)
        rare_item = next((i for i, n in items.items() if n < min_item), None)
        if rare_user is None and rare_item is None:
            return pairs
        if rare_user is not None:
            pairs = {p for p in pairs if p[0] != rare_user}
        else:
            pairs = {p for p in pairs if p[1] != rare_item}


@pytest.mark.parametrize("min_user, min_item, min_rating", [(5, 5, None), (8, 3, 3.0),
                                                             (2, 4, 3.0), (1, 1, 2.0)])
def test_k_core_reaches_the_fixed_point_of_a_brute_force_reference(csv_log, rows, min_user,
                                                                   min_item, min_rating):
    kept = [(r[0], r[1]) for r in rows if min_rating is None or r[2] >= min_rating]
    expected = brute_force_core(kept, min_user, min_item)
    assert 0 < len(expected) < len(set(kept)) or (min_user, min_item) == (1, 1)
    interactions, ids = read(csv_log, min_user_interactions=min_user,
                                 min_item_interactions=min_item, min_rating=min_rating)
    pairs = all_raw_pairs(interactions, ids)
    assert sorted(pairs) == sorted(expected)
    assert min(Counter(u for u, _ in pairs).values()) >= min_user
    assert min(Counter(i for _, i in pairs).values()) >= min_item
    assert ids.users == tuple(sorted({u for u, _ in expected}))


def test_a_repeated_pair_is_kept_once_at_its_earliest_time(tmp_path):
    path = write_csv(tmp_path / "log.csv", [("a", "x", 5, 30), ("a", "x", 1, 10), ("a", "y", 1, 20),
                                            ("b", "x", 1, 40)])
    interactions, ids = read(path, split="temporal", ratios=(0.5, 0, 0.5))
    # a's (a, x) at time 10 is its first interaction, (a, y) at 20 its last: test.
    assert raw_pairs(interactions, ids, "test") == [("a", "y")]
    assert sorted(raw_pairs(interactions, ids, "train")) == [("a", "x"), ("b", "x")]


# ---------------------------------------------------------------- the splits
def expected_counts(n, valid_ratio, test_ratio):
    """(train, valid, test) of a user with n interactions: rounded (half to
    even), at least one test interaction, at least one training interaction."""
    test = min(max(round(n * test_ratio), 1 if test_ratio else 0), max(n - 1, 0))
    valid = max(0, min(round(n * (valid_ratio + test_ratio)) - test, n - 1 - test))
    return n - valid - test, valid, test


def per_user(interactions, ids):
    counts = defaultdict(lambda: [0, 0, 0])
    for k, split in enumerate(("train", "valid", "test")):
        for user, _ in raw_pairs(interactions, ids, split):
            counts[user][k] += 1
    return counts


def test_the_temporal_split_puts_each_users_latest_interactions_in_test(csv_log, rows):
    interactions, ids = read(csv_log, split="temporal", ratios=(0.6, 0.2, 0.2))
    first_time = {}
    for user, item, _, time in rows:
        first_time[(user, item)] = min(time, first_time.get((user, item), time))
    times = {split: defaultdict(list) for split in ("train", "valid", "test")}
    for split in times:
        for user, item in raw_pairs(interactions, ids, split):
            times[split][user].append(first_time[(user, item)])
    assert len(times["test"]) > 20
    for user, test_times in times["test"].items():
        assert min(test_times) > max(times["valid"][user] + times["train"][user])
        if times["valid"][user]:
            assert min(times["valid"][user]) > max(times["train"][user])
    for user, counts in per_user(interactions, ids).items():
        assert tuple(counts) == expected_counts(sum(counts), 0.2, 0.2)


def test_the_random_split_is_seeded_deterministic_and_keeps_the_ratios(csv_log, tmp_path, rows):
    first, again = read_log(csv_log, seed=3), read_log(csv_log, seed=3)
    same_data(first, again)
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)  # the lines' order does not matter
    same_data(first, read_log(write_csv(tmp_path / "shuffled.csv", shuffled), seed=3))
    other = read_log(csv_log, seed=4)
    assert not torch.equal(first.test, other.test)
    interactions, ids = first, first.id_map
    for user, counts in per_user(interactions, ids).items():
        assert tuple(counts) == expected_counts(sum(counts), 0.1, 0.1)
    sizes = [getattr(interactions, s).shape[1] for s in ("train", "valid", "test")]
    assert abs(sizes[0] / sum(sizes) - 0.8) < 0.03 and abs(sizes[2] / sum(sizes) - 0.1) < 0.03


def test_no_valid_split_with_a_zero_valid_ratio(csv_log):
    interactions, _ = read(csv_log, ratios=(0.9, 0, 0.1))
    assert interactions.valid is None and interactions.test.shape[1] > 0


def test_the_split_counts_are_the_rounded_ratios():
    counts = np.arange(1, 40)
    valid, test = log_split.split_counts(counts, (0.7, 0.15, 0.15))
    assert [(n - v - t, v, t) for n, v, t in zip(counts.tolist(), valid.tolist(), test.tolist())] \
        == [expected_counts(n, 0.15, 0.15) for n in counts.tolist()]


# --------------------------------------------------------------- the formats
def test_recbole_inter_and_movielens_dat_read_as_the_csv(tmp_path, rows):
    numeric = [(int(u[5:]), int(i[1:-1]), r, t) for u, i, r, t in rows]  # ratings.dat: ints
    expected = read_log(write_csv(tmp_path / "ratings.csv", numeric), min_rating=2.0)
    inter = write_csv(tmp_path / "ml.inter", numeric, sep="\t",
                      header="user_id:token\titem_id:token\trating:float\ttimestamp:float")
    dat = tmp_path / "ratings.dat"
    dat.write_text("".join("::".join(str(v) for v in (u, i, int(r * 2), t)) + "\n"
                           for u, i, r, t in numeric))
    same_data(expected, read_log(inter, min_rating=2.0))
    same_data(expected, read_log(dat, min_rating=4.0))  # the .dat's ratings are doubled
    dat.write_text("1::2::3::4\n5::6\n")
    with pytest.raises(FormatError, match=r"ratings.dat: not a well-formed '::'-separated log: "
                                          r".*Expected 4 fields, got 2: 5::6"):
        read_log(dat)
    tsv = write_csv(tmp_path / "log.tsv", rows, sep="\t", header="user\titem\tscore\tts")
    same_data(read_log(write_csv(tmp_path / "b.csv", rows)), read_log(tsv))


def test_a_csv_with_raw_ids_gives_the_interactions_of_the_lightgcn_files(tmp_path, rows):
    """The same data as LightGCN text files with dense ids and a split, and as a
    log with raw string ids, shuffled lines and times that order the split:
    the same pairs in each split under the map."""
    rng = random.Random(5)
    num_users, num_items = 25, 40
    split_of = {"train": [], "valid": [], "test": []}
    for user in range(num_users):
        items = rng.sample(range(num_items), rng.randrange(3, 20))
        train, valid, test = expected_counts(len(items), 0.1, 0.2)
        for split, part in (("train", items[:train]), ("valid", items[train:train + valid]),
                            ("test", items[train + valid:])):
            split_of[split] += [(user, item) for item in part]
    write_splits(tmp_path / "lightgcn", **{split: "".join(
        f"{u} {i}\n" for u, i in pairs) for split, pairs in split_of.items()})
    text = read_dir(tmp_path / "lightgcn")
    user_name = [f"u{rng.randrange(10**6)}" for _ in range(num_users)]
    item_name = [f"i{rng.randrange(10**6)}" for _ in range(num_items)]
    lines = [(user_name[u], item_name[i], 5.0, 1000 * rank + rng.randrange(1000))
             for rank, split in enumerate(("train", "valid", "test"))
             for u, i in split_of[split]]
    rng.shuffle(lines)
    log, ids = read(write_csv(tmp_path / "log.csv", lines), split="temporal",
                        ratios=(0.7, 0.1, 0.2))
    assert (log.num_users, log.num_items) == (text.num_users, text.num_items)
    for split in ("train", "valid", "test"):
        names = {(user_name[u], item_name[i]) for u, i in getattr(text, split).t().tolist()}
        assert sorted(raw_pairs(log, ids, split)) == sorted(names), split


# ------------------------------------------------------------------- describe
def test_describe_counts_what_a_run_sees(csv_log):
    options = dict(min_user_interactions=5, min_item_interactions=5, min_rating=2.5)
    described = describe(csv_log, **options)
    interactions, _ = read(csv_log, **options)
    sizes = {s: getattr(interactions, s).shape[1] for s in ("train", "valid", "test")}
    assert {k: described[k] for k in sizes} == sizes
    total = sum(sizes.values())
    assert described["interactions"] == total
    assert described["density"] == pytest.approx(total / (interactions.num_users
                                                         * interactions.num_items))
    degree = Counter(interactions.train[0].tolist())
    user_degrees = sorted(degree[u] for u in range(interactions.num_users))
    assert described["train_degree"]["users"]["min"] == user_degrees[0]
    assert described["train_degree"]["users"]["max"] == user_degrees[-1]
    assert described["train_degree"]["users"]["median"] == np.median(user_degrees)
    assert described["read"] - sum(described["dropped"].values()) == total
    text = format_description(described)
    assert f"interactions {total:,}" in text and "median" in text


# ------------------------------------------------------------------ bad input
BAD = [
    ({"user": "uid"}, HEADER, ArgumentError,
     r"user must be a column of .*ratings.csv \(userId, movieId, rating, timestamp\), got 'uid'"),
    ({}, "alice,10,4.0,100", FormatError, r"ratings.csv:1: no header line: the first line"),
    ({}, "who,what,rating,timestamp", FormatError,
     r"no user column: none of the header's columns .* name it with user=\.\.\. \(--user\)"),
    ({"min_rating": 3}, "userId,movieId,rating,timestamp\nalice,10,good,100", FormatError,
     r"the rating column 'rating' must be numeric, but has an invalid value 'good'"),
    ({"ratios": (0.8, 0.1, 0.2)}, HEADER, ArgumentError,
     r"ratios must be three numbers in \[0, 1\] \(train, valid, test\) that sum to 1, "
     r"got \(0.8, 0.1, 0.2\)"),
    ({"min_rating": 100}, HEADER, ValueError,
     r"no interaction is left of 900 after min_rating=100.0, min_user_interactions=1"),
    ({"split": "temporal", "time": None}, "user,item", FormatError,
     r"no time column \(the temporal split needs one\)"),
    ({}, "user,item\na,b\nc", FormatError,
     r"ratings.csv: not a well-formed ','-separated log: .*Expected 2 columns, got 1: c"),
    ({"min_user_interactions": 0}, HEADER, ArgumentError,
     r"min_user_interactions must be a positive int, got 0"),
    ({"split": "time"}, HEADER, ArgumentError, r"split must be one of 'random', 'temporal'"),
]


def bad_file(tmp_path, header, rows):
    if "\n" in header or header == "alice,10,4.0,100":
        return write_csv(tmp_path / "ratings.csv", rows[:0], header=header)
    if header == "user,item":
        return write_csv(tmp_path / "ratings.csv", [r[:2] for r in rows], header=header)
    return write_csv(tmp_path / "ratings.csv", rows, header=header)


@pytest.mark.parametrize("options, header, error, message", BAD)
def test_bad_input_is_one_clear_error(tmp_path, rows, options, header, error, message):
    with pytest.raises(error, match=message):
        read_log(bad_file(tmp_path, header, rows), **options)


CLI_FLAGS = {"user": "--user", "ratios": "--ratios", "min_rating": "--min-rating",
             "split": "--split", "time": None, "min_user_interactions": "--min-user-interactions"}


@pytest.mark.parametrize("options, header, error, message",
                         [case for case in BAD if case[0] != {"split": "time"}])  # argparse's
def test_data_describe_says_bad_input_in_one_line(tmp_path, rows, capsys, options, header,
                                                  error, message):
    args = []
    for name, value in options.items():
        if CLI_FLAGS[name]:
            args += [CLI_FLAGS[name], *map(str, value if isinstance(value, tuple) else [value])]
    assert main(["data", "describe", str(bad_file(tmp_path, header, rows)), *args]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert re.match(r"lightgcn-ext data describe: error: .*" + message, err)


def test_data_describe_prints_the_description(csv_log):
    result = subprocess.run([sys.executable, "-m", "lightgcn_ext", "data", "describe",
                             str(csv_log), "--min-user-interactions", "5", "--split",
                             "temporal", "--ratios", "0.7", "0.1", "0.2"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    expected = format_description(describe(csv_log, min_user_interactions=5, split="temporal",
                                           ratios=(0.7, 0.1, 0.2)))
    assert result.stdout.strip() == expected


def test_without_pyarrow_one_line_says_how_to_install_it(csv_log, monkeypatch):
    for name in ("pyarrow", "pyarrow.csv", "pyarrow.compute"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"^reading an interaction log needs pyarrow: "
                                          r"pip install pyarrow$"):
        read_log(csv_log)
