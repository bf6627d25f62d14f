"""``python -m manual_ops train``: the same network trained twice, with torch's layers and with manual_ops'.

Both runs start from the same weights and see the same batches in the same order; per epoch
the loss, accuracy and time of each are printed side by side. Outputs in ``--out``:
``curves.png`` (loss and accuracy of both runs), ``summary.json`` and ``checkpoint.pt``
(written atomically after every epoch; ``--resume`` continues from it). The state_dicts in
the checkpoint load strictly into the built-in model. ``--amp bf16|fp16`` trains both under
``torch.autocast`` (float16 with a ``torch.amp.GradScaler``); ``--dtype float64`` trains both in
float64, where the two runs agree to rounding for many steps. ``--enable`` runs the manual network's
forward and loss inside ``manual_ops.enable()``, so that torch functions its ``forward`` calls
(``F.relu``, ...) run manual_ops' ops too; convert() has already swapped every layer of the bundled
models, so for them it changes nothing but the time (the mode sees every torch call).

Under ``torchrun --nproc-per-node=N -m manual_ops train``, both networks train with
DistributedDataParallel (gloo: the networks run on CPU): each process takes its shard of every
batch of ``--batch-size`` (the global batch, so the batches are those of a single-process run) by a
DistributedSampler. ``--sync-bn`` synchronises the batch norms over the processes: manual_ops'
SyncBatchNorm for the manual network, torch's SyncBatchNorm for the built-in one where torch
supports it (CUDA), else plain BatchNorm2d (per-process statistics). Only rank 0 prints and writes.
"""
import contextlib
import copy
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from . import models, routing
from . import nn as mnn
from .convert import convert

CHECKPOINT = "checkpoint.pt"
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class UsageError(Exception):
    """Bad options or inputs: the message is shown as one line and the command exits with status 2."""


def parse_bn(spec: str):
    """``'plain'`` -> None; ``'clamped:K'`` -> K (the ClampedBatchNorm2d beta floor)."""
    if spec == "plain":
        return None
    if spec.startswith("clamped:"):
        try:
            return float(spec[len("clamped:"):])
        except ValueError:
            pass
    raise UsageError(f"--bn must be 'plain' or 'clamped:K' with a number K, got {spec!r}")


def make_models(name, dataset, seed, clamped_beta=None, dtype=torch.float32, sync_bn=False):
    """(built-in model, manual_ops model): the same weights, the second one converted. With ``sync_bn``
    the manual model's batch norms are manual_ops' SyncBatchNorm; the built-in model keeps torch's
    BatchNorm2d, since torch's SyncBatchNorm refuses CPU input (see builtin_batch_norm)."""
    torch.manual_seed(seed)
    try:
        builtin = models.build(name, dataset.in_channels, dataset.num_classes, dataset.input_size).to(dtype)
        manual = convert(copy.deepcopy(builtin), clamped_beta=clamped_beta, sync_bn=sync_bn)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return builtin, manual


def builtin_batch_norm(model, sync_bn):
    """The built-in network's batch norm under ``--sync-bn``: torch's SyncBatchNorm where torch supports it
    (parameters on CUDA), else BatchNorm2d as it is. Returns (model, the class name used)."""
    if sync_bn and next(model.parameters()).is_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(model), "torch.nn.SyncBatchNorm"
    return model, "torch.nn.BatchNorm2d"


class Processes:
    """The processes of a torchrun launch (its environment variables), or this process alone."""

    def __init__(self):
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.joined = "WORLD_SIZE" in os.environ and not dist.is_initialized()
        if self.joined:
            dist.init_process_group("gloo")  # the networks run on CPU (nccl is for CUDA tensors)

    def wrap(self, model):
        """The model as trained: DistributedDataParallel over the processes when there are several."""
        return nn.parallel.DistributedDataParallel(model) if self.world_size > 1 else model

    def sum(self, values):
        """The elementwise sum of a list of numbers over the processes."""
        if self.world_size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def close(self):
        if self.joined:
            dist.destroy_process_group()


