"""MSDNet (CIFAR) in PyTorch, laid out as its authors' PyTorch code lays it out: the training-speed peer.

``benchmarks/train_throughput.py --peer`` times a training step of this model beside ours
(issue 49). It is written here from the architecture of kalviny/MSDNet-PyTorch
``models/msdnet.py`` (MIT) rather than fetched, since the benchmark machines reach no code
host; it stays outside the ``tf_fusionnet`` package and needs only ``torch``. What makes it
the same peer, module for module:

* every conv is conv (no bias) -> BatchNorm2d -> ReLU, NCHW, PyTorch's default init
  (the official ``_init_weights`` never reaches a conv, as ``docs/architecture.md`` says);
* a dense layer at a scale with a finer neighbour concatenates [same scale, strided conv of
  the finer scale, conv of the same scale] (each conv half the new channels), the finest
  output scale [input, conv of input]; a bottleneck 1x1 of ``min(C_in, bn_width * C_out)``
  channels precedes every 3x3;
* ``prune="max"`` scale dropping, a 1x1 transition halving the channels after a layer that
  drops a scale, and per block an exit of two 3x3/2 convs (128 channels), a 2x2 average pool
  and a linear layer on the coarsest scale;
* the anytime CIFAR setting: 7 blocks of 4, 2, 2, ... layers, 16 base channels, growth 6,
  scale factors 1-2-4.

:func:`conv_linear_macs` counts the forward MACs with the official counter's convention
for convs and linear layers; the benchmark checks them against ``exit_macs`` of our
``msdnet-cifar-anytime`` (ReLU and pooling, which our counter adds, are listed apart).
"""

from __future__ import annotations

import math

import torch
from torch import nn


def conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def dense_conv(c_in: int, c_out: int, stride: int, bottleneck: bool, bn_width: int) -> nn.Sequential:
    modules: list[nn.Module] = []
    inner = c_in
    if bottleneck:
        inner = min(c_in, bn_width * c_out)
        modules += list(conv_bn_relu(c_in, inner, 1, 1))
    modules += list(conv_bn_relu(inner, c_out, 3, stride))
    return nn.Sequential(*modules)


class FinestScaleGrowth(nn.Module):
    """[x, conv(x)]: the new channels of the finest scale still kept."""

    def __init__(self, c_in: int, c_new: int, bottleneck: bool, bn_width: int):
        super().__init__()
        self.conv = dense_conv(c_in, c_new, 1, bottleneck, bn_width)

    def forward(self, finer: torch.Tensor | None, same: torch.Tensor) -> torch.Tensor:
        return torch.cat([same, self.conv(same)], dim=1)


