"""The command line: `python -m lightgcn_ext train ...` (also the `lightgcn-ext` command).

It parses the options into a TrainConfig and launches the training: in this
process (lightgcn_ext.training.train), or, under torchrun with several
processes (WORLD_SIZE > 1), across them (lightgcn_ext.distributed.train_distributed).
"""
import argparse
import os
import shlex
import sys

from .data import DownloadError
from .data.sampling import SAMPLING
from .inference.commands import COMMANDS as RUN_COMMANDS, add_commands, run_command
from .propagation import PRECISIONS
from .training import Interrupted, TrainConfig, train
from .training.config import LOG_OPTIONS
from .training.results import best_line
from .training.run_files import CHECKPOINT

DEFAULTS = TrainConfig()


def _parser():
    parser = argparse.ArgumentParser(prog="lightgcn-ext", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser(
        "train", help="train LightGCN with BPR on the fused kernels and evaluate it",
        description="Trains LightGCN (BPR loss, Adam, one fused full-graph propagation per "
                    "step), evaluates recall/ndcg/precision/hit@k over the full item ranking "
                    "beside a popularity baseline, and writes results.json, curve.png, "
                    "checkpoint.pt (the last epoch) and best.pt (the best epoch's weights) into "
                    "--out, which it locks for the run. Under torchrun --nproc-per-node P it trains across the "
                    "P processes, each owning a block of the nodes (gloo on CPU, NCCL on CUDA).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("--data", default=DEFAULTS.data,
                       help="'synthetic' (embedded, no files), a named data set ('gowalla', "
                            "'yelp2018', 'amazon-book'; downloaded once into $LIGHTGCN_EXT_DATA "
                            "or ~/.cache/lightgcn_ext), a directory with train.txt and "
                            "test.txt (optional valid.txt) in the LightGCN format, or an "
                            "interaction log with raw ids (a .csv, .tsv, RecBole .inter or "
                            "MovieLens ratings.dat file; see the interaction log options). A "
                            "name that is also an existing directory is that directory, unless "
                            "--data-root is given")
    train.add_argument("--keep-ids", action="store_true",
                       help="take a data directory's ids as given (id k is row k of the "
                            "model) instead of numbering the ids in use 0, 1, ...")
    train.add_argument("--data-root", default=None,
                       help="where named data sets are kept (default: $LIGHTGCN_EXT_DATA, "
                            "else ~/.cache/lightgcn_ext)")
    train.add_argument("--dim", type=int, default=DEFAULTS.dim, help="embedding size")
    train.add_argument("--layers", type=int, default=DEFAULTS.layers,
                       help="propagation layers L")
    train.add_argument("--epochs", type=int, default=DEFAULTS.epochs,
                       help="epochs in all (an epoch: as many BPR triples as training "
                            "interactions)")
    train.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size,
                       help="BPR triples per step")
    train.add_argument("--sampling", choices=SAMPLING, default=DEFAULTS.sampling,
                       help="how an epoch's BPR triples are drawn, as many as there are "
                            "training interactions: 'interactions', each interaction once "
                            "(as PyG's and RecBole's examples); 'users', a user drawn "
                            "uniformly, then one of its items (as the LightGCN authors' code)")
    train.add_argument("--precision", choices=PRECISIONS, default=DEFAULTS.precision,
                       help="how a training step's propagation stores the layers it gathers: "
                            "'bf16' keeps them in bfloat16 (half the bytes read, a faster "
                            "step; sums, weights, Adam's state and evaluation stay float32)")
    train.add_argument("--lr", type=float, default=DEFAULTS.lr, help="Adam learning rate")
    train.add_argument("--reg", type=float, default=DEFAULTS.reg,
                       help="L2 weight lambda on the batch's layer-0 embeddings, as the paper")
    train.add_argument("--device", default=DEFAULTS.device,
                       help="'auto' (CUDA when available), 'cpu', 'cuda' or 'cuda:N'")
    train.add_argument("--out", default=DEFAULTS.out,
                       help="run directory: results.json, curve.png, checkpoint.pt")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in --out from its last checkpoint (lr, reg, "
                            "epochs, eval-every, patience, max-epochs-now, threads, device "
                            "may change; the changes are recorded in results.json)")
    train.add_argument("--overwrite", action="store_true",
                       help="start over in an --out that holds another run, deleting it")
    train.add_argument("--seed", type=int, default=DEFAULTS.seed,
                       help="seed of the initialization, the sampler and an interaction "
                            "log's random split (same seed, same device: same metrics)")
    train.add_argument("--eval-every", type=int, default=DEFAULTS.eval_every,
                       help="evaluate every this many epochs (and after the last)")
    train.add_argument("--patience", type=int, default=DEFAULTS.patience,
                       help="stop after this many evaluations without a better recall@k "
                            "(0: never stop early)")
    train.add_argument("--topk", type=int, nargs="+", default=list(DEFAULTS.topk),
                       help="the k of the metrics; the first one drives early stopping")
    train.add_argument("--max-epochs-now", type=int, default=0,
                       help="stop this invocation after this many epochs (0: no limit); with "
                            "--resume, a long run proceeds in pieces that fit a time slot")
    train.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                       help="write the checkpoint, results.json and curve.png every N epochs "
                            "(and at the end); default: whenever at least 50 times as long "
                            "as their last writing took has passed (at most 2%% of the time)")
    train.add_argument("--threads", type=int, default=None,
                       help="CPU threads (torch.set_num_threads); default: torch's")
    train.add_argument("--dist-timeout", type=float, default=DEFAULTS.dist_timeout,
                       help="under torchrun (several processes): seconds a collective waits "
                            "for the others before the run fails with an error")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.add_argument("--tensorboard", action="store_true",
                       help="write the loss, every metric and the step time per epoch for "
                            "TensorBoard into --out's tensorboard/ (needs `pip install "
                            "tensorboard`)")
    _add_log_options(train, seed=False)
    _add_data_command(commands)
    add_commands(commands)
    return parser


