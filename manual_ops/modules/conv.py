"""Conv1d and Conv2d as drop-ins for torch.nn.Conv1d and torch.nn.Conv2d."""
import torch.nn.functional as torch_F
from torch import nn

from ..ops.conv1d import conv1d
from ..ops.conv2d import conv2d


class Conv2d(nn.Conv2d):
    """:class:`torch.nn.Conv2d` whose forward and backward are manual_ops' hand-written kernels.

    Same constructor, parameters, init, repr and state_dict as :class:`torch.nn.Conv2d`
    (it subclasses it, so ``isinstance(m, nn.Conv2d)`` init code keeps working). Non-zero
    ``padding_mode`` pads with :func:`torch.nn.functional.pad` first, as torch does.
    """

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            input = torch_F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv2d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv2d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class Conv1d(nn.Conv1d):
    """:class:`torch.nn.Conv1d` whose forward and backward are conv2d's hand-written kernels on the one-row view
    (:func:`manual_ops.functional.conv1d`). Same constructor, parameters, init, repr and state_dict; non-zero
    ``padding_mode`` pads with :func:`torch.nn.functional.pad` first, as torch does."""

    def _conv_forward(self, input, weight, bias):
        if self.padding_mode != "zeros":
            input = torch_F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return conv1d(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return conv1d(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)
