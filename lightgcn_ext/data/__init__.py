"""User-item interaction data for LightGCN: the paper's text format, the paper's data
sets (downloaded once), a seeded synthetic generator with planted structure,
torch_geometric's recommendation data sets, and the BPR sampler.

    from lightgcn_ext import data
    interactions = data.load("gowalla")       # also "yelp2018", "amazon-book": downloaded on
                                              # first use into data_dir()/<name>, checksummed
    interactions = data.load("path/to/dir")   # train.txt, test.txt (optional valid.txt)
    interactions = data.synthetic(seed=0)     # the embedded default: no files, no network
    interactions = data.from_pyg(AmazonBook(root))  # torch_geometric's AmazonBook, MovieLens1M
    interactions = data.read_log("ratings.csv")  # a log with raw ids (.csv, .tsv, RecBole
                                              # .inter, ratings.dat); its id_map: the raw ids
    edge_index = interactions.edge_index()    # the LightGCN graph of the train split, [2, 2n]

Every source gives an `Interactions`: users 0..num_users-1, items 0..num_items-1, and
splits of (user, item) pairs with **item-local** ids. In the graph, user u is node u
and item i is node num_users + i. The text format is described in
`lightgcn_ext.data.text_format`.

As in the LightGCN authors' code, a user who has test (or validation) items but no
training item is kept: it is a node without edges, so its embedding is its layer-0
embedding times alpha_0, and it is evaluated on its test items like every other
user (it never gets a training triple, so it lowers the averages, as it would in the
authors' code; the paper's three data sets have no such user). `load()` refuses a
training or test file without any pair (`ValueError`): there would be nothing to
train on or nothing to evaluate. `Interactions` itself checks every id against
num_users and num_items, so item ids beyond the item count (or graph node ids
passed as item ids) are a `ValueError`, never a wrong metric later.
"""
from .download import DATA_ENV, NAMED, ChecksumError, DownloadError, data_dir, find, load
from .interactions import Interactions, bipartite_edge_index
from .ids import IdMap
from .logs import describe, format_description, read_log
from .pyg import from_pyg
from .sampling import BPRSampler
from .synthetic import synthetic
from .text_format import FormatError, read_dir, read_lists

__all__ = ["Interactions", "bipartite_edge_index", "load", "synthetic", "read_dir", "read_lists",
           "from_pyg", "BPRSampler", "FormatError", "DownloadError", "ChecksumError",
           "data_dir", "find", "NAMED", "DATA_ENV", "read_log", "IdMap", "describe",
           "format_description"]
