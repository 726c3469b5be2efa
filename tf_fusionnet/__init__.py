"""tf_fusionnet: multi-exit image classifiers (FusionNet, MSDNet) for small devices.

Names are imported on first use, so ``import tf_fusionnet.portable`` or
``tf_fusionnet.console`` does not load TensorFlow (entry scripts set TensorFlow's
environment and silence its start-up log before it loads).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "FusionNet": "tf_fusionnet.models",
    "MSDNet": "tf_fusionnet.models",
    "PRESETS": "tf_fusionnet.presets",
    "build_model": "tf_fusionnet.presets",
    "preset_names": "tf_fusionnet.presets",
    "exit_macs": "tf_fusionnet.macs",
    "trainable_params": "tf_fusionnet.macs",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tf_fusionnet' has no attribute {name!r}")
