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

Interrupted? Run the same command again: training resumes from each run's last finished epoch
(a finished run is not trained again) and the evaluation reuses its cached logits.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tf_fusionnet.console import setup_environment  # noqa: E402  (before TensorFlow loads)

setup_environment()

import csv
import json
import shutil
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from absl import app, flags

from common import cascade_sweep, paired_errors, percent as _pct, run_command as _run  # noqa: E402
from tf_fusionnet.evaluation.curves import interpolate  # noqa: E402

flags.DEFINE_string("data", os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg.tar.gz"), "Dataset.")
flags.DEFINE_list("presets", ["fusionnet-cifar", "msdnet-cifar-anytime"], "Presets to compare.")
flags.DEFINE_integer("epochs", 10, "Epochs per model.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
flags.DEFINE_float("lr", 0.05, "Peak learning rate.")
flags.DEFINE_float("warmup_epochs", 1, "Warmup epochs.")
flags.DEFINE_float("mix_prob", 0.0, "CutMix/MixUp probability per batch.")
flags.DEFINE_integer("val_size", 5000, "Held-out validation images.")
flags.DEFINE_integer("cascade_images", 0, "Test images for the cascade sweep (0: all 10,000; ~20 min on 2 cores).")
flags.DEFINE_string("work", "runs/cifar10_cpu", "Run directories and bundles (not committed).")
flags.DEFINE_string("out", "benchmarks/results/cifar10_cpu", "Results folder.")
flags.DEFINE_bool("smoke", False, "Tiny presets on the embedded sample, 1 epoch: checks the pipeline.")
flags.DEFINE_bool("report_only", False, "Only (re)write results.md from the results already in --out.")
FLAGS = flags.FLAGS


def _delta(a, b) -> str:
    return "-" if a is None or b is None else f"{100 * (a - b):+.2f}"


def write_report(out: str) -> str:
    """Writes out/results.md: the README table and the matched-cost verdict, from summary.json.

    The first preset is the candidate, every other one a baseline (``--presets
    fusionnet-cifar,msdnet-cifar-anytime,ranet-cifar`` compares against both); a baseline's
    curves are interpolated at the candidate's costs (never extrapolated).
    """
    from tf_fusionnet.utils import atomic_write_text

    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    models = list(summary["models"].items())
    lines = []
    for (base, base_m) in models[1:]:
        lines += _comparison(summary, out, models[0], (base, base_m))
        lines.append("")
    lines[-1:] = ["", "Training wall clock (2 CPU cores): " + "; ".join(
        f"{p}: {summary['wall_clock_seconds'].get(f'train {p}', 0) / 60:.0f} min"
        + (f" ({sum(m['train_epoch_seconds']) / 60:.0f} min in {len(m['train_epoch_seconds'])} epochs)"
           if m.get("train_epoch_seconds") else "")
        for p, m in models) + ".", ""]
    text = "\n".join(lines)
    atomic_write_text(os.path.join(out, "results.md"), text)
    return text


def _comparison(summary: dict, out: str, candidate: tuple, baseline: tuple) -> list[str]:
    """The tables and goal checks of the candidate against one baseline."""
    (cand, cand_m), (base, base_m) = candidate, baseline
    budgeted, num_val = {}, 0
    for preset in (cand, base):
        with open(os.path.join(out, preset, "budgeted.json")) as f:
            fitted = json.load(f)
        num_val = fitted["num_val"]
        budgeted[preset] = ([p["avg_macs"] for p in fitted["points"]], [p["top1"] for p in fitted["points"]])
    # Running only exit 1, or every image to the last exit, are operating points too (all
    # thresholds at -inf / +inf), and a mix of two policies reaches any cost between them, so
    # the curves are read between those ends as well.
    extended = {}
    for preset, model in ((cand, cand_m), (base, base_m)):
        ends = [model["anytime"][0], model["anytime"][-1]]
        extended[preset] = (budgeted[preset][0] + [e["macs"] for e in ends],
                            budgeted[preset][1] + [e["top1"] for e in ends])
    base_x = [e["macs"] for e in base_m["anytime"]]
    base_y = [e["top1"] for e in base_m["anytime"]]

    lines = [f"Candidate `{cand}`, baseline `{base}`; test top-1 (%), MACs per image.", "",
             "Anytime prediction:", "",
             f"| exit | {cand} MMACs | {cand} top-1 | {base} MMACs | {base} top-1 "
             f"| {base} top-1 at {cand}'s MACs | difference |", "|---|---|---|---|---|---|---|"]
    anytime_deltas = []
    for i in range(max(len(cand_m["anytime"]), len(base_m["anytime"]))):
        c = cand_m["anytime"][i] if i < len(cand_m["anytime"]) else None
        b = base_m["anytime"][i] if i < len(base_m["anytime"]) else None
        matched = interpolate(base_x, base_y, c["macs"]) if c else None
        if c and matched is not None:
            anytime_deltas.append(c["top1"] - matched)
        lines.append(f"| {i + 1} | {c['macs'] / 1e6:.2f} | {_pct(c['top1'])} | " if c else f"| {i + 1} | - | - | ")
        lines[-1] += (f"{b['macs'] / 1e6:.2f} | {_pct(b['top1'])} | " if b else "- | - | ")
        lines[-1] += f"{_pct(matched)} | {_delta(c['top1'] if c else None, matched)} |"

    base_at_cand = [(y, interpolate(*extended[base], x)) for x, y in zip(*budgeted[cand])]
    budget_deltas = [y - matched for y, matched in base_at_cand if matched is not None]
    lines += ["", f"Budgeted batch classification (thresholds fitted on the {num_val:,} validation images) and the "
              "cascade runner on the exported bundles (1 thread, batch 1; ms interpolated at the budget):", "",
              "| average MACs | " + " | ".join(f"{p} top-1 | {p} float32 ms | {p} int8 ms" for p in (cand, base)) + " |",
              "|---|" + "---|---|---|" * 2]
    for millions in (20, 40, 60):
        row = f"| {millions}M |"
        for preset in (cand, base):
            row += f" {_pct(interpolate(*extended[preset], millions * 1e6))} |"
            for precision in ("float32", "int8"):
                points = summary["cascade"].get(f"{preset} {precision}", [])
                ms = interpolate([p["mean_macs"] for p in points], [p["mean_ms"] for p in points], millions * 1e6)
                row += " - |" if ms is None else f" {ms:.2f} |"
        lines.append(row)

    ratio = cand_m["anytime"][-1]["macs"] / base_m["anytime"][-1]["macs"]
    lines += ["", "Goal checks:", "",
              f"- Anytime, {cand} minus {base} at {cand}'s exits: "
              + ", ".join(f"{100 * d:+.2f}" for d in anytime_deltas)
              + f" points ({sum(d >= 0 for d in anytime_deltas)} of {len(anytime_deltas)} at or above)."
              if anytime_deltas else f"- Anytime: no {cand} exit inside {base}'s cost range.",
              f"- Budgeted, at {cand}'s {len(budget_deltas)} operating points inside {base}'s range: "
              f"{sum(d >= 0 for d in budget_deltas)} at or above, difference from "
              f"{100 * min(budget_deltas):+.2f} to {100 * max(budget_deltas):+.2f} points."
              if budget_deltas else "- Budgeted: no overlapping cost range.",
              f"- Last exit: {cand_m['anytime'][-1]['macs'] / 1e6:.2f}M / {base_m['anytime'][-1]['macs'] / 1e6:.2f}M "
              f"MACs = {ratio:.3f}x (goal <= 0.85x: {'met' if ratio <= 0.85 else 'not met'})."]
    first_baseline = list(summary["models"])[1]
    paired = summary.get("paired_exit_differences_by_baseline", {}).get(base) or (
        summary.get("paired_exit_differences") if base == first_baseline else None)
    if paired:
        errors = [100 * p["standard_error"] for p in paired]
        lines.append(f"- Noise: on the same test images, the top-1 difference between the two models' "
                     f"same-numbered exits has a paired standard error of {min(errors):.2f} to {max(errors):.2f} "
                     f"points, so differences smaller than about {2 * max(errors):.1f} points (two standard "
                     "errors) are not resolved by this test set.")
    return lines


def main(argv):
    if FLAGS.report_only:
        print(write_report(FLAGS.out))
        return 0
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
    # Training resumes where an earlier invocation stopped (train.py's BackupAndRestore), so its
    # wall clock is summed over invocations in WORK/timings.json.
    os.makedirs(FLAGS.work, exist_ok=True)
    timings_path = os.path.join(FLAGS.work, "timings.json")
    spent = json.load(open(timings_path)) if os.path.exists(timings_path) else {}
    for preset, run in runs.items():
        key = f"train {preset}"
        spent[key] = round(spent.get(key, 0.0) + _run([sys.executable, "train.py", "--preset", preset,
                                                        "--output", run, *recipe]), 1)
        atomic_write_json(timings_path, spent)
        timings[key] = spent[key]
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
        summary["models"][preset] = {"anytime": anytime}
        for name in ("anytime.json", "anytime.csv", "budgeted.json", "budgeted.csv"):
            os.makedirs(os.path.join(FLAGS.out, preset), exist_ok=True)
            shutil.copy(os.path.join(eval_dir, name), os.path.join(FLAGS.out, preset, name))
        shutil.copy(os.path.join(run, "log.csv"), os.path.join(FLAGS.out, preset, "log.csv"))
        with open(os.path.join(run, "log.csv")) as f:
            epoch_seconds = [row.get("epoch_seconds") for row in csv.DictReader(f)]
        summary["models"][preset]["train_epoch_seconds"] = (
            [float(t) for t in epoch_seconds] if all(epoch_seconds) else None)
    # How far apart two ~80% classifiers land on the same test images by chance: the scale
    # against which the matched-cost differences in results.md are read.
    run_dirs = list(runs.values())
    summary["paired_exit_differences"] = paired_errors(*run_dirs[:2])
    summary["paired_exit_differences_by_baseline"] = {p: paired_errors(run_dirs[0], r)
                                                      for p, r in list(runs.items())[1:]}
    atomic_write_json(os.path.join(FLAGS.out, "summary.json"), summary)
    print(write_report(FLAGS.out))
    print(f"wrote {FLAGS.out}/ (summary.json, results.md, anytime.png, budgeted.png, cascade_ms.png)")
    return 0


if __name__ == "__main__":
    app.run(main)
