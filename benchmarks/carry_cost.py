"""What a compact carry costs a run at once: validation top-1 per exit from the run's full backup
against the same weights after a compact round trip (bfloat16 weights; issue 44).

    python benchmarks/carry_cost.py --run RUN --out benchmarks/results/paper300/carry_cost.json

The momentum the compact form drops costs nothing at this moment (it only steers the next
steps); the weights' rounding is what the model loses at the carry, measured here on the
run's own validation split.
"""

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from tf_fusionnet.console import import_tensorflow, setup_environment

    setup_environment()
    import_tensorflow()
    import keras
    import numpy as np

    from tf_fusionnet.runs.compact import compact_weights, expand_weights
    from tf_fusionnet.runs.reading import load_run, load_run_data
    from tf_fusionnet.presets import build_model
    from tf_fusionnet.utils import atomic_write_json, machine_info

    run = load_run(args.run)
    data, _, val_idx = load_run_data(run)
    mean = np.asarray(run.preprocessing["mean"], np.float32)
    std = np.asarray(run.preprocessing["std"], np.float32)
    x = (data.train_images[val_idx].astype(np.float32) - mean) / std
    y = data.train_labels[val_idx]
    model = build_model(run.config["preset"], num_classes=run.config["num_classes"],
                        image_shape=tuple(run.preprocessing["image_shape"]))
    from tf_fusionnet.training.config import TrainConfig, config_fields
    from tf_fusionnet.training.trainer import make_optimizer

    known = {f.name for f in config_fields()}
    config = TrainConfig(**{k: v for k, v in run.config["train"].items() if k in known})
    model.compile(optimizer=make_optimizer(config, 100))  # the run's optimizer, so its state loads too
    model.optimizer.build(model.trainable_variables)
    backup = os.path.join(args.run, "backup", "latest.weights.h5")

    def top1() -> list[float]:
        outputs = model.predict(x, batch_size=500, verbose=0)
        return [float(np.mean(np.argmax(o, -1) == y)) for o in outputs]

    model.load_weights(backup)
    full = top1()
    with tempfile.TemporaryDirectory() as tmp:
        compact, expanded = os.path.join(tmp, "c.h5"), os.path.join(tmp, "e.weights.h5")
        compact_weights(backup, compact)
        expand_weights(compact, expanded)
        model.load_weights(expanded)
        carried = top1()
        sizes = {"full_mb": os.path.getsize(backup) / 2**20, "compact_mb": os.path.getsize(compact) / 2**20}
    with open(os.path.join(args.run, "backup", "training_metadata.json")) as f:
        epoch = json.load(f)["epoch"]
    result = {"run": os.path.basename(os.path.abspath(args.run)), "epoch": epoch, "validation_images": int(len(y)),
              "val_top1_full": full, "val_top1_after_compact_carry": carried,
              "difference_points": [100 * (c - f) for c, f in zip(carried, full)], **sizes,
              "machine": machine_info(), "command": "python " + " ".join(sys.argv)}
    atomic_write_json(args.out, result)
    print(json.dumps({k: result[k] for k in ("epoch", "difference_points", "full_mb", "compact_mb")}, indent=1))


if __name__ == "__main__":
    main()
