"""One call to load any model this project saves: a run folder, a preset folder or a ``.keras`` file.

``keras.saving.load_model(PATH)`` works too once ``tf_fusionnet`` is imported (the package
registers its classes with Keras when Keras loads), but it returns what the file holds: a run's
``model.keras`` is the bare network, which reads images *normalised* with the mean and std of
the run's ``preprocessing.json``. :func:`load_model` returns a
:class:`~tf_fusionnet.models.pixels.PixelClassifier` instead wherever the normalisation is known,
so the model reads the 0-255 pixels a user has.
"""

from __future__ import annotations

import json
import os
from typing import Any


class LoadError(ValueError):
    """A path this loader cannot read as a model; the message is for the user."""


def load_model(path: str, checkpoint: str = "model", compile: bool = False, pixels: bool = True):
    """Loads a trained or saved model.

    Args:
        path: a ``train.py`` run folder (its ``model.keras``, or ``best.keras`` with
            ``checkpoint="best"``), a preset folder (``save_to_preset``), or a ``.keras`` file.
        checkpoint: ``"model"`` (last epoch) or ``"best"``, for a run folder.
        compile: also restore the optimizer and losses (to go on training with ``fit``); the
            compiled network is returned as saved, reading normalised images.
        pixels: return the model behind its normalisation (reads 0-255 pixels) where the
            normalisation is known; False returns the bare network.

    Returns:
        A :class:`~tf_fusionnet.models.pixels.PixelClassifier` (``.network`` is the bare
        network; ``.class_names``; ``.preset_metadata`` holds the run's recipe and test top-1
        per exit) or a bare multi-exit network.

    Example:
    ```python
    import tf_fusionnet
    model = tf_fusionnet.load_model("runs/fusionnet-cifar")
    logits_per_exit = model.predict(uint8_images)
    model.save_to_preset("presets/my-fusionnet")
    ```
    """
    from tf_fusionnet.models.pixels import PixelClassifier
    from tf_fusionnet.models.preset_files import is_preset_dir, load_preset, not_a_preset_reason

    from tf_fusionnet.presets import trained_presets

    if not os.path.exists(path) and path in trained_presets():  # a shipped trained preset, by name
        from tf_fusionnet.models.preset_files import PresetError

        try:
            model = load_preset(path)
        except PresetError as error:
            raise LoadError(str(error)) from None
        return model.network if not pixels and isinstance(model, PixelClassifier) else model
    if not os.path.exists(path):
        from tf_fusionnet.presets import PRESETS

        if path in PRESETS:  # an architecture's name: it has no trained weights to load
            raise LoadError(f"{path}: no such file or folder; {path!r} names an architecture without trained "
                            f"weights: build it with tf_fusionnet.{PRESETS[path]['class']}.from_preset({path!r})")
        raise LoadError(f"{path}: no such file or folder")
    refused = not_a_preset_reason(path) if os.path.isdir(path) else None
    if refused:
        raise LoadError(refused)
    if os.path.isdir(path) and is_preset_dir(path):
        model = load_preset(path)
        return model.network if not pixels and isinstance(model, PixelClassifier) else model
    if os.path.isdir(path):
        from tf_fusionnet.runs.reading import RunError, load_checkpoint, load_run

        try:
            run = load_run(path)
            model_path = run.checkpoint_path(checkpoint)
            network = _load_keras_file(model_path, compile) if compile else load_checkpoint(run, checkpoint)
        except RunError as error:
            raise LoadError(str(error)) from None
        if compile or not pixels:
            return network
        return _with_pixels(network, run.preprocessing, run.config, path, model_path)
    network = _load_keras_file(path, compile)
    run_dir = os.path.dirname(os.path.abspath(path))
    preprocessing = _read_json(os.path.join(run_dir, "preprocessing.json"))
    if compile or not pixels or preprocessing is None:
        return network
    return _with_pixels(network, preprocessing, _read_json(os.path.join(run_dir, "config.json")) or {}, run_dir, path)


