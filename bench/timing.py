"""Timing shared by the benchmarks: CUDA events on a GPU, torch.utils.benchmark's
blocked_autorange on CPU, in interleaved rounds so that the drift of a shared
machine hits every workload alike."""
import statistics
import time

import torch
import torch.utils.benchmark as benchmark

MAX_CUDA_RUNS = 1000


def verdict(ok, measured, judged=True):
    """A speed target's verdict line: PASS or FAIL and the measured ratio. A
    --quick run times a small graph, where the targets (set for Gowalla) say
    nothing, so it shows the ratio unjudged."""
    if not judged:
        return f"not judged (--quick): {measured:.2f}x"
    return f"{'PASS' if ok else 'FAIL'}: {measured:.2f}x"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_times_ms(fn, device, min_run_time, threads, min_runs=5, probe=False, warm_up=0):
    """Times of single runs of fn in ms, for min_run_time seconds in all.

    On CUDA, one CUDA-events pair per run, at least min_runs runs and at most
    MAX_CUDA_RUNS, after `warm_up` untimed calls; on CPU, the per-run times of
    blocked_autorange (which warms up itself, estimating its block size).
    With probe, one untimed call comes first (the warm-up, when fn is not warm
    yet) and stretches min_run_time to min_runs times its duration when longer.
    """
    if probe:
        start = time.perf_counter()
        fn()
        sync(device)
        min_run_time = max(min_run_time, min_runs * (time.perf_counter() - start))
    if device.type == "cuda":
        for _ in range(warm_up):
            fn()
        times = []
        while sum(times) < min_run_time * 1e3 or len(times) < min_runs:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            fn()
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
            if len(times) >= MAX_CUDA_RUNS:
                break
        return times
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    return [t * 1e3 for t in timer.blocked_autorange(min_run_time=min_run_time).times]


def time_interleaved(workloads, device, rounds, min_run_time, threads, min_runs=5,
                     probe=False, pool=False, progress=False):
    """{name: median ms} of every workload in `workloads` ({name: fn}), measured
    in `rounds` rounds that each time every workload once (min_run_time seconds
    per workload and round), so that a slow spell of a shared machine hits all
    of them, not whichever ran then.

    By default every workload is warmed up once before the first round and the
    result is the median of the per-round medians. With probe, each measurement
    starts with an untimed call instead (see run_times_ms), plus two more warm-up
    calls on CUDA in the first round. With pool, the result is the median of
    the runs of all rounds together. With progress, prints each round's start.
    """
    if not probe:
        for fn in workloads.values():
            fn()
            sync(device)
    times = {name: [] for name in workloads}
    for round_ in range(rounds):
        if progress:
            print(f"round {round_ + 1}/{rounds} ...", flush=True)
        for name, fn in workloads.items():
            runs = run_times_ms(fn, device, min_run_time, threads, min_runs, probe=probe,
                                warm_up=2 if probe and round_ == 0 else 0)
            if pool:
                times[name] += runs
            else:
                times[name].append(statistics.median(runs))
    return {name: statistics.median(t) for name, t in times.items()}
