"""Evaluate train.py runs: anytime prediction and budgeted batch classification.

    python evaluate.py --run runs/fusionnet-cifar
    python evaluate.py --run runs/fusion --run runs/msdnet --out runs/compare
    python evaluate.py --run RUN --budget 40e6 --calibrate

Writes RUN/eval/{probs.npz, anytime.json/.csv/.png, budgeted.json/.csv/.png, ...};
with several runs, overlay plots in --out.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TF leaves oneDNN off on CPUs without AVX-512 VNNI/BF16 or AMX (e.g. AMD Zen 3); on: 1.6x faster training.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

import sys

from absl import app, flags

flags.DEFINE_multi_string("run", None, "Run directory of train.py (repeat for several runs).")
flags.DEFINE_enum("checkpoint", "model", ["model", "best"], "model.keras (last epoch) or best.keras.")
flags.DEFINE_float("budget", None, "Average MACs per image: fit thresholds on validation for it and report test.")
flags.DEFINE_bool("calibrate", False, "Also fit per-exit temperature scaling on validation and compare.")
flags.DEFINE_string("dataset", None, "Read the data from here instead of the run's --dataset.")
flags.DEFINE_string("out", "runs/compare", "Folder of the overlay plots when several runs are given.")
flags.DEFINE_integer("batch_size", 500, "Inference batch size.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    if not FLAGS.run:
        print("error: give at least one --run RUN_DIR", file=sys.stderr)
        return 2
    from tf_fusionnet.evaluation.report import compare_runs, evaluate_run, format_summary

    summaries = []
    try:
        for run_dir in FLAGS.run:
            summary = evaluate_run(run_dir, FLAGS.checkpoint, FLAGS.budget, FLAGS.calibrate,
                                   FLAGS.dataset, FLAGS.batch_size)
            print(format_summary(summary))
            print(f"wrote {summary['run'].eval_dir}/\n")
            summaries.append(summary)
        if len(summaries) > 1:
            paths = compare_runs(summaries, FLAGS.out)
            print("overlay plots: " + ", ".join(paths))
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    app.run(main)
