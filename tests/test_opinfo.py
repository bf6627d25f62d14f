"""Parity with PyTorch's own test inputs: the OpInfos of ``torch.testing._internal.common_methods_invocations.op_db``
and the ModuleInfos of ``torch.testing._internal.common_modules.module_db`` for the ops and modules manual_ops has.

These are the inputs torch's own test suite (test_ops.py, test_modules.py) runs every op and module on: odd shapes,
empty and unbatched tensors, every keyword option, and the inputs that must raise. They were written by others,
for torch's kernels, so running ours on exactly them finds what our hand-written tests did not think of.

For each OpInfo whose (name, variant) we implement, ours being ``mF.<same name>``:

* ``test_op_samples``: every ``op.sample_inputs`` sample, in every dtype torch's OpInfo takes on the CPU plus
  float64/float32/bfloat16/float16, torch's op and ours each on its own copy of the tensors. In float64 and float32
  the outputs, the tensors the op mutates (batch norm's running stats) and the gradients of a random-cotangent
  backward w.r.t. every floating input that requires grad must be torch's (``assert_close``, the dtype's default
  tolerances), with torch's strides; float64 runs each sample a second time on non-contiguous copies (torch's
  ``noncontiguous_like``, as its test_noncontiguous_samples does). bfloat16/float16 compare the forward: torch's
  values within the dtype's tolerances, or else ours no further from the float64 result than twice torch's own
  error (test_low_precision's rule: the two round differently). Dropout's random samples run after the same
  ``torch.manual_seed`` for both calls, for two seeds: the masks are documented to be torch's bit for bit, so
  outputs and gradients must be equal exactly, and so must the generator's next draws.
* ``test_op_error_inputs``: every ``op.error_inputs``: ours must raise the ErrorInput's exception type (torch is
  checked to), with a message matching its ``error_regex``, or where ours words it otherwise the message recorded
  in ``ERROR_MESSAGES``.

For each ModuleInfo of a module manual_ops.nn has (Hardsigmoid, Dropout and Dropout2d have none in torch 2.13):

* ``test_module_inputs``: every ModuleInput, in each dtype of the ModuleInfo, built with ``training`` True and
  False and run in that mode: torch's module and ours from the same constructor arguments, torch's state_dict loaded
  strictly into ours; the outputs, the gradients of the inputs and parameters and the buffers after the forward
  (running stats) must be torch's, as above (non-contiguous inputs too in float64; float16's by the rule above).
* ``test_module_error_inputs``: the ModuleInfo's error inputs, at construction or forward, as for the ops.

Nothing is skipped silently: a case that ours does not take, or gets wrong, must be in ``KNOWN_GAPS`` with the
reason and the error it gives. The test (op or module, dtype) that holds it is then a strict xfail, which still runs
and checks every other case: it fails if a gap case passes, if a case fails otherwise than recorded, or if any other
case fails. The ``without_cudnn`` batch_norm OpInfo is CUDA-only in torch (no CPU dtypes); its samples (the same
function as the default variant's) run here in the float dtypes anyway.
"""
import dataclasses
import re
from typing import Callable, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_flatten, tree_map

pytest.importorskip("expecttest", reason="torch.testing._internal needs expecttest")
common_methods_invocations = pytest.importorskip("torch.testing._internal.common_methods_invocations")
common_modules = pytest.importorskip("torch.testing._internal.common_modules")
common_utils = pytest.importorskip("torch.testing._internal.common_utils")

from test_low_precision import FLOOR  # noqa: E402

from manual_ops import functional as mF  # noqa: E402
from manual_ops import nn as mnn  # noqa: E402

FLOATS = (torch.float64, torch.float32)  # compared with gradients
LOW = (torch.bfloat16, torch.float16)  # forward values only

# The OpInfos we implement: (name, variant_test_name) -> our functional.
IMPLEMENTED = {
    **{(f"nn.functional.{name}", ""): getattr(mF, name) for name in (
        "conv1d", "conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "batch_norm", "linear", "relu",
        "cross_entropy", "silu", "gelu", "leaky_relu", "elu", "hardtanh", "relu6", "hardswish", "hardsigmoid",
        "softplus", "dropout", "dropout2d", "group_norm", "layer_norm",
        "instance_norm")},
    ("nn.functional.batch_norm", "without_cudnn"): mF.batch_norm,
    ("sigmoid", ""): mF.sigmoid,
    ("tanh", ""): mF.tanh,
}
# Their OpInfo wraps these in wrapper_set_seed (seed 42); we seed both calls ourselves.
RANDOM = {"nn.functional.dropout": F.dropout, "nn.functional.dropout2d": F.dropout2d}
SEEDS = (0, 1)

