"""manual_ops.convert / revert: table-driven swaps that keep every tensor, flag and mode."""
import ast
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import manual_ops
from manual_ops import models
from manual_ops.convert import TO_MANUAL, builtin_modules, converted_modules


PACKAGE = Path(manual_ops.__file__).parent


class MyReLU(nn.ReLU):
    """A user subclass: convert must leave it alone."""


def _model(name):
    torch.manual_seed(0)
    return models.build(name, 3, 10, 8)


@pytest.mark.parametrize("name", ["resnet-small", "vgg11", "resnet18"])
def test_convert_replaces_every_listed_layer_and_revert_restores(name):
    model = _model(name)
    before = builtin_modules(model)
    assert set(before.values()) == set(TO_MANUAL) & {type(m) for m in model.modules()}
    converted = manual_ops.convert(model)
    assert builtin_modules(converted) == {}
    assert converted_modules(converted) == {n: TO_MANUAL[t] for n, t in before.items()}
    reverted = manual_ops.revert(converted)
    assert converted_modules(reverted) == {} and builtin_modules(reverted) == before


@pytest.mark.parametrize("name", ["resnet-small", "vgg11"])
def test_state_dict_round_trips_strictly_and_outputs_match(name):
    torch.manual_seed(1)
    builtin = _model(name)
    manual = manual_ops.convert(_model(name))
    manual.load_state_dict(builtin.state_dict(), strict=True)
    fresh = _model(name)
    fresh.load_state_dict(manual.state_dict(), strict=True)
    for a, b in zip(builtin.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    x = torch.randn(4, 3, 8, 8)
    for m in (builtin, manual):
        m.eval()
    # float32: every layer agrees to ~1e-6 relative; through a dozen layers 1e-4 is ample.
    torch.testing.assert_close(manual(x), builtin(x), atol=1e-4, rtol=1e-4)


def test_keeps_tensors_flags_mode_dtype_and_optimizer():
    model = _model("resnet-small").double()
    model.layer1[0].conv1.weight.requires_grad_(False)
    model.eval()
    model.fc.train()
    tensors = {n: t for n, t in list(model.named_parameters()) + list(model.named_buffers())}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    manual_ops.convert(model)
    after = dict(list(model.named_parameters()) + list(model.named_buffers()))
    assert after.keys() == tensors.keys()
    assert all(after[n] is t for n, t in tensors.items())  # moved, not copied
    assert not model.layer1[0].conv1.weight.requires_grad and model.layer1[0].conv2.weight.requires_grad
    assert not model.training and model.fc.training and not model.layer1[0].bn1.training
    assert all(t.dtype == torch.float64 for t in after.values() if t.is_floating_point())
    # The optimizer built before conversion updates the converted model's parameters.
    model.train()
    model(torch.randn(2, 3, 8, 8, dtype=torch.float64)).sum().backward()
    w = model.fc.weight.detach().clone()
    opt.step()
    assert not torch.equal(w, model.fc.weight)


def test_root_module_subclasses_unknown_modules_and_sharing():
    assert type(manual_ops.convert(nn.Linear(3, 2))) is manual_ops.nn.Linear
    shared = nn.ReLU()
    model = nn.Sequential(nn.Linear(4, 4), MyReLU(), nn.Mish(), shared, nn.Sequential(shared))
    manual_ops.convert(model)
    assert type(model[1]) is MyReLU and type(model[2]) is nn.Mish
    assert type(model[3]) is manual_ops.nn.ReLU and model[3] is model[4][0]
    assert set(converted_modules(model)) == {"0", "3"}  # named_modules lists a shared module once


def test_hooks_survive():
    model = nn.Sequential(nn.Linear(3, 3))
    calls = []
    model[0].register_forward_hook(lambda *a: calls.append(1))
    manual_ops.convert(model)(torch.randn(1, 3))
    assert calls == [1]


def test_converted_model_trains_like_the_builtin_with_inplace_relu_and_flatten():
    torch.manual_seed(2)
    builtin = _model("resnet-small")
    manual = manual_ops.convert(copy.deepcopy(builtin))
    x, y = torch.randn(8, 3, 8, 8), torch.randint(10, (8,))
    grads = []
    for model in (builtin, manual):
        nn.functional.cross_entropy(model(x), y).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], atol=1e-4, rtol=1e-3)


def test_clamped_beta_converts_batch_norms_to_clamped():
    model = _model("resnet-small")
    state = copy.deepcopy(model.state_dict())
    manual_ops.convert(model, clamped_beta=0.5)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(type(m) is manual_ops.nn.ClampedBatchNorm2d and m.beta_floor == 0.5 for m in bns)
    model.load_state_dict(state, strict=True)
    manual_ops.revert(model)
    assert all(type(m) is nn.BatchNorm2d for m in model.modules() if isinstance(m, nn.BatchNorm2d))


def _imports(path):
    """Every module a source file imports, anywhere in it (function bodies too), by absolute name, and for
    each ``from M import x``, ``M.x`` as well (x may be a submodule)."""
    package = ".".join(path.relative_to(PACKAGE.parent).parts[:-1])
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(filter(None, [base, node.module]))
            yield module
            yield from (f"{module}.{alias.name}" for alias in node.names)


def test_layers_and_ops_never_import_convert():
    """convert imports manual_ops.modules and manual_ops.ops, so they must not import it back (a cycle)."""
    seen = set(_imports(PACKAGE / "modules" / "sync_batch_norm.py"))
    assert "manual_ops.ops.sync_batch_norm.SyncBatchNormFunction" in seen  # `from ..ops.sync_batch_norm import`
    files = [*(PACKAGE / "modules").rglob("*.py"), *(PACKAGE / "ops").rglob("*.py")]
    cycles = {(str(f.relative_to(PACKAGE)), name) for f in files for name in _imports(f)
              if name == "manual_ops.convert" or name.startswith("manual_ops.convert.")}
    assert cycles == set()
