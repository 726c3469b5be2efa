"""The training recipe: every knob of train.py, with the paper's values as defaults.

``train.py`` defines one command-line flag per field, so the defaults live here only.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import field
from typing import Any

from tf_fusionnet.training.precision import JIT_SETTINGS, PRECISIONS


def _model_class(preset: str) -> str | None:
    from tf_fusionnet.presets import PRESETS

    return PRESETS.get(preset, {}).get("class")


def _f(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclasses.dataclass
class TrainConfig:
    # Data
    dataset: str = _f("sample", "sample (embedded CIFAR-10 sample), cifar10, cifar100, or a path to a "
                      "local CIFAR archive/folder or an image folder ROOT/{train,test}/<class>/*.")
    tfds_data_dir: str = _f("", "tensorflow-datasets data dir (default: tfds' own).")
    image_size: str = _f("", "Resize every image to H,W (default: keep the data's size).")
    channels: int = _f(0, "Channels of an image folder (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA); 0: the majority "
                       "of the training images'. Every image is converted to it (docs/reliability.md).")
    val_size: int = _f(-1, "Training images held out for validation; -1: 5000 for CIFAR, 10% for folders.")
    seed: int = _f(0, "Seed of the validation split, the shuffling, augmentation and initialisation.")
    # Model
    preset: str = _f("fusionnet-cifar", "Model preset (python -m tf_fusionnet.summary --list).")
    init_from: str = _f("", "Start from a trained preset folder's weights and normalisation (save_to_preset; "
                        "the same architecture as --preset builds for this data) to fine-tune it.")
    # Recipe
    epochs: int = _f(300, "Training epochs.")
    batch_size: int = _f(512, "Global batch size.")
    lr: float = _f(-1.0, "Peak learning rate; -1: 0.1 * batch_size / 512 (the paper's 0.1 at batch 512).")
    warmup_epochs: float = _f(-1.0, "Epochs of linear warmup from 0 to the peak learning rate; -1: the paper's "
                              "share, 20 of every 300 epochs (20 at --epochs 300, 2 at 30). Below --epochs.")
    lr_schedule: str = _f("cosine", "cosine: warmup, then cosine decay to 0 (the paper); step: the peak rate "
                          "multiplied by --lr_step_factor at each epoch of --lr_milestones (the official MSDNet "
                          "code's 150,225), no warmup.")
    lr_milestones: str = _f("150,225", "Epochs at which --lr_schedule step multiplies the rate by --lr_step_factor.")
    lr_step_factor: float = _f(0.1, "Factor of each step of --lr_schedule step.")
    momentum: float = _f(0.9, "SGD momentum.")
    weight_decay: float = _f(1e-4, "Weight decay coefficient (see --weight_decay_style).")
    weight_decay_style: str = _f("coupled", "coupled: PyTorch SGD's L2 added to the gradient before the momentum "
                                 "(the paper's MSDNet recipe); decoupled: Keras's w -= lr*wd*w (10x weaker "
                                 "at momentum 0.9).")
    decay_norm_and_bias: bool = _f(True, "Also decay BatchNorm gamma/beta and biases (the official code decays "
                                   "every parameter).")
    exit_weights: str = _f("", "Comma-separated loss weight per exit (default: 1 for every exit).")
    distill_alpha: float = _f(0.0, "Exit distillation: weight of the soft term each exit but the last learns from "
                              "a later exit's softened prediction (0: off; docs/training.md).")
    distill_temperature: float = _f(3.0, "Exit distillation temperature T (teacher and student softmax at T).")
    distill_teacher: str = _f("last", "Exit distillation teacher: last (the last exit) or later_mean (the mean of "
                              "the softened predictions of every later exit).")
    gradient_equilibrium: bool = _f(False, "IMTA's gradient equilibrium (MSDNet and FusionNet): the gradient each "
                                    "exit and the later blocks send into a block's coarsest scale rescaled so "
                                    "that every exit reaches a block with the same weight (docs/training.md).")
    label_smoothing: float = _f(0.1, "Label smoothing of the cross-entropy.")
    random_crop: bool = _f(True, "Zero-pad and random-crop back to size.")
    pad: int = _f(-1, "Padding per side for the random crop; -1: size // 8 (4 for 32x32).")
    flip: bool = _f(True, "Random horizontal flips.")
    mix_prob: float = _f(1.0, "Probability that a batch gets CutMix or MixUp (0 disables both).")
    cutmix_share: float = _f(0.5, "Share of mixed batches that use CutMix (the rest MixUp).")
    mixup_alpha: float = _f(0.8, "MixUp Beta(alpha, alpha).")
    cutmix_alpha: float = _f(1.0, "CutMix Beta parameter.")
    # Output and devices
    output: str = _f("", "Run directory (default: runs/<preset>).")
    strategy: str = _f("default", "default | mirrored | multiworker (TF_CONFIG).")
    num_cpu_devices: int = _f(0, "Split the CPU into this many logical devices (to try 'mirrored' without GPUs).")
    checkpoint_steps: int = _f(0, "With --strategy multiworker: also checkpoint every N steps (0: every epoch "
                               "only), so a lost worker costs at most N steps.")
    precision: str = _f("auto", "auto | machine | float32 | mixed_bfloat16 | mixed_float16. auto: mixed_float16 on "
                        "a GPU, mixed_bfloat16 on a CPU with avx512_bf16/amx_bf16, else float32 (a resumed run "
                        "keeps its own); machine: the same choice made again at every start, so a run resumed on "
                        "another machine takes that machine's (log.csv records each epoch's); float32 turns it "
                        "off.")
    jit_compile: str = _f("auto", "auto | on | off: XLA for the train step; auto: on a GPU only (it halved "
                          "the throughput on the project's CPUs).")
    inter_op_threads: int = _f(-1, "TensorFlow inter-op threads. -1 (auto): 2, with 1 intra-op thread, on a "
                               "2-core machine without a GPU (measured fastest there, docs/training.md), else "
                               "TensorFlow's choice; 0: TensorFlow's choice.")
    intra_op_threads: int = _f(-1, "TensorFlow intra-op threads (-1: auto, see --inter_op_threads; 0: "
                               "TensorFlow's choice).")
    verbose: int = _f(-1, "-1: a progress bar on a terminal, one line per epoch otherwise; 0 silent; 1 progress "
                      "bar; 2 one line per epoch; 3 as 2 plus TensorFlow's C++ start-up log.")

    def validate(self) -> None:
        """Raises ValueError naming the first setting out of its range (before any work is done)."""
        finite = lambda v: math.isfinite(v)
        checks = [
            ("epochs", self.epochs >= 1, "an integer >= 1"),
            ("batch_size", self.batch_size >= 1, "an integer >= 1"),
            ("lr", finite(self.lr) and (self.lr > 0 or self.lr == -1), "> 0 (or -1 for the linear-scaling default)"),
            ("warmup_epochs", finite(self.warmup_epochs) and (self.warmup_epochs >= 0 or self.warmup_epochs == -1),
             "a number >= 0 (or -1 for the paper's share)"),
            ("lr_schedule", self.lr_schedule in ("cosine", "step"), "cosine or step"),
            ("warmup_epochs", self.lr_schedule != "step" or self.warmup_epochs <= 0,
             "0 with --lr_schedule step (the official MSDNet schedule has no warmup)"),
            # The warmup ends at the peak rate; at or past the last epoch the run never trains at it.
            ("warmup_epochs", self.warmup() == 0 or self.warmup() < self.epochs,
             f"below --epochs ({self.epochs}): a warmup of the whole run never reaches the peak learning rate"),
            ("lr_step_factor", finite(self.lr_step_factor) and 0 < self.lr_step_factor <= 1, "in (0, 1]"),
            ("momentum", finite(self.momentum) and 0 <= self.momentum < 1, "in [0, 1)"),
            ("weight_decay", finite(self.weight_decay) and self.weight_decay >= 0, "a number >= 0"),
            ("weight_decay_style", self.weight_decay_style in ("coupled", "decoupled"), "coupled or decoupled"),
            ("distill_alpha", finite(self.distill_alpha) and 0 <= self.distill_alpha <= 1, "in [0, 1]"),
            ("distill_temperature", finite(self.distill_temperature) and self.distill_temperature > 0, "a number > 0"),
            ("distill_teacher", self.distill_teacher in ("last", "later_mean"), "last or later_mean"),
            ("gradient_equilibrium", not self.gradient_equilibrium or _model_class(self.preset) != "RANet",
             "off for a RANet preset (IMTA defines it on MSDNet's single trunk of blocks)"),
            ("label_smoothing", finite(self.label_smoothing) and 0 <= self.label_smoothing < 1, "in [0, 1)"),
            ("pad", self.pad >= -1, "an integer >= 0 (or -1 for size // 8)"),
            ("mix_prob", finite(self.mix_prob) and 0 <= self.mix_prob <= 1, "in [0, 1]"),
            ("cutmix_share", finite(self.cutmix_share) and 0 <= self.cutmix_share <= 1, "in [0, 1]"),
            ("mixup_alpha", finite(self.mixup_alpha) and self.mixup_alpha > 0, "a number > 0"),
            ("cutmix_alpha", finite(self.cutmix_alpha) and self.cutmix_alpha > 0, "a number > 0"),
            ("val_size", self.val_size >= -1, "an integer >= 0 (or -1 for the default)"),
            ("seed", self.seed >= 0, "an integer >= 0"),
            ("channels", self.channels in (0, 1, 2, 3, 4), "0 (majority), 1, 2, 3 or 4"),
            ("precision", self.precision in PRECISIONS, "one of " + ", ".join(PRECISIONS)),
            ("jit_compile", self.jit_compile in JIT_SETTINGS, "one of " + ", ".join(JIT_SETTINGS)),
            ("strategy", self.strategy in ("default", "mirrored", "multiworker"), "default, mirrored or multiworker"),
            ("num_cpu_devices", self.num_cpu_devices >= 0, "an integer >= 0"),
            ("checkpoint_steps", self.checkpoint_steps >= 0, "an integer >= 0"),
            ("inter_op_threads", self.inter_op_threads >= -1, "an integer >= 0 (or -1 for auto)"),
            ("intra_op_threads", self.intra_op_threads >= -1, "an integer >= 0 (or -1 for auto)"),
            ("verbose", self.verbose in (-1, 0, 1, 2, 3), "-1, 0, 1, 2 or 3"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ValueError(f"--{name} must be {expected}, got {getattr(self, name)!r}")

    def keras_verbose(self, stdout_is_terminal: bool) -> int:
        """Keras ``fit`` verbosity: a progress bar only where a terminal redraws it."""
        if self.verbose == -1:
            return 1 if stdout_is_terminal else 2
        return min(self.verbose, 2)

    def distillation(self):
        """The run's :class:`ExitDistillation` (``enabled`` is False at alpha 0)."""
        from tf_fusionnet.training.distillation import ExitDistillation

        return ExitDistillation(self.distill_alpha, self.distill_temperature, self.distill_teacher)

    def model_overrides(self) -> dict[str, Any]:
        """Constructor arguments the recipe sets on the preset's model."""
        return {"gradient_equilibrium": True} if self.gradient_equilibrium else {}

    def warmup(self) -> float:
        """Warmup epochs: ``warmup_epochs``, or for -1 the paper's share (20 of 300 epochs; none for
        --lr_schedule step)."""
        if self.warmup_epochs >= 0:
            return float(self.warmup_epochs)
        return 0.0 if self.lr_schedule == "step" else self.epochs * 20 / 300

    def peak_lr(self) -> float:
        return self.lr if self.lr > 0 else 0.1 * self.batch_size / 512

    def run_dir(self) -> str:
        return self.output or f"runs/{self.preset}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))


