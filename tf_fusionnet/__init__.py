"""tf_fusionnet: multi-exit image classifiers (FusionNet, MSDNet) for small devices."""

from tf_fusionnet.macs import exit_macs, trainable_params
from tf_fusionnet.models import FusionNet, MSDNet
from tf_fusionnet.presets import PRESETS, build_model, preset_names

__version__ = "0.1.0"

__all__ = [
    "FusionNet",
    "MSDNet",
    "PRESETS",
    "build_model",
    "exit_macs",
    "preset_names",
    "trainable_params",
]
