"""Loads the compiled operator library ``manual_ops._C``, or says how to build it."""
import importlib
import os

import torch  # noqa: F401  (loads libtorch, which _C links against)

BUILD_HINT = "build it from the repository root with: pip install --no-build-isolation -e ."
_CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")


def load():
    """Imports ``manual_ops._C`` (which registers the ``torch.ops.manual_ops`` operators).

    Raises ImportError naming the fix when the extension is missing, does not load
    against this torch, or is older than the C++ sources beside it (a source checkout).
    """
    try:
        module = importlib.import_module("manual_ops._C")
    except ImportError as e:
        raise ImportError(f"manual_ops._C is missing or does not load ({e}); {BUILD_HINT}") from e
    if os.path.isdir(_CSRC):
        built = os.path.getmtime(module.__file__)
        stale = sorted(
            name for name in os.listdir(_CSRC)
            if name.endswith((".cpp", ".h")) and os.path.getmtime(os.path.join(_CSRC, name)) > built
        )
        if stale:
            raise ImportError(
                f"manual_ops._C is older than csrc/{', csrc/'.join(stale)}: the build is stale; {BUILD_HINT}"
            )
    return module
