"""manual_ops.enable(): inside it torch's spellings of manual_ops' ops run ours, with torch's values and grads;
calls that ours does not take stay torch's; the mode leaves, nests, and works under torch.func and torch.compile."""
import inspect
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._dynamo.testing import CompileCounterWithBackend

import manual_ops
from manual_ops import functional as mF, routing
from manual_ops.graph import builtin_backward_nodes
from manual_ops.modules import _swap

TIGHT = dict(rtol=1e-10, atol=1e-12)  # float64: ours and torch's differ by summation order only


def _leaf(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def _module(module, x):
    """A case calling ``module`` (in float64) on ``x``: its parameters are leaves of the case too."""
    module = module.double()
    return lambda x, *parameters: module(x), [x, *module.parameters()]


# name: (call, the leaves it is called with, whose grads are compared)
def _cases():
    x, x3, v, logits = _leaf(2, 3, 7, 7), _leaf(3, 7, 7), _leaf(5, 6), _leaf(5, 4, 3)
    w, b, lw, lb, bw, bb = _leaf(4, 3, 3, 3), _leaf(4), _leaf(2, 6), _leaf(2), _leaf(3), _leaf(3)
    target, stats = torch.randint(4, (5, 3)), (torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64))
    cases = {
        "F.relu": (lambda x: F.relu(x), [x]),
        "F.relu(inplace=True)": (lambda x: F.relu(x.clone(), inplace=True), [x]),
        "torch.relu": (lambda x: torch.relu(x), [x]),
        "torch.relu_ (F.relu_)": (lambda x: torch.relu_(x.clone()), [x]),
        "Tensor.relu": (lambda x: x.relu(), [x]),
        "Tensor.relu_": (lambda x: x.clone().relu_(), [x]),
        "nn.ReLU(inplace=True)": (lambda x: nn.ReLU(inplace=True)(x.clone()), [x]),
        "F.conv2d (torch.conv2d)": (lambda x, w, b: F.conv2d(x, w, b, stride=2, padding=1), [x, w, b]),
        "torch.conv2d, 3-D input": (lambda x, w: torch.conv2d(x, w, padding="same", dilation=2), [x3, w]),
        "F.linear": (lambda v, w, b: F.linear(v, w, b), [v, lw, lb]),
        "F.batch_norm, training": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), [x, bw, bb]),
        "F.batch_norm, eval": (lambda x, w, b: F.batch_norm(x, *stats, w, b, eps=1e-3), [x, bw, bb]),
        "F.max_pool2d": (lambda x: F.max_pool2d(x, 3, stride=2, padding=1, ceil_mode=True), [x]),
        "F.max_pool2d(return_indices=True)": (lambda x: F.max_pool2d(x, 2, return_indices=True), [x]),
        "F.max_pool2d_with_indices": (lambda x: F.max_pool2d_with_indices(x, (2, 3), dilation=2), [x]),
        "torch.max_pool2d": (lambda x: torch.max_pool2d(x, 2), [x3]),
        "torch._C._nn.max_pool2d_with_indices": (lambda x: torch._C._nn.max_pool2d_with_indices(x, 2), [x]),
        "F.avg_pool2d": (lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False, divisor_override=None), [x]),
        "F.adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, (3, None)), [x]),
        "torch._C._nn.adaptive_avg_pool2d": (lambda x: torch._C._nn.adaptive_avg_pool2d(x, 2), [x3]),
        "F.cross_entropy": (lambda z: F.cross_entropy(z, target, label_smoothing=0.1, ignore_index=2), [logits]),
        "F.cross_entropy, probabilities": (lambda z: F.cross_entropy(z, z.detach().softmax(1), reduction="sum"),
                                            [logits]),
    }
    a = _leaf(2, 3, 4, 4)
    with torch.no_grad():
        a.mul_(4)  # every piece of every activation
    cases.update({
        "torch.sigmoid": (lambda a: torch.sigmoid(a), [a]), "F.sigmoid (Tensor.sigmoid)": (lambda a: F.sigmoid(a), [a]),
        "torch.tanh": (lambda a: torch.tanh(a), [a]), "Tensor.tanh": (lambda a: a.tanh(), [a]),
        "F.silu": (lambda a: F.silu(a), [a]), "F.silu(inplace=True)": (lambda a: F.silu(a.clone(), inplace=True), [a]),
        "F.gelu": (lambda a: F.gelu(a), [a]), "F.gelu tanh": (lambda a: F.gelu(a, approximate="tanh"), [a]),
        "F.leaky_relu": (lambda a: F.leaky_relu(a, 0.2), [a]),
        "F.leaky_relu_": (lambda a: F.leaky_relu_(a.clone(), 0.2), [a]),
        "F.elu": (lambda a: F.elu(a, 0.5), [a]), "F.elu_": (lambda a: F.elu_(a.clone()), [a]),
        "F.hardtanh": (lambda a: F.hardtanh(a, -2.0, 3.0), [a]), "F.hardtanh_": (lambda a: F.hardtanh_(a.clone()), [a]),
        "F.relu6": (lambda a: F.relu6(a), [a]), "F.hardswish": (lambda a: F.hardswish(a), [a]),
        "F.hardswish(inplace=True)": (lambda a: F.hardswish(a.clone(), inplace=True), [a]),
        "F.hardsigmoid": (lambda a: F.hardsigmoid(a), [a]),
        "F.hardsigmoid(inplace=True)": (lambda a: F.hardsigmoid(a.clone(), inplace=True), [a]),
        "F.softplus": (lambda a: F.softplus(a, 2.0, 5.0), [a]),
        "F.dropout": (lambda a: (torch.manual_seed(0), F.dropout(a, 0.3))[1], [a]),
        "F.dropout2d": (lambda a: (torch.manual_seed(0), F.dropout2d(a, 0.3))[1], [a]),
    })
    for name, module, leaf in [
        ("nn.ReLU6", nn.ReLU6(), a), ("nn.SiLU", nn.SiLU(), a), ("nn.GELU", nn.GELU(), a),
        ("nn.Hardswish", nn.Hardswish(), a), ("nn.Sigmoid", nn.Sigmoid(), a),
        ("nn.Conv2d", nn.Conv2d(3, 4, 3, padding=1), x), ("nn.Linear", nn.Linear(6, 2), v),
        ("nn.BatchNorm2d", nn.BatchNorm2d(3), x), ("nn.MaxPool2d", nn.MaxPool2d(2), x),
        ("nn.AvgPool2d", nn.AvgPool2d(2, ceil_mode=True), x), ("nn.AdaptiveAvgPool2d", nn.AdaptiveAvgPool2d(1), x),
    ]:
        cases[name] = _module(module, leaf)
    class_weight = torch.rand(4, dtype=torch.float64)
    cases["nn.CrossEntropyLoss"] = (lambda z: nn.CrossEntropyLoss(weight=class_weight)(z, target), [logits])
    return cases