@dataclass
class Run:
    """One of the two training runs: model, loss, SGD with momentum and a cosine schedule over the epochs."""

    model: nn.Module  # as trained: the network itself or its DistributedDataParallel wrapper
    loss_fn: nn.Module
    lr: float
    epochs: int
    amp: torch.dtype | None = None  # autocast dtype, or None
    enable: bool = False  # forward inside manual_ops.enable()
    history: list = field(default_factory=list)

    def __post_init__(self):
        self.net = getattr(self.model, "module", self.model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=max(self.epochs, 1))
        # float16 gradients underflow without loss scaling; bfloat16 has float32's range.
        self.scaler = torch.amp.GradScaler("cpu") if self.amp == torch.float16 else None

    def _autocast(self):
        return torch.autocast("cpu", dtype=self.amp or torch.bfloat16, enabled=self.amp is not None)

    def _routing(self):
        # the forward records the graph, so the backward runs what the forward chose without the mode
        return routing.enable() if self.enable else contextlib.nullcontext()

    def step(self, x, y):
        """One SGD step; returns (loss, number correct). Gradients stay on the parameters until the next step."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast(), self._routing():
            out = self.model(x)
            loss = self.loss_fn(out, y)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)  # unscales the grads first; skips the step if any is inf/NaN
            self.scaler.update()
        return loss.item(), (out.argmax(1) == y).sum().item()

    @torch.no_grad()
    def evaluate(self, x, y, procs, batch_size=500):
        """(loss, accuracy) on (x, y): each process takes every world_size-th example; eval-mode batch
        norm communicates nothing, so the network runs unwrapped and only the sums cross processes."""
        self.net.eval()
        x, y = x[procs.rank::procs.world_size], y[procs.rank::procs.world_size]
        total_loss, correct = 0.0, 0
        for i in range(0, len(x), batch_size):
            with self._autocast(), self._routing():
                out = self.net(x[i:i + batch_size])
                total_loss += self.loss_fn(out, y[i:i + batch_size]).item() * len(out)
            correct += (out.argmax(1) == y[i:i + batch_size]).sum().item()
        total_loss, correct, n = procs.sum([total_loss, correct, len(x)])
        return total_loss / max(n, 1), correct / max(n, 1)

    def state(self):
        state = {"model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "history": self.history}
        if self.scaler is not None:
            state["scaler"] = self.scaler.state_dict()
        return state

    def load(self, state):
        self.net.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.history = state["history"]


def grad_differences(builtin, manual):
    """Per built-in layer type: the largest |grad_builtin - grad_manual| over its parameters, and the largest |grad|."""
    out = {}
    manual_modules = dict(manual.named_modules())
    for name, m in builtin.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            q = getattr(manual_modules[name], pname)
            if p.grad is None or q.grad is None:
                continue
            row = out.setdefault(type(m).__name__, {"max_abs_diff": 0.0, "max_abs_grad": 0.0})
            row["max_abs_diff"] = max(row["max_abs_diff"], (p.grad - q.grad).abs().max().item())
            row["max_abs_grad"] = max(row["max_abs_grad"], p.grad.abs().max().item())
    return out


def save_atomic(obj, path):
    """torch.save to a temp file beside ``path``, then rename over it: ``path`` is always a whole checkpoint."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".checkpoint-", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it a normal file's mode
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _batches(n, batch_size, seed, epoch, procs):
    """This process's share of the epoch's shuffled batches of ``batch_size`` indices (a DistributedSampler
    shard: every world_size-th index of one shuffled order, padded to a multiple of world_size). The order is
    a function of (seed, epoch) only, so resumed runs, and runs on any number of processes, see the same batches."""
    sampler = DistributedSampler(range(n), num_replicas=procs.world_size, rank=procs.rank, shuffle=True,
                                 seed=seed * 100003)
    sampler.set_epoch(epoch)
    return torch.tensor(list(sampler), dtype=torch.long).split(batch_size // procs.world_size)


def _row(name, h):
    return (f"{name:>9} {h['train_loss']:>10.4f} {100 * h['train_acc']:>8.2f}% {h['test_loss']:>10.4f} "
            f"{100 * h['test_acc']:>8.2f}% {h['time_s']:>8.2f}s")


def _plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for (label, run), style in zip(runs.items(), ("-", "--")):
        epochs = [h["epoch"] for h in run.history]
        ax_loss.plot(epochs, [h["train_loss"] for h in run.history], style, marker="o", label=f"{label} train")
        ax_loss.plot(epochs, [h["test_loss"] for h in run.history], style, marker="s", label=f"{label} test")
        ax_acc.plot(epochs, [100 * h["train_acc"] for h in run.history], style, marker="o", label=f"{label} train")
        ax_acc.plot(epochs, [100 * h["test_acc"] for h in run.history], style, marker="s", label=f"{label} test")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def train(args, log=None):
    """Runs the side-by-side training described by the parsed ``args``; returns the summary dict.
    Lines go to ``log`` (default: ``tqdm.write``, which keeps the progress bars intact); under torchrun
    only rank 0 logs and writes files."""
    procs = Processes()
    try:
        return _train(args, log, procs)
    finally:
        procs.close()


def _train(args, log, procs):
    from tqdm import tqdm

    from . import data as data_module  # numpy: an extra of the train command, as tqdm is

    lead = procs.rank == 0
    log = (log or tqdm.write) if lead else (lambda line: None)
    if args.epochs < 1 or args.batch_size < 1 or not (args.lr > 0 and math.isfinite(args.lr)):
        raise UsageError("--epochs and --batch-size must be positive integers and --lr a positive number")
    if args.batch_size % procs.world_size:
        raise UsageError(f"--batch-size {args.batch_size} (the global batch) must be a multiple of the "
                         f"{procs.world_size} processes")
    clamped_beta = parse_bn(args.bn)
    amp, dtype = AMP_DTYPES.get(args.amp), DTYPES[args.dtype]
    if amp is not None and dtype != torch.float32:
        raise UsageError(f"--amp {args.amp} trains float32 parameters under autocast; not with --dtype {args.dtype}")
    try:
        dataset = data_module.load(args.data)
    except data_module.DataError as e:
        raise UsageError(str(e)) from None
    if args.max_train:
        dataset.train_x, dataset.train_y = dataset.train_x[:args.max_train], dataset.train_y[:args.max_train]
    if args.max_test:
        dataset.test_x, dataset.test_y = dataset.test_x[:args.max_test], dataset.test_y[:args.max_test]
    dataset.train_x, dataset.test_x = dataset.train_x.to(dtype), dataset.test_x.to(dtype)
    builtin, manual = make_models(args.model, dataset, args.seed, clamped_beta, dtype, sync_bn=args.sync_bn)
    builtin, builtin_bn = builtin_batch_norm(builtin, args.sync_bn)
    batch_norms = {"built-in": builtin_bn,
                   "manual": "manual_ops.nn.SyncBatchNorm" if args.sync_bn else "manual_ops.nn.BatchNorm2d"}
    runs = {"built-in": Run(procs.wrap(builtin), nn.CrossEntropyLoss(), args.lr, args.epochs, amp),
            "manual": Run(procs.wrap(manual), mnn.CrossEntropyLoss(), args.lr, args.epochs, amp, args.enable)}

    if lead:
        os.makedirs(args.out, exist_ok=True)
    checkpoint_path = os.path.join(args.out, CHECKPOINT)
    config = {k: getattr(args, k) for k in ("data", "model", "bn", "seed", "batch_size", "lr", "epochs", "amp", "dtype",
                                            "enable")}
    start_epoch, first_step = 0, None
    if args.resume:
        if not os.path.isfile(checkpoint_path):
            raise UsageError(f"--resume: no checkpoint at {checkpoint_path}")
        try:
            ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            defaults = {"amp": None, "dtype": "float32"}  # checkpoints from before these options
            changed = [k for k in ("data", "model", "bn", "seed", "batch_size", "amp", "dtype")
                       if ckpt["config"].get(k, defaults.get(k)) != config[k]]
            if changed:
                raise UsageError(f"--resume: the checkpoint was made with different {', '.join(changed)}")
            for label, run in runs.items():
                run.load(ckpt["runs"][label])
        except UsageError:
            raise
        except Exception as e:  # unreadable or mismatched checkpoint
            raise UsageError(f"--resume: cannot load {checkpoint_path} ({type(e).__name__}: {e})") from None
        start_epoch, first_step = ckpt["epoch"], ckpt["first_step_grad_diff"]
        log(f"resuming from {checkpoint_path} after epoch {start_epoch}")

    log(f"{args.model} on {dataset.name}: {len(dataset.train_y)} train / {len(dataset.test_y)} test images of size "
        f"{dataset.in_channels}x{dataset.input_size[0]}x{dataset.input_size[1]}, batch {args.batch_size}, "
        f"lr {args.lr}, bn {args.bn}, {args.dtype}{f', autocast {args.amp}' if amp else ''}, "
        f"{torch.get_num_threads()} threads{', the manual run inside manual_ops.enable()' if args.enable else ''}")
    if procs.world_size > 1:
        log(f"{procs.world_size} processes (DistributedDataParallel, gloo), {args.batch_size // procs.world_size} "
            f"images each per batch; batch norm: built-in {batch_norms['built-in']}, manual {batch_norms['manual']}")
    header = f"{'epoch':>5} {'run':>9} {'train loss':>10} {'train acc':>9} {'test loss':>10} {'test acc':>9} {'time':>9}"
    for epoch in range(start_epoch, args.epochs):
        batches = _batches(len(dataset.train_y), args.batch_size, args.seed, epoch, procs)
        totals = {label: {"loss": 0.0, "correct": 0, "time": 0.0} for label in runs}
        seen = 0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, disable=not (args.progress and lead))
        for i, idx in enumerate(bar):
            x, y = dataset.train_x[idx], dataset.train_y[idx]
            for label, run in runs.items():  # interleaved, so load on the machine hits both alike
                t0 = time.perf_counter()
                loss, correct = run.step(x, y)
                totals[label]["time"] += time.perf_counter() - t0
                totals[label]["loss"] += loss * len(y)
                totals[label]["correct"] += correct
            seen += len(y)
            if epoch == 0 and i == 0:
                first_step = grad_differences(runs["built-in"].net, runs["manual"].net)
                log("first step, largest |grad built-in - grad manual| per layer type (largest |grad| for scale):")
                if args.sync_bn and procs.world_size > 1 and builtin_bn == "torch.nn.BatchNorm2d":
                    log("  (the built-in batch norms use per-process statistics, the manual ones global: they differ)")
                for kind, d in first_step.items():
                    log(f"  {kind:<20} {d['max_abs_diff']:.3e}   (|grad| up to {d['max_abs_grad']:.3e})")
            bar.set_postfix({label: f"{t['loss'] / seen:.3f}" for label, t in totals.items()})
        for label, run in runs.items():
            t0 = time.perf_counter()
            test_loss, test_acc = run.evaluate(dataset.test_x, dataset.test_y, procs)
            loss, correct, n = procs.sum([totals[label]["loss"], totals[label]["correct"], seen])
            run.history.append({
                "epoch": epoch + 1, "train_loss": loss / n, "train_acc": correct / n, "test_loss": test_loss,
                "test_acc": test_acc, "time_s": totals[label]["time"] + time.perf_counter() - t0,
            })
            run.scheduler.step()
        if epoch == start_epoch:
            log(header)
        for label, run in runs.items():
            log(f"{epoch + 1:>5} " + _row(label, run.history[-1]))
        if lead:
            save_atomic({"epoch": epoch + 1, "config": config, "first_step_grad_diff": first_step,
                         "runs": {label: run.state() for label, run in runs.items()}}, checkpoint_path)

    summary = {
        "config": config, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "world_size": procs.world_size, "global_batch_size": args.batch_size, "sync_bn": args.sync_bn,
        "batch_norm": batch_norms, "first_step_grad_diff": first_step,
        "runs": {label: {"final": run.history[-1] if run.history else None,
                         "mean_epoch_time_s": sum(h["time_s"] for h in run.history) / max(len(run.history), 1),
                         "history": run.history} for label, run in runs.items()},
        "files": {"checkpoint": checkpoint_path, "plot": os.path.join(args.out, "curves.png")},
    }
    if not lead:
        return summary
    _plot(runs, summary["files"]["plot"])
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    log(f"wrote {summary['files']['plot']}, {os.path.join(args.out, 'summary.json')} and {checkpoint_path}")
    return summary


