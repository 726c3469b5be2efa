"""Multi-exit models."""

from tf_fusionnet.models.multi_exit import FusionNet, MSDNet

__all__ = ["FusionNet", "MSDNet"]
