"""Building blocks shared by MSDNet and FusionNet.

Every block is a small ``apply_*`` function on Keras tensors. Layer names are
structured (``b{block}_l{layer}_s{scale}_...``) so that the per-exit cost
counter and the stage exporter can tell which part of the network a layer
belongs to.

All convolutions are conv -> BatchNorm -> ReLU, without bias, as in the
official MSDNet-PyTorch code (``ConvBasic`` and ``ConvBN``).
"""

from __future__ import annotations

import math
from typing import Sequence

from keras import initializers, layers

from tf_fusionnet.models.layers import BatchNormalization as FusedBatchNormalization
from tf_fusionnet.models.layers import GradientRescale

BN_MOMENTUM = 0.9  # PyTorch's BatchNorm momentum 0.1 expressed the Keras way.
BN_EPSILON = 1e-5  # PyTorch's BatchNorm default.

INITIALIZERS = ("pytorch", "msdnet", "keras")
TRANSITIONS = ("fusionnet", "msdnet")


def conv_initializer(scheme: str, depthwise: bool = False) -> initializers.Initializer:
    """Kernel initializer of a convolution under an initialisation scheme.

    ``"pytorch"``: PyTorch's default ``kaiming_uniform_(a=sqrt(5))``, i.e.
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)). This is what the official MSDNet code
    actually runs: its ``_init_weights`` is called on the direct children of
    each block's ``nn.Sequential`` (MSDNet layers, not ``Conv2d``), so it never
    reaches a convolution (see docs/architecture.md).
    ``"msdnet"``: what that ``_init_weights`` declares, normal(0, sqrt(2 / n))
    with PyTorch's ``n = k * k * out_channels``.
    ``"keras"``: Keras's truncated ``he_normal`` (fan-in), this project's old default.

    Keras counts a depthwise kernel ``(k, k, C, 1)`` as fan_in ``k*k*C`` and
    fan_out ``k*k``; PyTorch's weight ``(C, 1, k, k)`` has fan_in ``k*k`` and
    ``n = k*k*C``: hence the swapped modes.
    """
    if scheme == "pytorch":
        return initializers.VarianceScaling(1.0 / 3.0, "fan_out" if depthwise else "fan_in", "uniform")
    if scheme == "msdnet":
        return initializers.VarianceScaling(2.0, "fan_in" if depthwise else "fan_out", "untruncated_normal")
    if scheme == "keras":
        return initializers.HeNormal()
    raise ValueError(f"Unknown initializer {scheme!r}; expected one of {', '.join(INITIALIZERS)}.")


def dense_initializers(scheme: str, fan_in: int) -> tuple[initializers.Initializer, initializers.Initializer]:
    """(kernel, bias) initializers of an exit's Dense layer.

    ``"pytorch"``: ``nn.Linear``'s default, kernel and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    ``"msdnet"``: the same kernel, zero bias (what the official ``_init_weights`` declares).
    ``"keras"``: Glorot uniform kernel, zero bias.
    """
    torch_kernel = initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")
    if scheme == "pytorch":
        bound = 1.0 / math.sqrt(fan_in)
        return torch_kernel, initializers.RandomUniform(-bound, bound)
    if scheme == "msdnet":
        return torch_kernel, initializers.Zeros()
    if scheme == "keras":
        return initializers.GlorotUniform(), initializers.Zeros()
    raise ValueError(f"Unknown initializer {scheme!r}; expected one of {', '.join(INITIALIZERS)}.")


def apply_batch_norm(x, name: str):
    """PyTorch-default BatchNorm (momentum 0.1, eps 1e-5) on TensorFlow's fused kernel."""
    return FusedBatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)(x)


def apply_conv_bn_relu(
    x,
    filters: int,
    kernel_size: int,
    strides: int = 1,
    name: str = "conv",
    initializer: str = "pytorch",
):
    """Conv (no bias) -> BN -> ReLU; MSDNet's ``ConvBasic``."""
    x = layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer=conv_initializer(initializer),
        name=f"{name}_conv",
    )(x)
    x = apply_batch_norm(x, name=f"{name}_bn")
    return layers.ReLU(name=f"{name}_relu")(x)


def apply_depthwise_separable(
    x, filters: int, strides: int = 1, name: str = "dwsep", initializer: str = "pytorch"
):
    """3x3 depthwise conv -> BN -> ReLU -> 1x1 pointwise conv -> BN -> ReLU."""
    x = layers.DepthwiseConv2D(
        3,
        strides=strides,
        padding="same",
        use_bias=False,
        depthwise_initializer=conv_initializer(initializer, depthwise=True),
        name=f"{name}_dw",
    )(x)
    x = apply_batch_norm(x, name=f"{name}_dw_bn")
    x = layers.ReLU(name=f"{name}_dw_relu")(x)
    return apply_conv_bn_relu(x, filters, 1, name=f"{name}_pw", initializer=initializer)