CASES = _cases()


def _grads(call, leaves):
    """The call's outputs and the grads of its first output, for a fixed cotangent, w.r.t. the leaves."""
    outputs = call(*leaves)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    grad_output = torch.linspace(-1, 1, outputs[0].numel(), dtype=outputs[0].dtype).view(outputs[0].shape)
    return outputs, torch.autograd.grad(outputs[0], leaves, grad_output)


@pytest.mark.parametrize("name", CASES)
def test_each_spelling_runs_ours_with_torchs_values_and_grads(name):
    call, leaves = CASES[name]
    expected, expected_grads = _grads(call, leaves)
    # torch's own, outside the mode (torch's dropout is a product by its mask, which builtin_backward_nodes does
    # not count, as StochasticDepth's: so there our node is checked for instead)
    assert builtin_backward_nodes(expected[0]) or "dropout" in name
    with manual_ops.enable():
        outputs, grads = _grads(call, leaves)
    assert builtin_backward_nodes(outputs[0]) == Counter()
    assert "dropout" not in name or outputs[0].grad_fn.name() == "DropoutFunctionBackward"
    # torch's float64 hardsigmoid multiplies by a float32 1/6 (tests/test_activations.py checks ours exactly)
    tolerance = dict(rtol=1e-7, atol=1e-8) if "hardsigmoid" in name else TIGHT
    torch.testing.assert_close(outputs, expected, **tolerance)
    torch.testing.assert_close(grads, expected_grads, **tolerance)


