"""cross_entropy: the autograd wiring around ``manual_ops::cross_entropy_forward`` / ``cross_entropy_backward``."""
import torch
from torch.autograd.function import once_differentiable

from .._utils import applier, below_autograd, check_not_differentiable, fast_apply, register_autograd
from ._tangents import output_meta, sum_tangents, zeros_for_missing
from ._vmap import fold, loop, out_dims_of, unfold, with_batch

_ops = torch.ops.manual_ops
_forward_op = below_autograd(_ops.cross_entropy_forward)
_backward_op = below_autograd(_ops.cross_entropy_backward)


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
    get a gradient too. The backward is differentiable (:class:`CrossEntropyBackward`), and
    ``jvp`` gives forward-mode AD: the first-order gradient contracted with the tangents.
    """

    @staticmethod
    def forward(input, target, weight, reduction, ignore_index, label_smoothing):
        return _forward_op(input, target, weight, reduction, ignore_index, label_smoothing)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, *options = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(input, target, weight, output[1])
        ctx.save_for_forward(input, target, weight, output[1])
        ctx.options = options
        ctx.loss_size = output[0].shape

    @staticmethod
    def backward(ctx, grad_loss, grad_lse):
        input, target, weight, lse = ctx.saved_tensors
        mask = list(ctx.needs_input_grad[:2])
        grad_input, grad_target = _backward_apply(grad_loss, input, target, weight, lse, *ctx.options, mask)
        return grad_input, grad_target, None, None, None, None

    @staticmethod
    def jvp(ctx, d_input, d_target, *_):
        input, target, weight, lse = ctx.saved_tensors
        d_target = d_target if input.shape == target.shape else None  # class indices have no tangent
        return _contract_with_gradient(input, target, weight, lse, ctx.options, ctx.loss_size, d_input, d_target), None

    @staticmethod
    def vmap(info, in_dims, input, target, weight, reduction, ignore_index, label_smoothing):
        B = info.batch_size
        if in_dims[2] is not None:  # the op takes one class weight, the slices have their own: loop
            return loop(B, in_dims, _cross_entropy_apply, input, target, weight, reduction, ignore_index,
                        label_smoothing)
        # fold into N, per-row losses ('none'); a slice's 'sum' is the sum of its rows, its 'mean' that over its
        # own denominator
        input, target = fold(input, in_dims[0], B, 0), fold(target, in_dims[1], B, 0)
        loss, lse = _cross_entropy_apply(input, target, weight, "none", ignore_index, label_smoothing)
        loss, lse = unfold(loss, 0, B), unfold(lse, 0, B)
        if reduction != "none":
            loss = loss.flatten(1).sum(1)
        if reduction == "mean":
            loss = loss / _mean_denominators(input, unfold(target, 0, B), weight, ignore_index)
        return (loss, lse), (0, 0)


_cross_entropy_apply = applier(CrossEntropyFunction, _ops.cross_entropy_forward, native_autograd=True,
                               autocast_to=torch.float32)


def _contract_with_gradient(input, target, weight, lse, options, loss_size, a, b):
    """``sum_c (dloss/dx * a + dloss/dt * b)`` per loss element (both None-able): the tangent of the
    loss for tangents (a, b) of (input, target), and the grad w.r.t. grad_loss of
    ``<a, grad_input> + <b, grad_target>``. The gradient is cross_entropy_backward's at grad_loss = 1."""
    ones = input.new_ones(loss_size)
    # the differentiable, vmappable op (jacfwd, hessian); with grad mode off (in backward) it is the op itself
    gx, gt = _backward_apply(ones, input, target, weight, lse, *options, [a is not None, b is not None])
    total = (a * gx).sum(1) if a is not None else 0
    if b is not None:
        total = total + (b * gt).sum(1)
    return total if options[0] == "none" else total.sum()


