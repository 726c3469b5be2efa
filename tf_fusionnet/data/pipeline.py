"""tf.data input pipelines: augmentation for training, plain normalisation for evaluation."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass
class AugmentConfig:
    """Training augmentation; defaults are the paper's recipe (see docs/training.md).

    Attributes:
        random_crop: zero-pad then crop back to the input size at a random place.
        pad: pixels of zero padding per side; -1 means size // 8 (4 on 32x32).
        flip: random horizontal flip with probability 0.5.
        mix_prob: probability that a batch is mixed at all (CutMix or MixUp).
        cutmix_share: of the mixed batches, the share that uses CutMix (the rest MixUp).
        mixup_alpha: Beta(alpha, alpha) parameter of MixUp.
        cutmix_alpha: Beta(alpha, alpha) parameter of CutMix's lambda (:class:`BetaCutMix`).
    """

    random_crop: bool = True
    pad: int = -1
    flip: bool = True
    mix_prob: float = 1.0
    cutmix_share: float = 0.5
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0


def normalization_stats(images: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation (0..255 scale) of uint8 images (N, H, W, C)."""
    channels = images.shape[-1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    count = 0
    for start in range(0, len(images), chunk):
        block = images[start:start + chunk].reshape(-1, channels).astype(np.float64)
        total += block.sum(0)
        total_sq += (block**2).sum(0)
        count += block.shape[0]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


def _normalize(images, mean, std):
    return (tf.cast(images, tf.float32) - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def _repeat_labels(num_exits: int):
    return lambda x, y: (x, tuple([y] * num_exits))


def _check_mixable_labels(labels) -> None:
    # keras.layers.MixUp/CutMix broadcast integer labels of shape (B,) against
    # (B, 1) weights into a (B, B) "label" without complaint: refuse early.
    if labels.shape.rank != 2 or not labels.dtype.is_floating:
        raise ValueError(
            "CutMix/MixUp need one-hot float labels of shape (batch, classes); "
            f"got {labels.dtype.name} labels of shape {labels.shape}"
        )


@keras.saving.register_keras_serializable(package="tf_fusionnet")
class BetaCutMix(keras.layers.CutMix):
    """``keras.layers.CutMix`` with the paper's mixing ratio, lambda ~ Beta(alpha, alpha).

    Keras's layer first draws its Beta parameter from U(0, factor) per batch, so
    ``CutMix(factor=1.0)`` gives a lambda far more often near 0 or 1 than Beta(1, 1) (the
    CutMix paper's uniform). Two private methods are replaced, the minimum that fixes it:
    the draw of lambda, and the label weight, which Keras takes from the real-valued box
    while the pasted patch is whole pixels; here it is the pasted patch's exact share.
    Like Keras's layer (and unlike the CutMix paper's one box per batch) every image
    draws its own lambda and box; the box lies inside the image.

    Args:
        alpha: the Beta parameter (1.0: lambda uniform on [0, 1]).
        seed: random seed.
    """

    def __init__(self, alpha: float = 1.0, seed: int | None = None, **kwargs):
        kwargs.pop("factor", None)
        super().__init__(factor=1.0, seed=seed, **kwargs)
        if not alpha > 0:
            raise ValueError(f"CutMix alpha must be > 0, got {alpha}")
        self.alpha = float(alpha)

    def _generate_mix_weight(self, batch_size, seed):
        return self.backend.random.beta((batch_size,), self.alpha, self.alpha, seed=seed, dtype=self.compute_dtype)

    def _generate_batch_mask(self, images_shape, box_corners):
        batch_masks, _ = super()._generate_batch_mask(images_shape, box_corners)
        pasted = self.backend.numpy.mean(self.backend.cast(batch_masks, self.compute_dtype), axis=(1, 2, 3))
        return batch_masks, 1.0 - pasted

    def get_config(self):
        config = super().get_config()
        config.pop("factor", None)
        return {**config, "alpha": self.alpha}


def make_batch_mixer(config: AugmentConfig, seed: int | None = None):
    """Returns ``mix(images, labels)`` that applies CutMix or MixUp to a batch, or nothing.

    CutMix is :class:`BetaCutMix` (lambda ~ Beta(cutmix_alpha, cutmix_alpha)); MixUp is
    ``keras.layers.MixUp``, which draws lambda ~ Beta(mixup_alpha, mixup_alpha) per image
    (the MixUp paper's code draws one per batch; per image has the same distribution for
    each image and a less noisy batch, so Keras's is kept).

    Keras's layers mix every batch they see; the per-batch choice is made here:
    with probability ``mix_prob * cutmix_share`` CutMix, with
    ``mix_prob * (1 - cutmix_share)`` MixUp, otherwise the batch is unchanged.
    """
    # float32 whatever the training's dtype policy: the model casts its own input.
    cutmix = BetaCutMix(alpha=config.cutmix_alpha, seed=seed, dtype="float32")
    mixup = keras.layers.MixUp(alpha=config.mixup_alpha, seed=seed, dtype="float32")
    generator = tf.random.Generator.from_seed(0 if seed is None else seed + 1)
    p_cutmix = config.mix_prob * config.cutmix_share
    p_any = config.mix_prob

    def apply(layer, images, labels):
        out = layer({"images": images, "labels": labels}, training=True)
        return tf.cast(out["images"], images.dtype), tf.cast(out["labels"], labels.dtype)

    def mix(images, labels):
        _check_mixable_labels(labels)
        u = generator.uniform([])
        return tf.cond(
            u < p_cutmix,
            lambda: apply(cutmix, images, labels),
            lambda: tf.cond(
                u < p_any, lambda: apply(mixup, images, labels), lambda: (images, labels)
            ),
        )

    return mix


def random_crop_and_flip(images, pad: int, flip: bool, seed):
    """Per-image random crop (after ``pad`` zero pixels per side) and horizontal flip of a batch.

    The same distribution as ``keras.layers.RandomCrop`` on the zero-padded image then
    ``RandomFlip("horizontal")``, computed for the whole batch at once: two gathers with
    per-image row and column indices (a flip is reversed column indices). Keras's
    layers, mapped per image, cost a dozen small ops per image and made the input
    pipeline take CPU time from the model.

    Args:
        images: (B, H, W, C), any dtype (uint8 here, before normalisation).
        pad: zero pixels added on each side before cropping back to (H, W); 0: no crop.
        flip: flip each image left-right with probability 0.5.
        seed: a stateless seed, shape (2,) int64.
    """
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    seed = tf.cast(seed, tf.int64)
    offsets = tf.random.stateless_uniform([batch, 2], seed=seed, minval=0, maxval=2 * pad + 1, dtype=tf.int32)
    rows = offsets[:, :1] + tf.range(height)[tf.newaxis]
    cols = offsets[:, 1:] + tf.range(width)[tf.newaxis]
    if flip:
        flipped = tf.random.stateless_uniform([batch], seed=seed + 1) < 0.5
        cols = tf.where(flipped[:, tf.newaxis], tf.reverse(cols, axis=[1]), cols)
    if pad:
        images = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])  # zero = black pixels
        images = tf.gather(images, rows, axis=1, batch_dims=1)
    return tf.gather(images, cols, axis=2, batch_dims=1)