OPS = {(op.name, op.variant_test_name): op for op in common_methods_invocations.op_db
       if (op.name, op.variant_test_name) in IMPLEMENTED}
MODULES = {info.module_cls.__name__: info for info in common_modules.module_db
           if info.module_cls.__module__.startswith("torch.nn.") and hasattr(mnn, info.module_cls.__name__)}


def _op_id(key):
    name, variant = key
    return f"{name}.{variant}" if variant else name


# --- known gaps ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Gap:
    """The cases of ``target`` (an OpInfo id or a module name) in ``dtypes`` for which ``applies(case)`` holds (a
    :class:`Case`): ours fails there with ``error``, its message matching ``match`` (our exception where torch gives a
    result, or the comparison's AssertionError), for ``reason``."""
    target: str
    dtypes: tuple
    reason: str
    error: type = Exception
    match: str = ""
    applies: Callable = lambda case: True


INTS = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
COMPLEX = (torch.complex64, torch.complex128)


def _dtype_gap(target, dtypes, error, match):
    kinds = " and ".join(sorted({"complex" if d.is_complex else "integer" for d in dtypes}))
    return Gap(target, dtypes, f"by design: ours takes floating tensors only (float32/64, bfloat16, float16: README "
                               f"'dtypes'), torch's also {kinds} ones", error, match)


def _not_floating(name):
    return f"{name}: expected input to be float32, float64, bfloat16 or float16"


KNOWN_GAPS = [
    _dtype_gap("nn.functional.relu", INTS, RuntimeError, _not_floating("relu")),
    _dtype_gap("nn.functional.hardtanh", INTS[1:], NotImplementedError, '"hardtanh" not implemented for'),
    _dtype_gap("nn.functional.relu6", INTS, NotImplementedError, '"hardtanh" not implemented for'),
    _dtype_gap("nn.functional.max_pool2d", INTS, RuntimeError, _not_floating("max_pool2d")),
    _dtype_gap("nn.functional.avg_pool2d", (torch.int64,), RuntimeError, _not_floating("avg_pool2d")),
    _dtype_gap("nn.functional.conv2d", (torch.int64, *COMPLEX), RuntimeError, _not_floating("conv2d")),
    _dtype_gap("nn.functional.conv1d", (torch.int64, *COMPLEX), RuntimeError, _not_floating("conv2d")),
    _dtype_gap("nn.functional.conv_transpose2d", (torch.int64, *COMPLEX), RuntimeError,
               _not_floating("conv_transpose2d")),
    _dtype_gap("ConvTranspose2d", (torch.complex32, *COMPLEX), RuntimeError, _not_floating("conv_transpose2d")),
    _dtype_gap("nn.functional.linear", INTS + COMPLEX, RuntimeError, _not_floating("linear")),
    _dtype_gap("sigmoid", COMPLEX, NotImplementedError, '"sigmoid" not implemented for'),
    _dtype_gap("tanh", COMPLEX, NotImplementedError, '"tanh" not implemented for'),
    *[Gap(target, (torch.float64,), "strides of a zero-element output: for a non-contiguous empty input torch's "
          "activation returns a contiguous tensor, ours keeps the input's strides", AssertionError,
          "^output: strides ",
          lambda case: case.noncontiguous and case.sample.input.numel() == 0)
      for target in ("nn.functional.elu", "nn.functional.silu", "nn.functional.hardsigmoid", "nn.functional.softplus",
                     "sigmoid")],
    *[Gap(target, (torch.float64,), "strides of a zero-element output: for a non-contiguous empty 1-D input torch's "
          "output keeps the input's stride, ours (the .view(0, 0) ... .view(0) of ops/batch_norm.py) is contiguous",
          AssertionError, "^output: strides ",
          lambda case: case.noncontiguous and case.sample.input.shape == (0,))
      for target in ("nn.functional.batch_norm", "nn.functional.batch_norm.without_cudnn")],
    Gap("BatchNorm2d", (torch.float64,), "strides of a zero-element gradient: for a non-contiguous empty input and a "
        "contiguous cotangent, torch's grad_input is contiguous (the cotangent's layout), ours has the input's strides",
        AssertionError, "^gradients of the inputs and parameters: strides ",
        lambda case: case.noncontiguous and case.sample.forward_input.args[0].numel() == 0),
    Gap("nn.functional.layer_norm", (torch.float32,), "one value per row: the output is beta whatever the input is, "
        "so the exact input gradient is 0, which ours gives (csrc/cpu/layer_norm_kernel.cpp); torch's is rounding noise "
        "times rstd = 1/sqrt(eps) (about 1e-4 here, past float32's tolerance)", AssertionError, "^gradients: ",
        lambda case: case.sample.input.numel() == 1),
    Gap("nn.functional.linear", (torch.float64,), "layout of grad_weight: for a weight that is not row-major "
        "(column-major, or a strided view) torch's grad_weight is column-major (mm's backward through weight.t()), ours "
        "is always row-major; the values are equal", AssertionError,
        "^gradients: strides ", lambda case: case.noncontiguous),
]


