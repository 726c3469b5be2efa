"""Reading a run folder (its config, data split and checkpoints) and computing, and caching, its per-exit
logits, for evaluation and export alike. The layout is :mod:`tf_fusionnet.runs.folder`'s."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
import zipfile
from typing import Any

import numpy as np

from tf_fusionnet.data.image_size import parse_image_size
from tf_fusionnet.data.sources import ImageDataset, load_dataset, source_fingerprint
from tf_fusionnet.data.split import SPLIT_FILE, load_split
from tf_fusionnet.runtime.portable import sha256_file
from tf_fusionnet.utils import atomic_path

# Bumped whenever what the cache holds, or how it is computed, changes.
LOGITS_CACHE_VERSION = 2

CHECKPOINTS = {"model": "model.keras", "best": "best.keras"}


class RunError(ValueError):
    """A run directory that cannot be evaluated; the message is for the user."""


@dataclasses.dataclass
class Run:
    run_dir: str
    config: dict[str, Any]
    preprocessing: dict[str, Any]

    @property
    def preset(self) -> str:
        return self.config["preset"]

    @property
    def exit_macs(self) -> list[int]:
        return list(self.config["exit_macs"])

    @property
    def eval_dir(self) -> str:
        return os.path.join(self.run_dir, "eval")

    def checkpoint_path(self, checkpoint: str = "model") -> str:
        if checkpoint not in CHECKPOINTS:
            raise RunError(f"--checkpoint must be one of {sorted(CHECKPOINTS)}, got {checkpoint!r}")
        return os.path.join(self.run_dir, CHECKPOINTS[checkpoint])


def _read_json(path: str, what: str) -> dict[str, Any]:
    from tf_fusionnet.runs.folder import read_run_json

    try:
        return read_run_json(path)
    except FileNotFoundError:
        raise RunError(f"{path}: missing; is this a run directory written by train.py? ({what})") from None
    except (OSError, ValueError) as error:
        raise RunError(f"{path}: unreadable ({error})") from None


def load_run(run_dir: str) -> Run:
    if not os.path.isdir(run_dir):
        raise RunError(f"{run_dir}: no such run directory")
    config = _read_json(os.path.join(run_dir, "config.json"), "config")
    preprocessing = _read_json(os.path.join(run_dir, "preprocessing.json"), "normalisation")
    for key in ("preset", "exit_macs", "model_config", "train"):
        if key not in config:
            raise RunError(f"{run_dir}/config.json lacks {key!r}")
    return Run(run_dir, config, preprocessing)


def load_run_data(run: Run, dataset: str | None = None) -> tuple[ImageDataset, np.ndarray, np.ndarray]:
    """The run's dataset (or ``dataset`` instead) and its stored train/validation split."""
    train_config = run.config["train"]
    spec = dataset or train_config["dataset"]
    data = load_dataset(spec, train_config.get("tfds_data_dir") or None, parse_image_size(train_config.get("image_size") or ""),
                        channels=int(train_config.get("channels", 0)))
    train_idx, val_idx = load_split(os.path.join(run.run_dir, SPLIT_FILE), data)
    if list(data.image_shape) != list(run.preprocessing["image_shape"]):
        raise RunError(f"{spec}: images are {data.image_shape}, the run was trained on "
                       f"{tuple(run.preprocessing['image_shape'])}")
    return data, train_idx, val_idx


def _load_with_legacy_layer_names(path: str):
    """The model of a file saved under layer names since renamed (see
    :mod:`tf_fusionnet.models.legacy_weights`), or None if that is not why it failed to load."""
    import tempfile

    import keras

    from tf_fusionnet.models.legacy_weights import renamed_copy

    with tempfile.TemporaryDirectory(prefix="tf_fusionnet_legacy_") as tmp:
        try:
            copy = renamed_copy(path, tmp)
            return None if copy is None else keras.saving.load_model(copy, safe_mode=True, compile=False)
        except Exception:
            return None


