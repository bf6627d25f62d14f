"""manual_ops: conv, batch-norm and pooling layers for PyTorch with hand-written backward passes."""
from ._extension import load as _load

_C = _load()

from . import functional, nn  # noqa: E402
from .modules.batch_norm import clamp_beta_, register_clamp_beta_hook  # noqa: E402

__all__ = ["clamp_beta_", "functional", "nn", "register_clamp_beta_hook"]
__version__ = "0.1.0"
