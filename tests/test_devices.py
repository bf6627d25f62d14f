"""Devices without manual_ops kernels get a clear NotImplementedError (ops and convert); meta works."""
import pytest
import torch
from torch import nn

import manual_ops
from manual_ops import functional as mF, models
from manual_ops.modules import _swap

OPS = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("manual_ops::"))
OTHER_DEVICES = ["CUDA", "HIP", "MPS", "XPU", "XLA", "Lazy", "HPU", "MTIA", "PrivateUse1"]


def test_every_op_has_a_cpu_kernel_and_a_rejecting_kernel_elsewhere():
    assert len(OPS) >= 17
    for name in OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(name, "CPU"), name
        for key in OTHER_DEVICES:
            assert torch._C._dispatch_has_kernel_for_dispatch_key(name, key), (name, key)


@pytest.mark.parametrize("key", ["CUDA", "MPS", "PrivateUse1"])
def test_rejecting_kernel_names_op_device_and_what_is_supported(key):
    # Redispatching straight to the device's kernel (with CPU tensors, for want of that device here).
    keyset = torch._C.DispatchKeySet(getattr(torch._C.DispatchKey, key))
    with pytest.raises(NotImplementedError, match=r"manual_ops::relu_forward: manual_ops has no kernel for device "
                                                  r"'cpu'; its kernels run on the CPU"):
        torch.ops.manual_ops.relu_forward.default.redispatch(keyset, torch.randn(3))
    with pytest.raises(NotImplementedError, match=r"manual_ops::conv2d_forward: .* device"):
        torch.ops.manual_ops.conv2d_forward.default.redispatch(
            keyset, torch.randn(1, 2, 4, 4), torch.randn(3, 2, 3, 3), None, [1, 1], [0, 0, 0, 0], [1, 1], 1)


def test_meta_device_model_converts_and_runs():
    model = manual_ops.convert(models.resnet_small(in_channels=1, num_classes=10, input_size=8).to("meta"))
    y = model(torch.empty(2, 1, 8, 8, device="meta"))
    assert y.device.type == "meta" and y.shape == (2, 10)


def test_convert_refuses_an_unsupported_device_before_changing_anything(monkeypatch):
    # Take the meta device out of the supported ones to exercise the refusal here (no GPU needed).
    monkeypatch.setattr(_swap, "SUPPORTED_DEVICES", ("cpu",))
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Sequential(nn.BatchNorm2d(2).to("meta")))
    with pytest.raises(NotImplementedError, match=r"convert: 2\.0\.weight \(BatchNorm2d\) is on device 'meta', but "
                                                  r"manual_ops' kernels run only on cpu"):
        manual_ops.convert(model)
    assert manual_ops.converted_modules(model) == {}


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_cuda_tensors_get_our_error_not_the_dispatchers():
    x, w = torch.randn(1, 2, 4, 4, device="cuda"), torch.randn(3, 2, 3, 3, device="cuda")
    with pytest.raises(NotImplementedError, match=r"manual_ops::conv2d_forward: manual_ops has no kernel for "
                                                  r"device 'cuda:0'"):
        mF.conv2d(x, w)
    with pytest.raises(NotImplementedError, match=r"manual_ops::batch_norm_forward: .*'cuda:0'"):
        mF.batch_norm(x, torch.zeros(2, device="cuda"), torch.ones(2, device="cuda"), training=True)


@cuda
def test_convert_of_a_cuda_model_raises_at_convert_time():
    with pytest.raises(NotImplementedError, match=r"is on device 'cuda:0'"):
        manual_ops.convert(models.resnet_small(in_channels=1, num_classes=10, input_size=8).cuda())


def test_convert_sync_batchnorm_refuses_an_unsupported_device(monkeypatch):
    monkeypatch.setattr(_swap, "SUPPORTED_DEVICES", ("cpu",))
    model = nn.Sequential(nn.BatchNorm1d(3).to("meta"))
    for call in (lambda: manual_ops.convert(model, sync_bn=True), lambda: manual_ops.convert_sync_batchnorm(model)):
        with pytest.raises(NotImplementedError, match=r"0\.weight \(BatchNorm1d\) is on device 'meta'"):
            call()
    assert type(model[0]) is nn.BatchNorm1d
