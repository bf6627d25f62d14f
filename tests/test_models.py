"""manual_ops.models: shapes for every model, input size and channel count; the float64 few-step agreement."""
import copy

import pytest
import torch
from torch import nn

import manual_ops
from manual_ops import models


@pytest.mark.parametrize("name", list(models.MODELS))
@pytest.mark.parametrize("channels,size", [(1, 8), (3, 12), (3, (9, 16))])
def test_output_shape_and_style(name, channels, size):
    torch.manual_seed(0)
    model = models.build(name, channels, 7, size)
    h, w = (size, size) if isinstance(size, int) else size
    x = torch.randn(2, channels, h, w)
    assert model(x).shape == (2, 7)
    if name == "lenet5":  # the notes' network: sigmoids and 2x2 average pooling
        kinds = {type(m) for m in model.modules()}
        assert {nn.Sigmoid, nn.AvgPool2d} <= kinds and nn.ReLU not in kinds
        return
    # torchvision style: in-place ReLUs and a global average pool before the classifier.
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus and all(m.inplace for m in relus)
    assert any(isinstance(m, nn.AdaptiveAvgPool2d) for m in model.modules())


def test_lenet5_runs_only_our_backward_and_matches_the_builtin_in_float64():
    torch.manual_seed(0)
    builtin = models.build("lenet5", 1, 10, 8).double()
    ours = manual_ops.convert(copy.deepcopy(builtin))
    x, y = torch.randn(16, 1, 8, 8, dtype=torch.float64), torch.randint(10, (16,))
    losses = [manual_ops.functional.cross_entropy(ours(x), y), nn.functional.cross_entropy(builtin(x), y)]
    assert not manual_ops.builtin_backward_nodes(losses[0])
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=1e-12)
    for a, b in zip(ours.parameters(), builtin.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)


def test_vgg_stops_pooling_on_small_maps():
    pools = lambda size: sum(isinstance(m, nn.MaxPool2d) for m in models.vgg11(1, 10, size).modules())  # noqa: E731
    assert pools(32) == 5 and pools(8) == 3 and pools(16) == 4


def test_resnet18_matches_the_cifar_layout():
    model = models.resnet18(3, 10)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == [2, 2, 2, 2]
    assert 11_000_000 < sum(p.numel() for p in model.parameters()) < 11_300_000


def test_build_rejects_unknown_model_and_small_inputs():
    with pytest.raises(ValueError, match=r"unknown model 'resnet50'; choose from resnet18, resnet-small, vgg11, vgg16, "
                                         r"lenet5"):
        models.build("resnet50")
    with pytest.raises(ValueError, match=r"resnet18 needs inputs of at least 8x8, but got input_size=\(4, 4\)"):
        models.build("resnet18", input_size=4)


@pytest.mark.parametrize("name", ["resnet-small", "vgg11"])
def test_float64_training_agrees_to_1e_9(name):
    """A few SGD steps from the same init, on the same batches: built-in and converted losses agree."""
    torch.manual_seed(0)
    builtin = models.build(name, 1, 10, 8).double()
    manual = manual_ops.convert(copy.deepcopy(builtin))
    runs = []
    for model, loss_fn in ((builtin, nn.CrossEntropyLoss()), (manual, manual_ops.nn.CrossEntropyLoss())):
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        gen = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(3):
            x = torch.randn(8, 1, 8, 8, generator=gen, dtype=torch.float64)
            y = torch.randint(10, (8,), generator=gen)
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        runs.append(losses)
    assert max(abs(a - b) for a, b in zip(*runs)) < 1e-9, runs
    for p, q in zip(builtin.parameters(), manual.parameters()):
        torch.testing.assert_close(p, q, atol=1e-9, rtol=0)
