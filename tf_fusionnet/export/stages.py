"""Cutting a multi-exit model into stages and converting them to TFLite.

Stage 1 takes the normalised image; stage k > 1 takes the multi-scale feature
maps after block k-1. Stage k returns its exit's logits (``logits``) and, for
k < K, the feature maps after block k (``state_0`` finest .. ``state_S``),
which are exactly the next stage's inputs, under the same names.
"""

from __future__ import annotations

import tempfile
from typing import Callable, Iterator, Sequence

import keras
import numpy as np

from tf_fusionnet.export.destination import PRECISIONS  # noqa: E402  (one list for checks and conversion)


def stage_io_names(model: keras.Model, k: int) -> tuple[list[str], list[str]]:
    """Input and output names of stage ``k`` (0-based)."""
    num_exits = len(model.outputs)
    inputs = ["image"] if k == 0 else [f"state_{i}" for i in range(len(model.block_state_tensors(k - 1)))]
    outputs = ["logits"]
    if k < num_exits - 1:
        outputs += [f"state_{i}" for i in range(len(model.block_state_tensors(k)))]
    return inputs, outputs


def stage_models(model: keras.Model) -> list[keras.Model]:
    """One Keras model per exit, sharing the model's layers (and weights)."""
    stages = []
    num_exits = len(model.outputs)
    for k in range(num_exits):
        inputs = [model.inputs[0]] if k == 0 else model.block_state_tensors(k - 1)
        outputs = [model.outputs[k]] + (model.block_state_tensors(k) if k < num_exits - 1 else [])
        stages.append(keras.Model(inputs, outputs, name=f"stage_{k + 1}"))
    return stages


def exit_models(model: keras.Model) -> list[keras.Model]:
    """Standalone models from the image to each exit alone."""
    return [keras.Model(model.inputs, [output], name=f"exit_{k + 1}") for k, output in enumerate(model.outputs)]


def run_keras_stages(stages: Sequence[keras.Model], images: np.ndarray, batch_size: int = 256) -> list[list[np.ndarray]]:
    """Inputs of every stage for ``images`` (normalised float32): ``result[k]`` feeds stage k."""
    feeds = [[images]]
    for stage in stages[:-1]:
        outs = [[] for _ in stage.outputs]
        for start in range(0, len(images), batch_size):
            batch = [x[start:start + batch_size] for x in feeds[-1]]
            result = stage(batch, training=False)
            for i, r in enumerate(result):
                outs[i].append(np.asarray(r))
        feeds.append([np.concatenate(o) for o in outs[1:]])
    return feeds


def convert_to_tflite(
    model: keras.Model,
    input_names: Sequence[str],
    output_names: Sequence[str],
    precision: str,
    representative: Callable[[], Iterator[dict[str, np.ndarray]]] | None = None,
) -> bytes:
    """Converts a (sub)model through ``keras.export.ExportArchive`` and a SavedModel.

    ``TFLiteConverter.from_keras_model`` and a plain SavedModel export reorder
    the inputs of a multi-input model; an endpoint returning a dict, with
    named input specs, keeps every tensor addressable by name in the TFLite
    signature ``serve``.

    int8 is full-integer quantisation (weights and activations) calibrated on
    ``representative``, with float32 inputs and outputs: the (de)quantisation
    at stage boundaries runs inside TFLite, not in numpy.
    """
    import tensorflow as tf

    _quiet_converter_logs()
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be among {', '.join(PRECISIONS)}, got {precision!r}")
    specs = [
        tf.TensorSpec((None,) + tuple(t.shape[1:]), tf.float32, name=name)
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
    """A representative-dataset callable yielding dicts keyed by input name."""

    def generate():
        for start in range(0, len(arrays[0]), batch_size):
            yield {name: a[start:start + batch_size].astype(np.float32) for name, a in zip(names, arrays)}

    return generate

