"""The activations as drop-ins for torch.nn's: the same constructors, attributes, repr and state_dict
(none), with manual_ops' hand-written forward and backward kernels."""
from torch import nn

from ..ops import activation as _act
from ..ops.relu import relu


class ReLU(nn.ReLU):
    """:class:`torch.nn.ReLU` whose forward and backward are manual_ops' hand-written kernels.

    Same constructor (``inplace``) and repr as :class:`torch.nn.ReLU`.
    """

    def forward(self, input):
        return relu(input, inplace=self.inplace)


class Sigmoid(nn.Sigmoid):
    """:class:`torch.nn.Sigmoid` with manual_ops' kernels (:func:`manual_ops.functional.sigmoid`)."""

    def forward(self, input):
        return _act.sigmoid(input)


class Tanh(nn.Tanh):
    """:class:`torch.nn.Tanh` with manual_ops' kernels (:func:`manual_ops.functional.tanh`)."""

    def forward(self, input):
        return _act.tanh(input)


class SiLU(nn.SiLU):
    """:class:`torch.nn.SiLU` with manual_ops' kernels; same constructor (``inplace``)."""

    def forward(self, input):
        return _act.silu(input, inplace=self.inplace)


class GELU(nn.GELU):
    """:class:`torch.nn.GELU` with manual_ops' kernels; same constructor (``approximate``)."""

    def forward(self, input):
        return _act.gelu(input, approximate=self.approximate)


class LeakyReLU(nn.LeakyReLU):
    """:class:`torch.nn.LeakyReLU` with manual_ops' kernels; same constructor (``negative_slope``, ``inplace``)."""

    def forward(self, input):
        return _act.leaky_relu(input, self.negative_slope, self.inplace)


class ELU(nn.ELU):
    """:class:`torch.nn.ELU` with manual_ops' kernels; same constructor (``alpha``, ``inplace``)."""

    def forward(self, input):
        return _act.elu(input, self.alpha, self.inplace)


class Hardtanh(nn.Hardtanh):
    """:class:`torch.nn.Hardtanh` with manual_ops' kernels; same constructor (``min_val``, ``max_val``,
    ``inplace``)."""

    def forward(self, input):
        return _act.hardtanh(input, self.min_val, self.max_val, self.inplace)


class ReLU6(nn.ReLU6):
    """:class:`torch.nn.ReLU6` with manual_ops' kernels (hardtanh on [0, 6]); same constructor (``inplace``)."""

    def forward(self, input):
        return _act.hardtanh(input, self.min_val, self.max_val, self.inplace)


class Hardswish(nn.Hardswish):
    """:class:`torch.nn.Hardswish` with manual_ops' kernels; same constructor (``inplace``)."""

    def forward(self, input):
        return _act.hardswish(input, self.inplace)


class Hardsigmoid(nn.Hardsigmoid):
    """:class:`torch.nn.Hardsigmoid` with manual_ops' kernels; same constructor (``inplace``)."""

    def forward(self, input):
        return _act.hardsigmoid(input, self.inplace)


class Softplus(nn.Softplus):
    """:class:`torch.nn.Softplus` with manual_ops' kernels; same constructor (``beta``, ``threshold``)."""

    def forward(self, input):
        return _act.softplus(input, self.beta, self.threshold)
