"""Where the benchmarks write: atomic files (a temporary file, then
os.replace: a reader never sees half a table) named by device and date."""
import os
import tempfile
import time
from pathlib import Path


def write_atomic(path, data):
    """Writes data (str or bytes) to path, creating its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def results_stem(device):
    """<device>-<date and time>: one run's files share it."""
    return f"{device.type}-{time.strftime('%Y%m%d-%H%M%S')}"
