"""Argument checks shared by the whole package, one rule each.

Every check names the argument and what was expected, in one shape:
``"<name> must be <what>, got <value>"``, and returns the value in its
canonical form (a Python int for the int checks). An int is anything
`operator.index` accepts (Python and numpy ints, 0-d integer tensors) except
a bool: `True` is not a positive int.

A failed check raises `ArgumentError`, which is both a ValueError and a
TypeError, so that code catching either (the CLI catches ValueError) sees
it, whether the value was of the wrong kind or out of range.
"""
import math
import operator

import torch

__all__ = ["ArgumentError", "as_int", "positive_int", "non_negative_int", "positive_ints",
           "positive_number", "non_negative_number", "fraction", "choice", "layer_weights"]


class ArgumentError(ValueError, TypeError):
    """An argument of the wrong kind or out of range."""

    def __init__(self, name, expected, value):
        self.name, self.expected, self.value = name, expected, value
        super().__init__(f"{name} must be {expected}, got {value!r}")


def as_int(value, name, expected="an int"):
    """value as a Python int; `expected` says what the message asks for."""
    if isinstance(value, bool):
        raise ArgumentError(name, expected, value)
    try:
        return operator.index(value)
    except TypeError:
        raise ArgumentError(name, expected, value) from None


def positive_int(value, name):
    return _int_at_least(value, name, 1, "a positive int")


def non_negative_int(value, name):
    return _int_at_least(value, name, 0, "a non-negative int")


def _int_at_least(value, name, low, expected):
    number = as_int(value, name, expected)
    if number < low:
        raise ArgumentError(name, expected, value)
    return number


def positive_ints(values, name):
    """A non-empty sequence of positive ints, as a tuple."""
    try:
        items = tuple(values)
    except TypeError:
        raise ArgumentError(name, "a non-empty sequence of positive ints", values) from None
    if not items:
        raise ArgumentError(name, "a non-empty sequence of positive ints", values)
    try:
        return tuple(positive_int(v, name) for v in items)
    except ArgumentError:
        raise ArgumentError(name, "a non-empty sequence of positive ints", values) from None


def positive_number(value, name, unit=""):
    """A finite number > 0 (as a float); unit, if given, is said in the message."""
    return _number(value, name, "a positive number" + (f" of {unit}" if unit else ""),
                   lambda x: x > 0)


def non_negative_number(value, name):
    """A finite number >= 0 (as a float)."""
    return _number(value, name, "a non-negative number", lambda x: x >= 0)


def fraction(value, name, *, open_low=False, open_high=False):
    """A number in [0, 1] (as a float); open_low / open_high exclude 0 / 1."""
    expected = f"a number in {'(' if open_low else '['}0, 1{')' if open_high else ']'}"
    return _number(value, name, expected,
                   lambda x: (0 < x if open_low else 0 <= x) and (x < 1 if open_high else x <= 1))


def _number(value, name, expected, in_range):
    """value as a finite float for which in_range holds (not a bool, not a str)."""
    if isinstance(value, (bool, str, bytes)):
        raise ArgumentError(name, expected, value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ArgumentError(name, expected, value) from None
    if not (math.isfinite(number) and in_range(number)):
        raise ArgumentError(name, expected, value)
    return number


def choice(value, name, choices):
    """One of choices (compared with ==)."""
    if value not in choices:
        raise ArgumentError(name, "one of " + ", ".join(repr(c) for c in choices), value)
    return value


def layer_weights(alpha, x):
    """alpha, the L + 1 layer weights of a propagation of x, as a 1-D real
    tensor on the device of x (a sequence of numbers becomes float64)."""
    if not isinstance(alpha, torch.Tensor):
        alpha = torch.as_tensor(alpha, dtype=torch.float64, device=x.device)
    if alpha.dim() != 1 or alpha.numel() < 1:
        raise ValueError(f"alpha must be 1-D with num_layers + 1 >= 1 entries, "
                         f"got shape {list(alpha.shape)}")
    if alpha.dtype == torch.bool or alpha.is_complex():
        raise TypeError(f"alpha must be a real tensor, got {alpha.dtype}")
    if alpha.device != x.device:
        raise ValueError(f"alpha ({alpha.device}) must be on the device of x ({x.device})")
    return alpha
