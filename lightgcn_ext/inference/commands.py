"""The command line of a trained run: `recommend`, `export` and `evaluate`
(`add_commands` adds them to the CLI's subcommands, `run_command` runs one).

Every mistake a user can make (a --run that holds no model, users that are
not in the data, an --output that cannot be written) is one line on stderr
and exit status 2, found before any file is written; every output file is
written whole or not at all.
"""
import argparse
import sys
from pathlib import Path

from .evaluate import SPLITS, evaluate_run, format_evaluation
from .export import SUFFIXES as EXPORT_SUFFIXES
from .export import embeddings, write_embeddings
from .files import check_output
from .ids import find_users
from .recommend import SUFFIXES as RECOMMEND_SUFFIXES
from .recommend import format_table, recommendation_rows, top_items, write_recommendations
from .run import CHECKPOINTS, load_run

COMMANDS = ("recommend", "export", "evaluate")
# How many unknown users the warning names (it always gives their count).
SHOWN_UNKNOWN = 5


def positive_int(text):
    """argparse's type for --k and --topk: a positive int."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive int, got {text!r}")
    return value


def add_commands(subparsers):
    """Adds recommend, export and evaluate to the CLI's subparsers."""
    formatter = argparse.ArgumentDefaultsHelpFormatter
    recommend = subparsers.add_parser(
        "recommend", help="top-k items for users of a trained run, in raw ids",
        description="Prints (or writes to --output) the k best items for each user, with "
                    "their scores, in the raw ids of the run's data; the items a user trained "
                    "on are left out unless --include-seen. Users that are not in the run's "
                    "data are named on stderr and skipped.", formatter_class=formatter)
    _add_run_options(recommend)
    users = recommend.add_mutually_exclusive_group(required=True)
    users.add_argument("--users", nargs="+", metavar="USER", help="raw user ids")
    users.add_argument("--users-file", metavar="FILE",
                       help="a file of raw user ids, one per line")
    recommend.add_argument("--k", type=positive_int, default=20, help="items per user")
    recommend.add_argument("--include-seen", action="store_true",
                           help="keep the items each user trained on")
    recommend.add_argument("--output", metavar="FILE",
                           help="write to FILE instead of printing: .csv and .parquet one row "
                                "per recommendation (user, rank, item, score), .json one "
                                "object per user")

    export = subparsers.add_parser(
        "export", help="user and item embeddings of a trained run, with raw ids",
        description="Writes the propagated user and item embeddings (their dot products "
                    "are the recommendation scores) with their raw ids, for an ANN index. "
                    ".npz: arrays user_ids, user_embeddings, item_ids, item_embeddings; "
                    ".parquet: columns kind (user/item), id, embedding.",
        formatter_class=formatter)
    _add_run_options(export)
    export.add_argument("--output", metavar="FILE", required=True, help=".npz or .parquet")

    evaluate = subparsers.add_parser(
        "evaluate", help="recompute a trained run's metrics, beside the popularity baseline",
        description="Recomputes recall, ndcg, precision and hit@k of the run's saved weights "
                    "over the full item ranking (as training does), beside the popularity "
                    "baseline and the value results.json recorded for the same epoch.",
        formatter_class=formatter)
    _add_run_options(evaluate)
    evaluate.add_argument("--split", choices=SPLITS, default="test",
                          help="the split to evaluate on ('valid' where the run has one)")
    evaluate.add_argument("--topk", type=positive_int, nargs="+", default=None,
                          help="the k of the metrics (default: the run's --topk)")


def _add_run_options(parser):
    parser.add_argument("--run", required=True, metavar="DIR",
                        help="the run directory (lightgcn-ext train --out DIR)")
    parser.add_argument("--checkpoint", choices=CHECKPOINTS, default="best",
                        help="the weights: 'best' (best.pt, the best evaluated epoch) or "
                             "'last' (the last epoch's checkpoint)")
    parser.add_argument("--device", default="auto",
                        help="'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when available)")


def run_command(args):
    """Runs args.command (one of COMMANDS); returns the exit status. A
    mistake is one line on stderr and status 2."""
    try:
        return {"recommend": _recommend, "export": _export,
                "evaluate": _evaluate}[args.command](args)
    except (ValueError, OSError) as error:
        message = " ".join(str(error).split())
        print(f"lightgcn-ext {args.command}: error: {message}", file=sys.stderr)
        return 2


def _recommend(args):
    output = None if args.output is None else check_output(args.output, RECOMMEND_SUFFIXES)
    names = args.users if args.users is not None else _read_users(args.users_file)
    option = "--users" if args.users is not None else f"--users-file {args.users_file}"
    run = load_run(args.run, args.checkpoint, args.device)
    users, unknown = find_users(run, names)
    if not users.numel():
        raise ValueError(f"{option}: no user given is a user of the run {run.path} "
                         f"({len(unknown):,} given: {_some(unknown)}); give raw user ids of "
                         f"its data")
    if unknown:
        print(f"lightgcn-ext recommend: skipped {len(unknown):,} of the "
              f"{_count(len(unknown) + len(users), 'user')} given, not in the run's data: "
              f"{_some(unknown)}", file=sys.stderr)
    items, scores = top_items(run, users, args.k, include_seen=args.include_seen)
    rows = recommendation_rows(run, users, items, scores)
    if output is None:
        print(format_table(rows))
    else:
        write_recommendations(output, rows)
        print(f"{_count(len(rows['rank']), 'recommendation')} for "
              f"{_count(len(users), 'user')}: {output}")
    return 0


def _read_users(path):
    """The raw user ids of a file, one per line (blank lines skipped)."""
    try:
        lines = Path(path).expanduser().read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"--users-file {path}: cannot read it "
                         f"({getattr(error, 'strerror', None) or error})") from None
    names = [line.strip() for line in lines if line.strip()]
    if not names:
        raise ValueError(f"--users-file {path} names no user (expected one raw user id per "
                         f"line)")
    return names


def _count(number, noun):
    return f"{number:,} {noun}{'s' * (number != 1)}"


def _some(names):
    shown = ", ".join(repr(name) for name in names[:SHOWN_UNKNOWN])
    return shown + (", ..." if len(names) > SHOWN_UNKNOWN else "")


def _export(args):
    output = check_output(args.output, EXPORT_SUFFIXES)
    run = load_run(args.run, args.checkpoint, args.device)
    arrays = embeddings(run)
    write_embeddings(output, arrays)
    print(f"{len(arrays['user_ids']):,} users and {len(arrays['item_ids']):,} items, "
          f"dimension {arrays['user_embeddings'].shape[1]}: {output}")
    return 0


def _evaluate(args):
    run = load_run(args.run, args.checkpoint, args.device)
    evaluation = evaluate_run(run, args.split, args.topk)
    print("\n".join(format_evaluation(run, args.split, evaluation)))
    return 0
