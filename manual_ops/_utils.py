"""Argument normalisation shared by the functional ops and modules."""
import torch
from torch import _prims_common
from torch._functorch import utils as _functorch_utils
from torch.autograd import forward_ad as _forward_ad


# The dtypes our kernels take: csrc/common.h's four (is_kernel_dtype).
KERNEL_DTYPES = frozenset({torch.float32, torch.float64, torch.bfloat16, torch.float16})


def is_channels_last(t: torch.Tensor) -> bool:
    """Mirrors ``is_channels_last`` in csrc/common.h, which picks the layout of outputs: torch's
    ``suggest_memory_format`` rule, which reads the strides (a size-1 dimension's too)."""
    return t.dim() == 4 and _prims_common.suggest_memory_format(t) == torch.channels_last


def memory_format_of(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if is_channels_last(t) else torch.contiguous_format


def elementwise_layout(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Mirrors ``elementwise_layout`` in csrc/common.h: the tensor whose strides an elementwise op's result
    takes (``torch.empty_like`` of it), as torch's TensorIterator picks them for two operands: the first
    one's where it is dense, else the second's."""
    return first if _prims_common.is_non_overlapping_and_dense_or_false(first) else second


def pair(value, name: str, op: str = "convolution") -> tuple[int, int]:
    """An int or a sequence of 1 or 2 ints, as a 2-tuple, with torch's message otherwise."""
    if isinstance(value, int):
        return (value, value)
    values = list(value)
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(isinstance(v, int) for v in values):
        raise RuntimeError(
            f"expected {name} to be a single integer value or a list of 2 values to match the "
            f"{op} dimensions, but got {name}={list(value)}"
        )
    return tuple(values)


def check_not_differentiable(op: str, name: str, t) -> None:
    """Mirrors ``check_not_differentiable`` in csrc/autograd_kernel.h (which covers direct calls of the
    ops), for the wrappers' every path: as torch's VariableType for an argument without a derivative,
    an error while grad mode is on and it requires grad, instead of a gradient silently not made."""
    if t is not None and t.requires_grad and torch.is_grad_enabled():
        raise RuntimeError(f"The function '{op}' is not differentiable with respect to argument '{name}'. "
                           "This input cannot have requires_grad True.")


def check_inplace_allowed(input) -> None:
    """Raises torch's error for an in-place op on a leaf that requires grad (or a view of one), before the
    op runs: ``torch.autograd.Function`` would detect it only after its forward had overwritten the input
    (under torch.compile, AOTAutograd checks it while tracing)."""
    if torch.is_grad_enabled() and input.requires_grad and not torch.compiler.is_compiling():
        if input.is_leaf:
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation.")
        if input._is_view() and input._base.is_leaf:
            raise RuntimeError("a view of a leaf Variable that requires grad is being used in an in-place operation.")


def register_autograd(op: str, function: type) -> None:
    """Gives the op ``op`` (a forward op, or a backward op whose forward op has a C++ autograd kernel)
    an autograd kernel made of ``function``'s setup_context and backward, so that
    ``torch.ops.manual_ops.*`` called directly differentiates exactly as the ``torch.autograd.Function``
    does (instead of autograd's warn-and-ignore fallback)."""
    torch.library.register_autograd(op, function.backward, setup_context=function.setup_context)


def fast_apply(function: type, op=None):
    """``function.apply`` without the Python work that ``torch.autograd.Function.apply`` does on every
    call to support default arguments (an ``inspect.signature`` bind, tens of microseconds, more than
    a small op's kernel): for callers that pass every argument of ``function.forward`` positionally,
    which makes that bind an identity. Given ``op``, the operator that ``function.forward`` calls with
    the same arguments, it is ``op`` itself while grad mode is off (a backward pass without
    ``create_graph``): the Function would record nothing. Under torch.compile and functorch transforms
    (torch.func) it is ``function.apply`` itself, which they trace or route through the transforms."""
    apply_to_args = super(torch.autograd.Function, function).apply  # what Function.apply ends in

    def apply(*args):
        if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
            return function.apply(*args)
        if op is not None and not torch.is_grad_enabled():
            return op(*args)
        return apply_to_args(*_functorch_utils.unwrap_dead_wrappers(args))

    return apply


def below_autograd(op):
    """``op`` called past its autograd kernel, for the ``forward`` of the ``torch.autograd.Function``
    that is that kernel (see :func:`register_autograd`): there autograd records nothing anyway, and the
    kernel, being Python, would cost more than a small op's computation."""
    def call(*args):
        if torch.compiler.is_compiling():  # traced as a plain call
            return op(*args)
        with torch._C._AutoDispatchBelowAutograd():
            return op(*args)

    return call


def _autocast_cast(args, device: str, autocast_to):
    """``args`` with their tensors cast as csrc/autocast.cpp's kernels (``at::autocast::cached_cast``) cast
    them: floating-point tensors on ``device``, except float64 ones, to ``autocast_to`` ('lower': the
    autocast dtype; or a dtype). Each cast is a differentiable ``Tensor.to``, in both AD modes."""
    to = torch.get_autocast_dtype(device) if autocast_to == "lower" else autocast_to
    return tuple(a.to(to) if isinstance(a, torch.Tensor) and a.is_floating_point() and a.dtype != torch.float64
                 and a.device.type == device else a for a in args)


def applier(function: type, op=None, native_autograd: bool = False, autocast_to=None):
    """``function.apply`` (as :func:`fast_apply`), as the public wrappers call it, but for these cases:

    - under torch.compile, a subclass of ``function`` without its custom ``jvp`` (Dynamo cannot trace
      one; a compiled graph runs no forward-mode AD, so nothing is lost);
    - under autocast for the first argument's device, when ``op`` is given: the operator ``op`` itself
      (whose autograd kernel has ``function``'s derivatives, see :func:`register_autograd`), so that its
      autocast kernel (csrc/autocast.cpp) casts the inputs before its autograd kernel records them, as
      for torch's own ops: autograd then saves the cast tensors and casts the gradients back to the
      inputs' dtypes. Inside ``function.forward`` the cast would come too late. But while forward-mode AD
      or a torch.func transform is active, which the operator's autograd kernel does not support (it has
      no ``jvp``, no vmap rule), the wrapper makes autocast's casts itself (to ``autocast_to``: 'lower',
      a dtype, or None for an op that autocast leaves alone) and calls ``function`` below autocast;
    - with ``native_autograd`` (``op``'s autograd kernel is C++ with ``function``'s derivatives, see
      csrc/autograd_kernel.h), ``op`` itself whenever neither forward-mode AD nor a torch.func
      transform is active, the cases that need ``function`` (its ``jvp``): the C++ kernel costs no Python.
      This is every call of a training step, so it is checked first and calls the overload's builtin
      (what ``OpOverload.__call__`` ends in), a few microseconds less than the ``torch.ops`` call.
    """
    without_jvp = type(function.__name__, (function,), {"jvp": staticmethod(torch.autograd.Function.jvp)})
    apply_function = fast_apply(function)
    call_op = op.default._op if native_autograd else None

    def apply(*args):
        compiling = torch.compiler.is_compiling()
        if native_autograd and not compiling and _forward_ad._current_level < 0 \
                and not torch._C._are_functorch_transforms_active():
            return call_op(*args)
        if op is not None and (compiling or torch._C._is_any_autocast_enabled()):  # the latter: a fast no
            device = args[0].device.type
            if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
                if compiling or (_forward_ad._current_level < 0 and not torch._C._are_functorch_transforms_active()):
                    return op(*args)
                if autocast_to is not None:
                    args = _autocast_cast(args, device, autocast_to)
                with torch.autocast(device, enabled=False):
                    return apply_function(*args)
        if compiling:
            return without_jvp.apply(*args)
        return apply_function(*args)

    return apply
