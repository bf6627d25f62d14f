"""MaxPool2d, AvgPool2d and AdaptiveAvgPool2d as drop-ins for their torch.nn counterparts."""
from torch import nn

from ..ops.pooling import adaptive_avg_pool2d, avg_pool2d, max_pool2d


class MaxPool2d(nn.MaxPool2d):
    """:class:`torch.nn.MaxPool2d` whose forward and backward are manual_ops' hand-written kernels.

    Same constructor, attributes and repr as :class:`torch.nn.MaxPool2d` (it subclasses it).
    """

    def forward(self, input):
        return max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                          ceil_mode=self.ceil_mode, return_indices=self.return_indices)


class AvgPool2d(nn.AvgPool2d):
    """:class:`torch.nn.AvgPool2d` whose forward and backward are manual_ops' hand-written kernels.

    Same constructor, attributes and repr as :class:`torch.nn.AvgPool2d` (it subclasses it).
    """

    def forward(self, input):
        return avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                          self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(nn.AdaptiveAvgPool2d):
    """:class:`torch.nn.AdaptiveAvgPool2d` whose forward and backward are manual_ops' hand-written kernels.

    Same constructor, attributes and repr as :class:`torch.nn.AdaptiveAvgPool2d` (it subclasses it).
    """

    def forward(self, input):
        return adaptive_avg_pool2d(input, self.output_size)
