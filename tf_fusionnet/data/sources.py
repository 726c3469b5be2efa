"""Loading image classification data into memory as uint8 arrays.

Sources, by ``--dataset`` value:

* ``sample``: the real CIFAR-10 images shipped in the package (offline default).
* ``cifar10`` / ``cifar100``: tensorflow-datasets (download or its cache).
* a path to a local copy: the official CIFAR archives (binary or python
  format, ``.tar.gz`` or extracted), or an image folder laid out as
  ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*`` (also as a tarball).

Why not ``keras.utils.image_dataset_from_directory``: it always resizes to a
fixed size, fails mid-epoch on an unreadable file, and its validation split is
not a list we can write down and reuse. We decode once with Pillow (the same
decoder as the on-device runner), check everything up front and hold the
arrays in memory, which suits CIFAR-sized data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import tarfile
from typing import Sequence

import numpy as np

from tf_fusionnet.data.safe_pickle import UnsafePickleError, safe_load_cifar_pickle
from tf_fusionnet.runtime.portable import (
    CHANNEL_MODES,
    display_name,
    IMAGE_EXTENSIONS,
    ImageModeError,
    image_to_array,
    majority_channels,
    natural_channels,
    sha256_file,
)

SAMPLE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar10_sample")
CIFAR10_CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
]


class DataError(ValueError):
    """Bad or missing input data; its message is meant for the user as is."""


@dataclasses.dataclass
class ImageDataset:
    """A whole dataset in memory: uint8 images (N, H, W, C) and int64 labels (N,)."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    source: str
    kind: str  # "cifar" or "folder": picks the default validation size
    notes: list[str] = dataclasses.field(default_factory=list)  # one line each, for the user

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.train_images.shape[1:])  # type: ignore[return-value]


# --------------------------------------------------------------------------- files


# The largest file the loader reads into memory: a CIFAR batch is 31 MB, an image a few MB. A
# member's size is its header's (for a tar) or the file's, checked before anything is read: a
# 13 KB archive can declare a sparse 4 GB member.
MAX_MEMBER_BYTES = 256 * 2**20
# The largest image the loader or runner decodes, from the image's header before decoding:
# a 140 KB PNG can declare 12000 x 12000 pixels (1.6 GB decoded).
MAX_IMAGE_PIXELS = 40_000_000


class _Files:
    """Read-only view of a folder or a tar archive: relative names -> bytes."""

    def __init__(self, path: str):
        self.path = path
        self._tar = None
        if os.path.isdir(path):
            names = []
            for root, _, files in os.walk(path):
                for f in files:
                    names.append(os.path.relpath(os.path.join(root, f), path).replace(os.sep, "/"))
            self.names = sorted(names)
        else:
            if not os.path.isfile(path):  # a FIFO or a device would block tarfile forever
                raise DataError(f"{path}: not a folder or a regular file")
            try:
                self._tar = tarfile.open(path)
            except (tarfile.TarError, OSError) as error:
                raise DataError(f"{path}: not a folder or a readable tar archive ({error})") from None
            try:
                members = self._tar.getmembers()
            except (tarfile.TarError, OSError, EOFError) as error:
                raise DataError(f"{path}: truncated or corrupt archive ({error})") from None
            self._members = {m.name.lstrip("./"): m for m in members if m.isfile()}
            self.names = sorted(self._members)

    def size(self, name: str) -> int:
        if self._tar is None:
            return os.path.getsize(os.path.join(self.path, name))
        return int(self._members[name].size)

    def read(self, name: str) -> bytes:
        size = self.size(name)
        if size > MAX_MEMBER_BYTES:
            raise DataError(f"{self.path}: {display_name(name)} declares {size:,} bytes, more than the "
                            f"{MAX_MEMBER_BYTES:,} a file of a dataset may have")
        if self._tar is None:
            with open(os.path.join(self.path, name), "rb") as f:
                return f.read(MAX_MEMBER_BYTES + 1)
        try:
            extracted = self._tar.extractfile(self._members[name])
            if extracted is None:
                raise DataError(f"{self.path}: cannot read {name}")
            return extracted.read()
        except (tarfile.TarError, OSError, EOFError) as error:
            raise DataError(f"{self.path}: truncated or corrupt archive, cannot read {name} ({error})") from None

    def find(self, pattern: str) -> list[str]:
        regex = re.compile(pattern)
        return [n for n in self.names if regex.search(n)]


