"""Named model configurations: the one place where architecture numbers live."""

from __future__ import annotations

import copy
import importlib
import json
import os
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import keras

# Class names, resolved on use: reading the presets does not load TensorFlow.
MODEL_CLASSES = {
    "MSDNet": "tf_fusionnet.models.multi_exit",
    "FusionNet": "tf_fusionnet.models.multi_exit",
    "RANet": "tf_fusionnet.models.ranet",
}

PRESETS: dict[str, dict[str, Any]] = {
    "msdnet-cifar-anytime": {
        "class": "MSDNet",
        "description": "MSDNet, CIFAR anytime setting: 7 blocks of 4,2,2,... layers.",
        "config": dict(num_blocks=7, step_mode="even", step=2, base=4),
    },
    "msdnet-cifar-budgeted": {
        "class": "MSDNet",
        "description": "MSDNet, CIFAR budgeted setting: 5 blocks, linearly growing.",
        "config": dict(num_blocks=5, step_mode="lin_grow", step=1, base=1),
    },
    "fusionnet-cifar": {
        "class": "FusionNet",
        "description": "FusionNet (fusion, paper transition, efficient stem), 7 exits, 63.1M MACs at 32x32.",
        "config": dict(
            num_blocks=7,
            step_mode="even",
            step=2,
            base=4,
            n_channels=32,
            growth_rate=12,
            stem_channels=32,
            stem_stride=2,
        ),
    },
    "ranet-cifar": {
        "class": "RANet",
        "description": "RANet, the official CIFAR setting (train_cifar.sh): 4 flows at scales 1-2-3-3, 8 exits.",
        "config": dict(
            n_channels=16, growth_rate=6, gr_factor=(4, 2, 1, 1), bn_factor=(4, 2, 1, 1),
            scale_list=(1, 2, 3, 3), num_blocks=2, block_step=2, step=4, step_mode="even",
            compress_factor=0.25, reduction=0.5,
        ),
    },
    # Ablations of fusionnet-cifar (issue 17): one contribution removed or added at a time.
    "fusionnet-cifar-nofusion": {
        "class": "FusionNet",
        "description": "Ablation: fusionnet-cifar without the fusion layer (MSDNet's cross-scale reads).",
        "config": dict(
            num_blocks=7, step_mode="even", step=2, base=4, n_channels=32, growth_rate=12,
            stem_channels=32, stem_stride=2, fusion=False,
        ),
    },
    "fusionnet-cifar-msdnetstem": {
        "class": "FusionNet",
        "description": "Ablation: fusionnet-cifar with MSDNet's stem and widths (16/6), the stem's matched-cost "
                       "counterpart.",
        "config": dict(
            num_blocks=7, step_mode="even", step=2, base=4, n_channels=16, growth_rate=6,
            efficient_stem=False,
        ),
    },
    "fusionnet-cifar-msdnettransition": {
        "class": "FusionNet",
        "description": "Ablation: fusionnet-cifar with MSDNet's transition (the scale-drop layer reads the "
                       "dropped scale).",
        "config": dict(
            num_blocks=7, step_mode="even", step=2, base=4, n_channels=32, growth_rate=12,
            stem_channels=32, stem_stride=2, transition="msdnet",
        ),
    },
    "msdnet-cifar-fusion": {
        "class": "FusionNet",
        "description": "Ablation: msdnet-cifar-anytime plus the fusion layer alone.",
        "config": dict(
            num_blocks=7, step_mode="even", step=2, base=4, n_channels=16, growth_rate=6,
            efficient_stem=False, head_type="msdnet", transition="msdnet",
        ),
    },
    "msdnet-tiny": {
        "class": "MSDNet",
        "description": "Tiny MSDNet for tests: 3 exits.",
        "config": dict(
            num_blocks=3, step_mode="even", step=1, base=1, n_channels=8, growth_rate=4,
            head_channels=16,
        ),
    },
    "ranet-tiny": {
        "class": "RANet",
        "description": "Tiny RANet for tests: 3 flows at scales 1-2-2, 3 exits.",
        "config": dict(
            n_channels=4, growth_rate=4, gr_factor=(2, 1, 1), bn_factor=(2, 1, 1), scale_list=(1, 2, 2),
            num_blocks=1, block_step=1, step=1, head_channels=16,
        ),
    },
    "fusionnet-tiny": {
        "class": "FusionNet",
        "description": "Tiny FusionNet for tests: 3 exits.",
        "config": dict(
            num_blocks=3, step_mode="even", step=1, base=1, n_channels=8, growth_rate=4,
            stem_channels=8, head_channels=16,
        ),
    },
}


