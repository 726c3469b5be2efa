"""FusionNet against MSDNet on real CIFAR-10, trained the same way: train, evaluate, export, cascade.

    python benchmarks/cifar10_cpu.py                       # the real run (hours on 2 CPU cores)
    python benchmarks/cifar10_cpu.py --smoke               # tiny presets, sample data, 1 epoch

Steps, each timed: (1) train every preset with one identical recipe; (2) evaluate them
(anytime + budgeted, overlay plots); (3) export float32 and int8 bundles and run the cascade
runner over the test images at every budget of the manifest (accuracy against measured ms per
image, overlay plot); (4) write everything to --out (JSON, CSV, PNG; no checkpoints or data).

The recipe for a short schedule (defaults): batch 128, peak lr 0.05 after 1 warmup epoch, cosine
to 0, label smoothing 0.1, crop + flip, and no CutMix/MixUp (--mix_prob 0): with 10 epochs the
networks underfit, and heavy mixing slows convergence further.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np
from absl import app, flags

flags.DEFINE_string("data", os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz"), "Dataset.")
flags.DEFINE_list("presets", ["fusionnet-cifar", "msdnet-cifar-anytime"], "Presets to compare.")
flags.DEFINE_integer("epochs", 10, "Epochs per model.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("lr", 0.05, "Peak learning rate.")
flags.DEFINE_float("warmup_epochs", 1, "Warmup epochs.")
flags.DEFINE_float("mix_prob", 0.0, "CutMix/MixUp probability per batch.")
flags.DEFINE_integer("val_size", 5000, "Held-out validation images.")
flags.DEFINE_integer("cascade_images", 2000, "Test images for the cascade sweep (0: all).")
flags.DEFINE_string("work", "runs/cifar10_cpu", "Run directories and bundles (not committed).")
flags.DEFINE_string("out", "benchmarks/results/cifar10_cpu", "Results folder.")
flags.DEFINE_bool("smoke", False, "Tiny presets on the embedded sample, 1 epoch: checks the pipeline.")
FLAGS = flags.FLAGS


def _run(cmd: list[str]) -> float:
    print("$ " + " ".join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return round(time.time() - start, 1)


def interpolate(xs, ys, x):
    """Accuracy of a curve at cost x (None outside its range)."""
    points = sorted(zip(xs, ys))
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    if not xs or x < xs[0] or x > xs[-1]:
        return None
    return float(np.interp(x, xs, ys))


def cascade_sweep(bundle: str, precision: str, images: np.ndarray, labels: np.ndarray) -> list[dict]:
    from tf_fusionnet.export.cascade_runner import CascadeRunner

    runner = CascadeRunner(bundle, precision=precision, threads=1)
    points = []
    for entry in runner.manifest["thresholds"]:
        runner.thresholds = list(entry["thresholds"])
        runner.thresholds[-1] = float("-inf")
        start = time.perf_counter()
        results = [runner.classify(img)[0] for img in images]
        ms = (time.perf_counter() - start) * 1e3 / len(images)
        points.append({"budget_macs": entry["budget_macs"], "mean_ms": ms,
                       "mean_macs": float(np.mean([r["macs"] for r in results])),
                       "top1": float(np.mean([r["class"] == y for r, y in zip(results, labels)]))})
    return points


def main(argv):
    from tf_fusionnet.data.sources import load_dataset
    from tf_fusionnet.evaluation.plots import plot_curves
    from tf_fusionnet.utils import atomic_write_json, git_commit, library_versions

    presets = ["fusionnet-tiny", "msdnet-tiny"] if FLAGS.smoke else FLAGS.presets
    data = "sample" if FLAGS.smoke else os.path.abspath(FLAGS.data)
    epochs, val_size = (1, 50) if FLAGS.smoke else (FLAGS.epochs, FLAGS.val_size)
    batch = 64 if FLAGS.smoke else FLAGS.batch_size
    os.makedirs(FLAGS.out, exist_ok=True)
    timings: dict[str, float] = {}
    recipe = ["--dataset", data, "--epochs", str(epochs), "--batch_size", str(batch), "--lr", str(FLAGS.lr),
              "--warmup_epochs", str(FLAGS.warmup_epochs), "--mix_prob", str(FLAGS.mix_prob),
              "--val_size", str(val_size), "--seed", "0", "--verbose", "2",
              "--inter_op_threads", "2", "--intra_op_threads", "1"]
    runs = {p: os.path.join(FLAGS.work, p) for p in presets}
    for preset, run in runs.items():
        timings[f"train {preset}"] = _run([sys.executable, "train.py", "--preset", preset, "--output", run, *recipe])
    timings["evaluate"] = _run([sys.executable, "evaluate.py", *sum((["--run", r] for r in runs.values()), []),
                                "--out", FLAGS.out])
    bundles = {p: os.path.join(FLAGS.work, f"bundle-{p}") for p in presets}
    for preset, run in runs.items():
        timings[f"export {preset}"] = _run([sys.executable, "export/to_tflite.py", "--run", run, "--out",
                                            bundles[preset], "--precision", "float32,int8"])

    test = load_dataset(data)
    n = len(test.test_labels) if not FLAGS.cascade_images else min(FLAGS.cascade_images, len(test.test_labels))
    start = time.time()
    cascade = {f"{p} {prec}": cascade_sweep(bundles[p], prec, test.test_images[:n], test.test_labels[:n])
               for p in presets for prec in ("float32", "int8")}
    timings["cascade sweep"] = round(time.time() - start, 1)
    plot_curves(os.path.join(FLAGS.out, "cascade_ms.png"),
                [{"label": k, "x": [p["mean_ms"] for p in v], "y": [p["top1"] for p in v]} for k, v in cascade.items()],
                f"Cascade on device (1 thread, batch 1, {n} test images)", xlabel="mean ms per image", x_scale=1.0)

    summary = {"command": "python " + " ".join(sys.argv), "recipe": recipe, "versions": library_versions(),
               "git_commit": git_commit(), "wall_clock_seconds": timings, "models": {}, "cascade": cascade}
    for preset, run in runs.items():
        eval_dir = os.path.join(run, "eval")
        anytime = json.load(open(os.path.join(eval_dir, "anytime.json")))["exits"]
        points = json.load(open(os.path.join(eval_dir, "budgeted.json")))["points"]
        xs, ys = [p["avg_macs"] for p in points], [p["top1"] for p in points]
        summary["models"][preset] = {
            "anytime": anytime,
            "budgeted_top1_at": {f"{m}M": interpolate(xs, ys, m * 1e6) for m in (20, 40, 60)},
            "cascade_float32_ms_at": {f"{m}M": interpolate([p["mean_macs"] for p in cascade[f"{preset} float32"]],
                                                           [p["mean_ms"] for p in cascade[f"{preset} float32"]], m * 1e6)
                                      for m in (20, 40, 60)},
        }
        for name in ("anytime.json", "anytime.csv", "budgeted.json", "budgeted.csv"):
            os.makedirs(os.path.join(FLAGS.out, preset), exist_ok=True)
            shutil.copy(os.path.join(eval_dir, name), os.path.join(FLAGS.out, preset, name))
        shutil.copy(os.path.join(run, "log.csv"), os.path.join(FLAGS.out, preset, "log.csv"))
    atomic_write_json(os.path.join(FLAGS.out, "summary.json"), summary)
    for preset, m in summary["models"].items():
        print(f"{preset}: top-1 per exit " + ", ".join(f"{100 * e['top1']:.1f}" for e in m["anytime"])
              + "; budgeted at 20/40/60M: " + ", ".join("-" if v is None else f"{100 * v:.1f}"
                                                       for v in m["budgeted_top1_at"].values()))
    print(f"wrote {FLAGS.out}/ (summary.json, anytime.png, budgeted.png, cascade_ms.png)")
    return 0


if __name__ == "__main__":
    app.run(main)