def apply_bottleneck_conv(
    x,
    filters: int,
    bottleneck_factor: int,
    strides: int,
    bottleneck: bool = True,
    name: str = "convbn",
    initializer: str = "pytorch",
):
    """MSDNet's ``ConvBN``: optional 1x1 bottleneck, then a 3x3 conv.

    The bottleneck width is ``min(C_in, bottleneck_factor * filters)``.
    """
    if bottleneck:
        in_channels = x.shape[-1]
        inner = min(in_channels, bottleneck_factor * filters)
        x = apply_conv_bn_relu(x, inner, 1, name=f"{name}_1x1", initializer=initializer)
    return apply_conv_bn_relu(x, filters, 3, strides=strides, name=f"{name}_3x3", initializer=initializer)


def apply_msdnet_stem(
    x, scale_channels: Sequence[int], name: str = "stem", initializer: str = "pytorch"
):
    """MSDNet's CIFAR first layer: one 3x3 conv per scale, each from the previous.

    Scale 1 keeps the input resolution; each further scale halves it.
    """
    features = []
    for s, channels in enumerate(scale_channels):
        x = apply_conv_bn_relu(
            x, channels, 3, strides=1 if s == 0 else 2, name=f"{name}_s{s + 1}",
            initializer=initializer,
        )
        features.append(x)
    return features


def apply_efficient_stem(
    x,
    scale_channels: Sequence[int],
    stem_channels: int,
    stem_stride: int = 2,
    name: str = "stem",
    initializer: str = "pytorch",
):
    """FusionNet's efficient stem, then one strided 3x3 conv per coarser scale.

    3x3 conv -> 3x3 depthwise-separable conv -> 1x1 conv (+ residual from the
    first conv) -> 3x3 depthwise-separable conv with stride ``stem_stride``,
    which gives scale 1. Scales 2.. come from strided 3x3 convs as in MSDNet
    (the paper's h~_1^2 and h~_1^3).
    """
    init = dict(initializer=initializer)
    first = apply_conv_bn_relu(x, stem_channels, 3, name=f"{name}_conv1", **init)
    y = apply_depthwise_separable(first, stem_channels, name=f"{name}_dwsep2", **init)
    y = apply_conv_bn_relu(y, stem_channels, 1, name=f"{name}_conv3", **init)
    y = layers.Add(name=f"{name}_residual")([first, y])
    y = apply_depthwise_separable(
        y, scale_channels[0], strides=stem_stride, name=f"{name}_dwsep4", **init
    )
    features = [y]
    for s in range(1, len(scale_channels)):
        y = apply_conv_bn_relu(y, scale_channels[s], 3, strides=2, name=f"{name}_s{s + 1}", **init)
        features.append(y)
    return features


def apply_msd_layer(
    features: list,
    *,
    first_scale: int,
    discard: int,
    growth_rate: int,
    gr_factor: Sequence[int],
    bn_factor: Sequence[int],
    bottleneck: bool,
    fusion: bool,
    name: str,
    read_dropped_scale: bool = True,
    initializer: str = "pytorch",
):
    """One multi-scale dense layer.

    Args:
        features: the live scale states after the previous layer, finest first.
            ``features[i]`` is absolute scale ``first_scale - discard + i``.
        first_scale: absolute (0-based) index of the finest scale this layer
            writes.
        discard: how many of the finest input scales this layer drops (0 or 1).
        fusion: FusionNet's fusion layer. The strided path into scale s reads
            the state of scale s-1 *after* this layer (it includes x_l^{s-1}),
            so scales are computed fine to coarse. MSDNet reads the state after
            the previous layer.
        read_dropped_scale: at a layer that drops a scale (``discard`` 1),
            whether the new finest scale still reads the dropped one through a
            strided conv (MSDNet). False is the paper's transition, "equivalent
            to the original version, except it disregards the previous scale":
            MSDNet's down + normal pair without its down half, so the new
            finest scale grows by the normal path's ``growth_rate * gr_factor[s] // 2``
            channels from its own state only.

    Returns:
        The new states of the written scales, finest first.
    """
    outputs = []
    num_out = len(features) - discard
    for i in range(num_out):
        s = first_scale + i
        current = features[i + discard]
        new_channels = growth_rate * gr_factor[s]
        init = dict(initializer=initializer)
        if i == 0 and (discard == 0 or not read_dropped_scale):
            if discard:  # MSDNet's down+normal pair less its down half
                new_channels //= 2
            normal = apply_bottleneck_conv(
                current, new_channels, bn_factor[s], 1, bottleneck, name=f"{name}_s{s + 1}_normal", **init
            )
            outputs.append(layers.Concatenate(name=f"{name}_s{s + 1}_cat")([current, normal]))
            continue
        if fusion and i > 0:
            previous = outputs[i - 1]
        else:
            previous = features[i + discard - 1]
        down = apply_bottleneck_conv(
            previous, new_channels // 2, bn_factor[s - 1], 2, bottleneck, name=f"{name}_s{s + 1}_down", **init
        )
        normal = apply_bottleneck_conv(
            current, new_channels // 2, bn_factor[s], 1, bottleneck, name=f"{name}_s{s + 1}_normal", **init
        )
        outputs.append(
            layers.Concatenate(name=f"{name}_s{s + 1}_cat")([current, down, normal])
        )
    return outputs