def preset_names() -> list[str]:
    return list(PRESETS)


def preset_config(preset: str) -> dict[str, Any]:
    """The constructor arguments of a preset (a copy)."""
    if preset not in PRESETS:
        raise ValueError(
            f"Unknown preset {preset!r}. Available: {', '.join(preset_names())}."
        )
    return copy.deepcopy(PRESETS[preset]["config"])


def build_model(
    preset: str,
    num_classes: int = 10,
    image_shape: Sequence[int] = (32, 32, 3),
    **overrides: Any,
) -> "keras.Model":
    """Builds a preset's model.

    Args:
        preset: a name from :data:`PRESETS`.
        num_classes: classes of every exit.
        image_shape: (height, width, channels).
        **overrides: any constructor argument, e.g. ``fusion=False``.

    Example:
    ```python
    model = build_model("fusionnet-cifar", num_classes=100)
    ```
    """
    config = preset_config(preset)
    config.update(overrides)
    class_name = PRESETS[preset]["class"]
    cls = getattr(importlib.import_module(MODEL_CLASSES[class_name]), class_name)
    return cls(num_classes=num_classes, image_shape=tuple(image_shape), **config)


# Trained presets (issue 45): keras-hub preset folders with weights, shipped inside the package
# (tf_fusionnet/pretrained/, package data) so that from_preset(NAME) works offline after a pip
# install, wherever it runs; TF_FUSIONNET_PRESETS names further folders of the same layout
# (os.pathsep-separated; searched first).
PRETRAINED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pretrained")
PRETRAINED_INDEX = "index.json"
PRETRAINED_FORMAT = "tf_fusionnet.pretrained"
PRESETS_ENV = "TF_FUSIONNET_PRESETS"
WHERE_TO_GET = ("trained presets ship with tf_fusionnet's source (tf_fusionnet/pretrained/ in its repository: "
                "pip install from a clone, or set TF_FUSIONNET_PRESETS to a folder that holds it)")


def pretrained_folders() -> list[str]:
    """The folders searched for trained presets, first match wins."""
    extra = [p for p in os.environ.get(PRESETS_ENV, "").split(os.pathsep) if p]
    return extra + [PRETRAINED_DIR]


def _read_index(folder: str) -> dict[str, dict[str, Any]]:
    path = os.path.join(folder, PRETRAINED_INDEX)
    if not os.path.isfile(path):
        return {}
    try:
        from tf_fusionnet.utils import read_json_limited

        index = read_json_limited(path)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: unreadable ({error})") from None
    if not isinstance(index, dict) or index.get("format") != PRETRAINED_FORMAT or not isinstance(
            index.get("presets"), dict):
        raise ValueError(f"{path}: not an index of trained presets (format {PRETRAINED_FORMAT!r})")
    return {str(k): v for k, v in index["presets"].items() if isinstance(v, dict)}


def trained_presets() -> dict[str, dict[str, Any]]:
    """Every trained preset the index files promise: name -> its entry, with ``folder`` (where its
    files are, or should be)."""
    found: dict[str, dict[str, Any]] = {}
    for folder in reversed(pretrained_folders()):  # the first folder's entries win
        for name, entry in _read_index(folder).items():
            found[name] = {**entry, "folder": os.path.join(folder, name)}
    return found


def trained_preset_dir(name: str) -> str | None:
    """The folder of a trained preset, None for a name no index promises; ValueError (one line,
    where to get it) for a promised preset whose files are missing."""
    entry = trained_presets().get(name)
    if entry is None:
        return None
    folder = entry["folder"]
    if not os.path.isfile(os.path.join(folder, "model.weights.h5")):
        raise ValueError(f"{name}: trained preset not installed here (no {folder}); {WHERE_TO_GET}")
    return folder