class Case(NamedTuple):
    """One run of an op's SampleInput or a module's ModuleInput (``sample``), the ``index``-th of its list, on fresh
    copies of its tensors (strided views if ``noncontiguous``); ``training``: the module's mode."""
    index: int
    sample: object
    noncontiguous: bool
    training: bool = False


class KnownGap(Exception):
    """Raised, after every sample has run, when exactly the samples in KNOWN_GAPS failed as recorded."""


def _gaps(target, dtype):
    return [gap for gap in KNOWN_GAPS if gap.target == target and dtype in gap.dtypes]


def _param(target, dtype):
    gaps = _gaps(target, dtype)
    marks = [pytest.mark.xfail(strict=True, raises=KnownGap, reason="; ".join(g.reason for g in gaps))] if gaps else []
    return pytest.param(target, dtype, marks=marks, id=f"{target}-{str(dtype).removeprefix('torch.')}")


def _run_all(target, dtype, cases, check):
    """check(case) for every (description, case): the failures must be exactly the known gaps' samples, each with
    its recorded error. Raises KnownGap if there were some, AssertionError listing anything else."""
    gaps = _gaps(target, dtype)
    problems, hits = [], set()
    for description, case in cases:
        gap = next((g for g in gaps if g.applies(case)), None)
        try:
            check(case)
        except Exception as error:  # noqa: BLE001 - sorted out below
            if gap is None:
                problems.append(f"{description}: {type(error).__name__}: {error}")
            elif not (isinstance(error, gap.error) and re.search(gap.match, str(error))):
                problems.append(f"{description}: known gap {gap.reason!r}, but {type(error).__name__}: {error}")
            else:
                hits.add(gap.reason)
        else:
            if gap is not None:
                problems.append(f"{description}: passes, but is listed in KNOWN_GAPS ({gap.reason!r}): remove it")
    assert not problems, f"{target} in {dtype}: {len(problems)} sample(s) failed:\n" + "\n".join(problems)
    unhit = {g.reason for g in gaps} - hits
    assert not unhit, f"{target} in {dtype}: KNOWN_GAPS entries matching no sample: {sorted(unhit)}"
    if hits:
        raise KnownGap("; ".join(sorted(hits)))


