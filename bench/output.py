"""Where the benchmarks write: files named by device and date, written with the
package's atomic writer (lightgcn_ext.training.run_files.atomic_write: a reader
never sees half a table)."""
import time


def results_stem(device):
    """<device>-<date and time>: one run's files share it."""
    return f"{device.type}-{time.strftime('%Y%m%d-%H%M%S')}"
