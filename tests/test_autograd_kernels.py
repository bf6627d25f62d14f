"""The C++ autograd kernels of batch_norm, cross_entropy and linear (csrc/autograd_kernel.h): the graph they
record behaves as torch's own nodes do (names, saved-tensor checks and hooks, partial grads, retain_graph),
arguments without a derivative raise as in torch, and dual inputs to the operators called directly raise."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

from manual_ops import functional as mF

ops = torch.ops.manual_ops
NOT_DIFFERENTIABLE = "is not differentiable with respect to argument '{}'. This input cannot have requires_grad True"


def _bn(x, w, b):
    return mF.batch_norm(x, None, None, w, b, training=True)


def _ce(x, w, b):
    return mF.cross_entropy(x * w + b, torch.tensor([0, 3, 1, 4, 2, 0]))


def _linear(x, w, b):
    return mF.linear(x, w[:, None].expand(-1, 3).T.contiguous(), b[:3])


CASES = {"batch_norm": (_bn, "BatchNormBackward"), "cross_entropy": (_ce, "CrossEntropyBackward"),
         "linear": (_linear, "LinearBackward")}


def _leaves():
    torch.manual_seed(0)
    return (torch.randn(6, 5, dtype=torch.float64, requires_grad=True),
            torch.randn(5, dtype=torch.float64, requires_grad=True),
            torch.randn(5, dtype=torch.float64, requires_grad=True))


@pytest.mark.parametrize("case", CASES)
def test_node_name_and_no_graph_without_grad(case):
    fn, name = CASES[case]
    x, w, b = _leaves()
    assert fn(x, w, b).grad_fn.name() == name
    with torch.no_grad():
        assert fn(x, w, b).grad_fn is None
    assert fn(x.detach(), w.detach(), b.detach()).grad_fn is None


@pytest.mark.parametrize("case", CASES)
def test_partial_grads_match_full(case):
    """autograd.grad for one input computes only that one (the node's output mask) and equals the full grad."""
    fn = CASES[case][0]
    x, w, b = _leaves()
    full = torch.autograd.grad(fn(x, w, b).sum(), (x, w, b))
    for i, leaf in enumerate((x, w, b)):
        (one,) = torch.autograd.grad(fn(x, w, b).sum(), (leaf,))
        torch.testing.assert_close(one, full[i], rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_saved_tensor_modified_in_place_raises(case):
    fn = CASES[case][0]
    x, w, b = _leaves()
    x2 = x * 1
    out = fn(x2, w, b)
    x2.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("case", CASES)
def test_backward_twice_needs_retain_graph(case):
    fn = CASES[case][0]
    x, w, b = _leaves()
    out = fn(x, w, b).sum()
    out.backward(retain_graph=True)
    first = x.grad.clone()
    out.backward()
    torch.testing.assert_close(x.grad, 2 * first)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        out.backward()


@pytest.mark.parametrize("case", CASES)
def test_saved_tensor_hooks_are_used(case):
    fn = CASES[case][0]
    x, w, b = _leaves()
    packed = []

    def pack(t):
        packed.append(t)
        return t.clone()

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x, w, b)
    assert packed
    (gx,) = torch.autograd.grad(out.sum(), (x,))
    (expected,) = torch.autograd.grad(fn(x, w, b).sum(), (x,))
    torch.testing.assert_close(gx, expected, rtol=0, atol=0)


def test_cross_entropy_weight_requires_grad_raises_as_torch():
    x = torch.randn(4, 3, requires_grad=True)
    t = torch.tensor([0, 2, 1, 1])
    weight = torch.rand(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="'nll_loss_forward' " + NOT_DIFFERENTIABLE.format("weight")):
        F.cross_entropy(x, t, weight=weight)
    message = "'cross_entropy_forward' " + NOT_DIFFERENTIABLE.format("weight")
    with pytest.raises(RuntimeError, match=message):
        mF.cross_entropy(x, t, weight=weight)
    with pytest.raises(RuntimeError, match=message):
        ops.cross_entropy_forward(x, t, weight, "mean", -100, 0.0)
    with pytest.raises(RuntimeError, match=message), fwAD.dual_level():  # the Python Function's path
        mF.cross_entropy(fwAD.make_dual(x.detach(), torch.ones(4, 3)), t, weight=weight)
    with torch.no_grad():
        torch.testing.assert_close(mF.cross_entropy(x, t, weight=weight), F.cross_entropy(x, t, weight=weight.detach()))
    torch.testing.assert_close(mF.cross_entropy(x, t, weight=weight.detach()), F.cross_entropy(x, t, weight=weight.detach()))


@pytest.mark.parametrize("name", ["running_mean", "running_var"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_running_stats_requiring_grad_raise_as_torch(name, training):
    x = torch.randn(4, 3, requires_grad=True)
    stats = {"running_mean": torch.zeros(3), "running_var": torch.ones(3)}
    stats[name].requires_grad_()
    with pytest.raises(RuntimeError, match="'native_batch_norm' " + NOT_DIFFERENTIABLE.format(name)):
        F.batch_norm(x, stats["running_mean"], stats["running_var"], training=training)
    message = "'batch_norm_forward' " + NOT_DIFFERENTIABLE.format(name)
    before = {k: v.detach().clone() for k, v in stats.items()}
    with pytest.raises(RuntimeError, match=message):
        mF.batch_norm(x, stats["running_mean"], stats["running_var"], training=training)
    with pytest.raises(RuntimeError, match=message):
        ops.batch_norm_forward(x, None, None, stats["running_mean"], stats["running_var"], None, training, 0.1, 1e-5,
                               None, "sigma")
    for k in stats:  # nothing updated when the call raised
        assert torch.equal(stats[k].detach(), before[k])
    with torch.no_grad():
        mF.batch_norm(x, stats["running_mean"], stats["running_var"], training=training)


def test_operators_called_directly_refuse_dual_inputs():
    x, w, b = (t.detach() for t in _leaves())
    message = "forward-mode AD is not supported when the operator is called directly"
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, torch.ones_like(x))
        with pytest.raises(NotImplementedError, match="cross_entropy_forward: " + message):
            ops.cross_entropy_forward(dual, torch.zeros(6, dtype=torch.long), None, "mean", -100, 0.0)
        with pytest.raises(NotImplementedError, match="linear_forward: " + message):
            ops.linear_forward(dual, w[None], None)
        with pytest.raises(NotImplementedError, match="batch_norm_forward: " + message):
            ops.batch_norm_forward(dual, w, b, None, None, None, True, 0.1, 1e-5, None, "sigma")
        # the functional wrappers support it (the Python Functions' jvp)
        tangent = fwAD.unpack_dual(mF.linear(dual, w[None])).tangent
        torch.testing.assert_close(tangent, torch.ones_like(x) @ w[:, None])
