"""The files the inference commands write: checked before any work is done
(a known suffix, an existing folder), and written all or nothing
(`lightgcn_ext.training.run_files.atomic_write`), so that a mistake or a
crash never leaves a partial file."""
import csv
import io
import json
from pathlib import Path

from ..training.run_files import atomic_write


def check_output(path, suffixes, option="--output"):
    """path as a Path, after checking that its suffix is one of suffixes and
    that its folder exists (ValueError, one line, otherwise)."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{option} {path}: unknown suffix {path.suffix or '(none)'!r}; "
                         f"expected one of {', '.join(suffixes)}")
    if not path.parent.is_dir():
        raise ValueError(f"{option} {path}: the folder {path.parent} does not exist; create "
                         f"it first")
    if path.is_dir():
        raise ValueError(f"{option} {path} is a directory; expected a file name")
    if path.suffix.lower() == ".parquet":
        _pyarrow(option, path)  # before any work: a missing package is a mistake too
    return path


def write_csv(path, columns):
    """columns {name: sequence}, one row per index, with a header line."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows(zip(*columns.values()))
    atomic_write(path, text.getvalue())


def write_json(path, entries):
    """A JSON list, one entry a line."""
    atomic_write(path, "[\n" + ",\n".join(json.dumps(entry) for entry in entries) + "\n]\n")


def write_parquet(path, columns):
    """columns {name: numpy array or pyarrow array} as one parquet table."""
    pa, pq = _pyarrow("--output", path)
    table = pa.table(columns)
    atomic_write(path, lambda f: pq.write_table(table, f))


def _pyarrow(option, path):
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{option} {path}: writing parquet needs pyarrow (pip install "
                         f"pyarrow); or choose another suffix") from None
    return pa, pq
