"""manual_ops: conv, batch-norm, pooling, linear, ReLU and cross-entropy layers for PyTorch with hand-written
backward passes, and convert()/revert() to swap them into a model."""
from ._extension import load as _load

_C = _load()

from . import functional, nn  # noqa: E402
from .convert import convert, converted_modules, revert  # noqa: E402

__all__ = ["convert", "converted_modules", "functional", "nn", "revert"]
__version__ = "0.1.0"
