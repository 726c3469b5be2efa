"""Cutting a multi-exit model into stages and converting them to TFLite.

The cut is :func:`tf_fusionnet.models.stage_cut.cut_stages`: stage 1 takes the normalised image
(``image``); every stage returns its exit's logits (``logits``) and the tensors that later stages
read (``state_i``, named once for the whole model). A stage reads its inputs by name from what the
earlier stages returned, not only from the stage just before it (RANet's flows read maps from
several stages back).
"""

from __future__ import annotations

import tempfile
from typing import Callable, Iterator, Sequence

import keras
import numpy as np

from tf_fusionnet.export.destination import PRECISIONS  # noqa: E402  (one list for checks and conversion)
from tf_fusionnet.models.stage_cut import StageCut, cut_stages


def stage_models(model: keras.Model, cut: StageCut | None = None) -> list[keras.Model]:
    """One Keras model per exit, sharing the model's layers (and weights)."""
    cut = cut or cut_stages(model)
    return [keras.Model(ins, outs, name=f"stage_{k + 1}") for k, (ins, outs) in enumerate(zip(cut.inputs, cut.outputs))]


def pixel_input_model(stage: keras.Model, mean: np.ndarray, std: np.ndarray) -> keras.Model:
    """Stage 1 (or a whole model) reading the uint8 image and normalising it in its own graph,
    ``(x - mean) / std`` per channel, so that a runner hands LiteRT the pixels with no numpy pass
    (in the benchmark's regime that pass cost 87-113 us per image, docs/export.md).

    The normalisation is a 1x1 depthwise convolution (weights 1/std, bias -mean/std), not a
    subtraction and a division: in int8 the converter then quantises the pixels with step 1 over
    0..255 and the normalised image in one rounding (largest error half a step, 0.008). With
    Keras's ``Normalization`` it gave the pixels a step of 1.49 to cover the subtraction's range
    too, three roundings in all and errors up to 0.027 (a one-off comparison on random images).
    """
    if len(stage.inputs) != 1:
        raise ValueError("a model reading pixels reads the image only")
    channels = int(stage.inputs[0].shape[-1])
    image = keras.Input(tuple(stage.inputs[0].shape[1:]), dtype="uint8", name="image")
    pixels = keras.layers.Lambda(lambda t: keras.ops.cast(t, "float32"), name="pixels_as_float")(image)
    normalize = keras.layers.DepthwiseConv2D(
        1, use_bias=True, trainable=False, name="pixel_normalization",
        depthwise_initializer=keras.initializers.Constant((1.0 / std).reshape(1, 1, channels, 1)),
        bias_initializer=keras.initializers.Constant(-mean / std))
    return keras.Model(image, stage(normalize(pixels)), name=f"{stage.name}_from_pixels")


def exit_models(model: keras.Model, exits: Sequence[int] | None = None) -> list[keras.Model]:
    """Standalone models from the image to each exit alone (``exits``: 0-based, None: all)."""
    kept = range(len(model.outputs)) if exits is None else exits
    return [keras.Model(model.inputs, [model.outputs[e]], name=f"exit_{k + 1}") for k, e in enumerate(kept)]


def last_readers(input_names: Sequence[Sequence[str]]) -> dict[str, int]:
    """For every named tensor, the last stage that reads it (after which it can be dropped)."""
    last: dict[str, int] = {}
    for k, names in enumerate(input_names):
        for name in names:
            last[name] = k
    return last


def run_keras_stages(stages: Sequence[keras.Model], images: np.ndarray, cut: StageCut,
                     batch_size: int = 256) -> list[list[np.ndarray]]:
    """Inputs of every stage for ``images`` (normalised float32): ``result[k]`` feeds stage k,
    in the order of ``cut.input_names[k]``."""
    last = last_readers(cut.input_names)
    pool = {"image": images}
    feeds = []
    for k, stage in enumerate(stages):
        feeds.append([pool[name] for name in cut.input_names[k]])
        if k == len(stages) - 1:
            break
        outs = [[] for _ in stage.outputs]
        for start in range(0, len(images), batch_size):
            batch = [x[start:start + batch_size] for x in feeds[-1]]
            result = stage(batch, training=False)
            result = result if isinstance(result, (list, tuple)) else [result]
            for i, r in enumerate(result):
                outs[i].append(np.asarray(r))
        for name, parts in zip(cut.output_names[k][1:], outs[1:]):
            pool[name] = np.concatenate(parts)
        pool = {name: value for name, value in pool.items() if last.get(name, -1) > k}
    return feeds


def convert_to_tflite(
    model: keras.Model,
    input_names: Sequence[str],
    output_names: Sequence[str],
    precision: str,
    representative: Callable[[], Iterator[dict[str, np.ndarray]]] | None = None,
    integer_io: bool = False,
    batch_size: int | None = None,
) -> bytes:
    """Converts a (sub)model through ``keras.export.ExportArchive`` and a SavedModel.

    ``TFLiteConverter.from_keras_model`` and a plain SavedModel export reorder
    the inputs of a multi-input model; an endpoint returning a dict, with
    named input specs, keeps every tensor addressable by name in the TFLite
    signature ``serve``.

    int8 is full-integer quantisation (weights and activations) calibrated on
    ``representative``. Its inputs and outputs are float32 (QUANTIZE/DEQUANTIZE
    inside TFLite), or with ``integer_io`` int8 themselves, each with its own
    scale and zero point: chained stages then hand their int8 feature maps on
    as they are, instead of dequantising them at the end of one stage and
    quantising them again at the start of the next.

    ``batch_size``: a fixed batch dimension (the web runtime's stages take batch 1: LiteRT.js
    refuses an input of another shape than the model's, and ``-1`` is not resized); None: any.
    """
    import tensorflow as tf

    _quiet_converter_logs()
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be among {', '.join(PRECISIONS)}, got {precision!r}")
    specs = [
        tf.TensorSpec((batch_size,) + tuple(t.shape[1:]), tf.as_dtype(t.dtype), name=name)
        for t, name in zip(model.inputs, input_names)
    ]

    def serve(*args):
        outputs = model(list(args), training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        return dict(zip(output_names, outputs))

    with tempfile.TemporaryDirectory(prefix="tf_fusionnet_export_") as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serve", serve, input_signature=specs)
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp, signature_keys=["serve"])
        if precision == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        elif precision == "int8":
            if representative is None:
                raise ValueError("int8 needs representative data")
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            if integer_io:
                converter.inference_input_type = tf.int8
                converter.inference_output_type = tf.int8
        return converter.convert()


def _quiet_converter_logs() -> None:
    """SavedModel writing and conversion log every step at INFO; keep the console readable."""
    import warnings

    import absl.logging
    import tensorflow as tf

    absl.logging.set_verbosity(absl.logging.ERROR)
    tf.get_logger().setLevel("ERROR")
    # The converter's int8 calibrator uses tf.lite.Interpreter internally and warns about it.
    warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated.*")


def representative_feed(names: Sequence[str], arrays: Sequence[np.ndarray], batch_size: int = 1):
    """A representative-dataset callable yielding dicts keyed by input name (float32, or uint8 pixels)."""

    def generate():
        for start in range(0, len(arrays[0]), batch_size):
            yield {name: a[start:start + batch_size].astype(np.uint8 if a.dtype == np.uint8 else np.float32)
                   for name, a in zip(names, arrays)}

    return generate

