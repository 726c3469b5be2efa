"""The training recipe: every knob of train.py, with the paper's values as defaults.

``train.py`` defines one command-line flag per field, so the defaults live here only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any


def _f(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclasses.dataclass
class TrainConfig:
    # Data
    dataset: str = _f("sample", "sample (embedded CIFAR-10 sample), cifar10, cifar100, or a path to a "
                      "local CIFAR archive/folder or an image folder ROOT/{train,test}/<class>/*.")
    tfds_data_dir: str = _f("", "tensorflow-datasets data dir (default: tfds' own).")
    image_size: str = _f("", "Resize every image to H,W (default: keep the data's size).")
    val_size: int = _f(-1, "Training images held out for validation; -1: 5000 for CIFAR, 10% for folders.")
    seed: int = _f(0, "Seed of the validation split, the shuffling, augmentation and initialisation.")
    # Model
    preset: str = _f("fusionnet-cifar", "Model preset (python -m tf_fusionnet.summary --list).")
    # Recipe
    epochs: int = _f(300, "Training epochs.")
    batch_size: int = _f(512, "Global batch size.")
    lr: float = _f(-1.0, "Peak learning rate; -1: 0.1 * batch_size / 512 (the paper's 0.1 at batch 512).")
    warmup_epochs: float = _f(20.0, "Epochs of linear warmup from 0 to the peak learning rate.")
    momentum: float = _f(0.9, "SGD momentum.")
    weight_decay: float = _f(1e-4, "Weight decay coefficient (see --weight_decay_style).")
    weight_decay_style: str = _f("coupled", "coupled: PyTorch SGD's L2 added to the gradient before the momentum "
                                 "(the paper's MSDNet recipe); decoupled: Keras's w -= lr*wd*w (10x weaker "
                                 "at momentum 0.9).")
    decay_norm_and_bias: bool = _f(True, "Also decay BatchNorm gamma/beta and biases (the official code decays "
                                   "every parameter).")
    exit_weights: str = _f("", "Comma-separated loss weight per exit (default: 1 for every exit).")
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
    mixed_precision: bool = _f(False, "mixed_float16 compute (GPUs).")
    jit_compile: bool = _f(False, "XLA-compile the train step (GPUs; slower on the project's CPUs).")
    inter_op_threads: int = _f(0, "TensorFlow inter-op threads (0: TensorFlow's choice). 2 with "
                               "--intra_op_threads 1 trained fastest on the project's 2-core CPUs.")
    intra_op_threads: int = _f(0, "TensorFlow intra-op threads (0: TensorFlow's choice).")
    verbose: int = _f(1, "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line per epoch.")

    def peak_lr(self) -> float:
        return self.lr if self.lr > 0 else 0.1 * self.batch_size / 512

    def run_dir(self) -> str:
        return self.output or f"runs/{self.preset}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))
