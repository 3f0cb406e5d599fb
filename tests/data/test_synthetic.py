"""lightgcn_ext.data.synthetic: the seeded generator with planted structure."""
import numpy as np
import pytest
import torch

from bench.reference import GOWALLA_SIZES
from lightgcn_ext.data import synthetic


# ------------------------------------------------------------------ synthetic
def test_synthetic_default():
    data = synthetic()
    assert data.name == "synthetic" and (data.num_users, data.num_items) == (6000, 4000)
    assert data.train.shape == (2, 120_000) and data.valid is None
    assert 0.18 < data.test.shape[1] / (data.train.shape[1] + data.test.shape[1]) < 0.22


def test_synthetic_is_deterministic_by_seed():
    sizes = dict(num_users=300, num_items=400, num_interactions=5000, communities=4)
    a, b, c = (synthetic(seed, **sizes) for seed in (7, 7, 8))
    assert torch.equal(a.train, b.train) and torch.equal(a.test, b.test)
    assert not torch.equal(a.train, c.train)


@pytest.mark.parametrize("sizes", [
    {},
    dict(num_users=500, num_items=800, num_interactions=12_000, communities=4),
    dict(num_users=40, num_items=60, num_interactions=400, communities=2, in_community=1.0),
])
def test_synthetic_structure(sizes):
    data = synthetic(3, **sizes)
    communities = sizes.get("communities", 20)
    train, test = data.train.numpy(), data.test.numpy()
    assert train.shape[1] == sizes.get("num_interactions", 120_000)
    train_degree = np.bincount(train[0], minlength=data.num_users)
    test_degree = np.bincount(test[0], minlength=data.num_users)
    assert train_degree.min() >= 2 and test_degree.min() >= 1  # every user, both splits
    if data.num_users >= 500:
        assert train_degree.max() > 5 * np.median(train_degree)  # a heavy tail
    keys = np.concatenate([train[0] * data.num_items + train[1],
                           test[0] * data.num_items + test[1]])
    assert np.unique(keys).size == keys.size  # no repeated pair, no pair in both splits
    assert (np.diff(keys[:train.shape[1]]) > 0).all()  # sorted
    # The planted communities: most interactions within, against 1/communities at random.
    within = np.mean(np.concatenate([train[0] % communities == train[1] % communities,
                                     test[0] % communities == test[1] % communities]))
    assert abs(within - sizes.get("in_community", 0.65)) < 0.03


def test_synthetic_is_learnable():
    """The planted structure predicts the test items far better than popularity:
    the generator's rule (the user's community's items by training popularity)
    against global popularity, training items excluded, recall@20."""
    data = synthetic()
    count = np.bincount(data.train[1].numpy(), minlength=data.num_items).astype(float)
    train, test = data.train.numpy(), data.test.numpy()

    def recall(score_of_user):
        total = 0.0
        for user in range(0, data.num_users, 10):  # every 10th user: enough, and fast
            score = score_of_user(user).copy()
            score[train[1][train[0] == user]] = -np.inf
            top = np.argsort(-score, kind="stable")[:20]
            relevant = test[1][test[0] == user]
            total += np.isin(relevant, top).sum() / relevant.size
        return total / len(range(0, data.num_users, 10))

    items = np.arange(data.num_items)
    popularity = recall(lambda user: count)
    community = recall(lambda user: count + 1e9 * (items % 20 == user % 20))
    assert community > 3 * popularity and community > 0.2


def test_synthetic_gowalla_sized():
    data = synthetic(0, **GOWALLA_SIZES)
    assert (data.num_users, data.num_items, data.train.shape[1]) == (29858, 40981, 810128)
    assert data.edge_index().shape == (2, 1620256)


def test_synthetic_rejects_impossible_sizes():
    with pytest.raises(ValueError, match="num_interactions"):
        synthetic(num_users=10, num_items=100, num_interactions=19)  # < 2 per user
    with pytest.raises(ValueError, match="num_interactions"):
        synthetic(num_users=10, num_items=100, num_interactions=1000,
                  communities=2)  # a user has at most 50 items
    with pytest.raises(ValueError, match="communities"):
        synthetic(num_users=10, num_items=5, num_interactions=20)
    with pytest.raises(ValueError, match="num_users must be a positive int"):
        synthetic(num_users=0)
