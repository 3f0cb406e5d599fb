"""Interactions from torch_geometric's recommendation data sets (an optional dependency)."""
import torch

from .. import validation
from . import log_split
from .interactions import Interactions


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
        validation.choice(split, "split", ("random", "time"))
        pairs = train[:, keep].numpy()
        times = store.time[keep].numpy() if split == "time" else None
        part = log_split.split_per_user(pairs[0], times, (1 - test_fraction, 0, test_fraction),
                                        "temporal" if split == "time" else "random", seed)
        train = torch.from_numpy(pairs[:, part == 0].copy())
        test = torch.from_numpy(pairs[:, part == 2].copy())
    both = torch.cat([train, test], dim=1)
    if num_users is None:
        num_users = int(both[0].max()) + 1 if both.numel() else 0
    if num_items is None:
        num_items = int(both[1].max()) + 1 if both.numel() else 0
    return Interactions(name, num_users, num_items, train, test)
