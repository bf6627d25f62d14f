"""Dropout and Dropout2d as drop-ins for torch.nn's: the same constructors (``p``, ``inplace``), repr and
state_dict (none), with manual_ops' hand-written kernels and torch's masks."""
from torch import nn

from ..ops.dropout import dropout, dropout2d


class Dropout(nn.Dropout):
    """:class:`torch.nn.Dropout` with manual_ops' kernels (:func:`manual_ops.functional.dropout`)."""

    def forward(self, input):
        return dropout(input, self.p, self.training, self.inplace)


class Dropout2d(nn.Dropout2d):
    """:class:`torch.nn.Dropout2d` with manual_ops' kernels (:func:`manual_ops.functional.dropout2d`)."""

    def forward(self, input):
        return dropout2d(input, self.p, self.training, self.inplace)
