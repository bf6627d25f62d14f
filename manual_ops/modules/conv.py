"""Conv1d, Conv2d and ConvTranspose2d as drop-ins for torch.nn's."""
import torch.nn.functional as torch_F
from torch import nn

from ..ops.conv1d import conv1d
from ..ops.conv2d import conv2d
from ..ops.conv_transpose2d import conv_transpose2d


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


class ConvTranspose2d(nn.ConvTranspose2d):
    """:class:`torch.nn.ConvTranspose2d` whose forward and backward are conv2d's hand-written kernels
    (:func:`manual_ops.functional.conv_transpose2d`). Same constructor, parameters, init, repr and state_dict;
    ``forward(input, output_size=None)`` picks the output padding for ``output_size`` as torch's does."""

    def forward(self, input, output_size=None):
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose2d")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding, self.kernel_size, 2,
                                              self.dilation)
        return conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding, output_padding,
                                self.groups, self.dilation)