def _add_log_options(parser, seed=True):
    """The options of reading an interaction log (lightgcn_ext.data.read_log);
    seed=False where the parser has a --seed of its own, which seeds the
    split too."""
    log = parser.add_argument_group("interaction log (.csv, .tsv, RecBole .inter, "
                                    "MovieLens ratings.dat)")
    log.add_argument("--user", help="the user column (default: the first of user, user_id, "
                                    "userId, uid, ...)")
    log.add_argument("--item", help="the item column (default: the first of item, item_id, "
                                    "itemId, movieId, ...)")
    log.add_argument("--rating", help="the rating column, read for --min-rating (default: "
                                      "rating, score, ...)")
    log.add_argument("--time", help="the time column, read for --split temporal (default: "
                                    "timestamp, time, ts, unixtime)")
    log.add_argument("--sep", help="the separator (default by suffix: .csv ',', .tsv and "
                                   ".inter tab, .dat '::')")
    log.add_argument("--min-rating", type=float,
                     help="keep interactions rated at least this (implicit feedback)")
    log.add_argument("--min-user-interactions", type=int,
                     default=DEFAULTS.min_user_interactions,
                     help="k-core: keep users with at least this many interactions")
    log.add_argument("--min-item-interactions", type=int,
                     default=DEFAULTS.min_item_interactions,
                     help="k-core: keep items with at least this many interactions")
    log.add_argument("--split", choices=("random", "temporal"), default=DEFAULTS.split,
                     help="each user's last interactions go to test, the ones before to "
                          "valid: in a seeded shuffle, or by time")
    log.add_argument("--ratios", type=float, nargs=3, default=list(DEFAULTS.ratios),
                     metavar=("TRAIN", "VALID", "TEST"), help="the split's fractions")
    if seed:
        log.add_argument("--seed", type=int, default=DEFAULTS.seed,
                         help="seed of the random split")


def _log_options(args):
    """The log options of the parsed args, as TrainConfig's fields (and read_log's)."""
    return {name: tuple(args.ratios) if name == "ratios" else getattr(args, name)
            for name in LOG_OPTIONS}


