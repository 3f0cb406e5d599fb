"""Training LightGCN with BPR on the fused kernels, and evaluating it.

    from lightgcn_ext.training import TrainConfig, train
    results = train(TrainConfig(data="synthetic", epochs=20, out="runs/demo"))

config.py (TrainConfig), step.py (the BPR step, the optimizer, the sampler),
loop.py (the loop, over a written-down `Worker` interface, and the
single-process `LocalWorker`), run_files.py (the run directory's files and the
one atomic writer), run_directory.py (the lock on a run directory and the
checks before a run starts), resume.py (what a resumed run may change),
results.py (results.json and the learning curve), cuda_graph.py
(`CapturedBPRStep`, imported from there: it needs CUDA).
"""
from .config import TrainConfig, check_table_fits, load_data, resolve_device
from .loop import Interrupted, LocalWorker, Worker, load_run_data, train, train_loop
from .step import bpr_step, evaluate_model, make_optimizer, make_sampler

__all__ = ["TrainConfig", "train", "bpr_step", "train_loop", "Worker", "LocalWorker",
           "evaluate_model", "make_optimizer", "make_sampler", "resolve_device", "load_data",
           "load_run_data", "check_table_fits", "Interrupted"]
