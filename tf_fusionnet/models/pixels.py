"""A multi-exit network that reads what a user has: 0-255 pixels, normalised inside the model.

The networks (``FusionNet``, ``MSDNet``, ``RANet``) read images normalised with their training
split's per-channel mean and std, because ``train.py`` normalises in its tf.data pipeline; a
run's ``model.keras`` is such a network. :class:`PixelClassifier` puts the normalisation in front
of one (as a bundle's stage 1 does in its TFLite graph), keeps the class names beside it, and is
what :func:`tf_fusionnet.load_model` and ``from_preset`` return for a trained model.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras
import numpy as np

from tf_fusionnet.models.multi_exit import MultiExitModel


@keras.saving.register_keras_serializable(package="tf_fusionnet")
class PixelClassifier(keras.Model):
    """A multi-exit network behind a per-channel ``(x - mean) / std`` of 0-255 pixels.

    Args:
        network: the multi-exit network (reads normalised images).
        mean, std: per-channel mean and standard deviation of the training images, on the
            0-255 scale (a run's ``preprocessing.json``).
        class_names: the label of every class index, or None.

    Example:
    ```python
    model = PixelClassifier(FusionNet(num_classes=10), mean=[125.3, 123.0, 113.9],
                            std=[63.0, 62.1, 66.7])
    logits_per_exit = model(np.zeros((1, 32, 32, 3), np.uint8))
    ```
    """

    def __init__(self, network: MultiExitModel, mean: Sequence[float], std: Sequence[float],
                 class_names: Sequence[str] | None = None, name: str | None = None, **kwargs):
        channels = int(network.input_shape[-1])
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ValueError(f"mean and std need {channels} values (std > 0), got {mean} and {std}")
        inputs = keras.Input(shape=tuple(network.input_shape[1:]), name="pixels")
        normalized = keras.layers.Normalization(mean=mean, variance=[s * s for s in std], name="normalize")(inputs)
        outputs = network(normalized)
        super().__init__(inputs=inputs, outputs=outputs, name=name or f"{network.name}_pixels", **kwargs)
        self.network = network
        self.mean, self.std = mean, std
        self.class_names = None if class_names is None else [str(c) for c in class_names]
        # What a preset's metadata.json says beyond the config (recipe, test top-1): set by the
        # loaders, written by save_to_preset; not part of the architecture.
        self.preset_metadata: dict[str, Any] = {}

    @property
    def num_exits(self) -> int:
        return len(self.outputs)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, "trainable": self.trainable,
                "network": keras.saving.serialize_keras_object(self.network),
                "mean": self.mean, "std": self.std, "class_names": self.class_names}

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)

    def fit_pixels(self, pixels) -> np.ndarray:
        """``pixels`` as a batch the network takes: one (H, W, C) image or a batch of them, or a list
        of images of any sizes; each image of another height or width is fitted to the input by
        the bundles' rule (a centred crop to the input's aspect ratio, then a bilinear resize:
        :func:`tf_fusionnet.runtime.fit_to_input`), as the cascade runner does."""
        from tf_fusionnet.runtime import fit_to_input

        height, width, channels = (int(v) for v in self.input_shape[1:])
        images = list(pixels) if isinstance(pixels, (list, tuple)) else None
        if images is None:
            array = np.asarray(pixels)
            if array.ndim == 3:
                array = array[None]
            if array.ndim != 4:
                raise ValueError(f"expected one (H, W, {channels}) image or a batch (N, H, W, {channels}), got "
                                 f"shape {array.shape}")
            if array.shape[1:3] == (height, width) and array.shape[3] == channels:
                return array
            images = list(array)
        fitted = []
        for i, image in enumerate(images):
            image = np.asarray(image)
            if image.ndim == 2:
                image = image[..., None]
            if image.ndim != 3 or image.shape[2] != channels:
                raise ValueError(f"image {i}: shape {image.shape}, the model takes {channels} channel(s)")
            if image.shape[:2] != (height, width):
                if image.dtype != np.uint8:
                    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
                image = fit_to_input(image, height, width)[0]
            fitted.append(image)
        return np.stack(fitted)

    def predict_classes(self, pixels, exit_index: int = -1) -> list:
        """Class of each image at one exit (default the last): names if known, else indices.

        ``pixels``: 0-255 images of any size (:meth:`fit_pixels`): one image, a batch, or a list."""
        logits = self.predict(self.fit_pixels(pixels), verbose=0)[exit_index]
        indices = np.argmax(logits, axis=-1)
        return [self.class_names[i] for i in indices] if self.class_names else indices.tolist()

    @classmethod
    def from_preset(cls, preset: str, **kwargs) -> "PixelClassifier":
        """A preset folder's trained model (see :mod:`tf_fusionnet.models.preset_files`)."""
        from tf_fusionnet.models.preset_files import load_preset

        model = load_preset(preset, **kwargs)
        if not isinstance(model, cls):
            raise ValueError(f"{preset}: holds no normalisation (an untrained architecture); use "
                             f"{type(model).__name__}.from_preset")
        return model

    def save_to_preset(self, preset_dir: str) -> None:
        """Writes ``config.json``, ``metadata.json`` and ``model.weights.h5`` to ``preset_dir``."""
        from tf_fusionnet.models.preset_files import save_preset

        save_preset(self, preset_dir)


__all__ = ["PixelClassifier"]
