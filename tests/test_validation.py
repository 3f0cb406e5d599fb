"""lightgcn_ext.validation: one rule per check, one message shape, and the
package's arguments checked through it (True is not a positive int anywhere)."""
import numpy as np
import pytest
import torch

from lightgcn_ext import Graph, LightGCN, validation
from lightgcn_ext.data import BPRSampler, Interactions, synthetic
from lightgcn_ext.distributed import partition
from lightgcn_ext.evaluation import popularity_baseline, ranking_metrics
from lightgcn_ext.training import TrainConfig
from lightgcn_ext.validation import ArgumentError


@pytest.mark.parametrize("value, expected", [
    (3, 3), (np.int64(3), 3), (torch.tensor(3), 3), (np.int32(1), 1)])
def test_positive_int_accepts_ints_and_returns_a_python_int(value, expected):
    got = validation.positive_int(value, "n")
    assert got == expected and type(got) is int


@pytest.mark.parametrize("value", [0, -1, True, False, 2.0, 2.5, "3", None, torch.tensor(2.0)])
def test_positive_int_rejects(value):
    with pytest.raises(ArgumentError) as error:
        validation.positive_int(value, "batch_size")
    assert str(error.value) == f"batch_size must be a positive int, got {value!r}"


def test_an_argument_error_is_a_value_error_and_a_type_error():
    """Callers that catch either (the CLI catches ValueError) see it."""
    for kind in (ValueError, TypeError):
        with pytest.raises(kind, match="n must be a non-negative int, got -1"):
            validation.non_negative_int(-1, "n")


def test_non_negative_int():
    assert validation.non_negative_int(0, "n") == 0
    for bad in (-1, True, 1.0):
        with pytest.raises(ArgumentError, match="n must be a non-negative int"):
            validation.non_negative_int(bad, "n")


def test_numbers():
    assert validation.positive_number(np.float32(0.5), "lr") == 0.5
    assert validation.non_negative_number(0, "reg") == 0.0
    for bad in (0, -1e-3, float("nan"), float("inf"), True, "0.1", None):
        with pytest.raises(ArgumentError, match=r"^lr must be a positive number, got "):
            validation.positive_number(bad, "lr")
    with pytest.raises(ArgumentError, match="timeout must be a positive number of seconds"):
        validation.positive_number(0, "timeout", unit="seconds")
    with pytest.raises(ArgumentError, match="reg must be a non-negative number, got -1"):
        validation.non_negative_number(-1, "reg")


def test_fraction_and_its_open_ends():
    assert validation.fraction(0, "p") == 0 and validation.fraction(1, "p") == 1
    with pytest.raises(ArgumentError, match=r"p must be a number in \(0, 1\), got 1"):
        validation.fraction(1, "p", open_low=True, open_high=True)
    with pytest.raises(ArgumentError, match=r"p must be a number in \[0, 1\], got 1.5"):
        validation.fraction(1.5, "p")


def test_choice_and_positive_ints():
    assert validation.choice("time", "split", ("random", "time")) == "time"
    with pytest.raises(ArgumentError, match="split must be one of 'random', 'time', got 'x'"):
        validation.choice("x", "split", ("random", "time"))
    assert validation.positive_ints([20, np.int64(10)], "topk") == (20, 10)
    for bad in ((), (20, 0), (True,), 5):
        with pytest.raises(ArgumentError, match="topk must be a non-empty sequence of positive"):
            validation.positive_ints(bad, "topk")


PAIRS = torch.tensor([[0, 1], [1, 0]])


@pytest.mark.parametrize("call, name", [
    (lambda v: TrainConfig(dim=v).check(), "dim"),
    (lambda v: TrainConfig(eval_every=v).check(), "eval_every"),
    (lambda v: BPRSampler(PAIRS, 2, 3, v), "batch_size"),
    (lambda v: partition(torch.ones(3), v), "world_size"),
    (lambda v: synthetic(num_users=v), "num_users"),
    (lambda v: Interactions("x", 2, v, PAIRS, PAIRS), "num_items"),
    (lambda v: Graph.from_edge_index(torch.zeros(2, 0, dtype=torch.long), v), "num_nodes"),
    (lambda v: popularity_baseline(PAIRS, 2, v, PAIRS), "num_items"),
    (lambda v: ranking_metrics(torch.ones(2, 1), torch.ones(3, 1), PAIRS, ks=1, chunk_size=v),
     "chunk_size"),
    (lambda v: LightGCN(4, 2, 1).recommend(torch.tensor([[0, 1], [1, 0]]), chunk_size=v),
     "chunk_size"),
])
def test_the_package_rejects_true_as_an_int(call, name):
    expected = f"^{name} must be a (positive|non-negative) int, got True"
    with pytest.raises(ValueError, match=expected):
        call(True)