def load_checkpoint(run: Run, checkpoint: str = "model"):
    """Loads a run's model and checks it is the architecture the run describes."""
    import keras

    import tf_fusionnet.models  # noqa: F401  (registers the classes for safe_mode loading)

    path = run.checkpoint_path(checkpoint)
    if not os.path.exists(path):
        raise RunError(f"{path}: missing (has the run finished an epoch?)")
    if not os.path.isfile(path) or not zipfile.is_zipfile(path):
        raise RunError(f"{path}: corrupt or not a Keras model file (a .keras file is a zip archive)")
    # Keras warns about every group it cannot match before it fails; those warnings are shown
    # only if the file is not one the legacy-name path below reads.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            # compile=False: evaluation needs no optimizer (nor the training package's TorchSGD).
            model, failure = keras.saving.load_model(path, safe_mode=True, compile=False), None
        except Exception as error:
            model, failure = _load_with_legacy_layer_names(path), error
    if model is None or failure is None:
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if model is None:
        raise RunError(f"{path}: not a loadable Keras model ({str(failure).splitlines()[0][:200]})") from None
    # A run written before an architecture argument existed was built with its legacy value.
    saved = {**getattr(type(model), "_LEGACY_DEFAULTS", {}), **run.config["model_config"]}
    expected = {k: v for k, v in saved.items() if k not in ("name", "trainable")}
    actual = {k: v for k, v in model.get_config().items() if k not in ("name", "trainable")}
    if type(model).__name__ != run.config.get("model_class", type(model).__name__) or actual != expected:
        raise RunError(f"{path}: this checkpoint is not the {run.preset!r} model of {run.run_dir} "
                       "(architecture differs from config.json)")
    return model


def eval_results(run_dir: str, name: str, checkpoint_path: str) -> dict[str, Any] | None:
    """``RUN/eval/NAME.json`` as evaluate.py wrote it, if it measured the checkpoint now at
    ``checkpoint_path`` (its recorded ``checkpoint_sha256``), else None.

    evaluate.py run while training goes on measures that epoch's checkpoint; read later, beside a
    newer checkpoint, its numbers would be taken for the newer model's (load_model's test top-1,
    a preset's, a model card's). Results written before the digest was recorded count as stale."""
    from tf_fusionnet.utils import read_json_limited

    try:
        results = read_json_limited(os.path.join(run_dir, "eval", f"{name}.json"))
        current = sha256_file(checkpoint_path)
    except (OSError, ValueError):
        return None
    if not isinstance(results, dict) or results.get("checkpoint_sha256") != current:
        return None
    return results


