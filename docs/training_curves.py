"""Draws docs/training_curves.png: does manual_ops train like the built-in layers?

The small ResNet on scikit-learn's digits, trained for several seeds three ways, each from the
same initial weights and batches as the others of its seed: with torch's layers ("built-in"),
converted to manual_ops' ("manual_ops"), and with torch's layers again from initial weights
changed by one float32 rounding step (relative 2^-24, "control"). Float32 training amplifies
rounding, so two correct runs drift apart; the control measures how far the built-in drifts from
itself. The left panel shows test accuracy per epoch (mean and min-max band over the seeds);
the right one, per seed and epoch, how far manual_ops and the control end from the built-in.

Run from the repository root: ``python docs/training_curves.py`` (a few minutes).
"""
import copy
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import manual_ops  # noqa: E402
from manual_ops import models, nn as mnn  # noqa: E402
from manual_ops.data import digits  # noqa: E402

SEEDS, EPOCHS, LR, BATCH = range(5), 6, 0.05, 64
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "training_curves.png")


def perturbed(model, seed):
    """``model`` with every weight multiplied by 1 +- 2^-24 (one float32 rounding step), signs at random."""
    gen = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 2.0 ** -24 * (torch.randint(0, 2, p.shape, generator=gen) * 2 - 1))
    return model


def train(model, loss_fn, data, seed):
    """SGD with momentum; the batch order depends on ``seed`` only. Returns test accuracy per epoch."""
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    order = torch.Generator().manual_seed(seed)
    accuracy = []
    for _ in range(EPOCHS):
        model.train()
        for idx in torch.randperm(len(data.train_x), generator=order).split(BATCH):
            loss = loss_fn(model(data.train_x[idx]), data.train_y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            accuracy.append((model(data.test_x).argmax(1) == data.test_y).float().mean().item())
    return accuracy


def main():
    torch.set_num_threads(1)  # small layers: one thread is fastest, and the runs are reproducible
    data = digits()
    runs = {"built-in": [], "manual_ops": [], "control": []}
    for seed in SEEDS:
        torch.manual_seed(seed)
        builtin = models.resnet_small(in_channels=1, num_classes=10, input_size=8)
        manual = manual_ops.convert(copy.deepcopy(builtin))
        control = perturbed(copy.deepcopy(builtin), seed)
        runs["built-in"].append(train(builtin, torch.nn.CrossEntropyLoss(), data, seed))
        runs["manual_ops"].append(train(manual, mnn.CrossEntropyLoss(), data, seed))
        runs["control"].append(train(control, torch.nn.CrossEntropyLoss(), data, seed))
        print(f"seed {seed}: final test accuracy " + ", ".join(f"{k} {v[-1][-1]:.4f}" for k, v in runs.items()),
              flush=True)
    acc = {k: 100 * np.array(v) for k, v in runs.items()}  # (seeds, epochs), percent
    epochs = np.arange(1, EPOCHS + 1)

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    styles = {"built-in": ("C0", "-", "built-in torch.nn layers"),
              "manual_ops": ("C1", "--", "manual_ops (hand-written backward)"),
              "control": ("C2", ":", "built-in, init moved by one rounding step")}
    for key, (color, ls, label) in styles.items():
        left.plot(epochs, acc[key].mean(0), color=color, ls=ls, lw=2, label=label)
        left.fill_between(epochs, acc[key].min(0), acc[key].max(0), color=color, alpha=0.15)
    left.set(xlabel="epoch", ylabel="test accuracy (%)", xticks=epochs,
             title=f"small ResNet on digits: mean and range over {len(SEEDS)} seeds")
    left.legend(loc="lower right")
    for key, offset in (("manual_ops", -0.1), ("control", 0.1)):
        color, _, label = styles[key]
        gap = np.abs(acc[key] - acc["built-in"])
        right.scatter(np.repeat(epochs, len(SEEDS)) + offset, gap.T.ravel(), color=color, s=18, alpha=0.7,
                      label=f"|{'manual_ops' if key == 'manual_ops' else 'control'} - built-in|")
        right.plot(epochs + offset, gap.mean(0), color=color, lw=1.5)
    right.set(xlabel="epoch", ylabel="test-accuracy gap to the built-in (points)", xticks=epochs,
              title="manual_ops differs from built-in as built-in differs from itself")
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    final = {k: v[:, -1] for k, v in acc.items()}
    print(f"final test accuracy over seeds {list(SEEDS)}:")
    for k, v in final.items():
        print(f"  {k:<11} mean {v.mean():.2f}%  range {v.min():.2f}..{v.max():.2f}")
    print(f"  mean |manual - built-in| {np.abs(final['manual_ops'] - final['built-in']).mean():.2f} points, "
          f"mean |control - built-in| {np.abs(final['control'] - final['built-in']).mean():.2f} points")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
