"""A run's resume state in about a quarter of its size, for carrying unfinished runs through git.

``backup/latest.weights.h5`` (what Keras's ``BackupAndRestore`` resumes from) holds the model's
float32 variables and the optimizer's: SGD's momentum doubles the file (FusionNet: about 40 MB,
MSDNet about 50 MB). Committed at every carry, these files made up most of the repository's size.
:func:`compact_weights` keeps the same HDF5 layout but stores

* every float32 model variable as bfloat16 (its upper 16 bits, rounded to nearest even): a
  relative error of at most 2**-8 per weight;
* the optimizer's scalars (the step counter, hence the schedule's place; the learning rate)
  exactly, and its per-weight slots (SGD's momentum) as their shape only.

:func:`expand_weights` writes the full file back: float32 variables, momentum zero. A run resumed
from it continues at the same step of the same schedule; what it loses is the rounding and one
momentum warm-up (about 10 steps at momentum 0.9). ``benchmarks/cifar10_cpu30.py`` carries runs
this way at epoch boundaries; docs/training.md records what the carry cost in accuracy.

Written by hand on h5py (which Keras itself uses for ``.weights.h5``) because Keras has no
"weights without optimizer state, in a narrower type" save: ``save_weights`` writes every
variable as it is, and ``load_weights`` needs the optimizer's variables to be there.
"""

from __future__ import annotations

import os

import numpy as np

COMPACT_ATTR = "tf_fusionnet_compact"  # on a dataset: "bfloat16" (bits as uint16) or "zeros" (shape only)
FORMAT_ATTR = "tf_fusionnet_compact_format"


def to_bfloat16_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> the uint16 bits of the nearest bfloat16 (round half to even); finite values."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + np.uint32(0x7FFF)
    return ((bits + rounding) >> 16).astype(np.uint16)


def from_bfloat16_bits(bits: np.ndarray) -> np.ndarray:
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def compact_weights(source: str, dest: str) -> None:
    """Writes the compact form of a Keras ``.weights.h5`` (model and optimizer) to ``dest``."""
    import h5py

    from tf_fusionnet.utils import atomic_path

    with h5py.File(source, "r") as src, atomic_path(dest) as tmp, h5py.File(tmp, "w") as out:
        out.attrs[FORMAT_ATTR] = 1

        def copy(name: str, obj) -> None:
            if isinstance(obj, h5py.Group):
                group = out.require_group(name)
                group.attrs.update(dict(obj.attrs))
                return
            data = obj[()]
            in_optimizer = name.split("/", 1)[0] == "optimizer"
            if in_optimizer and np.size(data) > 1:
                ds = out.create_dataset(name, data=np.zeros(0, dtype=obj.dtype))
                ds.attrs[COMPACT_ATTR] = "zeros"
                ds.attrs["tf_fusionnet_shape"] = np.asarray(obj.shape, dtype=np.int64)
            elif not in_optimizer and obj.dtype == np.float32 and np.size(data) > 1:
                ds = out.create_dataset(name, data=to_bfloat16_bits(data), compression="gzip")
                ds.attrs[COMPACT_ATTR] = "bfloat16"
            else:
                ds = out.create_dataset(name, data=data)
            ds.attrs.update({k: v for k, v in obj.attrs.items()})

        out.attrs.update({k: v for k, v in src.attrs.items()})
        src.visititems(copy)


def is_compact(path: str) -> bool:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return FORMAT_ATTR in f.attrs
    except OSError:
        return False


def expand_weights(source: str, dest: str) -> None:
    """Writes the full ``.weights.h5`` that Keras loads from a file of :func:`compact_weights`."""
    import h5py

    from tf_fusionnet.utils import atomic_path

    if not is_compact(source):
        raise ValueError(f"{source}: not a compact weights file")
    with h5py.File(source, "r") as src, atomic_path(dest) as tmp, h5py.File(tmp, "w") as out:
        def copy(name: str, obj) -> None:
            if isinstance(obj, h5py.Group):
                out.require_group(name).attrs.update(dict(obj.attrs))
                return
            kind = obj.attrs.get(COMPACT_ATTR)
            if kind == "zeros":
                data = np.zeros(tuple(int(v) for v in obj.attrs["tf_fusionnet_shape"]), dtype=obj.dtype)
            elif kind == "bfloat16":
                data = from_bfloat16_bits(obj[()])
            else:
                data = obj[()]
            ds = out.create_dataset(name, data=data)
            ds.attrs.update({k: v for k, v in obj.attrs.items() if k not in (COMPACT_ATTR, "tf_fusionnet_shape")})

        out.attrs.update({k: v for k, v in src.attrs.items() if k != FORMAT_ATTR})
        src.visititems(copy)


def file_megabytes(path: str) -> float:
    return os.path.getsize(path) / 2**20


__all__ = ["compact_weights", "expand_weights", "from_bfloat16_bits", "is_compact", "to_bfloat16_bits"]