def _with_pixels(network, preprocessing: dict, config: dict, run_dir: str, checkpoint_path: str):
    from tf_fusionnet.models.pixels import PixelClassifier
    from tf_fusionnet.runs.reading import eval_results

    model = PixelClassifier(network, preprocessing["mean"], preprocessing["std"], preprocessing.get("class_names"))
    anytime = eval_results(run_dir, "anytime", checkpoint_path)  # None unless it measured this checkpoint
    model.preset_metadata = {
        "preset": config.get("preset"),
        "train": config.get("train"),
        "dataset_source": preprocessing.get("dataset_source"),
        "test_top1_per_exit": [e["top1"] for e in anytime["exits"]] if anytime else None,
    }
    return model


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _load_keras_file(path: str, compile: bool):
    """``keras.saving.load_model`` with safe_mode, and the legacy-layer-name fallback of old runs."""
    import keras

    import tf_fusionnet.models  # noqa: F401  (registers the classes)
    import tf_fusionnet.training.optimizers  # noqa: F401  (a compiled run's TorchSGD)

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=compile)
    except Exception as error:
        from tf_fusionnet.runs.reading import _load_with_legacy_layer_names

        model = None if compile else _load_with_legacy_layer_names(path)
        if model is None:
            raise LoadError(f"{path}: not a loadable Keras model ({str(error).splitlines()[0][:200]})") from None
        return model


def preset_as_run(preset_dir: str, run_dir: str, dataset: str | None = None) -> str:
    """Writes a run folder for a trained preset, so the run-based tools (export) read it.

    The run's data is ``dataset``; without it, the dataset the preset's run recorded only where
    that is a name (sample, cifar10, cifar100): a preset is a file someone hands over, and a path
    in it is never read (it could name any folder on this machine). All of the data's training
    images are the training split (a preset keeps no validation split), so budget thresholds
    come from training images (``--thresholds_from train``) or are left out.
    """
    from tf_fusionnet.data.sources import load_dataset
    from tf_fusionnet.data.split import SPLIT_FILE, save_split
    from tf_fusionnet.models.pixels import PixelClassifier
    from tf_fusionnet.models.preset_files import load_preset, preset_metadata
    from tf_fusionnet.utils import atomic_write_json

    model = load_preset(preset_dir)
    if not isinstance(model, PixelClassifier):
        raise LoadError(f"{preset_dir}: an untrained architecture (no normalisation); only a trained preset "
                        "(save_to_preset of a loaded run) can be exported")
    metadata = {**preset_metadata(model), **model.preset_metadata}
    train = dict(metadata.get("train") or {})
    recorded = train.get("dataset") or "sample"
    if not dataset and recorded not in ("sample", "cifar10", "cifar100"):
        raise LoadError(f"{preset_dir}: trained on {os.path.basename(str(recorded))!r}, a file a preset may not point "
                        "this tool to; pass --dataset with your copy of that data")
    train["dataset"] = dataset or recorded
    data = load_dataset(train["dataset"], train.get("tfds_data_dir") or None,
                        tuple(int(v) for v in train["image_size"].split(",")) if train.get("image_size") else None,
                        channels=int(train.get("channels", 0)))
    if list(data.image_shape) != list(metadata["image_shape"]) or data.num_classes != metadata["num_classes"]:
        raise LoadError(f"{train['dataset']}: images {data.image_shape} in {data.num_classes} classes; the preset "
                        f"reads {tuple(metadata['image_shape'])} in {metadata['num_classes']} classes")
    os.makedirs(run_dir, exist_ok=True)
    network = model.network
    atomic_write_json(os.path.join(run_dir, "config.json"), {
        "train": train, "preset": metadata.get("preset") or type(network).__name__,
        "model_class": type(network).__name__, "model_config": network.get_config(),
        "num_classes": metadata["num_classes"], "exit_macs": metadata["exit_macs"], "from_preset": preset_dir})
    atomic_write_json(os.path.join(run_dir, "preprocessing.json"), {
        "image_shape": metadata["image_shape"], "mean": model.mean, "std": model.std,
        "class_names": model.class_names or data.class_names, "dataset_source": data.source})
    save_split(os.path.join(run_dir, SPLIT_FILE), data, [], seed=0)
    network.save(os.path.join(run_dir, "model.keras"))
    return run_dir


def register_keras_objects() -> None:
    """Registers every class this project saves with Keras (imports the models and optimizers)."""
    import tf_fusionnet.data.pipeline  # noqa: F401  (BetaCutMix)
    import tf_fusionnet.models  # noqa: F401
    import tf_fusionnet.training.optimizers  # noqa: F401


__all__ = ["LoadError", "load_model", "preset_as_run", "register_keras_objects"]
