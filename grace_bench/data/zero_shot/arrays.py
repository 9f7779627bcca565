"""Datasets stored as pixel arrays: CIFAR-10/100 (binary or python batches) and STL-10 (binary)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from grace_bench.data.zero_shot.safe_pickle import load_array_pickle
from grace_bench.errors import UserError


class ArrayImageDataset(Dataset):
    """In-memory uint8 images (N, H, W, 3) with labels; yields ``(transform(PIL image), label)``.

    Attributes as ``ImageFolderDataset`` where the harness reads them (``name``, ``root``, ``classes``,
    ``class_subset``, ``targets``, ``sample_ids``, ``unreadable``, ``skipped``, ``report()``).
    """

    def __init__(self, *, name: str, root: Path, images: np.ndarray, labels: Sequence[int], classes: Sequence[str],
                 transform: Callable, id_prefix: str) -> None:
        self.name, self.root, self.images = name, Path(root), images
        self.targets = [int(x) for x in labels]
        self.classes = tuple(classes)
        self.class_subset = None
        self.transform = transform
        self.sample_ids = [f"{id_prefix}/{i}" for i in range(len(self.targets))]
        self.unreadable: list = []
        self.skipped: list = []

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), self.targets[index]

    def report(self, max_paths: int = 20) -> dict:
        return {"root": str(self.root), "layout": "folders", "n": len(self.targets), "n_unreadable": 0,
                "n_skipped": 0, "n_empty_folders": 0}


def _check_labels(name: str, path: Path, labels: np.ndarray, n_classes: int, fix: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= n_classes):
        raise UserError(f"{name}: {path} has label {int(labels.max() if labels.max() >= n_classes else labels.min())}"
                        f" outside the {n_classes} class names in use; {fix}")


def _cifar_binary(path: Path, label_bytes: int, fix: str) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR's binary version: rows of ``label_bytes`` label bytes (the last is the class) + 3072 pixel bytes."""
    raw = np.fromfile(path, dtype=np.uint8)
    row = label_bytes + 3072
    if raw.size == 0 or raw.size % row:
        raise UserError(f"{path} holds {raw.size} bytes, not whole {row}-byte CIFAR records; {fix}")
    rows = raw.reshape(-1, row)
    return rows[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), rows[:, label_bytes - 1]


def _cifar_python(path: Path, label_key: str, fix: str) -> tuple[np.ndarray, np.ndarray]:
    batch = load_array_pickle(path, fix)
    data, labels = batch.get("data"), batch.get(label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise UserError(f"{path} has no uint8 'data' array of 3072-pixel rows; {fix}")
    labels = np.asarray(labels if isinstance(labels, (list, np.ndarray)) else [], dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise UserError(f"{path} has {labels.size} '{label_key}' labels for {data.shape[0]} images; {fix}")
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def load_cifar(key: str, folder: Path, classnames: Sequence[str], transform) -> ArrayImageDataset:
    """CIFAR-10/100 test set from torchvision's ``cifar-*-python`` (pickles read safely) or the binary version."""
    fix = f"re-extract the {key} test batch from the official archive (see docs/zero-shot-data.md)"
    files = {"cifar-10-batches-py": ("test_batch", "labels"), "cifar-100-python": ("test", "fine_labels"),
             "cifar-10-batches-bin": ("test_batch.bin", 1), "cifar-100-binary": ("test.bin", 2)}
    name, how = files[folder.name]
    path = folder / name
    if not path.is_file():
        raise UserError(f"{key}: {folder} has no {name}; {fix}")
    images, labels = _cifar_python(path, how, fix) if isinstance(how, str) else _cifar_binary(path, how, fix)
    _check_labels(key, path, labels, len(classnames), fix)
    return ArrayImageDataset(name=key, root=folder, images=np.ascontiguousarray(images), labels=labels,
                             classes=classnames, transform=transform, id_prefix=name)


def load_stl10(key: str, folder: Path, classnames: Sequence[str], transform) -> ArrayImageDataset:
    """STL-10 test set from ``stl10_binary/test_X.bin`` (column-major 96x96 images) and ``test_y.bin`` (1..10)."""
    fix = "re-extract stl10_binary.tar.gz (see docs/zero-shot-data.md)"
    x_path, y_path = folder / "test_X.bin", folder / "test_y.bin"
    for p in (x_path, y_path):
        if not p.is_file():
            raise UserError(f"{key}: {folder} has no {p.name}; {fix}")
    raw = np.fromfile(x_path, dtype=np.uint8)
    labels = np.fromfile(y_path, dtype=np.uint8).astype(np.int64) - 1
    per_image = 3 * 96 * 96
    if raw.size == 0 or raw.size % per_image or raw.size // per_image != labels.size:
        raise UserError(f"{key}: {x_path} holds {raw.size} bytes for {labels.size} labels, not {per_image} bytes "
                        f"per image; {fix}")
    images = raw.reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)  # stored (channel, x, y)
    _check_labels(key, y_path, labels, len(classnames), fix)
    return ArrayImageDataset(name=key, root=folder, images=np.ascontiguousarray(images), labels=labels,
                             classes=classnames, transform=transform, id_prefix="test_X.bin")