# --- helpers ---------------------------------------------------------------------------------------------------

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The samples are tiny: with two OpenMP threads on a busy 2-core machine each op costs milliseconds of
    fork/join (this file: 130 s), with one microseconds (30 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _fresh(tree, dtype=None, noncontiguous=False):
    """Deep copy of every tensor in tree, each a new leaf that requires grad as the original does; floating ones
    cast to dtype if given; with noncontiguous, every one a strided view (torch's noncontiguous_like, as in its
    test_noncontiguous_samples)."""
    def fresh(t):
        if not isinstance(t, torch.Tensor):
            return t
        copy = t.detach().to(dtype) if dtype is not None and t.is_floating_point() else t.detach()
        copy = copy.clone().requires_grad_(t.requires_grad)
        return common_utils.noncontiguous_like(copy) if noncontiguous else copy
    return tree_map(fresh, tree)


def _tensors(tree):
    return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


def _differentiable(tensors):
    return [t for t in tensors if t.requires_grad and (t.is_floating_point() or t.is_complex())]


def _cotangents(outputs, seed, dtype=None):
    """Standard normal cotangents, drawn in dtype (else the output's) and cast to the output's dtype."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(o.shape, dtype=dtype or o.dtype, generator=generator).to(o.dtype) for o in outputs]


def _grads(outputs, inputs, cotangents):
    """Gradients of sum(output * cotangent) w.r.t. inputs; None where an input is unused."""
    if not outputs or not inputs:
        return []
    return list(torch.autograd.grad(outputs, inputs, cotangents, allow_unused=True))


def _describe(sample):
    return sample.summary() if hasattr(sample, "summary") else repr(sample)


def _brief(tree):
    """tree with every tensor written as Tensor[shape, dtype] (for the messages)."""
    return tree_map(lambda t: f"Tensor[{list(t.shape)}, {str(t.dtype).removeprefix('torch.')}]"
                    if isinstance(t, torch.Tensor) else t, tree)


def _assert_values_close(actual, expected, what, exact=False):
    """assert_close with the dtype's default tolerances (none if exact), NaNs equal."""
    tolerances = dict(rtol=0, atol=0) if exact else {}
    torch.testing.assert_close(actual, expected, equal_nan=True, msg=lambda m: f"{what}: {m}", **tolerances)


def _assert_same_strides(actual, expected, what):
    """Strides as torch's (README: every output's and gradient's strides are the built-in's), checked after the
    values, so that a sample whose only known gap is a layout still has its values compared."""
    ours, theirs = [t.stride() for t in _tensors(actual)], [t.stride() for t in _tensors(expected)]
    assert ours == theirs, f"{what}: strides {ours}, torch's {theirs}"


def _assert_close(actual, expected, what, exact=False):
    _assert_values_close(actual, expected, what, exact)
    _assert_same_strides(actual, expected, what)


def _relative_error(value, reference):
    """As test_low_precision's: max |value - reference| / max |reference|."""
    return ((value.double() - reference.double()).abs().max() / reference.abs().max().clamp_min(1e-30)).item()


def _assert_close_low(actual, expected, reference, what):
    """bfloat16/float16: ours within the dtype's default tolerances of torch's, or else (different rounding) no
    further from the float64 reference than 2x torch's own error plus FLOOR, the rule of test_low_precision."""
    actual, expected, reference = _tensors(actual), _tensors(expected), _tensors(reference)
    assert [(t.shape, t.dtype) for t in actual] == [(t.shape, t.dtype) for t in expected], f"{what}: shapes, dtypes"
    _assert_same_strides(actual, expected, what)
    for i, (ours, theirs, exact) in enumerate(zip(actual, expected, reference)):
        try:
            _assert_values_close(ours, theirs, f"{what} {i}")
        except AssertionError as error:
            if not ours.is_floating_point() or ours.numel() == 0:
                raise
            ours_error, their_error = _relative_error(ours, exact), _relative_error(theirs, exact)
            assert ours_error <= 2 * their_error + FLOOR, (
                f"{error}\nand further from float64 than torch: ours {ours_error:.3g}, torch {their_error:.3g}")


# --- op samples ------------------------------------------------------------------------------------------------

def _op_dtypes(op):
    """float64, float32, bfloat16, float16, then the other dtypes torch's OpInfo takes on the CPU."""
    dtypes = FLOATS + LOW
    return dtypes + tuple(sorted(set(op.supported_dtypes("cpu")) - set(dtypes), key=str))


OP_PARAMS = [_param(_op_id(key), dtype) for key, op in OPS.items() for dtype in _op_dtypes(op)]


def _call(fn, sample, seed, noncontiguous, dtype=None):
    """fn on a fresh copy of the sample (floating tensors cast to dtype if given; after torch.manual_seed(seed)
    if seed is not None): (output, the copied tensors, to compare their mutations such as running stats, the
    generator's next draws)."""
    input, args, kwargs = _fresh((sample.input, sample.args, sample.kwargs), dtype, noncontiguous)
    if seed is not None:
        torch.manual_seed(seed)
    out = fn(input, *args, **kwargs)
    next_draws = torch.rand(4) if seed is not None else None
    return out, (input, args, kwargs), next_draws


def _check_op_sample(random, ours, theirs, dtype, sample, index, noncontiguous, seed):
    exact = random and seed is not None  # documented: dropout's masks are torch's bit for bit
    expected, their_inputs, their_draws = _call(theirs, sample, seed, noncontiguous)
    actual, our_inputs, our_draws = _call(ours, sample, seed, noncontiguous)
    if seed is not None:
        _assert_close(our_draws, their_draws, "the generator's next draws after the call", exact=True)
    if dtype in LOW and not exact:
        reference, reference_inputs, _ = _call(theirs, sample, seed, noncontiguous, torch.float64)
        _assert_close_low(actual, expected, reference, "output")
        _assert_close_low(our_inputs, their_inputs, reference_inputs, "inputs after the call (mutations)")
        return
    _assert_close(actual, expected, "output", exact=exact)
    _assert_close(_tensors(our_inputs), _tensors(their_inputs), "inputs after the call (mutations)", exact=exact)
    if dtype in LOW:
        return
    process = sample.output_process_fn_grad or (lambda out: out)
    outs = [o for o in _tensors(process(expected)) if o.requires_grad]
    our_outs = [o for o in _tensors(process(actual)) if o.requires_grad]
    assert len(our_outs) == len(outs), f"{len(our_outs)} differentiable outputs, torch has {len(outs)}"
    cotangents = _cotangents(outs, index)
    their_grads = _grads(outs, _differentiable(_tensors(their_inputs)), cotangents)
    our_grads = _grads(our_outs, _differentiable(_tensors(our_inputs)), cotangents)
    assert [g is None for g in our_grads] == [g is None for g in their_grads], "which inputs get gradients"
    _assert_close([g for g in our_grads if g is not None], [g for g in their_grads if g is not None],
                  "gradients", exact=exact)


def _op(target):
    key = next(k for k in OPS if _op_id(k) == target)
    return key, OPS[key], IMPLEMENTED[key]


@pytest.mark.parametrize("target,dtype", OP_PARAMS)
def test_op_samples(target, dtype):
    key, op, ours = _op(target)
    random = key[0] in RANDOM
    theirs = RANDOM[key[0]] if random else op.op
    samples = list(op.sample_inputs("cpu", dtype, requires_grad=dtype in FLOATS))
    assert samples, f"{target} has no samples in {dtype}"
    layouts = (False, True) if dtype == torch.float64 else (False,)
    cases = [(f"sample {i}{' (noncontiguous)' if nc else ''} {_describe(s)}", Case(i, s, nc))
             for nc in layouts for i, s in enumerate(samples)]

    def check(case):
        for seed in SEEDS if random else (None,):
            _check_op_sample(random, ours, theirs, dtype, case.sample, case.index, case.noncontiguous, seed)

    _run_all(target, dtype, cases, check)


# --- error inputs ----------------------------------------------------------------------------------------------

# Where our message is clear but does not match the ErrorInput's error_regex: (target, torch's error_regex) -> a
# regex that ours matches. Strict: an entry whose target now matches torch's regex must go.
ERROR_MESSAGES = {
    ("nn.functional.conv2d", "should be the same"):  # an int64 input with a float64 bias; complex bias
        r"^conv2d: expected input to be float32, float64, bfloat16 or float16, but got Long$"
        r"|^conv2d: expected input and bias to have the same dtype, but got input of dtype Double and bias of "
        r"dtype ComplexDouble$",
    ("nn.functional.conv2d", "dilation should be greater than zero"):
        r"^conv2d: non-positive dilation is not supported, got dilation=\[-1, -1\]$",
    ("nn.functional.conv2d", "Expected 3-dimensional input for 3-dimensional weight"):  # torch infers conv1d
        r"^conv2d: expected a 4-D weight, but got weight of size \[1, 2, 2\]$",
    ("nn.functional.conv2d", "expected weight to be at least 3 at dimension 0"):
        r"^conv2d: given groups=3, expected weight to be divisible by 3 at dimension 0, but got weight of size "
        r"\[2, 2, 1, 3\]$",
    # conv1d is conv2d on the one-row view: conv2d's words, with the view's 4-D weight
    ("nn.functional.conv1d", "should be the same"):
        r"^conv2d: expected input to be float32, float64, bfloat16 or float16, but got Long$"
        r"|^conv2d: expected input and bias to have the same dtype, but got input of dtype Double and bias of "
        r"dtype ComplexDouble$",
    ("nn.functional.conv1d", "dilation should be greater than zero"):
        r"^conv2d: non-positive dilation is not supported, got dilation=\[1, -1\]$",
    ("nn.functional.conv1d", "expected weight to be at least 3 at dimension 0"):
        r"^conv2d: given groups=3, expected weight to be divisible by 3 at dimension 0, but got weight of size "
        r"\[2, 2, 1, 2\]$",
    ("CrossEntropyLoss", "Expected floating point type for target with class probabilities"):
        r"^cross_entropy: expected a floating point target for class probabilities \(target of the input's size "
        r"\[2, 3\]\), but got target of dtype Long$",
    ("CrossEntropyLoss", "expected target dtype to be Long or Byte"):  # ours takes no uint8 class indices
        r"^cross_entropy: expected target dtype to be Long for class indices, but got Double$",
    ("CrossEntropyLoss", "Expected input batch_size .* to match target batch_size"):
        r"^cross_entropy: expected input batch_size \(2\) to match target batch_size \(3\)$",
    ("CrossEntropyLoss", "weight tensor should be defined either for all .* classes or no classes"):
        r"^cross_entropy: expected weight to be 1-D with one value for each of the 3 classes, but got weight of "
        r"size \[2\]$",
    ("CrossEntropyLoss", "ignore_index is not supported for floating point target"):
        r"^cross_entropy: ignore_index is not supported for class-probability targets$",
    ("CrossEntropyLoss", "Expected target size"):
        r"^cross_entropy: expected target of size \[2, 5\] \(class indices\) or \[2, 3, 5\] \(class probabilities\) "
        r"for input of size \[2, 3, 5\], but got target of size \[2, 4\]$",
}


def _check_error(target, description, error_type, error_regex, call):
    """None if call() raises error_type with a message matching error_regex (or ERROR_MESSAGES' regex for it),
    else what went wrong."""
    try:
        call()
    except Exception as error:  # noqa: BLE001 - compared below
        message, ours = str(error), ERROR_MESSAGES.get((target, error_regex))
        if not isinstance(error, error_type):
            return f"{description}: ours raised {type(error).__name__}: {message}"
        if ours is None and not re.search(error_regex, message):
            return f"{description}: ours says {message!r}"
        if ours is not None and (re.search(error_regex, message) or not re.search(ours, message)):
            return f"{description}: ERROR_MESSAGES has /{ours}/, ours says {message!r}"
        return None
    return f"{description}: ours raised nothing"


ERROR_OPS = [_op_id(key) for key, op in OPS.items() if op.error_inputs_func is not None]


@pytest.mark.parametrize("target", ERROR_OPS)
def test_op_error_inputs(target):
    _, op, ours = _op(target)
    error_inputs = list(op.error_inputs("cpu"))
    assert error_inputs, f"{target} has no error inputs"
    problems = []
    for i, error_input in enumerate(error_inputs):
        s, error_type, error_regex = error_input.sample_input, error_input.error_type, error_input.error_regex
        with pytest.raises(error_type, match=error_regex):  # torch itself, as the OpInfo says
            op(s.input, *s.args, **s.kwargs)
        description = f"error input {i} {_describe(s)} (torch: {error_type.__name__} /{error_regex}/)"
        problems.append(_check_error(target, description, error_type, error_regex,
                                     lambda: ours(s.input, *s.args, **s.kwargs)))
    problems = [p for p in problems if p]
    assert not problems, f"{target}: {len(problems)} error input(s) differ:\n" + "\n".join(problems)


# --- modules ---------------------------------------------------------------------------------------------------

MODULE_PARAMS = [_param(name, dtype) for name, info in MODULES.items() for dtype in info.dtypes]


def _module_cases(info, dtype):
    for noncontiguous in (False, True) if dtype == torch.float64 else (False,):
        for training in (True, False):
            inputs = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True, training=training)
            for i, module_input in enumerate(inputs):
                c, f = module_input.constructor_input, module_input.forward_input
                description = (f"{'train' if training else 'eval'} input {i}"
                               f"{' (noncontiguous)' if noncontiguous else ''} {module_input.desc!r}: "
                               f"{info.module_cls.__name__}(*{_brief(c.args)}, **{_brief(c.kwargs)}) "
                               f"on {_brief((f.args, f.kwargs))}")
                yield description, Case(i, module_input, noncontiguous, training)


