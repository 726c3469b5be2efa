"""Per-exit MACs and parameter counts of a preset.

Usage:
    python -m tf_fusionnet.summary PRESET [--num_classes N] [--input_shape H,W,C] [--json]
    python -m tf_fusionnet.summary --list
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import sys
from typing import Any, Sequence

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("num_classes", 10, "Number of classes.")
flags.DEFINE_string("input_shape", "32,32,3", "Input shape as H,W,C.")
flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
flags.DEFINE_bool("list", False, "List every preset and exit.")


def parse_shape(text: str) -> tuple[int, int, int]:
    """Parses "H,W,C" into three positive ints."""
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--input_shape must be H,W,C integers, got {text!r}.") from None
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"--input_shape must be three positive integers H,W,C, got {text!r}.")
    return shape  # type: ignore[return-value]


def model_summary(preset: str, num_classes: int = 10, image_shape: Sequence[int] = (32, 32, 3)) -> dict[str, Any]:
    """Builds a preset and returns its per-exit cumulative MACs and parameters."""
    from tf_fusionnet.models.macs import exit_macs, trainable_params
    from tf_fusionnet.presets import build_model

    model = build_model(preset, num_classes=num_classes, image_shape=image_shape)
    return {
        "preset": preset,
        "num_classes": num_classes,
        "input_shape": list(image_shape),
        "exit_macs": exit_macs(model),
        "trainable_params": trainable_params(model),
    }


def format_table(summary: dict[str, Any]) -> str:
    lines = [
        f"{summary['preset']}  ({summary['num_classes']} classes, input "
        f"{'x'.join(str(v) for v in summary['input_shape'])})",
        f"{'exit':>4}  {'cumulative MACs':>16}  {'(M)':>8}",
    ]
    for k, macs in enumerate(summary["exit_macs"], start=1):
        lines.append(f"{k:>4}  {macs:>16,}  {macs / 1e6:>8.3f}")
    lines.append(f"trainable params: {summary['trainable_params']:,}")
    return "\n".join(lines)


flags.DEFINE_bool("verbose", False, "Show TensorFlow's C++ start-up log.")


def trained_table() -> str:
    """The trained presets (weights shipped; ``tf_fusionnet.load_model(NAME)``): data, and test top-1
    and cumulative MACs of the first and last exit."""
    from tf_fusionnet.presets import trained_presets

    try:
        trained = trained_presets()
    except ValueError as error:
        return f"trained presets: {error}"
    if not trained:
        return "trained presets (weights shipped): none yet"
    lines = ["trained presets (weights shipped; tf_fusionnet.load_model(NAME)):",
             f"  {'name':24s} {'class':10s} {'data':24s} {'first exit':>18s} {'last exit':>18s}"]
    for name, e in trained.items():
        first, last = e.get("first_exit", {}), e.get("last_exit", {})
        cell = lambda x: f"{100 * x['top1']:.2f}% @ {x['macs'] / 1e6:.1f}M" if x else "-"
        lines.append(f"  {name:24s} {e.get('class', '?'):10s} {str(e.get('data', '?'))[:24]:24s} {cell(first):>18s} "
                     f"{cell(last):>18s}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    from tf_fusionnet.presets import PRESETS

    if FLAGS.list:
        print("architectures (fresh weights; Class.from_preset(NAME, num_classes=...)):")
        for name, preset in PRESETS.items():
            print(f"  {name:32s} {preset['description']}")
        print(trained_table())
        return 0
    if len(argv) != 2:
        print("usage: python -m tf_fusionnet.summary PRESET [--num_classes N] "
              "[--input_shape H,W,C] [--json]  (or --list)", file=sys.stderr)
        return 2
    preset = argv[1]
    try:
        shape = parse_shape(FLAGS.input_shape)
        if preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}. Available: {', '.join(PRESETS)}.")
        from tf_fusionnet.console import import_tensorflow, setup_environment

        setup_environment()
        import_tensorflow(verbose=FLAGS.verbose)
        summary = model_summary(preset, FLAGS.num_classes, shape)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(summary) if FLAGS.json else format_table(summary))
    return 0


def console_main() -> None:
    """Console entry point ``tf-fusionnet-summary``."""
    app.run(main)


if __name__ == "__main__":
    app.run(main)
