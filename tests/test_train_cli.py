"""``python -m manual_ops train``: smoke run, outputs, resume, Ctrl-C, bad input, the CIFAR loader, memory."""
import json
import os
import pickle
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import manual_ops
from manual_ops import data, models, train
from manual_ops.__main__ import main

TINY = ["--epochs", "1", "--max-train", "64", "--max-test", "32", "--batch-size", "32", "--no-progress"]


def _run(out, *extra):
    return main(["train", "--out", str(out), *TINY, *extra])


def test_smoke_outputs_and_checkpoint_loads_into_builtin(tmp_path, capsys):
    assert _run(tmp_path) == 0
    printed = capsys.readouterr().out
    assert "first step, largest |grad built-in - grad manual| per layer type" in printed
    for kind in ("Conv2d", "BatchNorm2d", "Linear"):
        assert kind in printed
    assert (tmp_path / "curves.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["runs"]) == {"built-in", "manual"}
    assert summary["runs"]["manual"]["final"]["epoch"] == 1
    assert summary["first_step_grad_diff"]["Conv2d"]["max_abs_diff"] < 1e-4
    assert (summary["world_size"], summary["global_batch_size"], summary["sync_bn"]) == (1, 32, False)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    for label in ("built-in", "manual"):
        model = models.build("resnet-small", 1, 10, 8)
        model.load_state_dict(ckpt["runs"][label]["model"], strict=True)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_lenet5_of_the_notes_trains_on_the_digits(tmp_path, capsys):
    assert _run(tmp_path, "--model", "lenet5") == 0
    assert "lenet5 on digits" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["first_step_grad_diff"]["Conv2d"]["max_abs_diff"] < 1e-4
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    models.build("lenet5", 1, 10, 8).load_state_dict(ckpt["runs"]["manual"]["model"], strict=True)


def test_resume_continues_where_it_stopped(tmp_path, capsys):
    assert _run(tmp_path) == 0
    assert main(["train", "--out", str(tmp_path), *TINY[2:], "--epochs", "2", "--resume"]) == 0
    assert "resuming from" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [h["epoch"] for h in summary["runs"]["manual"]["history"]] == [1, 2]
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 2


def test_ctrl_c_leaves_the_last_checkpoint_intact(tmp_path, monkeypatch, capsys):
    assert _run(tmp_path) == 0
    before = (tmp_path / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def interrupted_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise KeyboardInterrupt  # after the temp file is written, before the rename

    monkeypatch.setattr(train.torch, "save", interrupted_save)
    assert main(["train", "--out", str(tmp_path), *TINY[2:], "--epochs", "2", "--resume"]) == 130
    assert "interrupted; the last checkpoint" in capsys.readouterr().err
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    monkeypatch.undo()
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    models.build("resnet-small", 1, 10, 8).load_state_dict(ckpt["runs"]["manual"]["model"], strict=True)


@pytest.mark.slow  # two torchrun processes: ~20 s on 2 cores
def test_torchrun_two_processes_with_sync_bn_train_as_one(tmp_path):
    """DDP over 2 gloo processes on loopback: rank 0 alone prints and writes; with --sync-bn the manual
    network's run is the single-process run (same global batches, global batch-norm statistics)."""
    env = _package_env(GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                             "-m", "manual_ops", "train", "--sync-bn", "--out", str(tmp_path / "two"), *TINY],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=240)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("train loss") == 1 and "2 processes (DistributedDataParallel, gloo)" in result.stdout
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert (two["world_size"], two["global_batch_size"], two["sync_bn"]) == (2, 32, True)
    assert two["batch_norm"] == {"built-in": "torch.nn.BatchNorm2d", "manual": "manual_ops.nn.SyncBatchNorm"}
    ckpt = torch.load(tmp_path / "two" / "checkpoint.pt", weights_only=True)
    models.build("resnet-small", 1, 10, 8).load_state_dict(ckpt["runs"]["manual"]["model"], strict=True)
    assert _run(tmp_path / "one", "--sync-bn") == 0
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
        assert abs(two["runs"]["manual"]["final"][key] - one["runs"]["manual"]["final"][key]) < 1e-5, key


def test_batch_size_must_split_over_the_processes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "3")  # rank 0 of a torchrun launch of 3, without joining a real group
    monkeypatch.setattr(train.dist, "init_process_group", lambda backend: None)
    monkeypatch.setattr(train.dist, "destroy_process_group", lambda: None)
    assert _run(tmp_path) == 2
    assert capsys.readouterr().err == "error: --batch-size 32 (the global batch) must be a multiple of the 3 processes\n"


