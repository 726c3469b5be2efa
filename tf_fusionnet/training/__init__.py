"""Training: the recipe (TrainConfig), crash-safe callbacks and the trainer."""

from tf_fusionnet.training.config import TrainConfig
from tf_fusionnet.training.trainer import format_exit_table, train

__all__ = ["TrainConfig", "format_exit_table", "train"]
