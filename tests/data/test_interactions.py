"""lightgcn_ext.data.interactions: Interactions checks its ids, and LightGCN's
user-item graph of them."""
import pytest
import torch

import lightgcn_ext
from lightgcn_ext.data import IdMap, Interactions, bipartite_edge_index


# ---------------------------------------------------------------- interactions
def test_interactions_check_their_ids():
    pairs = torch.tensor([[0, 1], [0, 2]])
    data = Interactions("x", 2, 3, pairs, pairs.int())
    assert data.test.dtype == torch.int64 and data.num_nodes == 5
    assert data.edge_index().tolist() == [[0, 1, 2, 4], [2, 4, 0, 1]]
    assert repr(data) == "Interactions('x', 2 users, 3 items, train 2, test 2)"
    with pytest.raises(ValueError, match=r"test has item id 2, but num_items is 2 \(item ids "
                                         r"are item-local"):
        Interactions("x", 2, 2, pairs[:, :1], pairs)
    with pytest.raises(ValueError, match="train has user id 1, but num_users is 1"):
        Interactions("x", 1, 3, pairs, pairs[:, :1])
    with pytest.raises(ValueError, match="valid has a negative item id -1"):
        Interactions("x", 2, 3, pairs, pairs, torch.tensor([[0], [-1]]))
    with pytest.raises(ValueError, match=r"\[2, n\]"):
        Interactions("x", 2, 3, torch.zeros(3, 2, dtype=torch.int64), pairs)
    with pytest.raises(ValueError, match="integer ids"):
        Interactions("x", 2, 3, pairs.float(), pairs)
    with pytest.raises(ValueError, match="num_items must be a non-negative int"):
        Interactions("x", 2, -1, pairs, pairs)
    empty = Interactions("empty", 0, 0, torch.empty(2, 0, dtype=torch.int64),
                         torch.empty(2, 0, dtype=torch.int64))
    assert empty.edge_index().shape == (2, 0)  # allowed here; the trainer refuses it


def test_bipartite_edge_index_is_symmetric():
    pairs = torch.tensor([[0, 0, 1, 2], [0, 1, 1, 0]])
    edge_index = bipartite_edge_index(3, pairs)
    assert edge_index.shape == (2, 8) and edge_index.dtype == torch.int64
    edges = set(map(tuple, edge_index.t().tolist()))
    assert edges == {(d, s) for s, d in edges}
    assert edges == {(0, 3), (0, 4), (1, 4), (2, 3), (3, 0), (4, 0), (4, 1), (3, 2)}
    assert lightgcn_ext.Graph.from_edge_index(edge_index, 5).is_symmetric


def test_bipartite_edge_index_checks_its_input():
    with pytest.raises(ValueError, match=r"\[2, n\]"):
        bipartite_edge_index(3, torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="integer"):
        bipartite_edge_index(3, torch.zeros(2, 2))


@pytest.mark.parametrize("with_valid_and_ids", [False, True])
def test_state_dict_round_trip_through_torch_save(tmp_path, with_valid_and_ids):
    pairs = torch.tensor([[0, 0, 1, 2], [1, 2, 0, 1]])
    extra = dict(valid=torch.tensor([[2], [2]]),
                 id_map=IdMap(users=("ann", "bob", "cy"), items=torch.tensor([10, 20, 30])))
    data = Interactions("toy", 3, 3, pairs, pairs[:, :2], **(extra if with_valid_and_ids else {}))
    torch.save(data.state_dict(), tmp_path / "data.pt")
    loaded = Interactions.from_state_dict(torch.load(tmp_path / "data.pt", weights_only=True))
    assert (loaded.name, loaded.num_users, loaded.num_items) == ("toy", 3, 3)
    for split in ("train", "test", "valid"):
        mine, theirs = getattr(data, split), getattr(loaded, split)
        assert (mine is None and theirs is None) or torch.equal(mine, theirs)
    assert loaded.id_map == data.id_map
