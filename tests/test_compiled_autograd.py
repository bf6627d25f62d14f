"""Compiled autograd (torch._dynamo.compiled_autograd) over our ops and converted networks: the backward
graph it traces holds our backward ops (linear's, batch_norm's and cross_entropy's C++ nodes put their op
into the graph through compiled_args / apply_with_saved; the Python Functions' backwards are traced), and
its gradients equal eager's."""
import pytest
import torch
from torch._dynamo import compiled_autograd

import manual_ops
from manual_ops import functional as mF
from manual_ops.models import build

f64 = torch.float64


class Graphs:
    """A compiled-autograd compiler that keeps the text of each backward graph it is given and runs it
    through Dynamo with `backend` (eager: Dynamo runs the graph's calls; aot_eager: AOTAutograd traces
    through them to our ops' fake kernels first)."""

    def __init__(self, backend="eager"):
        self.backend, self.texts = backend, []

    def __call__(self, gm):
        self.texts.append(str(gm.graph))
        return torch.compile(gm, backend=self.backend, fullgraph=True)


def grads_of(loss_fn, tensors, compiler=None):
    for t in tensors:
        t.grad = None
    loss = loss_fn()
    if compiler is None:
        loss.backward()
    else:
        with compiled_autograd._enable(compiler):
            loss.backward()
    return [t.grad for t in tensors]


def assert_same_grads(loss_fn, tensors, compiler):
    eager = grads_of(loss_fn, tensors)
    compiled = grads_of(loss_fn, tensors, compiler)
    for e, c in zip(eager, compiled):
        assert (e is None) == (c is None)
        if e is not None:
            torch.testing.assert_close(c, e, rtol=1e-12, atol=1e-12)


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("bias", [True, False])
def test_linear(bias):
    x = torch.randn(3, 4, 5, dtype=f64, requires_grad=True)
    w = torch.randn(6, 5, dtype=f64, requires_grad=True)
    b = torch.randn(6, dtype=f64, requires_grad=True) if bias else None
    graphs = Graphs()
    assert_same_grads(lambda: mF.linear(x, w, b).pow(2).sum(), [t for t in (x, w, b) if t is not None], graphs)
    assert "manual_ops_linear_backward" in graphs.texts[0]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("variant", ["plain", "no-affine", "clamped-sigma", "clamped-gamma"])
def test_batch_norm(training, variant):
    x = torch.randn(4, 3, 5, 5, dtype=f64, requires_grad=True)
    affine = variant != "no-affine"
    w = torch.randn(3, dtype=f64, requires_grad=True) if affine else None
    b = torch.tensor([-3.0, 0.1, -0.2], dtype=f64, requires_grad=True) if affine else None  # channel 0 clamped
    rm, rv = torch.randn(3, dtype=f64), torch.rand(3, dtype=f64) + 0.5
    if variant.startswith("clamped"):
        def norm():
            return mF.clamped_batch_norm(x, rm.clone(), rv.clone(), w, b, training, beta_floor=0.5,
                                         floor_scale=variant.split("-")[1])
    else:
        def norm():
            return mF.batch_norm(x, rm.clone(), rv.clone(), w, b, training)
    graphs = Graphs()
    assert_same_grads(lambda: norm().pow(3).sum(), [t for t in (x, w, b) if t is not None], graphs)
    assert "manual_ops_batch_norm_backward" in graphs.texts[0]


@pytest.mark.parametrize("options", [
    dict(reduction="mean"), dict(reduction="sum"), dict(reduction="none"),
    dict(ignore_index=1), dict(label_smoothing=0.2), dict(weight=torch.rand(5, dtype=f64) + 0.5),
])
def test_cross_entropy(options):
    x = torch.randn(6, 5, dtype=f64, requires_grad=True)
    y = torch.tensor([0, 1, 4, 1, 3, 2])
    graphs = Graphs()
    assert_same_grads(lambda: mF.cross_entropy(x, y, **options).mul(1.5).sum(), [x], graphs)
    assert "manual_ops_cross_entropy_backward" in graphs.texts[0]


def test_probability_targets_get_their_gradient():
    x = torch.randn(4, 3, dtype=f64, requires_grad=True)
    p = torch.randn(4, 3, dtype=f64).softmax(1).requires_grad_()
    assert_same_grads(lambda: mF.cross_entropy(x, p, label_smoothing=0.1), [x, p], Graphs())


def test_constants_are_part_of_the_graphs_key():
    """Two calls that differ only in a constant (the reduction) must not share a compiled graph: each gets
    its own gradient, as in eager."""
    x = torch.randn(6, 5, dtype=f64, requires_grad=True)
    y = torch.tensor([0, 1, 4, 1, 3, 2])
    graphs = Graphs()
    with compiled_autograd._enable(graphs):
        for reduction, scale in (("mean", 1 / 6), ("sum", 1.0)):
            x.grad = None
            mF.cross_entropy(x, y, reduction=reduction).backward()
            expected = (torch.softmax(x.detach(), 1) - torch.nn.functional.one_hot(y, 5)) * scale
            torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)
    assert len(graphs.texts) == 2


@pytest.mark.parametrize("model_name,train_mode", [("resnet-small", True), ("resnet-small", False), ("lenet5", True)])
def test_converted_network(model_name, train_mode):
    """A converted network's whole backward under compiled autograd: our nodes only, eager's gradients."""
    torch.manual_seed(0)
    model = manual_ops.convert(build(model_name, in_channels=1, num_classes=10, input_size=8)).to(f64).train(train_mode)
    x = torch.randn(4, 1, 8, 8, dtype=f64)
    y = torch.randint(0, 10, (4,))
    params = list(model.parameters())
    graphs = Graphs()
    assert_same_grads(lambda: mF.cross_entropy(model(x), y), params, graphs)
    assert "manual_ops_cross_entropy_backward" in graphs.texts[0]
    assert "manual_ops_linear_backward" in graphs.texts[0]


def test_aot_eager_traces_through_our_ops():
    """With AOTAutograd behind Dynamo the graph's calls are traced to our ops on fake tensors (their fake
    kernels), and the compiled backward still gives eager's gradients."""
    torch.manual_seed(0)
    model = manual_ops.convert(build("resnet-small", in_channels=1, num_classes=10, input_size=8)).to(f64)
    x = torch.randn(4, 1, 8, 8, dtype=f64)
    y = torch.randint(0, 10, (4,))
    assert_same_grads(lambda: mF.cross_entropy(model(x), y), list(model.parameters()), Graphs("aot_eager"))


def test_the_config_flag_with_a_compiled_training_step():
    """The spelling of torch's tutorial: torch._dynamo.config.compiled_autograd with a compiled function that
    calls backward."""
    torch.manual_seed(0)
    model = manual_ops.convert(build("resnet-small", in_channels=1, num_classes=10, input_size=8)).to(f64)
    x = torch.randn(4, 1, 8, 8, dtype=f64)
    y = torch.randint(0, 10, (4,))
    params = list(model.parameters())
    eager = grads_of(lambda: mF.cross_entropy(model(x), y), params)

    @torch.compile(backend="eager")
    def step():
        mF.cross_entropy(model(x), y).backward()

    for p in params:
        p.grad = None
    with torch._dynamo.config.patch(compiled_autograd=True):
        step()
    for e, p in zip(eager, params):
        torch.testing.assert_close(p.grad, e, rtol=1e-12, atol=1e-12)
