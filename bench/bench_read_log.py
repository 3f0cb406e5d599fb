"""How fast and in how much memory an interaction log is read: a synthetic
MovieLens-style CSV (string user ids, integer item ids, ratings, timestamps)
of --lines lines through `lightgcn_ext.data.read_log` (min_rating, 5-core,
temporal split), timed in a fresh process whose peak RSS is its own.

    python -m bench.bench_read_log                  # 10 million lines: ~1 minute in all
    python -m bench.bench_read_log --lines 200000 --quick   # a smoke run, not judged

Targets (for 10 million lines on 2 cores): at most 30 s and 2 GiB peak RSS.
The peak includes the interpreter, torch and pyarrow (the baseline line).
"""
import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.timing import verdict

TARGET_S = 30.0
TARGET_RSS_GB = 2.0
CHUNK = 1_000_000


def write_log(path, lines, seed=0):
    """A CSV of `lines` interactions, written in chunks: about 100 per user
    and 200 per item on average, skewed (heavy users and popular items, many
    light ones), as in MovieLens."""
    import pyarrow as pa
    import pyarrow.compute
    import pyarrow.csv

    rng = np.random.default_rng(seed)
    num_users, num_items = max(lines // 100, 1), max(lines // 200, 1)
    schema = pa.schema([("userId", pa.string()), ("movieId", pa.int64()),
                        ("rating", pa.float64()), ("timestamp", pa.int64())])
    with pa.csv.CSVWriter(str(path), schema) as writer:
        for start in range(0, lines, CHUNK):
            n = min(CHUNK, lines - start)
            users = (num_users * rng.random(n) ** 2).astype(np.int64)
            users = (users * 2654435761) % num_users  # spread the heavy users over the ids
            items = (num_items * rng.random(n) ** 3).astype(np.int64)
            names = pa.compute.binary_join_element_wise(
                "u", pa.compute.cast(pa.array(users), pa.string()), "")
            writer.write_table(pa.table({
                "userId": names, "movieId": items,
                "rating": rng.integers(1, 11, n) / 2,
                "timestamp": 1_000_000_000 + rng.integers(0, 10**8, n)}, schema=schema))


def read_in_child(path, threads):
    """Runs in a fresh process: reads the log, prints time and peak RSS as JSON."""
    import pyarrow

    pyarrow.set_cpu_count(threads)
    import torch

    torch.set_num_threads(threads)
    from lightgcn_ext.data import read_log

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start, cpu = time.perf_counter(), time.process_time()
    interactions = read_log(path, min_rating=3.0, min_user_interactions=5,
                           min_item_interactions=5, split="temporal")
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "peak_bytes": peak,
                      "baseline_bytes": baseline,
                      "interactions": repr(interactions),
                      "ids": interactions.id_map.describe()}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=10_000_000, help="lines of the CSV")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads of the reader")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: the numbers are shown, not judged")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return read_in_child(args.child, args.threads)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "log.csv"
        start = time.perf_counter()
        write_log(path, args.lines)
        print(f"wrote {args.lines:,} lines ({path.stat().st_size / 1e6:,.0f} MB) in "
              f"{time.perf_counter() - start:.1f} s", flush=True)
        child = subprocess.run([sys.executable, "-m", "bench.bench_read_log", "--child",
                                str(path), "--threads", str(args.threads)],
                               capture_output=True, text=True)
    if child.returncode != 0:
        sys.exit(f"reading failed:\n{child.stderr[-3000:]}")
    result = json.loads(child.stdout.splitlines()[-1])
    seconds, peak_gb = result["seconds"], result["peak_bytes"] / 2**30
    judged = not args.quick
    print(f"read: {result['interactions']}; {result['ids']}")
    print(f"baseline RSS (python, torch, pyarrow): {result['baseline_bytes'] / 2**30:.2f} GiB")
    print(f"time {seconds:.1f} s on {args.threads} threads ({result['cpu_seconds']:.1f} s of "
          f"CPU time), target at most {TARGET_S:.0f} s: "
          f"{verdict(seconds <= TARGET_S, TARGET_S / seconds, judged)} under")
    print(f"peak RSS {peak_gb:.2f} GiB, target at most {TARGET_RSS_GB:.0f} GiB: "
          f"{verdict(peak_gb <= TARGET_RSS_GB, TARGET_RSS_GB / peak_gb, judged)} under")
    return 0


if __name__ == "__main__":
    sys.exit(main())