class CrossScaleGrowth(nn.Module):
    """[same, strided conv(finer), conv(same)], each conv half of the new channels."""

    def __init__(self, c_finer: int, c_same: int, c_new: int, bottleneck: bool, bn_finer: int, bn_same: int):
        super().__init__()
        self.down = dense_conv(c_finer, c_new // 2, 2, bottleneck, bn_finer)
        self.normal = dense_conv(c_same, c_new // 2, 1, bottleneck, bn_same)

    def forward(self, finer: torch.Tensor, same: torch.Tensor) -> torch.Tensor:
        return torch.cat([same, self.down(finer), self.normal(same)], dim=1)


class DenseLayer(nn.Module):
    """One layer over the scales still kept; ``in_scales - out_scales`` finest ones are dropped."""

    def __init__(self, base: int, growth: int, n_scales: int, in_scales: int, out_scales: int,
                 gr_factor: list[int], bn_factor: list[int], bottleneck: bool):
        super().__init__()
        self.dropping = in_scales > out_scales
        first = n_scales - out_scales
        units: list[nn.Module] = []
        for s in range(first, n_scales):
            if s == first and not self.dropping:
                units.append(FinestScaleGrowth(base * gr_factor[s], growth * gr_factor[s], bottleneck, bn_factor[s]))
            else:
                units.append(CrossScaleGrowth(base * gr_factor[s - 1], base * gr_factor[s], growth * gr_factor[s],
                                              bottleneck, bn_factor[s - 1], bn_factor[s]))
        self.units = nn.ModuleList(units)

    def forward(self, scales: list[torch.Tensor]) -> list[torch.Tensor]:
        if self.dropping:  # scales[0] is read once more, by the strided path, then dropped
            return [unit(scales[i], scales[i + 1]) for i, unit in enumerate(self.units)]
        out = [self.units[0](None, scales[0])]
        return out + [unit(scales[i], scales[i + 1]) for i, unit in enumerate(self.units[1:])]


class Transition(nn.Module):
    def __init__(self, c_in: int, c_out: int, first_scale: int, n_scales: int, gr_factor: list[int]):
        super().__init__()
        self.convs = nn.ModuleList(conv_bn_relu(c_in * gr_factor[s], c_out * gr_factor[s], 1, 1)
                                   for s in range(first_scale, n_scales))

    def forward(self, scales: list[torch.Tensor]) -> list[torch.Tensor]:
        return [conv(x) for conv, x in zip(self.convs, scales)]


class Stem(nn.Module):
    def __init__(self, channels: int, gr_factor: list[int]):
        super().__init__()
        convs, c_in = [], 3
        for s, factor in enumerate(gr_factor):
            convs.append(conv_bn_relu(c_in, channels * factor, 3, 1 if s == 0 else 2))
            c_in = channels * factor
        self.convs = nn.ModuleList(convs)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        scales = []
        for conv in self.convs:
            x = conv(x)
            scales.append(x)
        return scales


class Exit(nn.Module):
    def __init__(self, c_in: int, num_classes: int, width: int = 128):
        super().__init__()
        self.features = nn.Sequential(conv_bn_relu(c_in, width, 3, 2), conv_bn_relu(width, width, 3, 2),
                                      nn.AvgPool2d(2))
        self.linear = nn.Linear(width, num_classes)

    def forward(self, scales: list[torch.Tensor]) -> torch.Tensor:
        return self.linear(self.features(scales[-1]).flatten(1))


class MSDNetPeer(nn.Module):
    """MSDNet for 32x32 inputs; defaults are the anytime CIFAR setting (``msdnet-cifar-anytime``)."""

    def __init__(self, num_classes: int = 10, num_blocks: int = 7, base: int = 4, step: int = 2,
                 channels: int = 16, growth: int = 6, gr_factor: tuple[int, ...] = (1, 2, 4),
                 bn_factor: tuple[int, ...] = (1, 2, 4), reduction: float = 0.5, bottleneck: bool = True):
        super().__init__()
        gr, bn = list(gr_factor), list(bn_factor)
        n_scales = len(gr)
        steps = [base] + [step] * (num_blocks - 1)
        total = sum(steps)
        interval = math.ceil(total / n_scales)
        width, done = channels, 0
        self.blocks, self.exits = nn.ModuleList(), nn.ModuleList()
        for block_steps in steps:
            modules: list[nn.Module] = [Stem(channels, gr)] if done == 0 else []
            for _ in range(block_steps):
                done += 1
                in_scales = n_scales - max(0, done - 2) // interval
                out_scales = n_scales - (done - 1) // interval
                modules.append(DenseLayer(width, growth, n_scales, in_scales, out_scales, gr, bn, bottleneck))
                width += growth
                if in_scales > out_scales and reduction > 0:
                    narrower = math.floor(reduction * width)
                    modules.append(Transition(width, narrower, n_scales - out_scales, n_scales, gr))
                    width = narrower
            self.blocks.append(nn.Sequential(*modules))
            self.exits.append(Exit(width * gr[-1], num_classes))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        logits = []
        for block, exit_ in zip(self.blocks, self.exits):
            x = block(x)
            logits.append(exit_(x))
        return logits


def conv_linear_macs(model: nn.Module, image_size: int = 32) -> int:
    """Forward MACs of one image through every conv and linear layer (bias not counted for convs,
    counted for linear layers: the official counter's convention)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k_h, k_w = module.kernel_size
            total += (module.in_channels // module.groups) * module.out_channels * k_h * k_w * output.shape[2] * output.shape[3]
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features + module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
        model.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    return total