class CrossEntropyBackward(torch.autograd.Function):
    r"""``manual_ops::cross_entropy_backward`` as a differentiable function of (grad_loss, input, target):
    ``apply(grad_loss, input, target, weight, lse, reduction, ignore_index, label_smoothing,
    output_mask)``; ``lse`` is the forward's, a function of the input.

    With :math:`u_r` the row's loss gradient (``grad_loss``, divided by the mean's denominator),
    :math:`q` the target weights, :math:`Q_r = \sum_c q_{rc}` and :math:`p` the softmax,
    ``grad_input = u (Q p - q)`` and ``grad_target = -u (1 - eps) w log p``. For the grads
    ``ggx, ggt`` of those, the backward returns (derivation: docs/derivations.md,
    "cross_entropy: second order")

    - grad_loss: the first-order gradient contracted with (ggx, ggt);
    - input: :math:`u Q \, p \odot (ggx - \langle ggx, p \rangle) - u (1-\varepsilon)(w\,ggt - p \langle w\,ggt \rangle)`
      (softmax Hessian-vector products; the second term through lse);
    - target (probabilities): :math:`u (1-\varepsilon) w (\langle ggx, p \rangle - ggx)`.

    It is differentiable once (a third derivative raises).
    """

    @staticmethod
    def forward(grad_loss, input, target, weight, lse, reduction, ignore_index, label_smoothing, output_mask):
        return _backward_op(grad_loss, input, target, weight, lse, reduction, ignore_index, label_smoothing,
                            output_mask)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad_loss, input, target, weight, lse, *options, output_mask = inputs
        ctx.save_for_backward(grad_loss, input, target, weight, lse)
        ctx.save_for_forward(grad_loss, input, target, weight, lse)
        ctx.options = options
        ctx.output_mask = output_mask
        ctx.output_meta = output_meta(output)
        ctx.set_materialize_grads(False)

    @staticmethod
    @once_differentiable
    def backward(ctx, ggx, ggt):
        grad_loss, input, target, weight, lse = ctx.saved_tensors
        needs = ctx.needs_input_grad
        d_grad_loss = None
        if ggx is None and ggt is None:
            return d_grad_loss, None, None, None, None, None, None, None, None
        if needs[0]:
            d_grad_loss = _contract_with_gradient(input, target, weight, lse, ctx.options, grad_loss.shape, ggx, ggt)
        d_input, d_target = _second_derivative_terms(*ctx.saved_tensors, ctx.options, ggx, ggt, needs[1], needs[2])
        return d_grad_loss, d_input, d_target, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, d_grad_loss, d_input, d_target, *_):
        r"""As :meth:`BatchNormBackward.jvp`: the backward again for the tangent of grad_loss, plus what
        :meth:`backward` gives for (ggx, ggt) = (:math:`\dot x, \dot t`) (the Hessian of
        :math:`\langle u, loss \rangle` is symmetric; it has no target-target block, the loss being linear
        in the target)."""
        grad_loss, input, target, weight, lse = ctx.saved_tensors
        mask = list(ctx.output_mask)
        d_target = d_target if input.shape == target.shape else None  # class indices have no tangent
        tangents = [None, None]
        if d_grad_loss is not None:
            tangents = list(_backward_apply(d_grad_loss, input, target, weight, lse, *ctx.options, mask))
        terms = _second_derivative_terms(*ctx.saved_tensors, ctx.options, d_input, d_target, *mask)
        return zeros_for_missing(sum_tangents(tangents, terms), ctx.output_meta)

    @staticmethod
    def vmap(info, in_dims, grad_loss, input, target, weight, lse, reduction, ignore_index, label_smoothing,
             output_mask):
        B = info.batch_size
        options = (ignore_index, label_smoothing, output_mask)
        if in_dims[3] is not None:  # one class weight per call: loop, as the forward's
            return loop(B, in_dims, _backward_apply, grad_loss, input, target, weight, lse, reduction, *options)
        # fold into N, as the forward's: each row's grad_loss u is the slice's (over its denominator for 'mean')
        rows = [fold(t, d, B, 0) for t, d in zip((input, target), in_dims[1:3])]
        lse = fold(lse, in_dims[4], B, 0)
        grad_loss = with_batch(grad_loss, in_dims[0], B)
        if reduction == "mean":
            denominators = _mean_denominators(rows[0], unfold(rows[1], 0, B), weight, ignore_index)
            grad_loss = grad_loss / torch.where(denominators == 0, 1, denominators)  # all ignored: every term 0
        if reduction != "none":
            grad_loss = grad_loss.view(B, *[1] * lse.dim()).expand(unfold(lse, 0, B).shape)  # each row's
        grads = _backward_apply(grad_loss.flatten(0, 1), *rows, weight, lse, "none", *options)
        grads = tuple(unfold(g, 0, B) for g in grads)
        return grads, out_dims_of(grads, 0)


