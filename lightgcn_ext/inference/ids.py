"""A run's raw ids: the users a person names (as text, from the command line
or a file) looked up among the run's users, and dense ids turned back into
raw ones for output."""
import numpy as np
import torch


def raw_ids(run, side, dense):
    """The raw ids of dense user (side="users") or item ids, as a numpy array:
    int64 for integer ids, unicode for string ids."""
    dense = torch.as_tensor(dense, dtype=torch.int64).cpu()
    id_map = run.data.id_map
    if id_map is None:  # the ids were kept as given
        return dense.numpy()
    raw = id_map.raw_users(dense) if side == "users" else id_map.raw_items(dense)
    if isinstance(raw, torch.Tensor):
        return raw.numpy()
    return np.array(raw, dtype=str)


def find_users(run, names):
    """(dense ids of the known users, in the order given and each once, the
    names that are no user of the run). names: raw ids as text; a run whose
    raw ids are integers reads them as integers ("007" is user 7)."""
    names = list(dict.fromkeys(str(name) for name in names))  # each once, in order
    id_map = run.data.id_map
    string_ids = id_map is not None and not isinstance(id_map.users, torch.Tensor)
    known, unknown = [], set()
    for name in names:
        raw = name if string_ids else _as_int(name)
        if raw is None:
            unknown.add(name)
        else:
            known.append((name, raw))
    dense = torch.empty(0, dtype=torch.int64)
    if known:
        try:
            dense = _dense(run, [raw for _, raw in known])
        except ValueError:  # some are unknown: look them up one by one to say which
            found = []
            for name, raw in known:
                try:
                    found.append(int(_dense(run, [raw])[0]))
                except ValueError:
                    unknown.add(name)
            dense = torch.tensor(found, dtype=torch.int64)
    # Two names of one user ("7" and "07") ask once.
    dense = torch.tensor(list(dict.fromkeys(dense.tolist())), dtype=torch.int64)
    return dense, [name for name in names if name in unknown]


def _dense(run, raws):
    """Dense ids of raw user ids; ValueError for one that is not a user."""
    if run.data.id_map is not None:
        return run.data.id_map.dense_users(raws)
    dense = torch.tensor(raws, dtype=torch.int64)
    if dense.numel() and not bool(((dense >= 0) & (dense < run.data.num_users)).all()):
        raise ValueError("a user id out of range")
    return dense


def _as_int(name):
    try:
        value = int(name.strip())
    except ValueError:
        return None
    return value if -2**63 <= value < 2**63 else None  # an int64, as the ids are
