"""Sums of forward-mode tangents, None standing for a zero tangent."""
from itertools import zip_longest

import torch


def sum_tangents(first, second):
    """``first[i] + second[i]`` for each i of ``first``, as a tuple; ``second`` may be shorter (its missing
    entries are None), and a None term is left out (None when both are)."""
    return tuple(a if b is None else b if a is None else a + b for a, b in zip_longest(first, second))


def output_meta(outputs):
    """What :func:`zeros_for_missing` needs of a Function's outputs: each one's shape and dtype (None for a
    None output)."""
    return [None if t is None else (t.shape, t.dtype, t.device) for t in outputs]


def zeros_for_missing(tangents, meta):
    """``tangents`` with a zero tensor for each None whose output (``meta``, from :func:`output_meta`) is a
    tensor. The ``jvp`` of every backward Function with several outputs (conv2d's, linear's, the norms',
    cross_entropy's) returns through this: torch 2.13 fails an internal assert ("Expected both tensor and its
    forward grad to be floating point") when a custom Function's jvp returns None for one of its outputs while
    another output's tangent is defined, in forward-over-reverse."""
    return tuple(torch.zeros(m[0], dtype=m[1], device=m[2]) if t is None and m is not None else t
                 for t, m in zip(tangents, meta))
