"""The fixtures shared by the test modules (plain helpers: helpers.py)."""
import signal

import pytest
import torch

from helpers import NUM_ITEMS, NUM_USERS, bipartite_graph, random_weights
from lightgcn_ext import LightGCN

# A suite started in the background by a non-interactive shell (`nohup make test &`) has
# SIGINT ignored, and so would every run that a test starts and then stops with SIGINT:
# Python installs no KeyboardInterrupt where SIGINT is ignored, and the run would go on.
# Caught here, SIGINT is back to its default in the children (exec keeps an ignored signal
# ignored, but resets a caught one).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="module")
def one_thread():
    """The model tests' graphs are tiny: one thread is fastest, and stays fast
    when the machine's cores are busy (two spinning threads on a loaded 2-core
    machine ran these modules 10x slower). Used through helpers.MODEL_MARKS."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def pyg_utils():
    """torch_geometric.utils; the test skips without torch_geometric."""
    return pytest.importorskip("torch_geometric.utils")


@pytest.fixture(scope="module")
def bipartite():
    """(edge_index of both directions, the (user, item-node) pairs, float32
    edge weights) of a user-item graph of NUM_USERS + NUM_ITEMS nodes."""
    edge_index, pairs = bipartite_graph(NUM_USERS, NUM_ITEMS, 300, seed=11)
    return edge_index, pairs, random_weights(edge_index.shape[1], seed=12, dtype=torch.float32)


@pytest.fixture(scope="module")
def trained_like_model(bipartite):
    """(our LightGCN on the bipartite graph, with scores spread like a trained
    model's, its edge_index, the user-item pairs)."""
    edge_index, pairs, _ = bipartite
    torch.manual_seed(21)
    model = LightGCN(NUM_USERS + NUM_ITEMS, 16, 3)
    with torch.no_grad():  # spread the scores beyond xavier's narrow range
        model.embedding.weight.normal_()
    return model, edge_index, pairs
