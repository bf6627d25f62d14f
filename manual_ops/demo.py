"""A quick trust check: manual_ops' gradients against torch's built-ins on real-sized layers."""
import torch
import torch.nn.functional as F

from . import functional as mF

# (name, batch, C_in, C_out, H=W, kernel, stride, padding, groups)
LAYERS = [
    ("ResNet stem 3->64 3x3", 8, 3, 64, 32, 3, 1, 1, 1),
    ("ResNet 64->64 3x3", 8, 64, 64, 32, 3, 1, 1, 1),
    ("ResNet 128->256 3x3 s2", 8, 128, 256, 16, 3, 2, 1, 1),
    ("ResNet shortcut 128->256 1x1 s2", 8, 128, 256, 16, 1, 2, 0, 1),
    ("grouped 64->64 3x3 g4 dilation 2", 8, 64, 64, 16, 3, 1, 2, 4),
]


def _run(conv, x, w, b, grad, stride, padding, groups):
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    y = conv(x, w, b, stride=stride, padding=padding, dilation=2 if groups > 1 else 1, groups=groups)
    y.backward(grad)
    return {"output": y, "grad_input": x.grad, "grad_weight": w.grad, "grad_bias": b.grad}


def compare_conv(log=print):
    """Prints, per layer and tensor, the max abs and max relative difference (ours vs F.conv2d)."""
    log(f"{'layer':<34} {'tensor':<12} {'float32 max|diff|':>18} {'rel':>9} {'float64 max|diff|':>18}")
    worst = 0.0
    for name, n, cin, cout, hw, k, s, p, g in LAYERS:
        x = torch.randn(n, cin, hw, hw, dtype=torch.float64)
        w = torch.randn(cout, cin // g, k, k, dtype=torch.float64) * (2 / (cin // g * k * k)) ** 0.5
        b = torch.randn(cout, dtype=torch.float64)
        grad = torch.randn_like(F.conv2d(x, w, b, s, p, 2 if g > 1 else 1, g))
        results = {}
        for dtype in (torch.float32, torch.float64):
            args = [t.to(dtype) for t in (x, w, b, grad)]
            results[dtype] = (_run(mF.conv2d, *args, s, p, g), _run(F.conv2d, *args, s, p, g))
        for key in ("output", "grad_input", "grad_weight", "grad_bias"):
            ours32, ref32 = results[torch.float32][0][key], results[torch.float32][1][key]
            ours64, ref64 = results[torch.float64][0][key], results[torch.float64][1][key]
            diff32 = (ours32 - ref32).abs().max().item()
            rel32 = diff32 / ref32.abs().max().item()
            diff64 = (ours64 - ref64).abs().max().item()
            worst = max(worst, rel32)
            log(f"{name:<34} {key:<12} {diff32:>18.3e} {rel32:>9.1e} {diff64:>18.3e}")
    log(f"largest float32 difference relative to the tensor's scale: {worst:.1e}")
    return worst


def main(log=print) -> int:
    torch.manual_seed(0)
    log("conv2d: manual_ops (im2col + GEMM, hand-written backward) vs torch.nn.functional.conv2d (oneDNN)")
    worst = compare_conv(log)
    return 0 if worst < 1e-4 else 1
