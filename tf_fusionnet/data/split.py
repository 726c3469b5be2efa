"""The held-out validation split: drawn once by seed, written to the run, reused by evaluation."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from tf_fusionnet.data.sources import DataError, ImageDataset
from tf_fusionnet.utils import atomic_write_json

SPLIT_FILE = "split.json"


def default_val_size(data: ImageDataset) -> int:
    """5,000 for CIFAR (as MSDNet and the paper), 10% of the training images for folders."""
    n = len(data.train_labels)
    if data.kind == "cifar" and n > 10 * 5000 // 2:
        return 5000
    return n // 10


def data_fingerprint(images: np.ndarray, labels: np.ndarray) -> str:
    """sha256 of the training images and labels: detects a split applied to other data."""
    digest = hashlib.sha256()
    digest.update(str(images.shape).encode())
    digest.update(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def make_split(num_train: int, val_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint (train_indices, val_indices), both sorted, drawn by ``seed``."""
    if not 0 <= val_size < num_train:
        raise DataError(f"--val_size {val_size} must be in [0, {num_train - 1}] for {num_train} training images")
    order = np.random.default_rng(seed).permutation(num_train)
    return np.sort(order[val_size:]), np.sort(order[:val_size])


def save_split(path: str, data: ImageDataset, val_indices: np.ndarray, seed: int) -> None:
    atomic_write_json(
        path,
        {
            "seed": seed,
            "num_train_images": int(len(data.train_labels)),
            "val_indices": [int(i) for i in val_indices],
            "train_fingerprint": data_fingerprint(data.train_images, data.train_labels),
            "source": data.source,
        },
    )


def load_split(path: str, data: ImageDataset) -> tuple[np.ndarray, np.ndarray]:
    """Reads a split written by :func:`save_split` and checks it belongs to ``data``."""
    from tf_fusionnet.utils import read_json_limited

    try:
        split: dict[str, Any] = read_json_limited(path)
        val = np.asarray(split["val_indices"], dtype=np.int64)
        n = int(split["num_train_images"])
        fingerprint = split["train_fingerprint"]
    except (OSError, ValueError, KeyError, TypeError, OverflowError) as error:
        raise DataError(f"{path}: not a readable split file ({error})") from None
    if n != len(data.train_labels) or fingerprint != data_fingerprint(data.train_images, data.train_labels):
        raise DataError(
            f"{path}: the split was drawn on other training data ({n} images from "
            f"{split.get('source')!r}) than {data.source!r} ({len(data.train_labels)} images)"
        )
    if val.size and (val.min() < 0 or val.max() >= n):
        raise DataError(f"{path}: validation index out of range")
    train = np.setdiff1d(np.arange(n), val)
    return train, np.sort(val)
