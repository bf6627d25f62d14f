"""conv2d's Winograd F(2x2, 3x3) path (csrc/winograd.h): 3x3 kernels at stride and dilation 1, one group,
padding up to 2, at least 16 channels in and out, every dtype (bfloat16 and float16 transformed and
multiplied in float32). Its output and grads are checked against the built-in over a grid of shapes (odd
and tiny images, every padding, both layouts, several tiles of samples), for accuracy against float64, by
gradcheck/gradgradcheck in float64, by opcheck, and against the im2col path on the same inputs."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from manual_ops import functional as mF

f64 = torch.float64


def _grads(fn, x, w, b, grad):
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    b = b.detach().requires_grad_() if b is not None else None
    y = fn(x, w, b)
    y.backward(grad)
    return [y, x.grad, w.grad] + ([b.grad] if b is not None else [])


GRID = [(c, hw, p, cl) for c, hw, p, cl in itertools.product([(16, 16), (16, 40), (24, 16)],
                                                              [(1, 1), (2, 3), (4, 4), (5, 7), (9, 6)], [0, 1, 2],
                                                              [False, True])
        if min(hw) + 2 * p >= 3]  # the kernel fits in the padded input


def _direct_float32(x, w, b, grad, padding):
    """y, dx, dw, db of a 3x3 stride-1 conv as plain float32 sums in one fixed order, one rounding per
    multiplication and per addition (elementwise ops only): the same values on every CPU, unlike a
    BLAS or oneDNN conv, whose summation order (and so its error) changes with the vector width."""
    x, w, grad = x.contiguous(), w.contiguous(), grad.contiguous()
    (B, K, H, W), N, (OH, OW) = x.shape, w.shape[0], grad.shape[2:]
    xp, q = F.pad(x, [padding] * 4), 2 - padding
    gp = F.pad(grad, [q] * 4)  # dX is the full correlation of dY with the rotated kernels
    y, dx, dw, db = b.view(1, N, 1, 1).expand(B, N, OH, OW), x.new_zeros(x.shape), w.new_zeros(w.shape), b.new_zeros(N)
    for a, c in itertools.product(range(3), range(3)):
        for k in range(K):
            y = y + w[:, k, a, c].view(1, N, 1, 1) * xp[:, k:k + 1, a:a + OH, c:c + OW]
        for n in range(N):
            dx = dx + w[n, :, 2 - a, 2 - c].view(1, K, 1, 1) * gp[:, n:n + 1, a:a + H, c:c + W]
    for s, oy, ox in itertools.product(range(B), range(OH), range(OW)):
        dw = dw + grad[s, :, oy, ox].view(N, 1, 1, 1) * xp[s, :, oy:oy + 3, ox:ox + 3].unsqueeze(0)
        db = db + grad[s, :, oy, ox]
    return y, dx, dw, db


def _check_float32_accuracy(x, w, b, grad, padding):
    ours = _grads(lambda x, w, b: mF.conv2d(x, w, b, padding=padding), x, w, b, grad)
    ref64 = _grads(lambda x, w, b: F.conv2d(x, w, b, padding=padding), x.double(), w.double(), b.double(),
                   grad.double())
    direct = _direct_float32(x, w, b, grad, padding)
    for name, a, d, r64 in zip(("output", "grad_input", "grad_weight", "grad_bias"), ours, direct, ref64):
        assert a.shape == r64.shape and a.dtype == torch.float32, name
        our_err = (a.double() - r64).abs().max().item()
        direct_err = (d.double() - r64).abs().max().item()
        assert our_err <= 2 * direct_err + 1e-6, f"{name}: ours {our_err:.2e}, direct float32 sum {direct_err:.2e}"


@pytest.mark.parametrize("channels,hw,padding,channels_last", GRID)
def test_float32_accuracy_against_float64_within_direct_sums(channels, hw, padding, channels_last):
    """Ours is judged against a float64 reference: at most twice the error of plain float32 direct
    sums (_direct_float32, plus 1e-6 for tiny values). F(2x2, 3x3)'s transforms (entries 0, +-1,
    +-1/2) keep it so. The bound is the same on every CPU (the built-in's error is not: oneDNN's
    AVX-512 kernels sum more accurately than its AVX2 ones)."""
    (C, Cout), (H, W) = channels, hw
    torch.manual_seed(H * 100 + W * 10 + padding)
    x, w, b = torch.randn(2, C, H, W), torch.randn(Cout, C, 3, 3), torch.randn(Cout)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    _check_float32_accuracy(x, w, b, torch.randn(2, Cout, H + 2 * padding - 2, W + 2 * padding - 2), padding)


@pytest.mark.parametrize("batch,channels,hw,padding", [(6, 64, 32, 1), (16, 32, 20, 0)])
def test_float32_accuracy_over_several_tiles_of_samples(batch, channels, hw, padding):
    """As above, at a ResNet layer's size: dW's sums over more tiles, and over several tiles of samples
    (6 and 2 here: winograd_samples)."""
    torch.manual_seed(batch)
    x, w, b = torch.randn(batch, channels, hw, hw), torch.randn(channels, channels, 3, 3), torch.randn(channels)
    _check_float32_accuracy(x, w, b, torch.randn(batch, channels, hw + 2 * padding - 2, hw + 2 * padding - 2), padding)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels,hw,padding,channels_last", GRID[::3])
def test_low_precision_accuracy_against_float64_within_the_builtins(dtype, channels, hw, padding, channels_last):
    """bf16/fp16 tensors, float32 transforms and GEMMs, each result rounded once: at most twice the
    built-in's error in the same dtype against float64 (plus one rounding of the largest value)."""
    (C, Cout), (H, W) = channels, hw
    torch.manual_seed(H * 100 + W * 10 + padding)
    x, w, b = torch.randn(2, C, H, W), torch.randn(Cout, C, 3, 3) / (9 * C) ** 0.5, torch.randn(Cout)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    grad = torch.randn(2, Cout, H + 2 * padding - 2, W + 2 * padding - 2)
    args = [t.to(dtype) for t in (x, w, b, grad)]
    ours = _grads(lambda x, w, b: mF.conv2d(x, w, b, padding=padding), *args)
    ref16 = _grads(lambda x, w, b: F.conv2d(x, w, b, padding=padding), *args)
    ref64 = _grads(lambda x, w, b: F.conv2d(x, w, b, padding=padding), *[t.double() for t in args])
    for name, a, r16, r64 in zip(("output", "grad_input", "grad_weight", "grad_bias"), ours, ref16, ref64):
        assert a.shape == r16.shape and a.dtype == dtype, name
        our_err = (a.double() - r64).abs().max().item()
        torch_err = (r16.double() - r64).abs().max().item()
        ulp = torch.finfo(dtype).eps * r64.abs().max().item()
        assert our_err <= 2 * torch_err + ulp, f"{name}: ours {our_err:.2e}, torch {torch_err:.2e}"


