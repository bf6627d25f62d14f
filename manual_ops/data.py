"""Datasets for ``python -m manual_ops train``: scikit-learn's bundled digits, or CIFAR-10 python pickles."""
import os
import pickle
from dataclasses import dataclass

import numpy as np
import torch

CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]

# The only globals a CIFAR-10 python batch (a dict of bytes, str, int lists and numpy arrays) refers to:
# an ndarray's pickle (numpy 1.x's and 2.x's module names; protocol 5 rebuilds it from a buffer), and
# Python 3's protocol-2 pickle of bytes. Dicts, lists, str, bytes and ints need none.
CIFAR_GLOBALS = {
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class DataError(Exception):
    """A data source that is missing, incomplete or unreadable; the message is one line for the user."""


@dataclass
class Dataset:
    name: str
    train_x: torch.Tensor  # (N, C, H, W) float32, standardised per channel with the training statistics
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.train_x.shape[2:])


def _standardise(train_x, test_x):
    mean = train_x.mean(axis=(0, 2, 3), keepdims=True)
    std = train_x.std(axis=(0, 2, 3), keepdims=True) + 1e-8
    return [torch.from_numpy(((x - mean) / std).astype(np.float32)) for x in (train_x, test_x)]


def digits() -> Dataset:
    """scikit-learn's 1797 8x8 handwritten digits (no download), split 75/25 stratified with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = bunch.images.astype(np.float64)[:, None] / 16.0
    train_x, test_x, train_y, test_y = train_test_split(x, bunch.target, test_size=0.25, random_state=0,
                                                        stratify=bunch.target)
    train_x, test_x = _standardise(train_x, test_x)
    return Dataset("digits", train_x, torch.from_numpy(train_y).long(), test_x, torch.from_numpy(test_y).long(), 10)


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds nothing but what a CIFAR-10 batch holds, as ``torch.load(weights_only=True)``
    builds nothing but tensors: a crafted file cannot run code. Any other global raises DataError."""

    def __init__(self, file, path):
        super().__init__(file, encoding="bytes")
        self.path = path

    def find_class(self, module, name):
        if (module, name) not in CIFAR_GLOBALS:
            raise DataError(f"refusing to load {module}.{name} from {self.path}: a CIFAR-10 batch holds only "
                            f"dicts, lists, bytes, str, ints and numpy arrays")
        return super().find_class(module, name)


def _read_cifar_batch(path):
    try:
        with open(path, "rb") as f:
            batch = _CifarUnpickler(f, path).load()
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
            raise ValueError(f"data of shape {data.shape} and labels of shape {labels.shape}")
    except (OSError, ImportError, pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError,
            AttributeError) as e:
        raise DataError(f"{path} is not a CIFAR-10 python batch ({type(e).__name__}: {e})") from None
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{path} has labels outside 0..9")
    return data.reshape(-1, 3, 32, 32).astype(np.float64) / 255.0, labels


def cifar10(folder: str) -> Dataset:
    """CIFAR-10 from the standard python pickles (``data_batch_1`` .. ``data_batch_5``, ``test_batch``) in ``folder``."""
    if not os.path.isdir(folder):
        raise DataError(f"cifar10: {folder} is not a folder")
    missing = [b for b in CIFAR_BATCHES if not os.path.isfile(os.path.join(folder, b))]
    if missing:
        raise DataError(f"cifar10: {folder} lacks {', '.join(missing)} (needs data_batch_1..5 and test_batch)")
    parts = [_read_cifar_batch(os.path.join(folder, b)) for b in CIFAR_BATCHES]
    train_x = np.concatenate([x for x, _ in parts[:5]])
    train_y = np.concatenate([y for _, y in parts[:5]])
    (test_x, test_y) = parts[5]
    train_x, test_x = _standardise(train_x, test_x)
    return Dataset("cifar10", train_x, torch.from_numpy(train_y), test_x, torch.from_numpy(test_y), 10)


def load(spec: str) -> Dataset:
    """``'digits'`` or ``'cifar10:PATH'``; raises DataError with a one-line message otherwise."""
    if spec == "digits":
        return digits()
    if spec.startswith("cifar10:"):
        return cifar10(spec[len("cifar10:"):])
    raise DataError(f"unknown data {spec!r}; use 'digits' or 'cifar10:PATH'")
