"""Starting and ending a distributed run: the process group, glibc's malloc
settings, and `train_distributed`, which runs lightgcn_ext.training's loop with a
`DistributedWorker` on every process that torchrun started."""
import ctypes
import datetime
import os
import platform

import torch
import torch.distributed as dist

from ..training import check_table_fits, load_run_data, resolve_device, train_loop
from ..training.config import check_precision, is_log
from ..training.run_directory import RunDirectory
from .exchange import collective
from .graph import CHUNK_ROWS
from .worker import DistributedWorker

DEFAULT_TIMEOUT_S = 120.0


def map_sub_round_buffers(dim, itemsize=4):
    """Asks glibc's malloc to give every block of at least one sub-round's
    buffer (CHUNK_ROWS rows of dim floats: 16 MiB at d = 64) its own mapping,
    so that a freed one goes back to the system at once, and to trim its heap
    above twice that (the ratio glibc's own, moving, thresholds keep). By
    default the mapping threshold rises to 32 MiB as large blocks are freed,
    and the sub-rounds' buffers, freed and allocated again many times a step,
    stay in the heap: about 300 MiB of resident memory that no tensor holds,
    per rank of bench_distributed's 2,000,000-node graph (VmRSS sampled
    through the steps, with and without this call). A 1 MiB threshold
    saved about 100 MiB more there, but it costs a page fault per page of
    every smaller buffer, and it made the Gowalla steps of 2 and 4 processes
    1.6-1.9x slower. A single process does not call this: its large buffers
    are mapped anyway. A no-op where malloc is not glibc's."""
    if platform.system() != "Linux":
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    size = min(CHUNK_ROWS * dim * itemsize, 32 << 20)  # glibc's largest mapping threshold
    mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(size))
    mallopt(ctypes.c_int(M_TRIM_THRESHOLD), ctypes.c_int(2 * size))


def train_distributed(config, data=None):
    """lightgcn_ext.training.train across the processes that torchrun started (WORLD_SIZE,
    RANK, MASTER_ADDR, ... in the environment): gloo on CPU, NCCL on CUDA
    (one GPU per process, cuda:LOCAL_RANK). Rank 0 shows progress and writes
    results.json and curve.png; every rank writes its checkpoint shard.
    Rank 0 locks and checks the run directory first, as
    lightgcn_ext.training.train does, before the process group forms: a
    refused start ends the run at once (torchrun stops the other ranks).
    An interaction log is read by every rank before that, as a single
    process does: a mistake in it leaves the run directory untouched."""
    config = config.check()
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    check_precision(config.precision, world_size=int(os.environ.get("WORLD_SIZE", "1")))
    if data is None and is_log(config.data):
        data = load_run_data(config)
    run = None
    if int(os.environ.get("RANK", "0")) == 0:
        run = RunDirectory.open(config.out, resume=config.resume, overwrite=config.overwrite)
    try:
        return _train_distributed(config, data, device)
    finally:
        if run is not None:
            run.release()


def _train_distributed(config, data, device):
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    map_sub_round_buffers(config.dim)  # before the data is read
    owns_group = not dist.is_initialized()
    if owns_group:
        init_process_group("nccl" if device.type == "cuda" else "gloo", config.dist_timeout)
    if data is None:  # rank 0 first: a named data set is downloaded once
        if dist.get_rank() != 0:
            collective(dist.barrier)
        data = load_run_data(config)
        if dist.get_rank() == 0:
            collective(dist.barrier)
    check_table_fits(data, config, device)
    results = train_loop(config, data, DistributedWorker(config, data, device))
    if owns_group:
        close()
    return results


def init_process_group(backend="gloo", timeout=DEFAULT_TIMEOUT_S):
    """dist.init_process_group from torchrun's environment, with a timeout in
    seconds. torch._dynamo is imported first: imported later (torch.optim
    does it), it keeps a reference to the default group, whose gloo threads
    then outlive destroy_process_group and can abort the process at exit
    ("terminate called without an active exception", torch 2.13)."""
    import torch._dynamo  # noqa: F401

    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))


def close():
    """Destroys the default process group once every rank is done with it: a
    rank that tears its connections down while another still finishes its last
    collective can abort that one (gloo)."""
    collective(dist.barrier)
    dist.destroy_process_group()
