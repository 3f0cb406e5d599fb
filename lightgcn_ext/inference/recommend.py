"""Top-k items for users of a trained run, in raw ids, and their output as a
table, CSV, JSON or parquet.

    run = load_run("runs/demo")
    users, unknown = find_users(run, ["7", "12"])
    items, scores = top_items(run, users, k=20)      # dense ids, seen items excluded

Scoring is `LightGCN.recommend`'s: one propagation of the whole graph, then
the users in chunks (a chunk's scores `users @ items.T`, its training items
set to -inf, `torch.topk`), so that memory is that of a chunk, never of the
whole users x items matrix.
"""
import numpy as np
import torch

from .. import validation
from .files import write_csv, write_json, write_parquet
from .ids import raw_ids

SUFFIXES = (".csv", ".json", ".parquet")


@torch.no_grad()
def top_items(run, users, k, *, include_seen=False, chunk_size=None):
    """(items, scores): for each dense user id of `users` (distinct), its k
    best items (dense item ids, best first) and their scores, [n, k] each.
    Items the user trained on are left out unless include_seen; a user left
    with fewer than k items gets item -1 (score -inf) in the places it cannot
    fill. ValueError when k is not in [1, number of items]."""
    data = run.data
    expected = f"an int from 1 to {data.num_items:,} (the run's number of items)"
    if validation.as_int(k, "--k", expected) not in range(1, data.num_items + 1):
        raise validation.ArgumentError("--k", expected, k)
    device = run.graph.device
    users = torch.as_tensor(users, dtype=torch.int64).to(device)
    item_nodes = torch.arange(data.num_users, data.num_nodes, device=device)
    exclude = None if include_seen else data.edge_index()[:, :data.train.shape[1]]
    nodes, scores = run.model.recommend(run.graph, src_index=users, dst_index=item_nodes, k=k,
                                        exclude=exclude, chunk_size=chunk_size,
                                        return_scores=True)
    items = torch.where(nodes >= 0, nodes - data.num_users, nodes)
    return items.cpu(), scores.cpu()


def recommendation_rows(run, users, items, scores):
    """{"user", "rank", "item", "score"}: one entry per recommendation (raw
    ids, rank 1 the best), the places a user could not fill left out."""
    filled = items >= 0
    per_user = filled.sum(dim=1)
    ranks = torch.arange(1, items.shape[1] + 1).expand_as(items)
    return dict(user=raw_ids(run, "users", users).repeat(per_user.numpy()),
                rank=ranks[filled].numpy(),
                item=raw_ids(run, "items", items[filled]),
                score=scores[filled].float().numpy())


def write_recommendations(path, rows):
    """rows (recommendation_rows) into path, by its suffix: .csv and .parquet
    one row per recommendation, .json one object per user with its items and
    scores, best first."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        write_parquet(path, rows)
    elif suffix == ".csv":
        write_csv(path, {name: _python(values) for name, values in rows.items()})
    else:
        write_json(path, _per_user(rows))


def format_table(rows):
    """The recommendations as an aligned text table, one line each."""
    header = ("user", "rank", "item", "score")
    lines = [header] + list(zip(map(str, _python(rows["user"])), map(str, rows["rank"]),
                                map(str, _python(rows["item"])),
                                (f"{s:.5g}" for s in rows["score"].tolist())))
    widths = [max(len(line[c]) for line in lines) for c in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in lines)


def _per_user(rows):
    users = _python(rows["user"])
    entries = []
    for user, rank, item, score in zip(users, rows["rank"].tolist(), _python(rows["item"]),
                                       rows["score"].tolist()):
        if rank == 1:
            entries.append(dict(user=user, items=[], scores=[]))
        entries[-1]["items"].append(item)
        entries[-1]["scores"].append(score)
    return entries


def _python(values):
    """A numpy array's entries as Python ints, floats or strs."""
    return np.asarray(values).tolist()
