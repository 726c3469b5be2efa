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
    from tf_fusionnet.utils import read_json_limited

    try:
        return read_json_limited(os.path.join(path, PRESET_METADATA)).get("format") == PRESET_FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def not_a_preset_reason(path: str) -> str | None:
    """Why a folder holding a metadata.json is not a preset this project reads (one line), or None
    if it is one or holds no metadata.json (so that such a folder is not taken for a run)."""
    from tf_fusionnet.utils import read_json_limited

    meta = os.path.join(path, PRESET_METADATA)
    if not os.path.exists(meta):
        return None
    try:
        value = read_json_limited(meta)
    except (OSError, ValueError) as error:
        return str(error)
    if not isinstance(value, dict):
        return f"{meta}: a JSON {type(value).__name__}, not the object a preset's metadata is"
    if value.get("format") == PRESET_FORMAT:
        return None
    return f"{meta}: format {value.get('format')!r}, not a tf_fusionnet preset ({PRESET_FORMAT!r})"


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
    # Onto a link to a preset: the preset it points to is replaced, and the link stays a link.
    preset_dir = os.path.realpath(preset_dir) if os.path.islink(preset_dir) else os.path.abspath(preset_dir)
    if os.path.exists(preset_dir) and not os.path.isdir(preset_dir):
        raise PresetError(f"{preset_dir}: exists and is not a folder")
    if os.path.isdir(preset_dir) and os.listdir(preset_dir) and not is_preset_dir(preset_dir):
        raise PresetError(f"{preset_dir}: a non-empty folder that is not a preset; refusing to write into it")
    if os.path.isdir(preset_dir) and set(os.listdir(preset_dir)) - set(PRESET_FILES):
        extra = sorted(set(os.listdir(preset_dir)) - set(PRESET_FILES))
        raise PresetError(f"{preset_dir}: holds files that are not the preset's ({', '.join(extra)}); "
                          "refusing to replace it")
    parent, base = os.path.dirname(preset_dir), os.path.basename(preset_dir)
    os.makedirs(parent, exist_ok=True)
    _remove_dead_leftovers(parent, base)
    # Every name this writes beside the preset is its own: made here, marked with this process's
    # PID (so a later save can tell an abandoned one from another process's), removed here.
    prefix = f"{TEMP_PREFIX}{base}-{os.getpid()}-"
    tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 folders; a preset is meant to be shared
    old = None
    try:
        with open(os.path.join(tmp, PRESET_CONFIG), "w") as f:
            json.dump(keras.saving.serialize_keras_object(model), f, indent=2)
        with open(os.path.join(tmp, PRESET_METADATA), "w") as f:
            json.dump(preset_metadata(model), f, indent=2)
        model.save_weights(os.path.join(tmp, PRESET_WEIGHTS))
        if os.path.isdir(preset_dir):
            old = tempfile.mkdtemp(prefix=prefix + "old-", dir=parent)
            os.replace(preset_dir, old)  # onto our own empty folder: the rename is atomic
        os.replace(tmp, preset_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


TEMP_PREFIX = ".preset-"

# What a preset may ask the constructor for, checked before anything is built: a config asking
# for a growth rate of 1e6 would allocate until memory runs out. Generous for real models (the
# project's largest use 64 channels, 7 blocks, 32x32 images).
ARGUMENT_LIMITS = {"num_classes": 100_000, "growth_rate": 512, "n_channels": 2048, "stem_channels": 2048,
                   "head_channels": 4096, "num_blocks": 64, "base": 64, "step": 64, "block_step": 64}
MAX_IMAGE_SIDE = 2048


def _fail(preset: str, file: str, field: str, problem: str):
    raise PresetError(f"{preset}: {file}: {field} {problem}")


def check_preset_files(preset: str, config: Any, metadata: Any) -> None:
    """The preset's files checked against each other before anything is built or read further:
    JSON types, the network's size arguments within :data:`ARGUMENT_LIMITS`, and metadata that
    agrees with the config (classes, input shape, class names, finite normalisation)."""
    import math

    if not isinstance(metadata, dict):
        _fail(preset, PRESET_METADATA, "(top level)", "must be a JSON object")
    version = metadata.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        _fail(preset, PRESET_METADATA, "format_version", f"must be an integer, got {version!r}")
    if not (isinstance(config, dict) and isinstance(config.get("config"), dict)
            and isinstance(config.get("class_name"), str)):
        _fail(preset, PRESET_CONFIG, "(top level)", "must be a serialised Keras model (class_name and config)")
    outer = config["config"]
    network = outer.get("network") if config["class_name"] == "PixelClassifier" else config
    if not (isinstance(network, dict) and isinstance(network.get("config"), dict)):
        _fail(preset, PRESET_CONFIG, "network", "must be a serialised network")
    args = network["config"]
    for name, limit in ARGUMENT_LIMITS.items():
        value = args.get(name)
        if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= limit):
            _fail(preset, PRESET_CONFIG, name, f"must be an integer in [1, {limit}], got {value!r}")
    shape = args.get("image_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) and not isinstance(v, bool)
                                                                 for v in shape)
            and 1 <= shape[0] <= MAX_IMAGE_SIDE and 1 <= shape[1] <= MAX_IMAGE_SIDE and shape[2] in (1, 2, 3, 4)):
        _fail(preset, PRESET_CONFIG, "image_shape", f"must be [height, width, channels] with sides up to "
              f"{MAX_IMAGE_SIDE} and 1-4 channels, got {shape!r}")
    for field, want in (("num_classes", args.get("num_classes")), ("image_shape", shape)):
        if field in metadata and metadata[field] != want:
            _fail(preset, PRESET_METADATA, field, f"is {metadata[field]!r} but {PRESET_CONFIG} builds {want!r}")
    if config["class_name"] != "PixelClassifier":
        return
    for part in ("mean", "std"):
        values = outer.get(part)
        if not (isinstance(values, list) and len(values) == shape[2]
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            _fail(preset, PRESET_CONFIG, part, f"must be {shape[2]} finite numbers, got {values!r}")
    if min(outer["std"]) <= 0:
        _fail(preset, PRESET_CONFIG, "std", "must be positive")
    names = outer.get("class_names")
    if names is not None and not (isinstance(names, list) and len(names) == args.get("num_classes")
                                  and all(isinstance(n, str) for n in names)):
        _fail(preset, PRESET_CONFIG, "class_names", f"must be {args.get('num_classes')} strings or null")
    norm = metadata.get("normalization")
    if norm is not None and (not isinstance(norm, dict) or norm.get("mean") != outer["mean"]
                             or norm.get("std") != outer["std"]):
        _fail(preset, PRESET_METADATA, "normalization", f"does not match {PRESET_CONFIG}'s mean and std")
    if "class_names" in metadata and metadata["class_names"] != names:
        _fail(preset, PRESET_METADATA, "class_names", f"do not match {PRESET_CONFIG}'s")


def _remove_dead_leftovers(parent: str, base: str) -> None:
    """Removes the temporary folders an earlier save of this preset left when it was killed: named
    ``.preset-<name>-<pid>-...`` by :func:`save_preset` with a PID that no longer runs."""
    import re

    from tf_fusionnet.utils import pid_alive

    pattern = re.compile(rf"{re.escape(TEMP_PREFIX + base)}-(\d+)-.+")
    for entry in os.listdir(parent):
        match = pattern.fullmatch(entry)
        path = os.path.join(parent, entry)
        if match and not os.path.islink(path) and os.path.isdir(path) and not pid_alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)


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
        from tf_fusionnet.utils import read_json_limited

        if not os.path.isfile(os.path.join(preset, PRESET_METADATA)):
            raise PresetError(f"{preset}: not a preset folder (no {PRESET_METADATA})")
        try:
            metadata = read_json_limited(os.path.join(preset, PRESET_METADATA))
            if not isinstance(metadata, dict) or metadata.get("format") != PRESET_FORMAT:
                raise PresetError(f"{preset}: not a preset folder ({PRESET_METADATA} is not of format {PRESET_FORMAT})")
            config = read_json_limited(os.path.join(preset, PRESET_CONFIG))
        except PresetError:
            raise
        except (OSError, ValueError) as error:
            raise PresetError(f"{preset}: unreadable preset ({error})") from None
        check_preset_files(preset, config, metadata)
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
            try:
                model.load_weights(weights)
            except (OSError, ValueError) as error:  # h5py's OSError for a truncated file read as a write error
                first = (str(error).splitlines() or [type(error).__name__])[0][:200]
                raise PresetError(f"{preset}: {PRESET_WEIGHTS} unreadable or not this model's weights ({first})") from None
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


__all__ = ["PRESET_FILES", "PresetError", "check_preset_files", "is_preset_dir", "load_preset", "preset_metadata", "save_preset"]