def parse_milestones(text: str, epochs: int | None = None) -> list[int]:
    """``--lr_milestones`` as increasing epochs >= 1 (and below ``epochs`` when given)."""
    try:
        milestones = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--lr_milestones must be comma-separated epochs, got {text!r}") from None
    if not milestones or any(m < 1 for m in milestones) or milestones != sorted(set(milestones)):
        raise ValueError(f"--lr_milestones must be increasing epochs >= 1, got {text!r}")
    if epochs is not None and milestones[-1] >= epochs:
        raise ValueError(f"--lr_milestones {text}: every milestone must be below --epochs ({epochs})")
    return milestones


def parse_exit_weights(text: str, num_exits: int | None = None) -> list[float]:
    """Per-exit loss weights; with ``num_exits`` None only the format is checked."""
    if not text:
        return [1.0] * (num_exits or 0)
    try:
        weights = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--exit_weights must be comma-separated numbers, got {text!r}") from None
    if not all(math.isfinite(w) and w >= 0 for w in weights) or not any(weights):
        raise ValueError(f"--exit_weights must be finite, >= 0 and not all 0, got {text!r}")
    if num_exits is not None and len(weights) != num_exits:
        raise ValueError(f"--exit_weights has {len(weights)} values but the model has {num_exits} exits")
    return weights
