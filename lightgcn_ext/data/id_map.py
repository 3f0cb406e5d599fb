"""`IdMap`: the raw ids of a data set's dense user and item ids, saved and
loaded as JSON (`{"format": "lightgcn_ext.id_map", "version": 1, "users":
[...], "items": [...]}`, ids as JSON numbers or strings), so that a run can
speak its data's own ids."""
import functools
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import validation
from .text_format import FormatError

ID_MAP_FORMAT = "lightgcn_ext.id_map"


@dataclass(frozen=True)
class IdMap:
    """The raw ids of the dense ids: `users[u]` is the raw id of user u,
    `items[i]` that of item i (int64 arrays for integer ids, object arrays of
    str otherwise), each sorted and without repeats."""

    users: np.ndarray
    items: np.ndarray

    def dense(self, side, raw_ids):
        """The dense ids of raw ids of side ('users' or 'items'), as int64.
        Where the side's ids are integers, their decimal strings ('42') are
        accepted too, as a command line gives them. A raw id that is not in
        the map is an ArgumentError naming it (the first five missing)."""
        position = self._positions[validation.choice(side, "side", ("users", "items"))]
        numeric = getattr(self, side).dtype != object
        found, missing = [], []
        for raw in raw_ids:
            if numeric and isinstance(raw, str) and re.fullmatch(r"-?\d+", raw):
                raw = int(raw)
            if raw in position:
                found.append(position[raw])
            else:
                missing.append(raw)
        if missing:
            raise validation.ArgumentError(side, f"raw ids of the data's {side}", missing[:5])
        return np.array(found, dtype=np.int64)

    @functools.cached_property
    def _positions(self):
        """{side: {raw id: dense id}}, built on the first lookup."""
        return {side: {raw: k for k, raw in enumerate(getattr(self, side).tolist())}
                for side in ("users", "items")}

    def to_json(self):
        return json.dumps({"format": ID_MAP_FORMAT, "version": 1,
                           "users": self.users.tolist(), "items": self.items.tolist()})

    @classmethod
    def from_json(cls, text, source="id map"):
        try:
            content = json.loads(text)
            if content["format"] == ID_MAP_FORMAT and content["version"] == 1:
                return cls(_id_array(content["users"]), _id_array(content["items"]))
        except (ValueError, KeyError, TypeError):
            pass
        raise FormatError(source, 1, f"not an id map ({ID_MAP_FORMAT} version 1 JSON)")

    def save(self, path, write=None):
        """Writes the map as JSON to path: through write(path, bytes) when
        given (a run directory's atomic writer), else through a temporary file
        in the same folder and os.replace, so that no half-written map exists."""
        data = self.to_json().encode()
        if write is not None:
            return write(path, data)
        path = Path(path)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(descriptor, "wb") as out:
                out.write(data)
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise

    @classmethod
    def load(cls, path):
        return cls.from_json(Path(path).read_text(), source=path)


def _id_array(values):
    if not isinstance(values, list):
        raise TypeError(values)
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return np.array(values, dtype=np.int64)
    if all(isinstance(v, str) for v in values):
        return np.array(values, dtype=object)
    raise TypeError(values)
