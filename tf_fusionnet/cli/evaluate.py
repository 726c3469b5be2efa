"""Evaluate train.py runs: anytime prediction and budgeted batch classification.

    python evaluate.py --run runs/fusionnet-cifar
    python evaluate.py --run runs/fusion --run runs/msdnet --out runs/compare
    python evaluate.py --run RUN --budget 40e6 --calibrate

Writes RUN/eval/{probs.npz, anytime.json/.csv/.png, budgeted.json/.csv/.png, ...};
with several runs, overlay plots in --out.
"""

import math
import sys

from tf_fusionnet.console import one_line, run_tool, setup_environment  # noqa: E402  (before TensorFlow loads)

setup_environment()

from absl import flags  # noqa: E402

flags.DEFINE_multi_string("run", None, "Run directory of train.py (repeat for several runs).")
flags.DEFINE_enum("checkpoint", "model", ["model", "best"], "model.keras (last epoch) or best.keras.")
flags.DEFINE_float("budget", None, "Average MACs per image: fit thresholds on validation for it and report test.")
flags.DEFINE_bool("calibrate", False, "Also fit per-exit temperature scaling on validation and compare.")
flags.DEFINE_string("dataset", None, "Read the data from here instead of the run's --dataset.")
flags.DEFINE_string("out", "runs/compare", "Folder of the overlay plots when several runs are given.")
flags.DEFINE_integer("batch_size", 500, "Inference batch size.")
flags.DEFINE_bool("verbose", False, "Show TensorFlow's C++ start-up log, and progress bars even when output "
                  "is not a terminal.")
FLAGS = flags.FLAGS


def check_flags() -> str | None:
    """The first bad flag as one line, or None."""
    if not FLAGS.run:
        return "give at least one --run RUN_DIR"
    if FLAGS.batch_size < 1:
        return f"--batch_size must be an integer >= 1, got {FLAGS.batch_size}"
    if FLAGS.budget is not None and not (math.isfinite(FLAGS.budget) and FLAGS.budget > 0):
        return f"--budget must be a positive number of MACs, got {FLAGS.budget}"
    return None


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    problem = check_flags()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    from tf_fusionnet.runs.reading import load_run

    try:
        for run_dir in FLAGS.run:
            load_run(run_dir)  # before TensorFlow loads: a wrong path is answered at once
    except ValueError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    from tf_fusionnet.console import import_tensorflow

    import_tensorflow(verbose=FLAGS.verbose)
    from tf_fusionnet.evaluation.report import check_compare_dir, compare_runs, evaluate_run, format_summary

    summaries = []
    try:
        if len(FLAGS.run) > 1:
            check_compare_dir(FLAGS.out)  # before the evaluations, which take minutes
        for run_dir in FLAGS.run:
            summary = evaluate_run(run_dir, FLAGS.checkpoint, FLAGS.budget, FLAGS.calibrate,
                                   FLAGS.dataset, FLAGS.batch_size,
                                   1 if FLAGS.verbose or sys.stdout.isatty() else 0)
            print(format_summary(summary))
            print(f"wrote {summary['run'].eval_dir}/\n")
            summaries.append(summary)
        if len(summaries) > 1:
            paths = compare_runs(summaries, FLAGS.out)
            print("overlay plots: " + ", ".join(paths))
    except (ValueError, OSError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    return 0


def run() -> None:
    """Console entry point (``pyproject.toml``): the same tool as the script."""
    run_tool(main, __doc__, __name__)


if __name__ == "__main__":
    run()