def add_arguments(parser):
    parser.add_argument("--data", default="digits", help="'digits' (scikit-learn, bundled) or 'cifar10:PATH'")
    parser.add_argument("--model", default="resnet-small", help=f"one of {', '.join(models.MODELS)}")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--bn", default="plain", help="'plain', or 'clamped:K' for ClampedBatchNorm2d(beta_floor=K)")
    parser.add_argument("--sync-bn", action="store_true",
                        help="under torchrun: batch-norm statistics over all processes (manual_ops' SyncBatchNorm; "
                             "the built-in network uses torch's where torch supports it, else BatchNorm2d)")
    parser.add_argument("--amp", choices=sorted(AMP_DTYPES), default=None,
                        help="train both runs under torch.autocast to bfloat16 or float16 (float16 with a GradScaler)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                        help="dtype of the parameters and data; float64 for exact comparisons")
    parser.add_argument("--enable", action="store_true",
                        help="run the manual network's forward inside manual_ops.enable(), for a model whose forward "
                             "calls torch functions (F.relu, ...): they run manual_ops' ops too")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/train", help="folder for curves.png, summary.json, checkpoint.pt")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    parser.add_argument("--max-train", type=int, default=0, help="use only the first N training images (0: all)")
    parser.add_argument("--max-test", type=int, default=0, help="use only the first N test images (0: all)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bars")
