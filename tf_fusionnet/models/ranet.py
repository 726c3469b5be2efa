"""RANet (Yang et al., "Resolution Adaptive Networks for Efficient Inference", CVPR 2020).

The paper's second baseline, built to match the official ``yangle15/RANet-pytorch`` model
(``models/RANet.py``) layer for layer on its CIFAR path, so that per-exit MACs and parameter
counts equal its ``op_counter.py`` to the digit (``tests/test_models.py``).

RANet runs one sub-network ("scale flow") per resolution, coarsest first. Flow ``i`` starts from
the stem's feature map at its resolution and has ``num_blocks + block_step * i`` blocks. Its first
blocks (as many as the previous flow has) are *fusion* blocks: each layer also reads the previous
flow's feature map after the same layer, through a conv and a bilinear up-sampling; the blocks
after them are plain dense blocks, each followed by an exit. A flow's resolution halves inside the
fusion blocks that the official ``down`` rule names, so every exit classifies an 8x8 map.

Differences from the official code (docs/architecture.md): TensorFlow's ``same`` padding puts a
stride-2 conv's one padding row at the bottom/right where PyTorch pads 1 all round (the same
output size and cost, a one-pixel shift of the sampling grid), and global average pooling stands
in for ``AvgPool2d(2)`` on the 2x2 map of the head (the same operation there).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import keras
from keras import layers

from tf_fusionnet.models.blocks import (
    INITIALIZERS,
    apply_bottleneck_conv,
    apply_classifier_head,
    apply_conv_bn_relu,
    validate_image_shape,
)
from tf_fusionnet.models.layers import AlignedBilinearResize
from tf_fusionnet.models.multi_exit import MultiExitModel, _check_kwargs, architecture_arguments

RANET_INITIALIZERS = ("ranet",) + INITIALIZERS
STEP_MODES = ("even", "lg")


def _resize_to(x, reference, name: str):
    """``x`` resampled to the spatial size of ``reference`` (identity when they already match)."""
    height, width = int(reference.shape[1]), int(reference.shape[2])
    if (int(x.shape[1]), int(x.shape[2])) == (height, width):
        return x
    return AlignedBilinearResize(height, width, name=name)(x)


def apply_ranet_stem(x, scale_channels: Sequence[int], scale_list: Sequence[int], name: str = "stem",
                     initializer: str = "pytorch") -> list:
    """RANet's CIFAR first layer: a chain of 3x3 conv-BN-ReLU, finest resolution first.

    ``scale_channels`` and ``scale_list`` are per flow, coarsest flow first (as in the official
    arguments); the chain runs them in reverse. A conv has stride 2 where the scale index changes,
    stride 1 where two flows share a resolution. Returns one feature map per flow, coarsest first.
    """
    channels = list(scale_channels)[::-1]
    scales = list(scale_list)[::-1]
    features = []
    current_scale = scales[0]
    for i, c in enumerate(channels):
        stride = 1 if i == 0 or scales[i] == current_scale else 2
        current_scale = scales[i]
        x = apply_conv_bn_relu(x, c, 3, strides=stride, name=f"{name}_{i + 1}", initializer=initializer)
        features.append(x)
    return features[::-1]


def apply_ranet_dense_block(x, *, num_layers: int, growth_rate: int, bn_factor: int, reduction: float | None,
                            name: str, initializer: str) -> tuple[Any, list]:
    """A plain dense block (official ``_BlockNormal``) and its optional 1x1 transition.

    Returns ``(output, layer_outputs)``: ``layer_outputs`` is the block input followed by the map
    after each layer (before the transition), which is what the next flow's fusion block reads.
    """
    layer_outputs = [x]
    for j in range(num_layers):
        new = apply_bottleneck_conv(x, growth_rate, bn_factor, 1, True, name=f"{name}_l{j + 1}",
                                    initializer=initializer)
        x = layers.Concatenate(name=f"{name}_l{j + 1}_cat")([x, new])
        layer_outputs.append(x)
    if reduction:
        x = apply_conv_bn_relu(x, math.floor(reduction * x.shape[-1]), 1, name=f"{name}_transition",
                               initializer=initializer)
    return x, layer_outputs


def apply_ranet_fusion_block(x, coarser: Sequence, *, num_layers: int, growth_rate: int, bn_factor: int,
                             coarser_bn_factor: int, compress_factor: float, down: bool,
                             reduction: float | None, name: str, initializer: str) -> tuple[Any, list]:
    """A fusion block (official ``_BlockUpNormal``) and its optional 1x1 transition.

    Layer ``j`` reads this flow's map and ``coarser[j]``, the previous flow's map after its layer
    ``j`` (``coarser[0]`` is that block's input). A ``floor(growth * compress_factor)``-channel
    conv of the coarser map is up-sampled and concatenated with this flow's map and its own new
    channels; with ``down``, the last layer's own conv has stride 2 and the carried maps are
    resampled to the halved size. After the layers, a 1x1 conv of ``coarser[num_layers]`` adds
    ``floor(C * compress_factor)`` channels.
    """
    up_channels = math.floor(growth_rate * compress_factor)
    layer_outputs = [x]
    for j in range(num_layers):
        strided = down and j == num_layers - 1
        own = apply_bottleneck_conv(x, growth_rate - up_channels, bn_factor, 2 if strided else 1, True,
                                    name=f"{name}_l{j + 1}_normal", initializer=initializer)
        up = apply_bottleneck_conv(coarser[j], up_channels, coarser_bn_factor, 1, True,
                                   name=f"{name}_l{j + 1}_up", initializer=initializer)
        x = layers.Concatenate(name=f"{name}_l{j + 1}_cat")([
            _resize_to(x, own, f"{name}_l{j + 1}_carry_resize"),
            _resize_to(up, own, f"{name}_l{j + 1}_up_resize"),
            own,
        ])
        layer_outputs.append(x)
    last = apply_conv_bn_relu(coarser[num_layers], math.floor(x.shape[-1] * compress_factor), 1,
                              name=f"{name}_coarser", initializer=initializer)
    x = layers.Concatenate(name=f"{name}_coarser_cat")([x, _resize_to(last, x, f"{name}_coarser_resize")])
    if reduction:
        x = apply_conv_bn_relu(x, math.floor(reduction * x.shape[-1]), 1, name=f"{name}_transition",
                               initializer=initializer)
    return x, layer_outputs


def ranet_blocks_per_flow(num_flows: int, num_blocks: int, block_step: int) -> list[int]:
    """Blocks of every flow: ``num_blocks + block_step * i``."""
    return [num_blocks + block_step * i for i in range(num_flows)]


def ranet_transition_blocks(blocks: int, scale: int) -> set[int]:
    """1-based blocks of a flow followed by a transition: ``floor(i * blocks / scale)``, i < scale."""
    return {math.floor(i * blocks / scale) for i in range(1, scale)}


def ranet_down_blocks(blocks_per_flow: Sequence[int], flow: int, scale: int) -> set[int]:
    """1-based fusion blocks of ``flow`` whose last layer halves the resolution.

    The official rule: the last ``scale - 1`` entries of the cumulative block list
    ``[0, blocks_per_flow[0], ...]`` up to this flow (its ``[-0:]`` slice, when ``scale`` is 1,
    takes the whole list; no fusion block is numbered 0, and a flow of scale 1 halves nothing
    more).
    """
    boundaries = ([0] + list(blocks_per_flow))[: flow + 1]
    return set(boundaries[-(scale - 1):])


def build_ranet_outputs(inputs, *, num_classes: int, n_channels: int, growth_rate: int,
                        gr_factor: Sequence[int], bn_factor: Sequence[int], scale_list: Sequence[int],
                        num_blocks: int, block_step: int, step: int, step_mode: str, compress_factor: float,
                        reduction: float, head_channels: int, initializer: str) -> list:
    """RANet's exits' logits, cheapest first (coarsest flow first, in each flow block order)."""
    num_flows = len(scale_list)
    if not (len(gr_factor) == len(bn_factor) == num_flows):
        raise ValueError("gr_factor, bn_factor and scale_list must have one entry per scale flow.")
    if list(scale_list) != sorted(scale_list) or scale_list[0] != 1:
        raise ValueError(f"scale_list must start at 1 and never decrease, got {list(scale_list)}.")
    if step_mode not in STEP_MODES:
        raise ValueError(f"Unknown step_mode {step_mode!r}; expected one of {', '.join(STEP_MODES)}.")
    if initializer not in RANET_INITIALIZERS:
        raise ValueError(f"Unknown initializer {initializer!r}; expected one of {', '.join(RANET_INITIALIZERS)}.")
    # The official model applies its normal(0, sqrt(2/n)) init to every module of the flows and
    # heads but not to the first layer, which keeps PyTorch's default.
    stem_init = "pytorch" if initializer == "ranet" else initializer
    body_init = "msdnet" if initializer == "ranet" else initializer

    stem = apply_ranet_stem(inputs, [n_channels * g for g in gr_factor], scale_list, initializer=stem_init)
    blocks_per_flow = ranet_blocks_per_flow(num_flows, num_blocks, block_step)
    outputs = []
    coarser_flow: list[list] = []
    for f in range(num_flows):
        x = stem[f]
        growth = growth_rate * gr_factor[f]
        transitions = ranet_transition_blocks(blocks_per_flow[f], scale_list[f])
        downs = ranet_down_blocks(blocks_per_flow, f, scale_list[f])
        this_flow = []
        for b in range(1, blocks_per_flow[f] + 1):
            common = dict(num_layers=step if step_mode == "even" else step * b, growth_rate=growth,
                          bn_factor=bn_factor[f], reduction=reduction if b in transitions else None,
                          name=f"f{f + 1}_b{b}", initializer=body_init)
            if b <= len(coarser_flow):
                x, layer_outputs = apply_ranet_fusion_block(
                    x, coarser_flow[b - 1], coarser_bn_factor=bn_factor[f - 1], compress_factor=compress_factor,
                    down=b in downs, **common)
            else:
                x, layer_outputs = apply_ranet_dense_block(x, **common)
                outputs.append(apply_classifier_head(x, num_classes, "msdnet", head_channels,
                                                     name=f"exit_{len(outputs) + 1}", initializer=body_init))
            this_flow.append(layer_outputs)
        coarser_flow = this_flow
    return outputs


@keras.saving.register_keras_serializable(package="tf_fusionnet")
class RANet(MultiExitModel):
    """Resolution Adaptive Network (Yang et al., CVPR 2020), the official CIFAR configuration.

    The defaults are ``train_cifar.sh`` with the official ``args.py`` defaults: 4 flows at scales
    1-2-3-3 (8x8, 16x16, 32x32, 32x32 on CIFAR), 2, 4, 6 and 8 blocks of 4 layers, one exit after
    every dense block: 8 exits.

    Args:
        num_classes: classes of every exit.
        image_shape: (height, width, channels) of the input, at least 16x16.
        n_channels: base channels (``nChannels``); flow ``i`` starts with ``n_channels * gr_factor[i]``.
        growth_rate: base channels per layer (``growthRate``), times ``gr_factor[i]`` in flow ``i``.
        gr_factor: per-flow channel multipliers, coarsest flow first (``grFactor``).
        bn_factor: per-flow bottleneck width multipliers (``bnFactor``).
        scale_list: per-flow resolution index, 1 the coarsest (``scale-list``); equal neighbours
            share a resolution.
        num_blocks: blocks of the first flow (``nBlocks``).
        block_step: blocks every further flow adds (``block-step``).
        step: layers per block (``step``); with ``step_mode="lg"`` block ``b`` has ``step * b``.
        step_mode: "even" or "lg" (``stepmode``).
        compress_factor: share of a fusion layer's new channels taken from the coarser flow
            (``compress-factor``).
        reduction: channel reduction of the transitions (``reduction``).
        head_channels: channels of the exit classifiers' convs (128 in the official CIFAR head).
        initializer: "ranet" (the official init: normal(0, sqrt(2/n)) convs, zero Dense bias,
            PyTorch's default in the first layer), or one of "pytorch", "msdnet", "keras" everywhere.

    Example:
    ```python
    model = RANet(num_classes=10)          # 8 exits, 94.9M MACs at the last one
    logits_per_exit = model(np.zeros((1, 32, 32, 3)))
    ```
    """

    def __init__(
        self,
        num_classes: int = 10,
        image_shape: Sequence[int] = (32, 32, 3),
        n_channels: int = 16,
        growth_rate: int = 6,
        gr_factor: Sequence[int] = (4, 2, 1, 1),
        bn_factor: Sequence[int] = (4, 2, 1, 1),
        scale_list: Sequence[int] = (1, 2, 3, 3),
        num_blocks: int = 2,
        block_step: int = 2,
        step: int = 4,
        step_mode: str = "even",
        compress_factor: float = 0.25,
        reduction: float = 0.5,
        head_channels: int = 128,
        initializer: str = "ranet",
        name: str | None = None,
        **kwargs,
    ):
        _check_kwargs("RANet", kwargs)
        config = architecture_arguments(RANet.__init__, locals())
        image_shape = validate_image_shape(image_shape)
        config["image_shape"] = list(image_shape)
        inputs = keras.Input(shape=image_shape, name="image")
        outputs = build_ranet_outputs(inputs, **{key: value for key, value in config.items() if key != "image_shape"})
        super().__init__(inputs=inputs, outputs=outputs, name=name or "ranet", **kwargs)
        self._arch_config = config

