"""instance_norm: group_norm with one group per channel, and batch_norm in eval mode for the running statistics.

With the input's statistics, each (sample, channel) is normalised over its spatial values and gets its channel's
gamma and beta: that is group_norm with num_groups = C, whose op, backward and every rule serve as they are. The
running statistics, when given, are updated as torch's instance_norm updates them (its batch norm of the
(1, N*C, *) view, averaged over the samples): running_mean <- (1 - m) running_mean + m mean_n(mu), running_var <-
(1 - m) running_var + m mean_n(var * L / (L - 1)), var = 1/rstd^2 - eps from group_norm's saved rstd. Without the
input's statistics (``use_input_stats=False``) it is batch_norm in eval mode on the running statistics.
"""
import torch

from .._utils import check_not_differentiable
from .batch_norm import batch_norm
from .group_norm import _group_norm_apply


def _update_running_stats(running_mean, running_var, save_mean, save_rstd, spatial, momentum, eps):
    """torch's instance_norm update of the running statistics (see the module docstring), in float64, written back
    in their dtype. Not differentiable, as theirs."""
    with torch.no_grad():
        if running_mean is not None:
            batch_mean = save_mean.double().mean(0)
            running_mean.copy_((1 - momentum) * running_mean.double() + momentum * batch_mean)
        if running_var is not None:
            var = save_rstd.double().pow(-2) - eps
            unbiased = (var * spatial / (spatial - 1) if spatial > 1 else torch.full_like(var, float("nan"))).mean(0)
            running_var.copy_((1 - momentum) * running_var.double() + momentum * unbiased)


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None, use_input_stats=True,
                  momentum=0.1, eps=1e-5):
    r"""Applies instance normalization, with a hand-written backward. Same as :func:`torch.nn.functional.instance_norm`.

    Each channel of each sample is normalised over its spatial values,
    :math:`y = \gamma_c (x - \mu) / \sqrt{\sigma^2 + \epsilon} + \beta_c`; with ``use_input_stats=False`` the
    running statistics take the place of the sample's.

    Args:
        input: input tensor of shape :math:`(N, C, *)`.
        running_mean: running mean of shape :math:`(C)`, or ``None``. Updated in place with the input's statistics.
        running_var: running variance of shape :math:`(C)`, or ``None``. Updated in place likewise.
        weight: scale :math:`\gamma` of shape :math:`(C)`. Default: ``None`` (1).
        bias: shift :math:`\beta` of shape :math:`(C)`. Default: ``None`` (0).
        use_input_stats: normalise by the input's statistics (else by the running ones). Default: ``True``.
        momentum: weight of the input's statistics in the running-stats update. Default: 0.1.
        eps: added to the variance for numerical stability. Default: 1e-5.

    Shape:
        - Input: :math:`(N, C, *)`.
        - Output: same shape and memory format as the input.
    """
    # Contiguous, as torch's output is whatever the input's layout (its batch norm runs on the (1, N*C, *) view).
    input = input.contiguous()
    if not use_input_stats:
        return batch_norm(input, running_mean, running_var, weight, bias, False, momentum, eps)
    spatial = input.shape[2:].numel()
    if spatial == 1:  # torch's _verify_spatial_size
        raise ValueError(f"Expected more than 1 spatial element when training, got input size {list(input.size())}")
    check_not_differentiable("instance_norm", "running_mean", running_mean)
    check_not_differentiable("instance_norm", "running_var", running_var)
    if input.dim() < 2:
        raise RuntimeError(f"Expected at least 2 dimensions for input tensor but received {input.dim()}")
    output, save_mean, save_rstd = _group_norm_apply(input, input.shape[1], weight, bias, eps)
    if running_mean is not None or running_var is not None:
        _update_running_stats(running_mean, running_var, save_mean, save_rstd, spatial, momentum, eps)
    return output
