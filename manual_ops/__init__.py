"""manual_ops: conv, batch-norm, pooling, linear, ReLU and cross-entropy layers for PyTorch with hand-written
backward passes, and convert()/revert() to swap them into a model."""
from ._extension import load as _load

_C = _load()

from . import functional, nn  # noqa: E402
from .convert import convert, convert_sync_batchnorm, converted_modules, revert  # noqa: E402
from .modules.batch_norm import clamp_beta_, register_clamp_beta_hook  # noqa: E402



def cpu_capability() -> str:
    """The vector instructions manual_ops' kernels use in this process: ``"avx2"`` (AVX2 and FMA) where the
    CPU has them, else ``"default"`` (portable code). Set the environment variable
    ``MANUAL_OPS_CPU_CAPABILITY=default`` before the import to force the portable code, as
    ``ATEN_CPU_CAPABILITY`` does for torch's own kernels (see :func:`torch.backends.cpu.get_cpu_capability`)."""
    return _C.cpu_capability()


__all__ = ["clamp_beta_", "convert", "cpu_capability", "convert_sync_batchnorm", "converted_modules", "functional", "nn",
           "register_clamp_beta_hook", "revert"]
__version__ = "0.1.0"