def test_batch_norm_updates_the_running_stats_as_torchs():
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    stats = [torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)]
    routed = [s.clone() for s in stats]
    F.batch_norm(x, *stats, training=True, momentum=0.3)
    with manual_ops.enable():
        F.batch_norm(x, *routed, training=True, momentum=0.3)
    torch.testing.assert_close(routed, stats, **TIGHT)


class DenseNetLike(nn.Module):
    """Torch's layers, and layers called as torch functions in ``forward`` (as torchvision's DenseNet and
    GoogLeNet call ``F.relu``): ``F.relu``, ``torch.relu``, ``x.relu()``, ``F.max_pool2d``, ..."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.conv3 = nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)), inplace=True)
        x = torch.relu(self.conv2(F.max_pool2d(x, 2)))
        x = F.adaptive_avg_pool2d(self.conv3(x).relu(), (1, 1))
        return F.linear(torch.flatten(x, 1), self.fc.weight, self.fc.bias)


def test_a_model_of_torch_calls_runs_only_ours_inside_the_mode():
    model, x, y = DenseNetLike().double(), torch.randn(4, 3, 8, 8, dtype=torch.float64), torch.randint(10, (4,))
    loss = F.cross_entropy(model(x), y)
    assert builtin_backward_nodes(loss) == Counter({
        "ConvolutionBackward0": 3, "NativeBatchNormBackward0": 1, "ReluBackward0": 3,
        "MaxPool2DWithIndicesBackward0": 1, "MeanBackward1": 1, "AddmmBackward0": 1, "LogSoftmaxBackward0": 1,
        "NllLossBackward0": 1})
    expected = torch.autograd.grad(loss, list(model.parameters()))
    with manual_ops.enable():
        loss = F.cross_entropy(model(x), y)
    assert builtin_backward_nodes(loss) == Counter()
    torch.testing.assert_close(torch.autograd.grad(loss, list(model.parameters())), expected, **TIGHT)


def test_unconverted_layers_under_autocast_run_ours():
    """Under autocast a conv's input is bfloat16 and its weight float32: routed all the same (ours casts)."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8, 10))
    x, y = torch.randn(4, 3, 6, 6), torch.randint(10, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = F.cross_entropy(model(x), y)
        with manual_ops.enable():
            loss = F.cross_entropy(model(x), y)
    assert builtin_backward_nodes(loss) == Counter()
    torch.testing.assert_close(loss, expected, rtol=2e-2, atol=2e-2)


# Calls ours does not take (it would reject them, or compute something else): torch's own runs.
FALLBACKS = {
    "integer relu": lambda: torch.relu(torch.arange(-2, 3)),
    "integer relu_": lambda: torch.arange(-2, 3).relu_(),
    "sparse relu": lambda: torch.relu(torch.tensor([[0.0, -1.0], [2.0, 0.0]]).to_sparse()),
    "integer max_pool2d": lambda: F.max_pool2d(torch.arange(32).view(2, 4, 4), 2),
    "complex conv2d": lambda: F.conv2d(torch.randn(1, 1, 4, 4, dtype=torch.cfloat),
                                       torch.randn(1, 1, 3, 3, dtype=torch.cfloat)),
    "linear, 1-D weight": lambda: F.linear(_leaf(4, 3), _leaf(3)),
    "linear, broadcast bias": lambda: F.linear(_leaf(4, 3), _leaf(5, 3), _leaf(1)),
    "adaptive_avg_pool2d, out=": lambda: torch._C._nn.adaptive_avg_pool2d(torch.randn(2, 4, 4), 1,
                                                                         out=torch.empty(2, 1, 1)),
}


@pytest.mark.parametrize("name", FALLBACKS)
def test_calls_ours_does_not_take_stay_torchs(name):
    torch.manual_seed(0)
    expected = FALLBACKS[name]()
    torch.manual_seed(0)
    with manual_ops.enable():
        result = FALLBACKS[name]()
    assert type(result) is type(expected) and result.dtype == expected.dtype
    torch.testing.assert_close(result.to_dense(), expected.to_dense(), rtol=0, atol=0)
    if expected.requires_grad:
        assert builtin_backward_nodes(result) == builtin_backward_nodes(expected) != Counter()


def test_a_device_without_our_kernels_stays_torchs(monkeypatch):
    x = torch.empty(2, 3, 8, 8, device="meta", requires_grad=True)
    with manual_ops.enable():
        out = F.relu(F.conv2d(x, torch.empty(4, 3, 3, 3, device="meta")))
        assert builtin_backward_nodes(out) == Counter() and out.shape == (2, 4, 6, 6)  # meta: our fake kernels
        monkeypatch.setattr(_swap, "SUPPORTED_DEVICES", ("cpu",))  # as for a cuda tensor
        assert builtin_backward_nodes(F.relu(x)) == Counter({"ReluBackward0": 1})


class Logged(torch.Tensor):
    """A tensor subclass whose ``__torch_function__`` logs the functions called on it."""

    calls = []

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        cls.calls.append(func)
        return super().__torch_function__(func, types, args, kwargs)


def test_a_subclass_sees_the_torch_function_called():
    x = torch.randn(3).as_subclass(Logged)
    Logged.calls.clear()
    expected = F.relu(x)
    outside = Logged.calls[:]
    Logged.calls.clear()
    with manual_ops.enable():
        result = F.relu(x)
    assert Logged.calls == outside and outside[0] is F.relu
    assert type(result) is Logged and torch.equal(result, expected)


# Calls that both reject: torch's error, word for word.
ERRORS = {
    "conv2d, 5-D input": lambda: F.conv2d(torch.randn(1, 1, 1, 4, 4), torch.randn(1, 1, 3, 3)),
    "conv2d, two dtypes": lambda: F.conv2d(torch.randn(1, 1, 4, 4, dtype=torch.float64), torch.randn(1, 1, 3, 3)),
    "conv2d, no weight": lambda: torch.conv2d(torch.randn(1, 1, 4, 4)),
    "linear, 0-D input": lambda: F.linear(torch.randn(()), torch.randn(5, 3)),
    "batch_norm, 1-D input": lambda: F.batch_norm(torch.randn(4), None, None, training=True),
    "batch_norm, float64 stats": lambda: F.batch_norm(torch.randn(4, 3), torch.zeros(3, dtype=torch.float64),
                                                      torch.ones(3, dtype=torch.float64), training=True),
    "max_pool2d, 2-D input": lambda: F.max_pool2d(torch.randn(4, 4), 2),
    "cross_entropy, int32 target": lambda: F.cross_entropy(torch.randn(4, 3), torch.zeros(4, dtype=torch.int32)),
    "cross_entropy, 0-D input": lambda: F.cross_entropy(torch.randn(()), torch.tensor(0)),
}


@pytest.mark.parametrize("name", ERRORS)
def test_calls_both_reject_raise_torchs_error(name):
    with pytest.raises(Exception) as expected:
        ERRORS[name]()
    with pytest.raises(expected.type) as raised, manual_ops.enable():
        ERRORS[name]()
    assert str(raised.value) == str(expected.value)


def _routes_relu() -> bool:
    return builtin_backward_nodes(F.relu(_leaf(3))) == Counter()


def test_the_mode_is_removed_on_leaving_also_by_an_exception():
    with manual_ops.enable():
        assert _routes_relu()
    assert not _routes_relu()
    with pytest.raises(ValueError, match="inside"), manual_ops.enable():
        raise ValueError("inside")
    assert not _routes_relu()


def test_modes_nest():
    with manual_ops.enable():
        with manual_ops.enable():
            assert _routes_relu()
        assert _routes_relu()
    assert not _routes_relu()


def test_ours_runs_with_the_mode_off(monkeypatch):
    """A functional that calls the torch function it replaces (as one written on top of torch's might)
    gets torch's: the mode does not call it again."""
    calls = []

    def relu_on_torchs(input, inplace=False):
        calls.append(input)
        return F.relu(input, inplace=inplace) * 1

    monkeypatch.setattr(routing, "_ENTRIES", routing._entries([routing.Route(relu_on_torchs, (F.relu,))]))
    x = torch.randn(5)
    with manual_ops.enable():
        torch.testing.assert_close(F.relu(x), x.clamp(min=0))
    assert len(calls) == 1


# manual_ops.functional's ops that torch.nn.functional has no twin of
NO_TORCH_TWIN = {mF.clamped_batch_norm, mF.sync_batch_norm}


def test_the_table_routes_every_functional_once():
    functions = {getattr(mF, name) for name in mF.__all__ if inspect.isfunction(getattr(mF, name))}
    assert {route.ours for route in routing.ROUTES} == functions - NO_TORCH_TWIN
    spellings = [s for route in routing.ROUTES for s in (*route.spellings, *route.in_place)]
    assert len(spellings) == len(set(spellings)) == len(routing._ENTRIES)


def _conv_net(w, lw, x, y):
    h = F.max_pool2d(F.relu(F.conv2d(x, w, padding=1)), 2)
    return F.cross_entropy(F.linear(F.adaptive_avg_pool2d(h, 1).flatten(-3), lw), y)


def test_torch_func_grad_and_vmap_inside_the_mode():
    w, lw = torch.randn(4, 3, 3, 3, dtype=torch.float64), torch.randn(10, 4, dtype=torch.float64)
    x, y = torch.randn(5, 3, 6, 6, dtype=torch.float64), torch.randint(10, (5,))
    grad = torch.func.grad(_conv_net, argnums=(0, 1))
    per_sample = torch.func.vmap(lambda w, lw, x, y: grad(w, lw, x[None], y[None]), in_dims=(None, None, 0, 0))
    expected = grad(w, lw, x, y), per_sample(w, lw, x, y)
    with manual_ops.enable():
        torch.testing.assert_close((grad(w, lw, x, y), per_sample(w, lw, x, y)), expected, **TIGHT)


def _routed(graph) -> bool:
    """Whether a Dynamo graph calls manual_ops' Functions (in subgraphs) and not torch's conv2d."""
    codes = [m.code for m in graph.modules() if isinstance(m, torch.fx.GraphModule)]
    return any("torch.ops.manual_ops.conv2d_forward" in c for c in codes) and "torch.conv2d" not in codes[0]


def test_compile_of_a_function_that_enters_the_mode():
    def step(x, w):
        with manual_ops.enable():
            return F.relu(F.conv2d(x, w)).relu_()

    backend = CompileCounterWithBackend("aot_eager")
    x, w = _leaf(2, 3, 6, 6), _leaf(4, 3, 3, 3)
    out = torch.compile(step, fullgraph=True, backend=backend)(x, w)
    assert [_routed(g) for g in backend.graphs] == [True]
    expected = F.relu(F.conv2d(x, w))
    torch.testing.assert_close(out, expected, **TIGHT)
    torch.testing.assert_close(torch.autograd.grad(out.sum(), (x, w)), torch.autograd.grad(expected.sum(), (x, w)),
                               **TIGHT)
    assert not _routes_relu()


def test_compile_of_a_function_called_inside_the_mode_traces_ours_there_only():
    backend = CompileCounterWithBackend("aot_eager")
    step = torch.compile(lambda x, w: F.max_pool2d(F.relu(F.conv2d(x, w)), 2), fullgraph=True, backend=backend)
    x, w = _leaf(2, 3, 6, 6), _leaf(4, 3, 3, 3)
    expected = step(x, w)
    with manual_ops.enable():
        torch.testing.assert_close(step(x, w), expected, **TIGHT)
    step(x, w)  # the mode is guarded on: outside it, torch's graph again
    assert [_routed(g) for g in backend.graphs] == [False, True] and backend.frame_count == 2
