"""The folds that the ops' ``vmap`` staticmethods share (derivations: docs/derivations.md, "vmap rules").

A rule receives the tensors unwrapped, each with its vmapped dimension at ``in_dims[i]`` (None:
not vmapped), and the vmap's size B. A fold moves that dimension next to one of the op's own
dimensions and merges the two (B-major), so that one call of the op computes all B slices;
``unfold`` splits the result's merged dimension again, which is the out_dim of the rule.
"""
import torch


def with_batch(t, bdim, size):
    """``t`` with its vmapped dimension first: moved there from ``bdim``, or, for an unvmapped ``t``
    (``bdim`` None), a new one of ``size`` by expansion (a view). None stays None."""
    if t is None:
        return None
    if bdim is None:
        return t.unsqueeze(0).expand(size, *t.shape)
    return t.movedim(bdim, 0)


def fold(t, bdim, size, dim):
    """``t``'s vmapped dimension merged into its per-sample dimension ``dim``: per-sample size
    (..., D_dim, ...) becomes (..., B * D_dim, ...), slice b at b * D_dim + i. None stays None."""
    t = with_batch(t, bdim, size)
    return None if t is None else t.movedim(0, dim).flatten(dim, dim + 1)


def unfold(t, dim, size):
    """The inverse of :func:`fold` on a result: dimension ``dim`` (B * D) split into (B, D), the
    vmapped dimension at ``dim``. None stays None."""
    return None if t is None else t.unflatten(dim, (size, t.shape[dim] // size))


def out_dims_of(outputs, dims):
    """The rule's out_dims: ``dims[i]`` (or ``dims`` itself, an int) for each output that is a tensor,
    None for the others."""
    dims = [dims] * len(outputs) if isinstance(dims, int) else dims
    return tuple(None if t is None else d for t, d in zip(outputs, dims))


def loop(size, in_dims, fn, *args):
    """``fn`` on each slice of ``args`` in turn, results stacked along a new first dimension: the rule
    where no fold is exact. ``fn`` returns a tensor or a tuple of tensors and Nones."""
    def slice_of(arg, bdim, b):
        return arg.select(bdim, b) if isinstance(bdim, int) else arg

    results = [fn(*(slice_of(a, d, b) for a, d in zip(args, in_dims))) for b in range(size)]
    if not isinstance(results[0], tuple):
        return torch.stack(results), 0
    outputs = tuple(None if parts[0] is None else torch.stack(parts) for parts in zip(*results))
    return outputs, out_dims_of(outputs, 0)