def _build(cls, constructor_input, dtype, training, state_dict=None):
    module = cls(*constructor_input.args, **constructor_input.kwargs).to(dtype=dtype).train(training)
    if state_dict is not None:
        module.load_state_dict(state_dict, strict=True)
    return module


def _run_module(module, forward_input, noncontiguous, seed, dtype=None, cotangent_dtype=None):
    """(output, gradients of the inputs and then the parameters for cotangents drawn from seed, buffers after the
    forward), the floating inputs cast to dtype if given, the cotangents drawn in cotangent_dtype if given."""
    args, kwargs = _fresh((forward_input.args, forward_input.kwargs), dtype, noncontiguous)
    out = module(*args, **kwargs)
    inputs = _differentiable(_tensors((args, kwargs)))
    params = [p for p in module.parameters() if p.requires_grad]
    outs = [o for o in _tensors(out) if o.requires_grad]
    return out, _grads(outs, inputs + params, _cotangents(outs, seed, cotangent_dtype)), dict(module.named_buffers())


def _check_module_input(info, ours_cls, dtype, case):
    training, module_input, noncontiguous = case.training, case.sample, case.noncontiguous
    c = module_input.constructor_input
    theirs = _build(info.module_cls, c, dtype, training)
    ours = _build(ours_cls, c, dtype, training, theirs.state_dict())
    reference = _build(info.module_cls, c, torch.float64, training, theirs.state_dict()) if dtype in LOW else None
    expected, their_grads, their_buffers = _run_module(theirs, module_input.forward_input, noncontiguous, case.index)
    actual, our_grads, our_buffers = _run_module(ours, module_input.forward_input, noncontiguous, case.index)
    assert [g is None for g in our_grads] == [g is None for g in their_grads], "which inputs get gradients"
    got = {"output": actual, "gradients of the inputs and parameters": our_grads, "buffers": our_buffers}
    want = {"output": expected, "gradients of the inputs and parameters": their_grads, "buffers": their_buffers}
    if reference is None:
        for what in got:
            _assert_close(got[what], want[what], what)
    else:
        exact = dict(zip(want, _run_module(reference, module_input.forward_input, noncontiguous, case.index,
                                           torch.float64, dtype)))
        for what in got:
            _assert_close_low(got[what], want[what], exact[what], what)