# --------------------------------------------------------------------------- CIFAR


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":  # 5.7 would become 5, "3" an error elsewhere
        raise DataError(f"{where}: labels are {labels.dtype}, expected integers")
    labels = labels.astype(np.int64)
    bad = labels[(labels < 0) | (labels >= num_classes)] if labels.size else labels
    if bad.size:
        raise DataError(f"{where}: label {int(bad[0])} out of range for {num_classes} classes")
    return labels


def _cifar_binary(files: _Files, train_names, test_names, label_bytes: int, num_classes: int):
    record = label_bytes + 3072

    def read(names):
        images, labels = [], []
        for name in names:
            raw = np.frombuffer(files.read(name), dtype=np.uint8)
            if raw.size == 0 or raw.size % record:
                raise DataError(f"{files.path}: {name} is not a CIFAR binary batch "
                                f"({raw.size} bytes is not a multiple of {record})")
            raw = raw.reshape(-1, record)
            labels.append(raw[:, label_bytes - 1])  # CIFAR-100: fine label is the 2nd byte
            images.append(raw[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        return np.concatenate(images), _check_labels(np.concatenate(labels), num_classes, f"{files.path}: {names[0]}")

    return read(train_names), read(test_names)


def _cifar_python(files: _Files, train_names, test_names, label_key: str, num_classes: int):
    def read(names):
        images, labels = [], []
        for name in names:
            try:
                batch = safe_load_cifar_pickle(files.read(name))
            except UnsafePickleError as error:
                raise DataError(f"{files.path}: {name}: {error}") from None
            except Exception as error:  # truncated or not a pickle at all
                raise DataError(f"{files.path}: {name} is not a CIFAR python batch ({error})") from None
            if "data" not in batch or label_key not in batch:
                raise DataError(f"{files.path}: {name} lacks 'data' or '{label_key}'")
            data = np.asarray(batch["data"])
            if data.dtype != np.uint8:  # floats in [0, 1] would become black, int16 would wrap
                raise DataError(f"{files.path}: {name}: data are {data.dtype}, expected uint8 pixels")
            if data.ndim != 2 or data.shape[1] != 3072:
                raise DataError(f"{files.path}: {name}: data of shape {data.shape}, expected (N, 3072)")
            batch_labels = np.asarray(batch[label_key])
            if batch_labels.ndim != 1 or len(batch_labels) != len(data):
                raise DataError(f"{files.path}: {name}: {batch_labels.size} labels for {len(data)} images")
            images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
            labels.append(batch_labels)
        return np.concatenate(images), _check_labels(np.concatenate(labels), num_classes, f"{files.path}: {names[0]}")

    return read(train_names), read(test_names)


def _cifar100_names(files: _Files, meta_pattern: str, key: str) -> list[str]:
    meta = files.find(meta_pattern)
    if meta:
        try:
            if meta[0].endswith(".txt"):
                return [l.strip() for l in files.read(meta[0]).decode().splitlines() if l.strip()]
            names = safe_load_cifar_pickle(files.read(meta[0])).get(key)
            if names:
                return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
        except (UnsafePickleError, UnicodeDecodeError):
            pass
    return [str(i) for i in range(100)]


def _cifar_files(files: _Files, train_pattern: str, test_pattern: str, missing_test: str) -> tuple[list, list]:
    """The train and test files of one CIFAR layout (both empty if it is not that layout)."""
    train = files.find(train_pattern)
    if not train:
        return [], []
    test = files.find(test_pattern)
    if not test:
        raise DataError(f"{files.path}: {missing_test}")
    return train, test


def _try_cifar(files: _Files) -> ImageDataset | None:
    """Recognises the four official CIFAR layouts; None if none matches."""
    def dataset(splits, names):
        (xtr, ytr), (xte, yte) = splits
        return ImageDataset(xtr, ytr, xte, yte, names, files.path, "cifar")

    train, test = _cifar_files(files, r"(^|/)data_batch_[1-5]\.bin$", r"(^|/)test_batch\.bin$",
                               "CIFAR-10 binary batches without test_batch.bin")
    if train:
        return dataset(_cifar_binary(files, train, test, 1, 10), list(CIFAR10_CLASSES))
    train, test = _cifar_files(files, r"(^|/)train\.bin$", r"(^|/)test\.bin$",
                               "CIFAR-100 binary train.bin without test.bin")
    if train:
        return dataset(_cifar_binary(files, train, test, 2, 100),
                       _cifar100_names(files, r"(^|/)fine_label_names\.txt$", ""))
    train, test = _cifar_files(files, r"(^|/)data_batch_[1-5]$", r"(^|/)test_batch$",
                               "CIFAR-10 python batches without test_batch")
    if train:
        return dataset(_cifar_python(files, train, test, "labels", 10), list(CIFAR10_CLASSES))
    py100 = [n for n in files.find(r"(^|/)train$") if files.find(re.escape(n[:-5]) + "meta$")]
    if py100:
        prefix = py100[0][:-5]
        test = [n for n in files.find(r"(^|/)test$") if n.startswith(prefix)]
        if not test:
            raise DataError(f"{files.path}: CIFAR-100 python 'train' without 'test'")
        return dataset(_cifar_python(files, py100[:1], test[:1], "fine_labels", 100),
                       _cifar100_names(files, re.escape(prefix) + "meta$", "fine_label_names"))
    return None


# --------------------------------------------------------------------------- folders


def _natural_channels(files: _Files, name: str) -> int:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(files.read(name))) as img:
            return natural_channels(img.mode, "transparency" in img.info)
    except ImageModeError as error:
        raise DataError(f"{files.path}: {name}: {error}") from None
    except DataError:
        raise
    except Exception as error:  # Pillow raises many kinds (UnidentifiedImageError, DecompressionBombError, ...)
        raise DataError(f"{files.path}: cannot read image {name} ({error})") from None


def _decode_images(
    files: _Files, names: Sequence[str], image_size: tuple[int, int] | None, channels: int
) -> tuple[np.ndarray, int]:
    """Decodes ``names`` into uint8 (N, H, W, channels); returns them and how many were converted."""
    from PIL import Image
    from tqdm import tqdm

    arrays = []
    converted = 0
    # A bar on a terminal for the long reads (CIFAR's 60,000 images take tens of seconds); none in logs.
    for name in tqdm(names, desc="decoding", unit=" images", disable=None if len(names) > 2000 else True,
                     mininterval=1.0, leave=False):
        try:
            with Image.open(io.BytesIO(files.read(name))) as img:
                if img.size[0] * img.size[1] > MAX_IMAGE_PIXELS:  # the header's size, before decoding
                    raise DataError(f"{files.path}: {display_name(name)} declares {img.size[0]}x{img.size[1]} "
                                    f"pixels, more than {MAX_IMAGE_PIXELS:,}")
                img.load()
                if image_size is not None and img.size != (image_size[1], image_size[0]):
                    img = img.resize((image_size[1], image_size[0]), Image.BILINEAR)
                arr, was_converted = image_to_array(img, channels)
        except ImageModeError as error:
            raise DataError(f"{files.path}: {name}: {error}") from None
        except DataError:
            raise
        except Exception as error:  # Pillow raises many kinds (UnidentifiedImageError, DecompressionBombError, ...)
            raise DataError(f"{files.path}: cannot read image {name} ({error})") from None
        converted += was_converted
        if arrays and arr.shape != arrays[0].shape:
            raise DataError(
                f"{files.path}: {name} is {arr.shape[1]}x{arr.shape[0]}x{arr.shape[2]} but "
                f"{names[0]} is {arrays[0].shape[1]}x{arrays[0].shape[0]}x{arrays[0].shape[2]}; "
                "pass --image_size H,W to resize every image"
            )
        arrays.append(arr)
    return np.stack(arrays), converted


def _check_memory(num_images: int, image_size: tuple[int, int], channels: int, where: str) -> None:
    """Refuses a resize whose uint8 arrays would not fit in half of this machine's memory."""
    needed = num_images * image_size[0] * image_size[1] * channels
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if needed > available // 2:
        raise DataError(f"{where}: {num_images} images at {image_size[0]}x{image_size[1]}x{channels} need "
                        f"{needed / 2**30:.1f} GiB in memory, more than half of this machine's "
                        f"{available / 2**30:.0f} GiB; pass a smaller --image_size")


def _try_folder(files: _Files, image_size: tuple[int, int] | None, channels: int = 0) -> ImageDataset | None:
    pattern = re.compile(r"^(?:(.*)/)?(train|test)/([^/]+)/([^/]+)$")
    by_split: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    roots = set()
    for name in files.names:
        match = pattern.match(name)
        if match and match.group(4).lower().endswith(IMAGE_EXTENSIONS):
            roots.add(match.group(1))
            by_split[match.group(2)].setdefault(match.group(3), []).append(name)
    if not by_split["train"] and not by_split["test"]:
        return None
    if len(roots) > 1:
        raise DataError(f"{files.path}: several train/test roots found: {sorted(r or '.' for r in roots)}")
    for split in ("train", "test"):
        if not by_split[split]:
            raise DataError(f"{files.path}: no images under {split}/<class>/ "
                            f"(png/jpg/bmp/gif/webp); both train/ and test/ are needed")
    classes = sorted(by_split["train"])
    unknown = sorted(set(by_split["test"]) - set(classes))
    if unknown:
        raise DataError(f"{files.path}: test classes {unknown} have no training images")
    if len(classes) < 2:
        raise DataError(f"{files.path}: found {len(classes)} class under train/; need at least 2")

    def listing(split):
        names, labels = [], []
        for label, cls in enumerate(classes):
            for name in sorted(by_split[split].get(cls, [])):
                names.append(name)
                labels.append(label)
        return names, np.asarray(labels, dtype=np.int64)

    train_names, ytr = listing("train")
    test_names, yte = listing("test")
    print(f"{files.path}: {len(train_names):,} training and {len(test_names):,} test images of {len(classes)} "
          "classes (image folder); decoding", flush=True)
    # One channel count for the whole dataset: the training images' majority, unless given.
    chosen = channels or majority_channels(_natural_channels(files, n) for n in train_names)
    if image_size is not None:
        _check_memory(len(train_names) + len(test_names), image_size, chosen, files.path)
    xtr, converted_train = _decode_images(files, train_names, image_size, chosen)
    xte, converted_test = _decode_images(files, test_names, image_size, chosen)
    notes = []
    if converted_train or converted_test:
        notes.append(f"{files.path}: converted {converted_train} of {len(train_names)} training and "
                     f"{converted_test} of {len(test_names)} test images to {chosen} channel(s) "
                     f"({CHANNEL_MODES[chosen]}; {'--channels' if channels else 'the majority'})")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"{files.path}: train images are {xtr.shape[1:]} but test images are "
                        f"{xte.shape[1:]}; pass --image_size H,W to resize every image")
    return ImageDataset(xtr, ytr, xte, yte, classes, files.path, "folder", notes)


