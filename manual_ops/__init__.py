"""manual_ops: conv, batch-norm and pooling layers for PyTorch with hand-written backward passes."""
from ._extension import load as _load

_C = _load()

from . import functional, nn  # noqa: E402

__all__ = ["functional", "nn"]
__version__ = "0.1.0"