@pytest.mark.parametrize("target,dtype", MODULE_PARAMS)
def test_module_inputs(target, dtype):
    info, ours_cls = MODULES[target], getattr(mnn, target)
    cases = list(_module_cases(info, dtype))
    assert cases, f"{target} has no module inputs in {dtype}"
    _run_all(target, dtype, cases, lambda case: _check_module_input(info, ours_cls, dtype, case))


MODULE_ERROR_TARGETS = [name for name, info in MODULES.items() if info.module_error_inputs_func is not None]


def _construct_and_forward(cls, module_input, when):
    c, f = module_input.constructor_input, module_input.forward_input
    module = cls(*c.args, **c.kwargs).to(torch.float64)
    if when == common_modules.ModuleErrorEnum.FORWARD_ERROR:
        module(*f.args, **f.kwargs)


@pytest.mark.parametrize("target", MODULE_ERROR_TARGETS)
def test_module_error_inputs(target):
    info, ours_cls = MODULES[target], getattr(mnn, target)
    error_inputs = info.module_error_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True,
                                                 training=True)
    assert error_inputs, f"{target} has no error inputs"
    problems = []
    for i, error_input in enumerate(error_inputs):
        module_input, when = error_input.module_error_input, error_input.error_on
        error_type, error_regex = error_input.error_type, error_input.error_regex
        with pytest.raises(error_type, match=error_regex):  # torch itself, as the ModuleInfo says
            _construct_and_forward(info.module_cls, module_input, when)
        c = module_input.constructor_input
        description = (f"error input {i} {target}(*{_brief(c.args)}, **{_brief(c.kwargs)}) on {when.name} "
                       f"(torch: {error_type.__name__} /{error_regex}/)")
        problems.append(_check_error(target, description, error_type, error_regex,
                                     lambda: _construct_and_forward(ours_cls, module_input, when)))
    problems = [p for p in problems if p]
    assert not problems, f"{target}: {len(problems)} error input(s) differ:\n" + "\n".join(problems)
