"""Loads the compiled operator library ``manual_ops._C``, or says how to build it."""
import importlib
import importlib.util
import os
import re

import torch

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_CHECKOUT = os.path.dirname(_PACKAGE)
_MARKER = re.compile(rb"manual_ops-built-with-torch:([^;\x00]*);")


def built_with_torch(path: str) -> str | None:
    """The torch version that the library at ``path`` was compiled against (the marker that
    csrc/registration.cpp puts in it), or None if it has none."""
    with open(path, "rb") as f:
        match = _MARKER.search(f.read())
    return match.group(1).decode() if match else None


def is_editable_checkout() -> bool:
    """True when the package runs from a source checkout (beside setup.py and csrc/), not an install."""
    return os.path.isfile(os.path.join(_CHECKOUT, "setup.py")) and os.path.isdir(os.path.join(_CHECKOUT, "csrc"))


def stale_sources(library: str) -> list[str]:
    """In a source checkout, the csrc/ files changed after ``library`` was built."""
    csrc = os.path.join(_CHECKOUT, "csrc")
    built = os.path.getmtime(library)
    return sorted(name for name in os.listdir(csrc)
                  if name.endswith((".cpp", ".h")) and os.path.getmtime(os.path.join(csrc, name)) > built)


def build_hint() -> str:
    """The command that rebuilds the extension against the running torch, for a checkout or an install."""
    if is_editable_checkout():
        return f"rebuild it in {_CHECKOUT} with: pip install --no-build-isolation -e ."
    return ("rebuild it against this torch from the manual_ops sources with: "
            "pip install --no-build-isolation --force-reinstall --no-deps .")


def load():
    """Imports ``manual_ops._C`` (which registers the ``torch.ops.manual_ops`` operators).

    Raises ImportError naming the fix when the extension is missing, was compiled against
    another torch than the one running (checked before loading it), does not load, or (in a
    source checkout only) is older than the C++ sources beside it.
    """
    spec = importlib.util.find_spec("manual_ops._C")
    if spec is None or spec.origin is None:
        raise ImportError(f"manual_ops._C is missing: the C++ extension has not been built; {build_hint()}")
    built = built_with_torch(spec.origin)
    if built != torch.__version__:
        raise ImportError(
            f"manual_ops._C was compiled against torch {built or '(unknown)'}, but this is torch "
            f"{torch.__version__}; {build_hint()}"
        )
    if is_editable_checkout():
        stale = stale_sources(spec.origin)
        if stale:
            raise ImportError(
                f"manual_ops._C is older than csrc/{', csrc/'.join(stale)}: the build is stale; {build_hint()}"
            )
    try:
        return importlib.import_module("manual_ops._C")
    except ImportError as e:
        raise ImportError(f"manual_ops._C does not load ({e}); {build_hint()}") from e