def _second_derivative_terms(grad_loss, input, target, weight, lse, options, ggx, ggt, need_input, need_target):
    """The (input, target) grads of :class:`CrossEntropyBackward` for the grads (ggx, ggt) of its outputs
    (None where not needed or zero); see its docstring."""
    reduction, ignore_index, eps = options
    d_input = d_target = None
    if not (need_input or need_target) or (ggx is None and ggt is None):
        return d_input, d_target
    C = input.shape[1]
    w = weight.view(1, C, *[1] * (input.dim() - 2)) if weight is not None else None
    p = (input.double() - lse.unsqueeze(1)).exp().to(input.dtype)
    row_total, rows_of_mean = _row_weight_totals(input, target, weight, eps, ignore_index)
    u = grad_loss / rows_of_mean if reduction == "mean" else grad_loss
    u = u.expand(lse.shape).unsqueeze(1)
    ggx_p = (ggx * p).sum(1, keepdim=True) if ggx is not None else None
    if need_input:
        d_input = u * row_total.unsqueeze(1) * p * (ggx - ggx_p) if ggx is not None else None
        if ggt is not None:
            w_ggt = ggt * w if w is not None else ggt
            through_lse = -u * (1 - eps) * (w_ggt - p * w_ggt.sum(1, keepdim=True))
            d_input = through_lse if d_input is None else d_input + through_lse
    if need_target and ggx is not None:
        d_target = u * (1 - eps) * (ggx_p - ggx)
        d_target = d_target * w if w is not None else d_target
    return d_input, d_target


def _row_weight_totals(input, target, weight, eps, ignore_index):
    r"""``(Q, D)``: per row the total target weight :math:`Q_r = \sum_c q_{rc}` (0 for an ignored row), and
    the mean's denominator D, as cross_entropy.cpp's ``row_weights`` and ``mean_denominator`` define them."""
    C = input.shape[1]
    if input.shape == target.shape:  # class probabilities: q = w ((1 - eps) t + eps / C)
        q = (1 - eps) * target + eps / C
        q = q * weight.view(1, C, *[1] * (input.dim() - 2)) if weight is not None else q
        return q.sum(1), _mean_denominators(input, target[None], weight, ignore_index)[0]
    counted = target != ignore_index
    w_y = weight[torch.where(counted, target, 0)] if weight is not None else input.new_ones(target.shape)
    w_sum = weight.sum() if weight is not None else C
    total = torch.where(counted, eps / C * w_sum + (1 - eps) * w_y, 0)
    D = _mean_denominators(input, target[None], weight, ignore_index)[0]
    return total.to(input.dtype), torch.where(D == 0, 1, D)  # all rows ignored: every term is 0 anyway


def _mean_denominators(input, target, weight, ignore_index):
    r"""The mean's denominator D of each slice b of ``target[b]`` (a vmapped target, its slices' rows folded in
    ``input``'s first dimension), as :func:`_row_weight_totals`'s: the slice's rows for probabilities, else
    the summed weights :math:`w_{y_r}` of its non-ignored rows (0 when all are ignored: the loss is then NaN,
    as torch's)."""
    B = target.shape[0]
    if input.shape == target.flatten(0, 1).shape:  # class probabilities
        return input.new_full((B,), target[:, :, 0].numel() // B)
    counted = target != ignore_index
    w_y = weight[torch.where(counted, target, 0)] if weight is not None else input.new_ones(target.shape)
    return torch.where(counted, w_y, 0).flatten(1).sum(1).to(input.dtype)


_backward_apply = fast_apply(CrossEntropyBackward, _backward_op)
# cross_entropy_forward's autograd kernel is C++ (with CrossEntropyFunction's derivatives);
# its backward op's is CrossEntropyBackward
register_autograd("manual_ops::cross_entropy_backward", CrossEntropyBackward)


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
    if weight is not None:
        check_not_differentiable("cross_entropy_forward", "weight", weight)
    dim = input.dim()
    if dim == 0:
        raise RuntimeError("cross_entropy: expected input of size (C), (N, C) or (N, C, d1, ..., dk), but got a 0-D input")
    probabilities = target.dim() == dim and input.shape == target.shape  # as in torch, the shape decides
    if probabilities:
        if ignore_index != -100:
            raise RuntimeError("cross_entropy: ignore_index is not supported for class-probability targets")
        if target.dtype != input.dtype and target.is_floating_point():
            dtype = torch.promote_types(input.dtype, target.dtype)
            input, target = input.to(dtype), target.to(dtype)
    elif target.dtype is _uint8:
        target = target.long()
    if dim == 1:
        if not probabilities and (target.dim() > 1 or target.numel() != 1):
            raise RuntimeError(f"cross_entropy: expected a 0-D target for an unbatched input of size "
                               f"{list(input.shape)}, but got target of size {list(target.shape)}")
        target = target.unsqueeze(0) if probabilities else target.reshape(1)
        loss = _cross_entropy_apply(input.unsqueeze(0), target, weight, reduction, ignore_index,
                                    label_smoothing)[0]
        return loss.squeeze(0) if reduction == "none" else loss
    return _cross_entropy_apply(input, target, weight, reduction, ignore_index, label_smoothing)[0]


_uint8 = torch.uint8
