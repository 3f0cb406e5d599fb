"""A trained run's user and item embeddings with their raw ids, for an
approximate-nearest-neighbour index: the propagated embeddings
(`model.get_embedding(graph)`), whose dot products are the scores that
`recommend` ranks by.

.npz (numpy.load): user_ids [U], user_embeddings [U, d] float32, item_ids [I],
item_embeddings [I, d] float32; ids int64, or unicode strings for a run whose
raw ids are strings.
.parquet: one row per user and item: kind ("user" or "item"), id, embedding (a
fixed-size list of d float32); id is int64 when both sides' raw ids are
integers, else the ids as strings.
"""
import numpy as np
import torch

from ..training.run_files import atomic_write
from .files import write_parquet
from .ids import raw_ids

SUFFIXES = (".npz", ".parquet")


@torch.no_grad()
def embeddings(run):
    """{"user_ids", "user_embeddings", "item_ids", "item_embeddings"}: numpy
    arrays, dense row k of each embedding being the raw id ids[k]."""
    data = run.data
    embedding = run.model.get_embedding(run.graph).float().cpu().numpy()
    return dict(user_ids=raw_ids(run, "users", torch.arange(data.num_users)),
                user_embeddings=embedding[:data.num_users],
                item_ids=raw_ids(run, "items", torch.arange(data.num_items)),
                item_embeddings=embedding[data.num_users:])


def write_embeddings(path, arrays):
    """arrays (embeddings) into path, .npz or .parquet by its suffix."""
    if path.suffix.lower() == ".npz":
        atomic_write(path, lambda f: np.savez(f, **arrays))
        return
    import pyarrow as pa

    users, items = arrays["user_ids"], arrays["item_ids"]
    if users.dtype.kind != items.dtype.kind:  # one column holds both: strings
        users, items = users.astype(str), items.astype(str)
    table = np.concatenate([arrays["user_embeddings"], arrays["item_embeddings"]])
    dim = table.shape[1]
    write_parquet(path, dict(
        kind=pa.array(["user"] * len(users) + ["item"] * len(items)),
        id=np.concatenate([users, items]),
        embedding=pa.FixedSizeListArray.from_arrays(pa.array(table.reshape(-1)), dim)))