def test_same_values_as_the_im2col_path():
    """14 input channels take the im2col path, 16 Winograd; zero channels 14, 15 make the same conv."""
    torch.manual_seed(0)
    x, w = torch.randn(3, 16, 10, 9, dtype=f64), torch.randn(20, 16, 3, 3, dtype=f64)
    x[:, 14:] = 0
    grad = torch.randn(3, 20, 10, 9, dtype=f64)
    wino = _grads(lambda x, w, b: mF.conv2d(x, w, padding=1), x, w, None, grad)
    im2col = _grads(lambda x, w, b: mF.conv2d(x[:, :14], w[:, :14], padding=1), x, w, None, grad)
    torch.testing.assert_close(wino[0], im2col[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(wino[1][:, :14], im2col[1][:, :14], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding", [0, 1, 2])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradcheck_and_gradgradcheck_float64(padding, channels_last):
    torch.manual_seed(padding)
    x = torch.randn(2, 16, 4, 5, dtype=f64)
    w = torch.randn(16, 16, 3, 3, dtype=f64)
    if channels_last:
        x, w = x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)
    x, w = x.requires_grad_(), w.requires_grad_()
    b = torch.randn(16, dtype=f64, requires_grad=True)
    fn = lambda x, w, b: mF.conv2d(x, w, b, padding=padding)  # noqa: E731
    # fast mode (random projections of the Jacobians): the full one, over 2.3k weights, takes minutes
    assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, w, b), fast_mode=True)


def test_asymmetric_padding_through_the_operator():
    """The op takes four paddings (top, left, bottom, right); each may be 0, 1 or 2."""
    torch.manual_seed(1)
    x, w, b = torch.randn(2, 16, 7, 6, dtype=f64), torch.randn(16, 16, 3, 3, dtype=f64), torch.randn(16, dtype=f64)
    for pt, pl, pb, pr in [(0, 1, 2, 1), (2, 0, 1, 2), (1, 2, 0, 0)]:
        y = torch.ops.manual_ops.conv2d_forward(x, w, b, [1, 1], [pt, pl, pb, pr], [1, 1], 1)
        ref = F.conv2d(F.pad(x, (pl, pr, pt, pb)), w, b)
        torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
        gy = torch.randn_like(ref)
        gx, _, _ = torch.ops.manual_ops.conv2d_backward(gy, x, w, [1, 1], [pt, pl, pb, pr], [1, 1], 1,
                                                       [True, False, False])
        xr = x.clone().requires_grad_()
        F.conv2d(F.pad(xr, (pl, pr, pt, pb)), w, b).backward(gy)
        torch.testing.assert_close(gx, xr.grad, rtol=1e-12, atol=1e-12)


def test_several_tiles_of_samples():
    """At 8x8 a sample has 16 output blocks; 40 samples span several tiles of samples (kMinTileRows = 256
    blocks, and the 4 MB budget), the last one partial."""
    torch.manual_seed(2)
    x, w = torch.randn(40, 32, 8, 8, dtype=f64), torch.randn(24, 32, 3, 3, dtype=f64)
    grad = torch.randn(40, 24, 8, 8, dtype=f64)
    ours = _grads(lambda x, w, b: mF.conv2d(x, w, padding=1), x, w, None, grad)
    ref = _grads(lambda x, w, b: F.conv2d(x, w, padding=1), x, w, None, grad)
    for a, r in zip(ours, ref):
        torch.testing.assert_close(a, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(channels_last):
    x = torch.randn(2, 16, 5, 6, requires_grad=True)
    w = torch.randn(16, 16, 3, 3, requires_grad=True)
    if channels_last:
        x = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    args = (x, w, torch.randn(16, requires_grad=True), [1, 1], [1, 2, 0, 1], [1, 1], 1)
    torch.library.opcheck(torch.ops.manual_ops.conv2d_forward.default, args)
    y = torch.ops.manual_ops.conv2d_forward(*args)
    torch.library.opcheck(torch.ops.manual_ops.conv2d_backward.default,
                          (torch.randn_like(y), x.detach(), w.detach(), *args[3:], [True, True, True]))
