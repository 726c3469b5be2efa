"""Preset folders, keras-hub's layout: ``config.json``, ``metadata.json``, ``model.weights.h5``.

* ``config.json``: the model's Keras serialization (``module``, ``class_name``, ``config``,
  ``registered_name``), read back with ``safe_mode=True``;
* ``metadata.json``: what a user needs beside the weights: the input (``"pixels"``: 0-255 images,
  normalised inside the model; ``"normalized"``: the bare network), image shape, class names,
  normalisation, per-exit cumulative MACs, and for a trained model the run's recipe and test
  top-1 per exit;
* ``model.weights.h5``: the weights.

A name of :data:`tf_fusionnet.presets.PRESETS` (``"fusionnet-cifar"``) builds that architecture
with fresh weights instead: the project ships no trained weights. Written here rather than
with keras-hub, which this project does not depend on (issue 34); the layout is keras-hub's so
its users find it familiar.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from typing import Any

import keras

PRESET_CONFIG = "config.json"
PRESET_METADATA = "metadata.json"
PRESET_WEIGHTS = "model.weights.h5"
PRESET_FILES = (PRESET_CONFIG, PRESET_METADATA, PRESET_WEIGHTS)
PRESET_FORMAT = "tf_fusionnet.preset"
PRESET_FORMAT_VERSION = 1


class PresetError(ValueError):
    """A preset name or folder that cannot be used; the message is for the user."""


def is_preset_dir(path: str) -> bool:
    try:
        with open(os.path.join(path, PRESET_METADATA)) as f:
            return json.load(f).get("format") == PRESET_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def preset_metadata(model: keras.Model) -> dict[str, Any]:
    """The metadata.json of ``model`` (a network or a :class:`PixelClassifier`)."""
    from tf_fusionnet.runtime.portable import DEFAULT_RESIZE
    from tf_fusionnet.version import __version__
    from tf_fusionnet.models.macs import exit_macs, trainable_params
    # A PixelClassifier (the network with its normalisation) wraps a network: told by that, not
    # by its class, so that this module needs none of the classes it saves.
    pixels = isinstance(getattr(model, "network", None), keras.Model)
    network = model.network if pixels else model
    shape = [int(v) for v in network.input_shape[1:]]
    metadata = {
        "format": PRESET_FORMAT,
        "format_version": PRESET_FORMAT_VERSION,
        "tf_fusionnet_version": __version__,
        "keras_version": keras.__version__,
        "model_class": type(model).__name__,
        "network_class": type(network).__name__,
        "input": "pixels" if pixels else "normalized",
        "image_shape": shape,
        "num_classes": int(network.outputs[0].shape[-1]),
        "num_exits": len(network.outputs),
        "class_names": model.class_names if pixels else None,
        "normalization": {"mean": model.mean, "std": model.std} if pixels else None,
        # How predict_classes fits an image of another size (tf_fusionnet.runtime.fit_to_input).
        "resize": DEFAULT_RESIZE if pixels else None,
        "exit_macs": [int(v) for v in exit_macs(network)],
        "trainable_params": int(trainable_params(network)),
    }
    return {**metadata, **getattr(model, "preset_metadata", {})}


def save_preset(model: keras.Model, preset_dir: str) -> None:
    """Writes the three preset files; the folder must be new, empty or a preset (replaced whole).

    The files are written to a temporary folder beside it and moved in, so an interrupted save
    leaves the previous preset (or nothing), never a mix.
    """
    preset_dir = os.path.abspath(preset_dir)
    if os.path.exists(preset_dir) and not os.path.isdir(preset_dir):
        raise PresetError(f"{preset_dir}: exists and is not a folder")
    if os.path.isdir(preset_dir) and os.listdir(preset_dir) and not is_preset_dir(preset_dir):
        raise PresetError(f"{preset_dir}: a non-empty folder that is not a preset; refusing to write into it")
    if os.path.isdir(preset_dir) and set(os.listdir(preset_dir)) - set(PRESET_FILES):
        extra = sorted(set(os.listdir(preset_dir)) - set(PRESET_FILES))
        raise PresetError(f"{preset_dir}: holds files that are not the preset's ({', '.join(extra)}); "
                          "refusing to replace it")
    parent = os.path.dirname(preset_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".preset-", dir=parent)
    try:
        with open(os.path.join(tmp, PRESET_CONFIG), "w") as f:
            json.dump(keras.saving.serialize_keras_object(model), f, indent=2)
        with open(os.path.join(tmp, PRESET_METADATA), "w") as f:
            json.dump(preset_metadata(model), f, indent=2)
        model.save_weights(os.path.join(tmp, PRESET_WEIGHTS))
        if os.path.isdir(preset_dir):
            old = preset_dir + ".old"
            shutil.rmtree(old, ignore_errors=True)
            os.replace(preset_dir, old)
            os.replace(tmp, preset_dir)
            shutil.rmtree(old)
        else:
            os.replace(tmp, preset_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_preset(preset: str, load_weights: bool = True, **overrides: Any) -> keras.Model:
    """A preset folder's model with its weights, or a named architecture with fresh weights.

    Args:
        preset: a folder written by :func:`save_preset`, or a name of ``tf_fusionnet.presets.PRESETS``.
        load_weights: read ``model.weights.h5`` (folders only).
        **overrides: for a name, constructor arguments (``num_classes=100``); a folder takes none.
    """
    # The classes are registered for safe_mode by tf_fusionnet.models, imported with this module.
    if not os.path.isdir(preset):
        from tf_fusionnet.presets import trained_preset_dir

        try:
            shipped = trained_preset_dir(preset)  # a trained preset's name (issue 45)
        except ValueError as error:
            raise PresetError(str(error)) from None
        if shipped is not None:
            if overrides:
                raise PresetError(f"{preset}: a trained preset takes no overrides (got {', '.join(sorted(overrides))})")
            preset = shipped
    if os.path.isdir(preset):
        if overrides:
            raise PresetError(f"{preset}: a preset folder takes no overrides (got {', '.join(sorted(overrides))})")
        if not is_preset_dir(preset):
            raise PresetError(f"{preset}: not a preset folder (no {PRESET_METADATA} of format {PRESET_FORMAT})")
        try:
            with open(os.path.join(preset, PRESET_CONFIG)) as f:
                config = json.load(f)
            with open(os.path.join(preset, PRESET_METADATA)) as f:
                metadata = json.load(f)
        except (OSError, ValueError) as error:
            raise PresetError(f"{preset}: unreadable preset ({error})") from None
        if metadata.get("format_version", 0) > PRESET_FORMAT_VERSION:
            raise PresetError(f"{preset}: preset format {metadata['format_version']} is newer than this "
                              f"version reads ({PRESET_FORMAT_VERSION}); upgrade tf_fusionnet")
        try:
            model = keras.saving.deserialize_keras_object(config, safe_mode=True)
        except Exception as error:
            raise PresetError(f"{preset}: {PRESET_CONFIG} does not build a model ({str(error).splitlines()[0][:200]})"
                              ) from None
        if load_weights:
            weights = os.path.join(preset, PRESET_WEIGHTS)
            # A preset is handed over like a bundle: its weights must be its own file, not a link out.
            inside = os.path.realpath(preset) + os.sep
            if os.path.islink(weights) and not os.path.realpath(weights).startswith(inside):
                raise PresetError(f"{preset}: {PRESET_WEIGHTS} is a link leaving the preset folder; refusing it")
            model.load_weights(weights)
        known = set(preset_metadata(model))
        if hasattr(model, "preset_metadata"):
            model.preset_metadata = {k: v for k, v in metadata.items() if k not in known}
        return model
    from tf_fusionnet.presets import PRESETS, build_model

    if preset in PRESETS:
        return build_model(preset, **overrides)
    from tf_fusionnet.presets import trained_presets

    names = list(PRESETS) + list(trained_presets())
    raise PresetError(f"{preset!r}: neither a preset folder nor a preset name ({', '.join(names)})")


__all__ = ["PRESET_FILES", "PresetError", "is_preset_dir", "load_preset", "preset_metadata", "save_preset"]
