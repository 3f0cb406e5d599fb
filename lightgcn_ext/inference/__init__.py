"""Using a trained run: its model, graph and data back in Python
(`load_run`), top-k recommendations in raw ids, the embeddings for an ANN
index, and its metrics recomputed.

    import lightgcn_ext
    run = lightgcn_ext.load_run("runs/demo")          # best.pt's weights
    users, unknown = find_users(run, ["0", "1"])
    items, scores = top_items(run, users, k=20)

run.py (Run, load_run), ids.py (raw ids in and out), recommend.py, export.py,
evaluate.py, files.py (checked, atomic output files), commands.py (the
recommend, export and evaluate subcommands).
"""
from .evaluate import evaluate_run
from .export import embeddings
from .ids import find_users, raw_ids
from .recommend import top_items
from .run import Run, load_run

__all__ = ["Run", "load_run", "find_users", "raw_ids", "top_items", "embeddings",
           "evaluate_run"]
