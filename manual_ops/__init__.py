"""manual_ops: conv, batch-norm, pooling, linear, ReLU and cross-entropy layers for PyTorch with hand-written
backward passes, and convert()/revert() to swap them into a model."""
from ._extension import load as _load

_C = _load()

from . import functional, nn  # noqa: E402
from .convert import convert, convert_sync_batchnorm, converted_modules, revert  # noqa: E402
from .graph import builtin_backward_nodes  # noqa: E402
from .modules.batch_norm import clamp_beta_, register_clamp_beta_hook  # noqa: E402
from .routing import enable  # noqa: E402



def cpu_capability() -> str:
    """The copy of manual_ops' vectorised kernels this process runs: ``"avx512"`` (AVX-512 F/BW/VL/DQ),
    ``"avx2"`` (AVX2 and FMA) or ``"default"`` (portable code), the highest the CPU has. Set the environment
    variable ``MANUAL_OPS_CPU_CAPABILITY=default|avx2|avx512`` before the first op to force a lower level, as
    ``ATEN_CPU_CAPABILITY`` does for torch's own kernels (see :func:`torch.backends.cpu.get_cpu_capability`);
    a level the CPU lacks, or an unknown value, is ignored with a warning.

    Kernels ported to ``at::vec`` (csrc/cpu/) run at all three levels; the others still have one AVX2 copy,
    which runs at ``"avx2"`` and ``"avx512"``. How bfloat16/float16 GEMMs run (on oneDNN's AMX / AVX512-BF16
    micro-kernel or on ours) is :func:`low_precision_gemm`'s to say."""
    return _C.cpu_capability()


def low_precision_gemm(dtype) -> str:
    """How conv2d's and linear's GEMMs multiply ``dtype`` (``torch.bfloat16`` or ``torch.float16``) in this
    process: ``"onednn"`` (oneDNN's matmul for plain products, and its AMX micro-kernel with our packing and
    blocking, or else our GEMM, for the others; float32 sums), ``"own"`` (our AVX2/FMA GEMM in float32) or
    ``"mm"`` (``torch.mm`` on float32 copies, on a CPU without AVX2). The default is ``"onednn"`` wherever
    oneDNN has dot-product hardware for the dtype on this CPU (AMX, AVX512-BF16 for bfloat16, AVX512-FP16 for
    float16); set ``MANUAL_OPS_BF16_GEMM=onednn`` or ``own`` before the import to choose (for both dtypes)."""
    import torch

    names = {torch.bfloat16: "bfloat16", torch.float16: "float16"}
    if dtype not in names:
        raise ValueError(f"low_precision_gemm: expected torch.bfloat16 or torch.float16, but got {dtype}")
    return _C.low_precision_gemm(names[dtype])


__all__ = ["builtin_backward_nodes", "clamp_beta_", "convert", "cpu_capability", "convert_sync_batchnorm",
           "converted_modules", "enable", "functional", "low_precision_gemm", "nn", "register_clamp_beta_hook",
           "revert"]
__version__ = "0.1.0"
