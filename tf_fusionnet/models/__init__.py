"""Multi-exit models, the pixel-reading wrapper of a trained one, and preset folders."""

from tf_fusionnet.models.multi_exit import FusionNet, MSDNet, MultiExitModel
from tf_fusionnet.models.pixels import PixelClassifier
from tf_fusionnet.models.preset_files import PresetError, load_preset, save_preset
from tf_fusionnet.models.ranet import RANet

__all__ = ["FusionNet", "MSDNet", "MultiExitModel", "PixelClassifier", "PresetError", "RANet", "load_preset",
           "save_preset"]
