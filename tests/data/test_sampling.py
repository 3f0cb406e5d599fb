"""lightgcn_ext.data.sampling: BPR triples, every interaction once per epoch
("interactions") or users drawn uniformly ("users"), with a negative uniform
over the user's unseen items, deterministic for a generator."""
import pytest
import torch

from helpers import toy_interactions
from lightgcn_ext.data import BPRSampler


def test_an_epoch_visits_every_interaction_once_with_true_negatives():
    data = toy_interactions()
    sampler = BPRSampler(data.train, data.num_users, data.num_items, batch_size=128)
    batches = list(sampler.epoch(torch.Generator().manual_seed(0)))
    assert len(batches) == len(sampler) == -(-data.train.shape[1] // 128)
    users = torch.cat([b[0] for b in batches])
    positives = torch.cat([b[1] for b in batches])
    negatives = torch.cat([b[2] for b in batches])
    seen = data.train[0] * data.num_items + data.train[1]
    assert torch.equal((users * data.num_items + positives).sort().values, seen.sort().values)
    assert not torch.isin(users * data.num_items + negatives, seen).any()
    assert ((negatives >= 0) & (negatives < data.num_items)).all()


def test_negatives_are_uniform_over_the_unseen_items():
    train = torch.tensor([[0, 0, 0, 1], [1, 4, 5, 0]])  # user 0 has seen 1, 4 and 5
    sampler = BPRSampler(train, num_users=2, num_items=8, batch_size=4)
    draws = sampler.negatives(torch.zeros(40000, dtype=torch.long),
                              torch.Generator().manual_seed(1))
    counts = torch.bincount(draws, minlength=8).double()
    assert counts[[1, 4, 5]].sum() == 0
    unseen = counts[[0, 2, 3, 6, 7]]
    assert ((unseen - 8000).abs() < 400).all(), unseen  # about 4.5 standard deviations


def test_the_sampler_is_deterministic_given_its_generator():
    data = toy_interactions()
    sampler = BPRSampler(data.train, data.num_users, data.num_items, batch_size=500)
    first = [torch.cat(b) for b in sampler.epoch(torch.Generator().manual_seed(3))]
    again = [torch.cat(b) for b in sampler.epoch(torch.Generator().manual_seed(3))]
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_sampling_by_users_draws_users_then_their_items_uniformly():
    # User 0 has 6 interactions, user 1 one, user 2 none: by interactions user 0
    # gets 6/7 of the triples, by users half of them, and user 2 never.
    train = torch.tensor([[0, 0, 0, 0, 0, 0, 1], [0, 1, 2, 3, 4, 5, 2]])
    sampler = BPRSampler(train, num_users=3, num_items=10, batch_size=3, sampling="users")
    generator = torch.Generator().manual_seed(0)
    batches = [b for _ in range(3000) for b in sampler.epoch(generator)]
    assert len(sampler) == 3 and [b[0].numel() for b in batches[:3]] == [3, 3, 1]
    users, positives, negatives = (torch.cat(column) for column in zip(*batches))
    assert users.numel() == 3000 * 7
    assert (torch.bincount(users, minlength=3)[:2] - 10500).abs().max() < 4 * 73, users
    assert not (users == 2).any()
    assert torch.equal(positives[users == 1].unique(), torch.tensor([2]))
    counts = torch.bincount(positives[users == 0], minlength=6)[:6].double()
    assert ((counts - counts.mean()).abs() < 4.5 * counts.mean().sqrt()).all(), counts
    seen = train[0] * 10 + train[1]
    assert not torch.isin(users * 10 + negatives, seen).any()


def test_sampling_by_users_is_deterministic_and_differs_from_by_interactions():
    data = toy_interactions()
    by_users = BPRSampler(data.train, data.num_users, data.num_items, 500, sampling="users")
    first = [torch.cat(b) for b in by_users.epoch(torch.Generator().manual_seed(3))]
    again = [torch.cat(b) for b in by_users.epoch(torch.Generator().manual_seed(3))]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    by_interactions = BPRSampler(data.train, data.num_users, data.num_items, 500)
    other = [torch.cat(b) for b in by_interactions.epoch(torch.Generator().manual_seed(3))]
    assert len(other) == len(first) and not torch.equal(other[0], first[0])


def test_sampler_bad_input():
    with pytest.raises(ValueError, match="sampling.*'interactions', 'users'"):
        BPRSampler(torch.tensor([[0], [0]]), 1, 2, batch_size=4, sampling="items")
    with pytest.raises(ValueError, match="batch_size"):
        BPRSampler(torch.tensor([[0], [0]]), 1, 2, batch_size=0)
    with pytest.raises(ValueError, match="train"):
        BPRSampler(torch.zeros(2, 0, dtype=torch.long), 1, 2, batch_size=4)
    with pytest.raises(ValueError, match="every item"):
        BPRSampler(torch.tensor([[0, 0], [0, 1]]), 1, 2, batch_size=4)
