"""GroupNorm as a drop-in for torch.nn's: the same constructor (``num_groups``, ``num_channels``, ``eps``,
``affine``, ``device``, ``dtype``), init, repr and state_dict, with manual_ops' hand-written kernels."""
from torch import nn

from ..ops.group_norm import group_norm


class GroupNorm(nn.GroupNorm):
    """:class:`torch.nn.GroupNorm` with manual_ops' kernels (:func:`manual_ops.functional.group_norm`).

    Shape:
        - Input: :math:`(N, C, *)` with C = ``num_channels``.
        - Output: same shape and memory format as the input.
    """

    def forward(self, input):
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)
