"""CrossEntropyLoss as a drop-in for torch.nn.CrossEntropyLoss."""
from torch import nn

from ..ops.cross_entropy import cross_entropy


class CrossEntropyLoss(nn.CrossEntropyLoss):
    """:class:`torch.nn.CrossEntropyLoss` whose forward and backward are manual_ops' hand-written kernels.

    Same constructor (``weight``, ``ignore_index``, ``reduction``, ``label_smoothing``, and the
    deprecated ``size_average``/``reduce``), repr and state_dict as :class:`torch.nn.CrossEntropyLoss`.
    """

    def forward(self, input, target):
        return cross_entropy(input, target, weight=self.weight, ignore_index=self.ignore_index,
                             reduction=self.reduction, label_smoothing=self.label_smoothing)
