"""conv1d as a view over conv2d: an (N, C, L) input is the (N, C, 1, L) image of one row, and a (O, C/g, k)
kernel the (O, C/g, 1, k) one; the 2-D convolution over them, with stride, padding and dilation 1, 0 and 1
along the row axis, is the 1-D convolution. Only views are added, so the forward and backward are conv2d's own
(their vmap rules, second order and forward mode included)."""
from .conv2d import conv2d


def _single(value, name):
    """An int or a sequence of one int, as an int, with torch's message otherwise."""
    if isinstance(value, int):
        return value
    values = list(value)
    if len(values) != 1 or not isinstance(values[0], int):
        raise RuntimeError(f"expected {name} to be a single integer value or a list of 1 values to match the "
                           f"convolution dimensions, but got {name}={values}")
    return values[0]


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    r"""Applies a 1-D convolution, with conv2d's hand-written backward. Same as :func:`torch.nn.functional.conv1d`.

    Args:
        input: input tensor of shape :math:`(N, C_{in}, L)` or :math:`(C_{in}, L)`.
        weight: filters of shape :math:`(C_{out}, C_{in}/groups, k)`.
        bias: optional bias of shape :math:`(C_{out})`. Default: ``None``.
        stride: int or (s,). Default: 1.
        padding: int, (p,), ``'valid'`` or ``'same'``. Default: 0.
        dilation: int or (d,). Default: 1.
        groups: number of blocked connections from input to output channels. Default: 1.

    Shape:
        - Output: :math:`(N, C_{out}, L_{out})` or :math:`(C_{out}, L_{out})`, where
          :math:`L_{out} = \lfloor (L + 2p - d (k - 1) - 1) / s \rfloor + 1`.
    """
    if input.dim() not in (2, 3):
        raise RuntimeError(
            f"Expected 2D (unbatched) or 3D (batched) input to conv1d, but got input of size: {list(input.shape)}")
    if weight.dim() != 3:
        raise RuntimeError("weight should have at least three dimensions" if weight.dim() < 3 else
                           f"conv1d: expected a 3-D weight (out_channels, in_channels/groups, k), but got weight of "
                           f"size {list(weight.shape)}")
    stride, dilation = (1, _single(stride, "stride")), (1, _single(dilation, "dilation"))
    padding = padding if isinstance(padding, str) else (0, _single(padding, "padding"))
    return conv2d(input.unsqueeze(-2), weight.unsqueeze(2), bias, stride, padding, dilation, groups).squeeze(-2)
