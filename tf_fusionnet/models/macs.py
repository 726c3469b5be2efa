"""Per-exit multiply-accumulate counts read off a built Keras graph.

Convention of the official MSDNet-PyTorch ``op_counter.py`` (batch 1):

* convolution: ``C_in * C_out * k_h * k_w * H_out * W_out / groups`` (no bias);
* ReLU: its number of elements;
* average / max pooling: ``C * H_out * W_out * k^2``;
* global average pooling: the elements of its input;
* Dense: weights + biases;
* BatchNormalization, concatenation, addition, input, bilinear resampling: 0.

Exit k costs everything that runs before its answer in a cascade: stages
1..k of :func:`tf_fusionnet.models.stage_cut.cut_stages` (for MSDNet and
FusionNet blocks 1..k in full, including finer-scale features that only later
blocks read, as the official counter and a stage-wise cascade both do; for
RANet everything exits 1..k read, which is the official forward order) and the
heads of exits 1..k (a sample reaching exit k was first classified by exits
1..k-1). The count walks the functional graph, so it follows the network
actually built, not a per-preset formula.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
from keras import layers

from tf_fusionnet.models.layers import AlignedBilinearResize, GradientRescale
from tf_fusionnet.models.stage_cut import ancestor_nodes, cut_stages

__all__ = ["ancestor_nodes", "exit_macs", "node_macs", "trainable_params"]

_ZERO_COST = (
    layers.InputLayer,
    layers.BatchNormalization,
    layers.Concatenate,
    layers.Add,
    layers.Dropout,
    layers.Flatten,
    layers.Reshape,
    layers.Identity,
    AlignedBilinearResize,  # F.interpolate is a function, which the official counters never see
    GradientRescale,  # the identity outside training
)


def _shape(tensor) -> tuple[int, ...]:
    """Per-sample shape of a symbolic tensor (batch dimension dropped)."""
    return tuple(int(d) for d in tensor.shape[1:])


def _elements(tensor) -> int:
    return math.prod(_shape(tensor))


def _activation_cost(activation, output) -> int:
    name = getattr(activation, "__name__", str(activation))
    if name in ("linear", "None"):
        return 0
    if name == "relu":
        return _elements(output)
    raise NotImplementedError(f"No MAC rule for activation {name!r}.")


def node_macs(node) -> int:
    """MACs of one call of a Keras layer (one graph node), per sample."""
    op = node.operation
    inputs = list(node.input_tensors)
    outputs = list(node.output_tensors)
    if isinstance(op, _ZERO_COST):
        return 0
    if isinstance(op, layers.Conv2D):
        kh, kw = op.kernel_size
        h, w, c_out = _shape(outputs[0])
        c_in = _shape(inputs[0])[-1]
        macs = c_in * c_out * kh * kw * h * w // op.groups
        return macs + _activation_cost(op.activation, outputs[0])
    if isinstance(op, layers.DepthwiseConv2D):
        kh, kw = op.kernel_size
        h, w, c_out = _shape(outputs[0])
        c_in = _shape(inputs[0])[-1]
        # PyTorch convention with groups = C_in and C_out = C_in * multiplier.
        macs = c_in * c_out * kh * kw * h * w // c_in
        return macs + _activation_cost(op.activation, outputs[0])
    if isinstance(op, layers.ReLU):
        return _elements(outputs[0])
    if isinstance(op, layers.Activation):
        return _activation_cost(op.activation, outputs[0])
    if isinstance(op, (layers.AveragePooling2D, layers.MaxPooling2D)):
        kh, kw = op.pool_size
        return _elements(outputs[0]) * kh * kw
    if isinstance(op, layers.GlobalAveragePooling2D):
        return _elements(inputs[0])
    if isinstance(op, layers.Dense):
        c_in = _shape(inputs[0])[-1]
        return c_in * op.units + (op.units if op.use_bias else 0)
    raise NotImplementedError(
        f"No MAC rule for layer {op.name!r} of type {type(op).__name__}."
    )


def exit_macs(model: keras.Model, exits: Sequence[int] | None = None) -> list[int]:
    """Cumulative MACs of every exit of a functional multi-exit model.

    Args:
        model: a functional ``keras.Model`` whose outputs are the exits in order.
        exits: 0-based indices of the exits a cascade keeps (None: all); the heads of the others
            are not run, so they are not counted.

    Returns:
        One int per exit: the MACs (batch 1) of everything needed to classify a
        sample with exits 1..k.

    Example:
    ```python
    exit_macs(build_model("msdnet-cifar-anytime"))[-1]  # about 75.9e6
    ```
    """
    cumulative, total = [], 0
    for stage_nodes in cut_stages(model, exits).nodes:
        total += sum(node_macs(node) for node in stage_nodes.values())
        cumulative.append(total)
    return cumulative


def trainable_params(model: keras.Model) -> int:
    """Number of trainable scalars (BatchNorm's gamma and beta included)."""
    return int(sum(math.prod(w.shape) for w in model.trainable_weights))
