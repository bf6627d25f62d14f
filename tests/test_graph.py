"""manual_ops.builtin_backward_nodes: the compute nodes of an autograd graph whose backward is torch's."""
from collections import Counter

import pytest
import torch
from torch import nn

import manual_ops
from manual_ops import functional as mF


class Sigmoid(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x)


class DropRows(nn.Module):
    """Zeroes whole samples at random and rescales the rest, by a product with a mask that needs no gradient,
    as torchvision's StochasticDepth(p, "row") does."""

    def forward(self, x):
        keep = torch.empty(x.shape[0], *[1] * (x.dim() - 1)).bernoulli_(0.5)
        return x * (keep / 0.5)


def _net(*extra):
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2), *extra,
                         nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(inplace=True),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))


X, Y = torch.randn(4, 3, 8, 8), torch.randint(10, (4,))


@pytest.mark.parametrize("loss_fn", [mF.cross_entropy, manual_ops.nn.CrossEntropyLoss(label_smoothing=0.1)])
def test_a_converted_model_runs_only_manual_ops_backward(loss_fn):
    model = manual_ops.convert(_net())
    assert manual_ops.builtin_backward_nodes(loss_fn(model(X), Y)) == Counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # conv2d's operator called directly, and casts
        assert manual_ops.builtin_backward_nodes(loss_fn(model(X), Y)) == Counter()


def test_the_builtin_model_reports_each_layer():
    nodes = manual_ops.builtin_backward_nodes(nn.functional.cross_entropy(_net()(X), Y))
    assert nodes == Counter({"ConvolutionBackward0": 2, "NativeBatchNormBackward0": 2, "ReluBackward0": 2,
                             "MaxPool2DWithIndicesBackward0": 1, "MeanBackward1": 1, "AddmmBackward0": 1,
                             "LogSoftmaxBackward0": 1, "NllLossBackward0": 1})


def test_torch_layers_left_in_a_converted_model_are_reported():
    model = manual_ops.convert(_net(Sigmoid()))
    assert manual_ops.builtin_backward_nodes(mF.cross_entropy(model(X), Y)) == Counter({"SigmoidBackward0": 1})
    torch_loss = nn.functional.cross_entropy(manual_ops.convert(_net())(X), Y)  # convert leaves functions alone
    assert manual_ops.builtin_backward_nodes(torch_loss) == Counter({"LogSoftmaxBackward0": 1, "NllLossBackward0": 1})


def test_a_product_by_a_mask_is_not_counted_a_product_of_two_activations_is():
    model = manual_ops.convert(_net(DropRows()))
    assert manual_ops.builtin_backward_nodes(mF.cross_entropy(model(X), Y)) == Counter()
    h = model[:4](X)
    assert manual_ops.builtin_backward_nodes(h * 2.0) == Counter()
    assert manual_ops.builtin_backward_nodes(h * h) == Counter({"MulBackward0": 1})


def test_the_graphs_of_a_double_backward_are_manual_ops():
    model = manual_ops.convert(_net())
    x = X.clone().requires_grad_()
    grads = torch.autograd.grad(mF.cross_entropy(model(x), Y), [x, *model.parameters()], create_graph=True)
    assert [manual_ops.builtin_backward_nodes(g) for g in grads] == [Counter()] * len(grads)


def test_an_output_without_grad_is_refused():
    with pytest.raises(RuntimeError, match="output does not require grad and does not have a grad_fn"):
        manual_ops.builtin_backward_nodes(torch.ones(2))
