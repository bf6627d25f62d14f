"""GroupNorm, LayerNorm and InstanceNorm1d/2d/3d as drop-ins for torch.nn's: the same constructors, init, repr and state_dict, with
manual_ops' hand-written kernels."""
from torch import nn

from ..ops.group_norm import group_norm
from ..ops.instance_norm import instance_norm
from ..ops.layer_norm import layer_norm


class GroupNorm(nn.GroupNorm):
    """:class:`torch.nn.GroupNorm` with manual_ops' kernels (:func:`manual_ops.functional.group_norm`).

    Shape:
        - Input: :math:`(N, C, *)` with C = ``num_channels``.
        - Output: same shape and memory format as the input.
    """

    def forward(self, input):
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)


class LayerNorm(nn.LayerNorm):
    r""":class:`torch.nn.LayerNorm` with manual_ops' kernels (:func:`manual_ops.functional.layer_norm`).

    Shape:
        - Input: :math:`(*, \text{normalized\_shape})`.
        - Output: same shape as the input.
    """

    def forward(self, input):
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class _InstanceNormMixin:
    """torch's _InstanceNorm with manual_ops' kernels (:func:`manual_ops.functional.instance_norm`): torch's
    forward (its checks, an unbatched input) calls this in place of F.instance_norm."""

    def _apply_instance_norm(self, input):
        return instance_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                             self.training or not self.track_running_stats,
                             self.momentum if self.momentum is not None else 0.0, self.eps)


class InstanceNorm1d(_InstanceNormMixin, nn.InstanceNorm1d):
    """:class:`torch.nn.InstanceNorm1d` with manual_ops' kernels. Shape: :math:`(N, C, L)` or :math:`(C, L)`."""


class InstanceNorm2d(_InstanceNormMixin, nn.InstanceNorm2d):
    """:class:`torch.nn.InstanceNorm2d` with manual_ops' kernels. Shape: :math:`(N, C, H, W)` or :math:`(C, H, W)`."""


class InstanceNorm3d(_InstanceNormMixin, nn.InstanceNorm3d):
    """:class:`torch.nn.InstanceNorm3d` with manual_ops' kernels. Shape: :math:`(N, C, D, H, W)` or
    :math:`(C, D, H, W)`."""


class _ChannelLayerNorm:
    """The forward of a LayerNorm over the channel dim of an (N, C, H, W) tensor, as torchvision's LayerNorm2d
    (ConvNeXt's) computes it: layer_norm over the last dim of the NHWC view, with manual_ops' kernels."""

    def forward(self, x):
        y = layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


_CHANNEL_LAYER_NORMS = {}  # torchvision's LayerNorm2d class -> ours


def channel_layer_norm_for(cls):
    """manual_ops' version of torchvision's LayerNorm2d class ``cls`` (a subclass of it, so ``isinstance``, the
    constructor, repr and state_dict are its own, with :class:`_ChannelLayerNorm`'s forward), or None for any
    other class. Recognised by its module and name, so that manual_ops never imports torchvision."""
    if (cls.__module__, cls.__name__) != ("torchvision.models.convnext", "LayerNorm2d"):
        return None
    if cls not in _CHANNEL_LAYER_NORMS:
        _CHANNEL_LAYER_NORMS[cls] = type("LayerNorm2d", (_ChannelLayerNorm, cls), {
            "__module__": __name__,
            "__doc__": "torchvision's LayerNorm2d (a LayerNorm over the channels of an NCHW tensor) with manual_ops' "
                       "layer_norm kernels.",
        })
    return _CHANNEL_LAYER_NORMS[cls]
