"""Multi-exit models."""

from tf_fusionnet.models.multi_exit import FusionNet, MSDNet
from tf_fusionnet.models.ranet import RANet

__all__ = ["FusionNet", "MSDNet", "RANet"]
