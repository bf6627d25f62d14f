"""Every kernel gives the same bits with 1 and with 2 threads: at::parallel_for only splits
work whose results do not depend on the split (gathers, per-channel sums in float64 whose
float32 rounding does not move, and batch_norm's sums over fixed blocks of rows, added in block
order), and no GEMM is called inside a parallel region."""
import pytest
import torch

from manual_ops import functional as mF


def _run(fn, inputs, threads):
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        leaves = [t.detach().clone().requires_grad_(t.requires_grad) for t in inputs]
        out = fn(*leaves)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
        (out * weights).sum().backward()
        return [out.detach()] + [t.grad for t in leaves if t.requires_grad]
    finally:
        torch.set_num_threads(previous)


def _cl(t):
    return t.to(memory_format=torch.channels_last)


def _conv(stride, padding):
    return lambda x, w: mF.conv2d(x, w, None, stride, padding)


def _bn(x, w, b):
    return mF.batch_norm(x, torch.zeros(x.shape[1]), torch.ones(x.shape[1]), w, b, True)


CASES = {
    "conv 3x3 NCHW": (_conv(1, 1), lambda: (torch.randn(4, 16, 12, 12, requires_grad=True),
                                             torch.randn(8, 16, 3, 3, requires_grad=True))),
    "conv 3x3 s2 channels_last": (_conv(2, 1), lambda: (_cl(torch.randn(4, 16, 12, 12)).requires_grad_(),
                                                         _cl(torch.randn(8, 16, 3, 3)).requires_grad_())),
    "conv 3x3 Winograd": (_conv(1, 1), lambda: (torch.randn(4, 16, 12, 12, requires_grad=True),
                                                 torch.randn(24, 16, 3, 3, requires_grad=True))),
    "conv 3x3 Winograd channels_last": (_conv(1, 2), lambda: (_cl(torch.randn(4, 32, 9, 9)).requires_grad_(),
                                                               torch.randn(16, 32, 3, 3, requires_grad=True))),
    "conv 3x3 Winograd bfloat16": (_conv(1, 1), lambda: (torch.randn(4, 16, 12, 12, dtype=torch.bfloat16,
                                                                  requires_grad=True),
                                                      torch.randn(16, 16, 3, 3, dtype=torch.bfloat16,
                                                                  requires_grad=True))),
    "conv stem K=27": (_conv(1, 1), lambda: (torch.randn(4, 3, 12, 12), torch.randn(8, 3, 3, 3, requires_grad=True))),
    "conv 1x1 s2": (_conv(2, 0), lambda: (torch.randn(4, 16, 12, 12, requires_grad=True),
                                          torch.randn(8, 16, 1, 1, requires_grad=True))),
    "batch_norm long rows": (_bn, lambda: (torch.randn(8, 16, 16, 16, requires_grad=True),
                                           torch.rand(16, requires_grad=True), torch.randn(16, requires_grad=True))),
    "batch_norm short rows": (_bn, lambda: (torch.randn(8, 64, 4, 4, requires_grad=True),
                                            torch.rand(64, requires_grad=True), torch.randn(64, requires_grad=True))),
    "batch_norm bfloat16 short rows": (_bn, lambda: (torch.randn(8, 64, 3, 3, dtype=torch.bfloat16, requires_grad=True),
                                                     torch.rand(64, requires_grad=True),
                                                     torch.randn(64, requires_grad=True))),
    "batch_norm channels_last": (_bn, lambda: (_cl(torch.randn(8, 32, 6, 6)).requires_grad_(),
                                               torch.rand(32, requires_grad=True), torch.randn(32, requires_grad=True))),
    # Pooling sizes are large enough for at::parallel_for to split them at 2 threads.
    "max_pool": (lambda x: mF.max_pool2d(x, 3, 2, 1), lambda: (torch.randn(4, 64, 12, 12, requires_grad=True),)),
    "max_pool dilated ceil_mode": (lambda x: mF.max_pool2d(x, 3, 2, 1, dilation=2, ceil_mode=True),
                                   lambda: (torch.randn(4, 64, 13, 13, requires_grad=True),)),
    "max_pool channels_last": (lambda x: mF.max_pool2d(x, 3, 2, 1),
                               lambda: (_cl(torch.randn(8, 32, 12, 12)).requires_grad_(),)),
    "avg_pool channels_last": (lambda x: mF.avg_pool2d(x, 2, 2), lambda: (_cl(torch.randn(4, 16, 12, 12)).requires_grad_(),)),
    "avg_pool bfloat16": (lambda x: mF.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
                          lambda: (torch.randn(8, 64, 12, 12, dtype=torch.bfloat16, requires_grad=True),)),
    "adaptive_avg_pool": (lambda x: mF.adaptive_avg_pool2d(x, 1), lambda: (torch.randn(8, 1024, 4, 4, requires_grad=True),)),
    "adaptive_avg_pool channels_last": (lambda x: mF.adaptive_avg_pool2d(x, 3),
                                        lambda: (_cl(torch.randn(16, 128, 7, 7)).requires_grad_(),)),
    "relu": (mF.relu, lambda: (torch.randn(4, 16, 12, 12, requires_grad=True),)),
    "silu": (mF.silu, lambda: (torch.randn(4, 64, 12, 12, requires_grad=True),)),
    "dropout": (lambda x: (torch.manual_seed(0), mF.dropout(x, 0.3))[1],
                lambda: (torch.randn(4, 64, 12, 12, requires_grad=True),)),
    "gelu bfloat16": (mF.gelu, lambda: (torch.randn(4, 64, 12, 12, dtype=torch.bfloat16, requires_grad=True),)),
    "hardswish_": (lambda x: mF.hardswish(x * 1, inplace=True),
                   lambda: (torch.randn(4, 64, 12, 12, requires_grad=True),)),
    "cross_entropy": (lambda x: mF.cross_entropy(x, torch.arange(64) % 100), lambda: (torch.randn(64, 100, requires_grad=True),)),
}


@pytest.mark.parametrize("name", CASES)
def test_one_and_two_threads_agree_bitwise(name):
    fn, make = CASES[name]
    inputs = make()
    one, two = _run(fn, inputs, 1), _run(fn, inputs, 2)
    for a, b in zip(one, two, strict=True):
        assert torch.equal(a, b)