# --------------------------------------------------------------------------- tfds


CIFAR_DOWNLOAD_HOST = "www.cs.toronto.edu"
_LOCAL_COPY_HINT = (
    "Without network, point --dataset at a local copy: the official cifar-10/100 binary or "
    "python archive (.tar.gz or extracted folder), or an image folder ROOT/train/<class>/*, "
    "ROOT/test/<class>/*"
)


def _tfds_is_prepared(builder) -> bool:
    try:
        return bool(builder.is_prepared())
    except Exception:
        return False


def _can_reach(host: str, port: int = 443, timeout: float = 5.0) -> bool:
    """One quick TCP connection, so an offline machine fails in seconds, not minutes of retries."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _load_tfds(name: str, data_dir: str | None) -> ImageDataset:
    try:
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise DataError(f"--dataset {name} needs tensorflow-datasets ({error})") from None
    where = data_dir or "tfds' default data dir (~/tensorflow_datasets)"
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if not _tfds_is_prepared(builder) and not _can_reach(CIFAR_DOWNLOAD_HOST):
            raise DataError(
                f"{name} is not in {where} and {CIFAR_DOWNLOAD_HOST} cannot be reached (offline?). "
                f"{_LOCAL_COPY_HINT}"
            )
        builder.download_and_prepare()
        splits = tfds.as_numpy(builder.as_dataset(split=["train", "test"], batch_size=-1, as_supervised=True))
    except DataError:
        raise
    except Exception as error:  # network errors come in many types
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise DataError(
            f"could not load {name} with tensorflow-datasets (looked in {where}, then tried to "
            f"download: {reason[:200]}). {_LOCAL_COPY_HINT}"
        ) from None
    (xtr, ytr), (xte, yte) = splits
    names = builder.info.features["label"].names
    return ImageDataset(xtr, ytr.astype(np.int64), xte, yte.astype(np.int64), list(names), f"tfds:{name}", "cifar")


# --------------------------------------------------------------------------- entry


def source_fingerprint(dataset: str) -> str | None:
    """sha256 over the bytes of a local dataset: the archive, or every file under the folder
    (with its relative path). None for tensorflow-datasets names, which have no local path.

    Reading bytes is far cheaper than decoding them, so caches keyed on it need no data load.
    """
    path = SAMPLE_DIR if dataset == "sample" else dataset
    if dataset in ("cifar10", "cifar100") or not os.path.exists(path):
        return None
    digest = hashlib.sha256()
    if os.path.isfile(path):
        digest.update(sha256_file(path).encode())
        return digest.hexdigest()
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            digest.update(os.fsencode(os.path.relpath(full, path)) + b"\0" + sha256_file(full).encode())
    return digest.hexdigest()


def load_dataset(
    dataset: str = "sample",
    tfds_data_dir: str | None = None,
    image_size: tuple[int, int] | None = None,
    channels: int = 0,
) -> ImageDataset:
    """Loads a dataset by name or path (see the module docstring).

    Args:
        dataset: "sample", "cifar10", "cifar100" or a path to a local copy.
        tfds_data_dir: tensorflow-datasets data dir for "cifar10"/"cifar100".
        image_size: (height, width) to resize folder images to; None keeps
            them as they are (they must then all have one size).
        channels: channel count of an image folder (0: the training images'
            majority); every image is converted to it (``tf_fusionnet.portable``).
            CIFAR data is RGB and ignores it.

    Raises:
        DataError: with a message that says what was tried.
    """
    if channels not in (0, 1, 2, 3, 4):
        raise DataError(f"--channels must be 0 (majority), 1, 2, 3 or 4, got {channels}")
    if dataset == "sample":
        dataset = SAMPLE_DIR
    elif dataset in ("cifar10", "cifar100"):
        if channels not in (0, 3):
            raise DataError(f"--channels {channels}: {dataset} is RGB; --channels applies to image folders")
        data = _load_tfds(dataset, tfds_data_dir)
        return _resize_all(data, image_size)
    if not os.path.exists(dataset):
        raise DataError(
            f"--dataset {dataset!r}: no such file or folder (use sample, cifar10, cifar100 "
            "or a path to a local copy)"
        )
    files = _Files(dataset)
    data = _try_cifar(files)
    if data is not None:
        if channels not in (0, 3):
            raise DataError(f"--channels {channels}: {dataset} is a CIFAR archive (RGB); --channels applies "
                            "to image folders")
        return _resize_all(data, image_size)
    data = _try_folder(files, image_size, channels)
    if data is None:
        raise DataError(
            f"{dataset}: neither a CIFAR archive (binary or python format) nor an image folder "
            "with train/<class>/* and test/<class>/*"
        )
    return data


def _resize_all(data: ImageDataset, image_size: tuple[int, int] | None) -> ImageDataset:
    if image_size is None or tuple(data.image_shape[:2]) == tuple(image_size):
        return data
    # float32 during the resize: four times the uint8 result
    _check_memory(4 * (len(data.train_images) + len(data.test_images)), image_size, data.image_shape[2], data.source)
    import tensorflow as tf

    def resize(x):
        out = tf.image.resize(x, image_size, method="bilinear", antialias=True)
        return np.clip(np.round(out.numpy()), 0, 255).astype(np.uint8)

    return dataclasses.replace(data, train_images=resize(data.train_images), test_images=resize(data.test_images))