def _add_data_command(commands):
    data = commands.add_parser("data", help="look at a data set before training on it")
    actions = data.add_subparsers(dest="action", required=True)
    describe = actions.add_parser(
        "describe", help="users, items, interactions, density and degrees after filtering "
                         "and splitting",
        description="Prints what a run would see of an interaction log after the rating "
                    "threshold, the k-core and the split: users, items, interactions, density, "
                    "the split sizes and the degree distribution of the training graph.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    describe.add_argument("path", help="the interaction log")
    _add_log_options(describe)


def _data_command(args):
    """`data describe`: a bad file or option is one line on stderr and exit 2."""
    from .data import describe, format_description

    try:
        description = describe(args.path, **_log_options(args), seed=args.seed)
    except (ValueError, OSError, ImportError) as error:
        print(f"lightgcn-ext data {args.action}: error: {error}", file=sys.stderr)
        return 2
    print(format_description(description))
    return 0


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.command == "data":
        return _data_command(args)
    if args.command in RUN_COMMANDS:
        return run_command(args)
    config = TrainConfig(data=args.data, data_root=args.data_root, dim=args.dim,
                         layers=args.layers, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, reg=args.reg, sampling=args.sampling,
                         precision=args.precision, device=args.device, out=args.out,
                         resume=args.resume, seed=args.seed, eval_every=args.eval_every,
                         patience=args.patience, topk=tuple(args.topk),
                         max_epochs_now=args.max_epochs_now, progress=not args.no_progress,
                         dist_timeout=args.dist_timeout, overwrite=args.overwrite,
                         ids="given" if args.keep_ids else "dense", threads=args.threads,
                         tensorboard=args.tensorboard, checkpoint_every=args.checkpoint_every,
                         **_log_options(args))
    try:
        results = launch(config)
    except Interrupted as stopped:
        resume = "" if not stopped.saved else f"; resume with: {_resume_command(argv)}"
        print(f"lightgcn-ext train: {stopped}{resume}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("lightgcn-ext train: interrupted before the first epoch: nothing was trained",
              file=sys.stderr)
        return 130
    except (ValueError, OSError, ConnectionError, DownloadError) as error:
        # User mistakes and the machine's refusals (a full disk, no network):
        # ValueErrors name the option and what to do, one line each.
        message = " ".join(str(error).split("\n"))
        sys.exit(f"lightgcn-ext train: error: {message}")
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 reports
    out = config.out
    print(f"done: {results['epochs_done']} epochs" + (" (stopped early)"
                                                      if results["stopped_early"] else ""))
    best = results["best"]
    if best:
        print(best_line(results))
        if best.get("weights"):
            print(f"best epoch's weights: {out}/{best['weights']}  last epoch's checkpoint "
                  f"(what --resume continues): {out}/{CHECKPOINT}")
    elif results["epochs_done"]:
        print(f"no epoch was evaluated; last epoch's checkpoint: {out}/{CHECKPOINT}")
    print(f"results: {out}/results.json  plot: {out}/curve.png")
    return 0


def _resume_command(argv):
    """The command line that continues this run: this one with --resume
    (and without --overwrite)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [a for a in argv if a != "--overwrite"] + ([] if "--resume" in argv else ["--resume"])
    return shlex.join(["python", "-m", "lightgcn_ext"] + argv)


def launch(config):
    """Trains in this process, or across torchrun's processes when there are several."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from .distributed import train_distributed  # a single process imports none of it

        return train_distributed(config)
    return train(config)


def console_main():
    """The process's entry point (`python -m lightgcn_ext`, `lightgcn-ext`): main's
    status becomes the exit status. After a Ctrl-C that main handled (130), the
    process ends with os._exit: CPython can flag a KeyboardInterrupt as unhandled
    although it was caught (one raised inside code run through PyRun_*), and then
    ends the process by SIGINT instead of with 130; a loaded test machine showed
    exactly that, after main had printed its message. The run's files are whole
    by then, and its lock goes with the process."""
    status = main()
    if status == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(status)
