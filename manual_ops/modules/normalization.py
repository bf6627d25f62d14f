"""GroupNorm and LayerNorm as drop-ins for torch.nn's: the same constructors, init, repr and state_dict, with
manual_ops' hand-written kernels."""
from torch import nn

from ..ops.group_norm import group_norm
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