def logits_cache_key(run: Run, checkpoint_path: str, dataset: str | None = None,
                     data: ImageDataset | None = None, val_idx: np.ndarray | None = None) -> str:
    """A digest of everything the cached logits depend on (see :func:`run_logits`).

    The data enters as the sha256 of its source bytes (archive or folder), with the loader
    settings that turn them into arrays; for a tensorflow-datasets name, which has no local
    bytes to hash, as a digest of the evaluated arrays themselves (``data`` and ``val_idx``).
    """
    train_config = run.config["train"]
    spec = dataset or train_config["dataset"]
    source = source_fingerprint(spec)
    if source is None:
        if data is None:
            raise ValueError("a tensorflow-datasets source is fingerprinted from its arrays: pass data")
        digest = hashlib.sha256()
        for array in (data.train_images[val_idx], data.train_labels[val_idx], data.test_images, data.test_labels):
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(array.tobytes() if array.size == 0 else memoryview(array).cast("B"))
        source = "arrays:" + digest.hexdigest()
    parts = {
        "version": LOGITS_CACHE_VERSION,
        "checkpoint": sha256_file(checkpoint_path),
        "split": sha256_file(os.path.join(run.run_dir, SPLIT_FILE)),
        "data": source,
        "loader": {"image_size": train_config.get("image_size") or "", "channels": int(train_config.get("channels", 0))},
        "preprocessing": {k: run.preprocessing.get(k) for k in ("mean", "std", "image_shape")},
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def run_logits(
    run: Run,
    checkpoint: str = "model",
    batch_size: int = 500,
    dataset: str | None = None,
    verbose: Any = "auto",
    loaded: tuple | None = None,
) -> dict[str, np.ndarray]:
    """Per-exit logits on validation and test, cached in ``RUN/eval/logits_<checkpoint>.npz``.

    The cache key covers everything the logits depend on (:func:`logits_cache_key`): the
    checkpoint's and the split file's sha256, the sha256 of the data's source bytes (so
    ``--dataset OTHER`` is never served the run's own numbers) with the loader settings, the
    normalisation, and :data:`LOGITS_CACHE_VERSION`. A cache hit loads neither the data nor
    the model. An unreadable cache is rebuilt, and says so. ``loaded``: ``(data, val_indices, model)`` a caller already has, so a cache
    miss does not decode the dataset or load the checkpoint a second time.

    Returns a dict with ``val_logits``, ``test_logits`` (K, N, C) and
    ``val_labels``, ``test_labels`` (N,).
    """
    path = run.checkpoint_path(checkpoint)
    if not os.path.exists(path):
        raise RunError(f"{path}: missing (has the run finished an epoch?)")
    data, val_idx = (loaded[0], loaded[1]) if loaded is not None else (None, None)
    spec = dataset or run.config["train"]["dataset"]
    if data is None and source_fingerprint(spec) is None:  # tfds: fingerprinted from the arrays
        data, _, val_idx = load_run_data(run, dataset)
    key = logits_cache_key(run, path, dataset, data, val_idx)
    cache = os.path.join(run.eval_dir, f"logits_{checkpoint}.npz")
    if os.path.exists(cache):
        try:
            with np.load(cache) as stored:
                if str(stored["key"]) == key:
                    return {k: stored[k] for k in ("val_logits", "test_logits", "val_labels", "test_labels")}
        except Exception as error:  # truncated zip, bad pickle-free npz, missing arrays, ...
            print(f"{cache}: unreadable evaluation cache ({type(error).__name__}); computing the logits again",
                  flush=True)

    from tf_fusionnet.data.pipeline import make_eval_dataset

    if data is None:
        data, _, val_idx = load_run_data(run, dataset)
    model = load_checkpoint(run, checkpoint) if loaded is None else loaded[2]
    mean, std = run.preprocessing["mean"], run.preprocessing["std"]

    def predict(images):
        if len(images) == 0:
            return np.zeros((len(model.outputs), 0, model.outputs[0].shape[-1]), np.float32)
        ds = make_eval_dataset(images, None, batch_size=batch_size, mean=mean, std=std)
        return np.stack([np.asarray(o) for o in model.predict(ds, verbose=verbose)])

    result = {
        "val_logits": predict(data.train_images[val_idx]),
        "test_logits": predict(data.test_images),
        "val_labels": data.train_labels[val_idx],
        "test_labels": data.test_labels,
    }
    for split in ("val", "test"):
        bad = ~np.isfinite(result[f"{split}_logits"])
        if bad.any():  # a diverged model: no accuracy or ECE of it means anything
            exits = sorted({int(k) + 1 for k in np.nonzero(bad.any(axis=(1, 2)))[0]})
            raise RunError(f"{path}: the model's outputs are not finite (NaN or inf) on {int(bad.any(axis=2).sum())} "
                           f"{split} images at exit(s) {', '.join(map(str, exits))}; it diverged in training, so "
                           "there is nothing to evaluate or export")
    os.makedirs(run.eval_dir, exist_ok=True)
    with atomic_path(cache) as tmp:
        np.savez_compressed(tmp, key=np.array(key), **result)
    return result
