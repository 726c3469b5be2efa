"""Weight files saved under layer names this code no longer uses, read again.

Keras 3 keys the weights in a ``.keras`` file (and a ``.weights.h5`` file) by the snake-case
class name of each layer, numbered in layer order: ``layers/batch_normalization_12/vars``.
From a5171dd (2026-11-25) to 1101940 (2026-12-01) the fused BatchNorm layer was a class named
``FusedBatchNormalization``, so the runs trained with those commits hold
``layers/fused_batch_normalization_12/vars``, which today's layer (named ``BatchNormalization``,
see :mod:`tf_fusionnet.models.layers`) does not find: Keras refuses the file ("129 objects could
not be loaded"). Every BatchNorm of those models was the fused layer, in the same order as
today, so renaming the groups is an exact mapping. Nothing is rewritten in place: the loader is
handed a renamed copy. Keras has no hook for renamed layer classes, hence this module.
"""

from __future__ import annotations

import os
import re
import shutil
import zipfile

RENAMED_LAYERS = {"fused_batch_normalization": "batch_normalization"}
_WEIGHTS_IN_KERAS_FILE = "model.weights.h5"


def _rename_groups(h5_path: str) -> bool:
    """Renames the legacy layer groups of an HDF5 weights file in place; False if it has none,
    or if it also holds groups under the new names (then the mapping would not be exact)."""
    import h5py

    with h5py.File(h5_path, "r+") as f:
        names: list[str] = []
        f.visit(names.append)
        groups = [n for n in names if isinstance(f[n], h5py.Group)]
        pattern = re.compile(r"^(%s)(_\d+)?$" % "|".join(map(re.escape, RENAMED_LAYERS)))
        legacy = [n for n in groups if pattern.match(n.rsplit("/", 1)[-1])]
        if not legacy:
            return False
        targets = set(RENAMED_LAYERS.values())
        if any(re.sub(r"_\d+$", "", n.rsplit("/", 1)[-1]) in targets for n in groups):
            return False
        for name in sorted(legacy, key=lambda n: -n.count("/")):  # deepest first: parents move last
            parent, _, base = name.rpartition("/")
            match = pattern.match(base)
            new_base = RENAMED_LAYERS[match.group(1)] + (match.group(2) or "")
            f.move(name, f"{parent}/{new_base}" if parent else new_base)
    return True


def renamed_copy(path: str, tmp_dir: str) -> str | None:
    """A copy of the ``.keras`` or ``.weights.h5`` file ``path`` in ``tmp_dir`` with the legacy
    layer names of :data:`RENAMED_LAYERS` replaced, or None if it holds none of them."""
    if os.path.samefile(os.path.dirname(os.path.abspath(path)), tmp_dir):
        raise ValueError("renamed_copy needs a folder other than the file's own")
    base = os.path.basename(path)
    if path.endswith(".weights.h5"):
        copy = os.path.join(tmp_dir, base)
        shutil.copyfile(path, copy)
        return copy if _rename_groups(copy) else None
    with zipfile.ZipFile(path) as archive:
        if _WEIGHTS_IN_KERAS_FILE not in archive.namelist():
            return None
        weights = os.path.join(tmp_dir, _WEIGHTS_IN_KERAS_FILE)
        with archive.open(_WEIGHTS_IN_KERAS_FILE) as src, open(weights, "wb") as dst:
            shutil.copyfileobj(src, dst)
        if not _rename_groups(weights):
            return None
        copy = os.path.join(tmp_dir, base if base.endswith(".keras") else base + ".keras")
        with zipfile.ZipFile(copy, "w", zipfile.ZIP_STORED) as out:
            for info in archive.infolist():
                if info.filename == _WEIGHTS_IN_KERAS_FILE:
                    out.write(weights, _WEIGHTS_IN_KERAS_FILE)
                else:
                    out.writestr(info, archive.read(info.filename))
    return copy