def apply_transition(
    features: list, *, first_scale: int, out_base: int, gr_factor, name: str, initializer: str = "pytorch"
):
    """Per-scale 1x1 conv-BN-ReLU to ``out_base * gr_factor[s]`` channels.

    Each scale is reduced on its own: no input from any other scale.
    """
    return [
        apply_conv_bn_relu(
            x, out_base * gr_factor[first_scale + i], 1, name=f"{name}_s{first_scale + i + 1}",
            initializer=initializer,
        )
        for i, x in enumerate(features)
    ]


def apply_classifier_head(
    x,
    num_classes: int,
    head_type: str,
    head_channels: int = 128,
    name: str = "exit",
    initializer: str = "pytorch",
):
    """Exit classifier on the coarsest scale.

    ``"msdnet"``: 3x3/s2 conv, 3x3/s2 conv, average pooling, Dense.
    ``"fusion"``: 3x3/s2 conv, 1x1 conv, global average pooling, Dense.

    Global average pooling stands in for MSDNet's ``AvgPool2d(2)``: on 32x32
    inputs the map is 2x2 there, so both are the same operation (and cost),
    and GAP also works for other input sizes.
    The Dense layer is float32 so logits stay float32 under mixed precision.
    """
    init = dict(initializer=initializer)
    x = apply_conv_bn_relu(x, head_channels, 3, strides=2, name=f"{name}_conv1", **init)
    if head_type == "msdnet":
        x = apply_conv_bn_relu(x, head_channels, 3, strides=2, name=f"{name}_conv2", **init)
    elif head_type == "fusion":
        x = apply_conv_bn_relu(x, head_channels, 1, strides=1, name=f"{name}_conv2", **init)
    else:
        raise ValueError(f"Unknown head_type {head_type!r}; expected 'msdnet' or 'fusion'.")
    x = layers.GlobalAveragePooling2D(name=f"{name}_pool")(x)
    kernel_init, bias_init = dense_initializers(initializer, head_channels)
    return layers.Dense(
        num_classes, dtype="float32", kernel_initializer=kernel_init, bias_initializer=bias_init, name=name
    )(x)


def block_steps(num_blocks: int, step_mode: str, step: int, base: int) -> list[int]:
    """Layers per block: ``base`` first, then ``step`` ("even") or ``step*i+1`` ("lin_grow")."""
    if step_mode not in ("even", "lin_grow"):
        raise ValueError(f"Unknown step_mode {step_mode!r}; expected 'even' or 'lin_grow'.")
    steps = [base]
    for i in range(1, num_blocks):
        steps.append(step if step_mode == "even" else step * i + 1)
    return steps


def scale_schedule(total_layers: int, num_scales: int) -> list[tuple[int, int]]:
    """(in_scales, out_scales) of every layer under MSDNet's prune "max"."""
    interval = math.ceil(total_layers / num_scales)
    schedule = []
    for n in range(1, total_layers + 1):
        in_scales = num_scales - math.floor(max(0, n - 2) / interval)
        out_scales = num_scales - math.floor((n - 1) / interval)
        schedule.append((in_scales, out_scales))
    return schedule


