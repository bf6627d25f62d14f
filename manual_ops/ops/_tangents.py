"""Sums of forward-mode tangents, None standing for a zero tangent."""
from itertools import zip_longest


def sum_tangents(first, second):
    """``first[i] + second[i]`` for each i of ``first``, as a tuple; ``second`` may be shorter (its missing
    entries are None), and a None term is left out (None when both are)."""
    return tuple(a if b is None else b if a is None else a + b for a, b in zip_longest(first, second))
