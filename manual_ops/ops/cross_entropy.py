"""cross_entropy: the autograd wiring around ``manual_ops::cross_entropy_forward`` / ``cross_entropy_backward``."""
import torch
from torch.autograd.function import once_differentiable

from .._utils import apply, register_autograd

_ops = torch.ops.manual_ops


def _row_size(input):
    return (input.shape[0], *input.shape[2:])


@torch.library.register_fake("manual_ops::cross_entropy_forward")
def _cross_entropy_forward_fake(input, target, weight, reduction, ignore_index, label_smoothing):
    torch._check(input.dim() >= 2, lambda: "cross_entropy: expected input of size (N, C) or (N, C, d1, ..., dk)")
    loss = input.new_empty(_row_size(input) if reduction == "none" else ())
    return loss, input.new_empty(_row_size(input), dtype=torch.float64)


@torch.library.register_fake("manual_ops::cross_entropy_backward")
def _cross_entropy_backward_fake(grad_output, input, target, weight, lse, reduction, ignore_index, label_smoothing,
                                 output_mask):
    grad_input = torch.empty_like(input, memory_format=torch.contiguous_format) if output_mask[0] else None
    grad_target = torch.empty_like(input, memory_format=torch.contiguous_format) if output_mask[1] else None
    return grad_input, grad_target


class CrossEntropyFunction(torch.autograd.Function):
    """Softmax + cross-entropy whose backward is the hand-written ``manual_ops::cross_entropy_backward``.

    ``apply(input, target, weight, reduction, ignore_index, label_smoothing)`` with input
    (N, C, d1, ..., dk) returns ``(loss, lse)``; ``lse`` (the per-row log-sum-exp, saved for
    the backward) is not differentiable. Class-probability targets (of the input's size)
    get a gradient too.
    """

    @staticmethod
    def forward(input, target, weight, reduction, ignore_index, label_smoothing):
        return _ops.cross_entropy_forward(input, target, weight, reduction, ignore_index, label_smoothing)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, *options = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(input, target, weight, output[1])
        ctx.options = options

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, grad_lse):
        input, target, weight, lse = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:2])
        grad_input, grad_target = _ops.cross_entropy_backward(grad_loss, input, target, weight, lse, *ctx.options, mask)
        return grad_input, grad_target, None, None, None, None


register_autograd("manual_ops::cross_entropy_forward", CrossEntropyFunction)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean",
                  label_smoothing=0.0):
    r"""Cross-entropy of ``softmax(input)`` against ``target``, with a hand-written backward (softmax + CE fused,
    gradient :math:`p - y`). Same as :func:`torch.nn.functional.cross_entropy`.

    Args:
        input: unnormalised logits.
        target: class indices in :math:`[0, C)` (int64 or uint8), or class probabilities (floating point, of the
            input's size).
        weight: optional rescaling weight of each class, of size :math:`(C)`. Default: ``None``.
        size_average, reduce: deprecated (see ``reduction``); as in torch.
        ignore_index: a class-index target value that contributes neither loss nor gradient, and is left out
            of the mean's denominator. Default: -100.
        reduction: ``'none'``, ``'mean'`` (divided by the summed weights of the non-ignored targets, or the
            number of rows for probabilities) or ``'sum'``. Default: ``'mean'``.
        label_smoothing: :math:`\varepsilon \in [0, 1]`; the target becomes a mix of the original and the
            uniform distribution, :math:`(1 - \varepsilon)\,y + \varepsilon / C`. Default: 0.0.

    Shape:
        - Input: :math:`(C)`, :math:`(N, C)` or :math:`(N, C, d_1, ..., d_k)`.
        - Target: :math:`()`, :math:`(N)` or :math:`(N, d_1, ..., d_k)` for class indices; the input's shape
          for class probabilities.
        - Output: a scalar, or with ``reduction='none'`` the target's shape for indices, :math:`()`,
          :math:`(N)` or :math:`(N, d_1, ..., d_k)` for probabilities.
    """
    if size_average is not None or reduce is not None:
        reduction = torch.nn._reduction.legacy_get_string(size_average, reduce)
    if input.dim() == 0:
        raise RuntimeError("cross_entropy: expected input of size (C), (N, C) or (N, C, d1, ..., dk), but got a 0-D input")
    probabilities = input.shape == target.shape
    if probabilities:
        if ignore_index != -100:
            raise RuntimeError("cross_entropy: ignore_index is not supported for class-probability targets")
        if target.dtype != input.dtype and target.is_floating_point():
            dtype = torch.promote_types(input.dtype, target.dtype)
            input, target = input.to(dtype), target.to(dtype)
    elif target.dtype == torch.uint8:
        target = target.long()
    if input.dim() == 1:
        if not probabilities and (target.dim() > 1 or target.numel() != 1):
            raise RuntimeError(f"cross_entropy: expected a 0-D target for an unbatched input of size "
                               f"{list(input.shape)}, but got target of size {list(target.shape)}")
        target = target.unsqueeze(0) if probabilities else target.reshape(1)
        loss = apply(CrossEntropyFunction, _ops.cross_entropy_forward, input.unsqueeze(0), target, weight, reduction,
                     ignore_index, label_smoothing)[0]
        return loss.squeeze(0) if reduction == "none" else loss
    return apply(CrossEntropyFunction, _ops.cross_entropy_forward, input, target, weight, reduction, ignore_index,
                 label_smoothing)[0]