def build_multi_exit_outputs(
    inputs,
    *,
    num_classes: int,
    num_blocks: int,
    step_mode: str,
    step: int,
    base: int,
    n_channels: int,
    growth_rate: int,
    gr_factor: Sequence[int],
    bn_factor: Sequence[int],
    reduction: float,
    bottleneck: bool,
    fusion: bool,
    efficient_stem: bool,
    stem_channels: int,
    stem_stride: int,
    head_type: str,
    head_channels: int,
    transition: str = "msdnet",
    initializer: str = "pytorch",
    gradient_equilibrium: bool = False,
) -> tuple[list, list[list]]:
    """Builds the multi-scale dense network.

    ``transition="fusionnet"`` is the paper's transition: a layer that drops a
    scale no longer reads it (see :func:`apply_msd_layer`), and the 1x1
    channel-halving transition after it works within each scale.
    ``"msdnet"``: the dropped scale is still read through a strided conv.
    ``gradient_equilibrium``: IMTA's rescaling on the coarsest scale after block i of K (1-based):
    the gradient from exit i's head times 1/(K - i + 1), from the later blocks times
    (K - i)/(K - i + 1) (:class:`GradientRescale`; the forward pass is unchanged).

    Returns:
        ``(exit_logits, block_states)``: the logits of every exit, and for every
        block the multi-scale feature maps after it (finest first), which is
        exactly what the next block reads.
    """
    num_scales = len(gr_factor)
    if len(bn_factor) != num_scales:
        raise ValueError("gr_factor and bn_factor must have one entry per scale.")
    if transition not in TRANSITIONS:
        raise ValueError(f"Unknown transition {transition!r}; expected one of {', '.join(TRANSITIONS)}.")
    if initializer not in INITIALIZERS:
        raise ValueError(f"Unknown initializer {initializer!r}; expected one of {', '.join(INITIALIZERS)}.")
    read_dropped_scale = transition == "msdnet"
    init = dict(initializer=initializer)
    steps = block_steps(num_blocks, step_mode, step, base)
    schedule = scale_schedule(sum(steps), num_scales)

    scale_channels = [n_channels * g for g in gr_factor]
    if efficient_stem:
        features = apply_efficient_stem(inputs, scale_channels, stem_channels, stem_stride, **init)
    else:
        features = apply_msdnet_stem(inputs, scale_channels, **init)

    n = n_channels
    layer_index = 0
    outputs = []
    block_states = []
    for b, num_layers in enumerate(steps):
        for j in range(num_layers):
            in_scales, out_scales = schedule[layer_index]
            layer_index += 1
            first_scale = num_scales - out_scales
            name = f"b{b + 1}_l{j + 1}"
            discard = in_scales - out_scales
            if discard and not read_dropped_scale and j == 0 and block_states:
                # The dropped scale is not read again, so the previous block does
                # not hand it over (nor is its cost charged to a later exit).
                block_states[-1] = block_states[-1][discard:]
            features = apply_msd_layer(
                features,
                first_scale=first_scale,
                discard=discard,
                growth_rate=growth_rate,
                gr_factor=gr_factor,
                bn_factor=bn_factor,
                bottleneck=bottleneck,
                fusion=fusion,
                name=name,
                read_dropped_scale=read_dropped_scale,
                **init,
            )
            n += growth_rate
            if in_scales > out_scales and reduction > 0:
                n_out = math.floor(reduction * n)
                features = apply_transition(
                    features,
                    first_scale=first_scale,
                    out_base=n_out,
                    gr_factor=gr_factor,
                    name=f"{name}_transition",
                    **init,
                )
                n = n_out
        head_input = features[-1]
        if gradient_equilibrium:
            later = len(steps) - b  # this exit and every later one
            head_input = GradientRescale(1.0 / later, name=f"b{b + 1}_equilibrium")(head_input)
            if later > 1:
                features = features[:-1] + [GradientRescale(later - 1.0, name=f"b{b + 1}_equilibrium_trunk")(head_input)]
        block_states.append(list(features))
        outputs.append(
            apply_classifier_head(
                head_input, num_classes, head_type, head_channels, name=f"exit_{b + 1}", **init
            )
        )
    return outputs, block_states


def validate_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    """Checks an (H, W, C) input shape and returns it as a tuple of ints."""
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (height, width, channels), got {tuple(image_shape)}.")
    h, w, c = (int(v) for v in image_shape)
    if h < 16 or w < 16:
        raise ValueError(f"Images must be at least 16x16, got {h}x{w}.")
    if c < 1:
        raise ValueError(f"Images need at least one channel, got {c}.")
    return h, w, c


__all__ = [
    "INITIALIZERS",
    "TRANSITIONS",
    "conv_initializer",
    "dense_initializers",
    "apply_batch_norm",
    "apply_conv_bn_relu",
    "apply_depthwise_separable",
    "apply_bottleneck_conv",
    "apply_msdnet_stem",
    "apply_efficient_stem",
    "apply_msd_layer",
    "apply_transition",
    "apply_classifier_head",
    "block_steps",
    "scale_schedule",
    "build_multi_exit_outputs",
    "validate_image_shape",
]