def _write_cifar(folder, n=6, skip=(), protocol=pickle.DEFAULT_PROTOCOL):
    """CIFAR-10's six python batches in ``folder``, with the real ones' keys and types, ``n`` images each."""
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for name in data.CIFAR_BATCHES:
        if name in skip:
            continue
        batch = {b"batch_label": f"batch {name}", b"labels": rng.integers(0, 10, n).tolist(),
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"img.png"] * n}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=protocol)


# 2: the real batches' (written by Python 2); 5: numpy's out-of-band buffers, Python 3.14's default.
@pytest.mark.parametrize("protocol", sorted({2, pickle.DEFAULT_PROTOCOL, pickle.HIGHEST_PROTOCOL}))
def test_cifar_loader_reads_the_pickle_format(tmp_path, protocol):
    _write_cifar(tmp_path / "c", protocol=protocol)
    ds = data.load(f"cifar10:{tmp_path / 'c'}")
    assert ds.train_x.shape == (30, 3, 32, 32) and ds.test_x.shape == (6, 3, 32, 32)
    assert ds.train_y.dtype == torch.int64 and ds.num_classes == 10
    with open(tmp_path / "c" / "data_batch_1", "rb") as f:
        raw = pickle.load(f)
    # Row layout: 1024 red, then green, then blue values, each 32x32 row-major; standardised per channel.
    first = raw[b"data"][0].reshape(3, 32, 32) / 255.0
    pixels = np.concatenate([pickle.load(open(tmp_path / "c" / f"data_batch_{i}", "rb"))[b"data"] for i in range(1, 6)])
    pixels = pixels.reshape(-1, 3, 32, 32) / 255.0
    mean, std = pixels.mean(axis=(0, 2, 3)), pixels.std(axis=(0, 2, 3))
    expected = (first - mean[:, None, None]) / std[:, None, None]
    np.testing.assert_allclose(ds.train_x[0].numpy(), expected, atol=1e-5)
    assert ds.train_y[0].item() == raw[b"labels"][0]


