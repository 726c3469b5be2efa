"""Layers Keras 3 lacks or runs slowly on this project's CPUs."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="tf_fusionnet")
class BatchNormalization(keras.layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` computed by TensorFlow's fused kernel.

    Named like its parent on purpose: Keras 3 keys a ``.keras`` file's weights by the snake-case
    class name of each layer (``layers/batch_normalization_12/vars``), so with this name the
    models saved before this layer existed load into it, and models saved with it load into
    code that uses Keras's layer (``tests/test_speed.py``).

    Keras 3 normalises with separate ``moments`` and ``batch_normalization`` ops
    (about ten ops forward, more backward); ``tf.keras`` 2 used one
    ``FusedBatchNormV3``, which oneDNN runs as a single kernel and which Grappler
    fuses with the following ReLU. On a 2-core AVX2 CPU it made ``fusionnet-cifar`` train
    1.25x faster in one process pair, and ``msdnet-cifar-anytime`` no faster: most of
    MSDNet's BatchNorms have 6 or 12 channels, which oneDNN runs on a generic, slow path
    either way (docs/training.md). Nothing in
    Keras 3 exposes it, hence this subclass: the weights, their names, the config
    and the inference output are those of the parent class.

    Two differences, both towards the official PyTorch code the paper follows:

    * the moving variance is updated with the unbiased (Bessel-corrected) batch
      variance, as ``torch.nn.BatchNorm2d`` does (Keras uses the biased one);
    * under ``mixed_bfloat16`` the normalisation runs in float32 (as Keras's own
      layer does), because oneDNN's bfloat16 batch-norm kernels were 2.5x slower than its
      float32 ones when this layer was written (2-core AVX2 CPU). Re-measured on a CPU with
      AMX and ``avx512_bf16`` (issue 49, train steps at batch 512): bfloat16 straight into the
      kernel trained ``msdnet-cifar-anytime`` at 136-139 img/s against 194-196 with the casts
      (its 6- and 12-channel BatchNorms), ``fusionnet-cifar`` at 236-242 against 227-239, so
      the casts stay (``bfloat16_in_float32``: a class-wide switch, for that benchmark's
      ``+bnbf16``; ``benchmarks/results/train_throughput_bnbf16.json``);
      float16 inputs (GPUs) go to the kernel as they are.

    The fused path covers 4-D inputs normalised over the last axis without a mask,
    renorm or synchronisation (everything this project builds); anything else falls
    back to the parent's ops.
    """

    bfloat16_in_float32 = True

    def _fusable(self, inputs, training, mask) -> bool:
        return (
            keras.backend.backend() == "tensorflow"
            and mask is None
            and not self.renorm
            and not self.synchronized
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and training in (None, True, False)
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, training, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        x = tf.cast(inputs, tf.float32) if inputs.dtype == tf.bfloat16 and self.bfloat16_in_float32 else inputs
        channels = x.shape[-1]
        gamma = tf.convert_to_tensor(self.gamma) if self.scale else tf.ones([channels], tf.float32)
        beta = tf.convert_to_tensor(self.beta) if self.center else tf.zeros([channels], tf.float32)
        if training and self.trainable:
            y, batch_mean, batch_variance = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, epsilon=self.epsilon, is_training=True
            )
            self.moving_mean.assign(self.moving_mean * self.momentum + batch_mean * (1.0 - self.momentum))
            self.moving_variance.assign(
                self.moving_variance * self.momentum + batch_variance * (1.0 - self.momentum)
            )
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, gamma, beta, mean=tf.convert_to_tensor(self.moving_mean),
                variance=tf.convert_to_tensor(self.moving_variance), epsilon=self.epsilon, is_training=False,
            )
        return tf.cast(y, self.compute_dtype)




@keras.saving.register_keras_serializable(package="tf_fusionnet")
class AlignedBilinearResize(keras.layers.Layer):
    """Bilinear resize to a fixed size with corner pixels aligned (PyTorch's ``align_corners=True``).

    RANet resamples feature maps with ``F.interpolate(..., mode="bilinear", align_corners=True)``.
    Keras's ``Resizing`` and ``keras.ops.image.resize`` only sample at half-pixel centres, which
    shifts every output pixel off the official grid, so this layer calls TensorFlow's
    ``ResizeBilinear`` with ``align_corners=True`` directly; TFLite has the same op
    (``RESIZE_BILINEAR`` with ``align_corners``) in float and int8. The output keeps the
    input's dtype (the op itself always returns float32).

    Args:
        height, width: output size.
    """

    def __init__(self, height: int, width: int, **kwargs):
        super().__init__(**kwargs)
        self.height = int(height)
        self.width = int(width)

    def call(self, inputs):
        import tensorflow as tf

        resized = tf.raw_ops.ResizeBilinear(
            images=inputs, size=[self.height, self.width], align_corners=True, half_pixel_centers=False
        )
        return tf.cast(resized, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width}


@keras.saving.register_keras_serializable(package="tf_fusionnet")
class GradientRescale(keras.layers.Layer):
    """The identity forward; in training, the gradient flowing back through it times ``scale``.

    IMTA's gradient equilibrium (Li et al., ICCV 2019) rescales the gradients an exit's loss and
    the later layers send into a block's output. Keras has no such layer, and
    ``tf.custom_gradient`` would put an ``IdentityN`` op into every exported stage, so this
    writes ``stop_gradient(x) + scale * (x - stop_gradient(x))``: exactly ``x`` forward
    (``x - x`` is 0 in IEEE arithmetic), gradient ``scale``. Outside training it returns its
    input untouched, so inference graphs and TFLite stages hold no op for it.

    Args:
        scale: the factor on the gradient.
    """

    def __init__(self, scale: float, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)

    def call(self, inputs, training=None):
        if not training:
            return inputs
        stopped = keras.ops.stop_gradient(inputs)
        return stopped + keras.ops.cast(self.scale, inputs.dtype) * (inputs - stopped)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale}


__all__ = ["AlignedBilinearResize", "BatchNormalization", "GradientRescale"]
