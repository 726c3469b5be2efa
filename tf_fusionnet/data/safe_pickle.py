"""A restricted unpickler for the python-format CIFAR archives.

Pickles can run arbitrary code while loading, and the python-format CIFAR
files are pickles. This unpickler admits only the globals those files contain
(numpy arrays of bytes and ints inside plain dicts and lists); anything else is
refused before it can run.
"""

from __future__ import annotations

import codecs
import io
import pickle

import numpy as np

try:
    from numpy._core.multiarray import _reconstruct  # numpy >= 2
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(text, "latin1").
    ("_codecs", "encode"): codecs.encode,
}


class UnsafePickleError(ValueError):
    """A pickle asked for something a CIFAR file never contains."""


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in _ALLOWED:
            return _ALLOWED[key]
        raise UnsafePickleError(
            f"refused to unpickle {module}.{name}: not something a CIFAR archive contains"
        )


def safe_load_cifar_pickle(data: bytes) -> dict:
    """Loads one python-format CIFAR file (a dict) from its bytes, refusing anything else."""
    obj = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    if not isinstance(obj, dict):
        raise UnsafePickleError(f"expected a dict in a CIFAR pickle, got {type(obj).__name__}")
    # Python-2 pickles give bytes keys; normalise to str.
    return {(k.decode() if isinstance(k, bytes) else k): v for k, v in obj.items()}