def make_train_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    num_classes: int,
    num_exits: int,
    batch_size: int,
    mean: list[float],
    std: list[float],
    augment: AugmentConfig,
    seed: int = 0,
) -> tf.data.Dataset:
    """Shuffled, augmented, normalised batches of ``(image, (one_hot,) * num_exits)``.

    One pass is one epoch; batches are full (the last partial batch is dropped).
    """
    if len(images) < batch_size:
        raise ValueError(
            f"batch size {batch_size} is larger than the {len(images)} training images; "
            "pass a smaller --batch_size"
        )
    height, width = images.shape[1:3]
    pad = augment.pad if augment.pad >= 0 else max(height, width) // 8
    mean_t, std_t = tf.constant(mean, tf.float32), tf.constant(std, tf.float32)

    def to_batch(images_, labels_, seed_pair):
        if (augment.random_crop and pad > 0) or augment.flip:
            images_ = random_crop_and_flip(images_, pad if augment.random_crop else 0, augment.flip, seed_pair)
        images_ = (tf.cast(images_, tf.float32) - mean_t) / std_t
        return images_, tf.one_hot(labels_, num_classes, dtype=tf.float32)

    ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
    ds = ds.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    # One stateless seed pair per batch, new every epoch: the augmentation is a function
    # of the seed alone, whatever order the parallel map runs the batches in.
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    ds = tf.data.Dataset.zip(ds, seeds).map(lambda batch, s: to_batch(*batch, s), num_parallel_calls=AUTOTUNE)
    if augment.mix_prob > 0:
        ds = ds.map(make_batch_mixer(augment, seed), num_parallel_calls=AUTOTUNE)
    ds = ds.map(_repeat_labels(num_exits), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def make_eval_dataset(
    images: np.ndarray,
    labels: np.ndarray | None,
    *,
    batch_size: int,
    mean: list[float],
    std: list[float],
    num_classes: int | None = None,
    num_exits: int | None = None,
) -> tf.data.Dataset:
    """Normalised batches in order. With ``num_classes`` and ``num_exits``, yields
    ``(image, (one_hot,) * num_exits)`` for ``model.fit`` validation; otherwise images only."""
    if labels is not None and num_classes is not None and num_exits is not None:
        ds = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))
        ds = ds.batch(batch_size).map(
            lambda x, y: (_normalize(x, mean, std), tf.one_hot(y, num_classes)),
            num_parallel_calls=AUTOTUNE,
        )
        ds = ds.map(_repeat_labels(num_exits), num_parallel_calls=AUTOTUNE)
    else:
        ds = tf.data.Dataset.from_tensor_slices(images)
        ds = ds.batch(batch_size).map(lambda x: _normalize(x, mean, std), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)
