"""Second-order and forward-mode rules shared by the two bilinear ops, conv2d and linear.

Both compute ``y = f(x, w) + b`` with ``f`` bilinear, and their backward op returns
``grad_input = f_x^T(gy; w)``, ``grad_weight = f_w^T(gy; x)``, ``grad_bias = sum gy``, each
bilinear (or linear) in its two arguments. So every derivative of the backward is the forward
or the backward op again (derivation: docs/derivations.md, "conv2d: second order"):

- w.r.t. grad_output: ``f(ggx, w) + f(x, ggw) + ggb`` (the adjoint of each map is the forward);
- w.r.t. input: ``f_x^T(gy; ggw)``, the grad_input of the backward with ggw in place of w;
- w.r.t. weight: ``f_w^T(gy; ggx)``, the grad_weight of the backward with ggx in place of x.

The tangent of the forward has the same shape: ``f(dx, w) + f(x, dw) + db``, and so has the
tangent of the backward (forward-over-reverse): ``backward(dgy, x, w)`` plus, the backward being
bilinear, ``f_x^T(gy; dw)`` in grad_input and ``f_w^T(gy; dx)`` in grad_weight.
"""


def broadcast_bias(bias, size, channel_dim):
    """``bias`` (C) viewed along ``channel_dim`` and expanded to ``size``."""
    shape = [1] * len(size)
    shape[channel_dim] = -1
    return bias.view(shape).expand(size)


def bilinear_sum(forward, x, w, dx, dw, db, size, channel_dim):
    """``forward(dx, w) + forward(x, dw) + db``, skipping the terms whose tangent is None.

    ``forward(input, weight, bias)`` is the (differentiable) forward; ``size`` is the output's
    size, for a lone ``db``. Returns None when all three are None.
    """
    out = None
    if dx is not None:
        out = forward(dx, w, db if dw is None else None)
    if dw is not None:
        term = forward(x, dw, db)
        out = term if out is None else out + term
    if out is None and db is not None:
        out = broadcast_bias(db, size, channel_dim)
    return out


def bilinear_double_backward(forward, backward, needs, grad_output, input, weight, ggx, ggw, ggb, channel_dim):
    """Grads of ``<ggx, grad_input> + <ggw, grad_weight> + <ggb, grad_bias>`` w.r.t.
    (grad_output, input, weight), for the entries of ``needs`` that are True.

    ``forward(input, weight, bias)`` and ``backward(grad_output, input, weight, mask)`` are the
    differentiable (autograd.Function) forms of the two ops, so the result differentiates again.
    """
    d_grad_output = d_input = d_weight = None
    if needs[0]:
        d_grad_output = bilinear_sum(forward, input, weight, ggx, ggw, ggb, grad_output.shape, channel_dim)
    if needs[1] and ggw is not None:
        d_input = backward(grad_output, input, ggw, [True, False, False])[0]
    if needs[2] and ggx is not None:
        d_weight = backward(grad_output, ggx, weight, [False, True, False])[1]
    return d_grad_output, d_input, d_weight


def bilinear_backward_tangent(backward, mask, grad_output, input, weight, d_grad_output, d_input, d_weight):
    """The tangent of ``backward(grad_output, input, weight, mask)`` for tangents (d_grad_output, d_input,
    d_weight), any of them None: ``backward(d_grad_output, input, weight, mask)``, plus the grad_input of
    ``backward(grad_output, input, d_weight)`` and the grad_weight of ``backward(grad_output, d_input,
    weight)`` (grad_bias is linear in grad_output alone). None where an output has no tangent."""
    tangents = [None, None, None]
    if d_grad_output is not None:
        tangents = list(backward(d_grad_output, input, weight, mask))
    if mask[0] and d_weight is not None:
        term = backward(grad_output, input, d_weight, [True, False, False])[0]
        tangents[0] = term if tangents[0] is None else tangents[0] + term
    if mask[1] and d_input is not None:
        term = backward(grad_output, d_input, weight, [False, True, False])[1]
        tangents[1] = term if tangents[1] is None else tangents[1] + term
    return tuple(tangents)
