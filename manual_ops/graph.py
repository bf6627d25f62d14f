"""What runs in a backward pass: the autograd nodes of a graph whose backward is not manual_ops'."""
from collections import Counter

import torch

# Built-in nodes that move, combine, copy or convert values rather than compute a layer; not reported.
NOT_COMPUTE = frozenset({
    "torch::autograd::AccumulateGrad",  # a leaf's .grad
    # views and reshapes
    "AliasBackward0", "AsStridedBackward0", "ExpandBackward0", "PermuteBackward0", "ReshapeAliasBackward0",
    "SqueezeBackward0", "SqueezeBackward1", "SqueezeBackward2", "SqueezeBackward3", "SqueezeBackward4",
    "SqueezeBackward5", "TBackward0", "TransposeBackward0", "TransposeBackward1", "UnsafeViewBackward0",
    "UnsqueezeBackward0", "ViewBackward0",
    # slices and splits
    "SelectBackward0", "SliceBackward0", "SplitBackward0", "SplitWithSizesBackward0", "UnbindBackward0",
    # adds and subs
    "AddBackward0", "AddBackward1", "RsubBackward0", "RsubBackward1", "SubBackward0", "SubBackward1",
    # concatenations
    "CatBackward0", "StackBackward0",
    # clones, copies and dtype / device / layout conversions
    "CloneBackward0", "torch::autograd::CopyBackwards", "ToCopyBackward0",
})
# A product by a constant (one factor needs no gradient): torchvision's StochasticDepth by its random mask.
CONSTANT_PRODUCTS = frozenset({"MulBackward0", "MulBackward1"})
# The names of the C++ autograd nodes of csrc/ (csrc/autograd_kernel.h's users: batch_norm, cross_entropy, linear).
CPP_NODES = frozenset({"BatchNormBackward", "CrossEntropyBackward", "LinearBackward"})
# torch.library.register_autograd's Function for an op of ours called directly (under autocast, say).
REGISTERED_PREFIX = "GeneratedBackwardFor_manual_ops_"


def _is_manual_ops(node) -> bool:
    """Whether ``node``'s backward is manual_ops': a C++ node of csrc/, or a Python Function's defined in
    the package or registered by it for one of its operators."""
    forward_cls = getattr(node, "_forward_cls", None)
    if forward_cls is None:
        return node.name() in CPP_NODES
    module = forward_cls.__module__
    return module == "manual_ops" or module.startswith("manual_ops.") or \
        forward_cls.__name__.startswith(REGISTERED_PREFIX)


def _is_counted(node) -> bool:
    """Whether ``node`` is a compute node of torch's: not manual_ops', not in NOT_COMPUTE, not a product by a
    constant."""
    name = node.name()
    if name in NOT_COMPUTE or _is_manual_ops(node):
        return False
    return not (name in CONSTANT_PRODUCTS and sum(f is not None for f, _ in node.next_functions) == 1)


def builtin_backward_nodes(output: torch.Tensor) -> Counter:
    """The compute nodes of ``output``'s autograd graph whose backward is not manual_ops', to check that a
    converted model runs only manual_ops' hand-written backward passes::

        loss = manual_ops.nn.CrossEntropyLoss()(manual_ops.convert(model)(x), y)
        assert not manual_ops.builtin_backward_nodes(loss), manual_ops.builtin_backward_nodes(loss)

    Not counted are manual_ops' nodes: those of its autograd Functions (``Conv2dFunctionBackward``, ...),
    those that ``torch.library.register_autograd`` makes for its operators when they are called directly
    (under autocast, in a double backward: ``GeneratedBackwardFor_manual_ops_...``) and its C++ ones
    (``BatchNormBackward``, ``CrossEntropyBackward``, ``LinearBackward``); nor torch's nodes that only
    move, combine or convert values (:data:`NOT_COMPUTE`): ``AccumulateGrad``; views, reshapes, permutes,
    transposes, squeezes and expands; slices, selects, splits and unbinds; adds and subs; cats and
    stacks; clones, copies and conversions (``ToCopyBackward0``); nor products by a constant (one factor
    needing no gradient), as torchvision's ``StochasticDepth`` multiplies by its random mask (torch's own
    ``Dropout`` is such a product too, and so not reported: :func:`manual_ops.convert` and
    :class:`manual_ops.enable` replace it by ``DropoutFunctionBackward``). Anything
    else is counted: torch's layers (``ConvolutionBackward0``, ``NativeBatchNormBackward0``), activations
    (``SigmoidBackward0``), reductions, ...

    Args:
        output: a tensor that requires grad, e.g. a loss.

    Returns:
        A :class:`collections.Counter` of node names (``node.name()``, as in ``output.grad_fn``) to the
        number of such nodes in the graph: empty when every compute node's backward is manual_ops'.

    Raises:
        RuntimeError: ``output`` does not require grad (it has no graph).
    """
    if not output.requires_grad:
        raise RuntimeError("builtin_backward_nodes: output does not require grad and does not have a grad_fn")
    counts = Counter()
    seen, stack = set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if _is_counted(node):
            counts[node.name()] += 1
        stack.extend(f for f, _ in node.next_functions)
    return counts