class _RunsCommand:
    """Unpickles by calling os.system(command), as a crafted data file would."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_cifar_loader_refuses_a_pickle_that_would_run_code(tmp_path):
    _write_cifar(tmp_path / "c")
    marker = tmp_path / "ran"
    with open(tmp_path / "c" / "data_batch_1", "wb") as f:
        pickle.dump({b"data": _RunsCommand(f"touch {shlex.quote(str(marker))}"), b"labels": []}, f)
    message = (f"refusing to load {os.system.__module__}.system from {tmp_path / 'c' / 'data_batch_1'}: "
               f"a CIFAR-10 batch holds only dicts, lists, bytes, str, ints and numpy arrays")
    with pytest.raises(data.DataError) as e:
        data.load(f"cifar10:{tmp_path / 'c'}")
    assert str(e.value) == message
    assert not marker.exists()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_trains_both_runs_under_autocast(tmp_path, amp, capsys):
    assert _run(tmp_path, "--amp", amp) == 0
    assert f"float32, autocast {amp}" in capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["config"]["amp"] == amp
    for row in summary["first_step_grad_diff"].values():  # float32 grads, apart by low-precision rounding
        assert row["max_abs_diff"] <= 0.1 * row["max_abs_grad"]
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ("scaler" in ckpt["runs"]["manual"]) == (amp == "fp16")
    assert main(["train", "--out", str(tmp_path), *TINY[2:], "--epochs", "2", "--resume", "--amp", amp]) == 0
    assert main(["train", "--out", str(tmp_path), *TINY[2:], "--epochs", "3", "--resume"]) == 2  # amp changed


def test_float64_runs_agree_to_rounding(tmp_path):
    assert _run(tmp_path, "--dtype", "float64") == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    for row in summary["first_step_grad_diff"].values():
        assert row["max_abs_diff"] <= 1e-12 * max(row["max_abs_grad"], 1.0)
    runs = summary["runs"]
    assert runs["manual"]["final"]["train_loss"] == pytest.approx(runs["built-in"]["final"]["train_loss"], rel=1e-9)


class _ReluProbe(nn.Module):
    """A model whose forward calls F.relu, recording per training step whether it is the manual run (its Linear
    converted) and the backward node F.relu gave."""

    steps = []

    def __init__(self, in_channels, num_classes, input_size):
        super().__init__()
        self.fc = nn.Linear(in_channels * input_size[0] * input_size[1], num_classes)

    def forward(self, x):
        out = nn.functional.relu(self.fc(x.flatten(1)))
        if out.requires_grad:
            _ReluProbe.steps.append((isinstance(self.fc, manual_ops.nn.Linear), out.grad_fn.name()))
        return out


@pytest.mark.parametrize("enable", [False, True])
def test_enable_runs_the_manual_forward_in_the_mode(tmp_path, monkeypatch, capsys, enable):
    monkeypatch.setitem(models.MODELS, "relu-probe", _ReluProbe)
    monkeypatch.setattr(_ReluProbe, "steps", [])
    assert _run(tmp_path, "--model", "relu-probe", *(["--enable"] if enable else [])) == 0
    assert ("the manual run inside manual_ops.enable()" in capsys.readouterr().out) == enable
    manual_relu = "ReLUFunctionBackward" if enable else "ReluBackward0"
    assert set(_ReluProbe.steps) == {(False, "ReluBackward0"), (True, manual_relu)}
    assert json.loads((tmp_path / "summary.json").read_text())["config"]["enable"] == enable


@pytest.mark.parametrize("setup,args,message", [
    (None, ["--model", "resnet50"],
     "error: unknown model 'resnet50'; choose from resnet18, resnet-small, vgg11, vgg16, lenet5"),
    (None, ["--data", "cifar10:/no/such/folder"], "error: cifar10: /no/such/folder is not a folder"),
    ("missing", ["--data", "cifar10:{c}"], "error: cifar10: {c} lacks data_batch_3, test_batch (needs data_batch_1..5 "
                                           "and test_batch)"),
    ("corrupt", ["--data", "cifar10:{c}"], "error: {c}/data_batch_1 is not a CIFAR-10 python batch (UnpicklingError"),
    (None, ["--data", "mnist"], "error: unknown data 'mnist'; use 'digits' or 'cifar10:PATH'"),
    (None, ["--bn", "clamped:x"], "error: --bn must be 'plain' or 'clamped:K' with a number K, got 'clamped:x'"),
    (None, ["--resume"], "error: --resume: no checkpoint at {out}/checkpoint.pt"),
    (None, ["--amp", "bf16", "--dtype", "float64"],
     "error: --amp bf16 trains float32 parameters under autocast; not with --dtype float64"),
])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, capsys, setup, args, message):
    c = tmp_path / "c"
    if setup == "missing":
        _write_cifar(c, skip=("data_batch_3", "test_batch"))
    elif setup == "corrupt":
        _write_cifar(c)
        (c / "data_batch_1").write_bytes(b"not a pickle")
    out = tmp_path / "out"
    args = [a.format(c=c, out=out) for a in args]
    assert main(["train", "--out", str(out), *TINY, *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message.format(c=c, out=out)) and err.count("\n") == 1, err


def _package_env(**extra):
    """The environment for a ``python -m manual_ops`` subprocess that runs the manual_ops these tests import
    (a checkout's or an installed one), whatever the subprocess's working directory holds."""
    home = os.path.dirname(os.path.dirname(os.path.abspath(manual_ops.__file__)))
    return dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [home, os.environ.get("PYTHONPATH")])), **extra)


def test_bad_input_from_the_shell_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "manual_ops", "train", "--model", "nope", "--out", str(tmp_path)],
                            capture_output=True, text=True, cwd=tmp_path, env=_package_env())
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: unknown model 'nope'; choose from resnet18, resnet-small, vgg11, vgg16, lenet5"]


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_1000_steps_keep_memory_flat():
    """A leaked saved tensor per step (the hidden activation is 64 KiB) would add 64 MB over 1000 steps."""
    torch.manual_seed(0)
    model = manual_ops.convert(nn.Sequential(
        nn.Flatten(), nn.Linear(64, 512), nn.ReLU(inplace=True), nn.Linear(512, 10)))
    loss_fn = manual_ops.nn.CrossEntropyLoss(label_smoothing=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(10, (32,))

    def steps(n):
        for _ in range(n):
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()

    steps(100)  # warm up the allocator
    before = _rss_bytes()
    steps(1000)
    assert _rss_bytes() - before < 16 << 20
