"""Export a train.py run as a TFLite bundle: one model per exit stage, plus the cascade runner.

    python export/to_tflite.py --run RUN --out BUNDLE [--precision float32,int8] [--standalone]

The bundle folder is the deliverable: copy it to a device, `pip install ai-edge-litert numpy
pillow`, and run `python BUNDLE/cascade_runner.py IMAGES... --budget MACS`.
"""

import os
import sys

from tf_fusionnet.console import one_line, run_tool, setup_environment  # noqa: E402  (before TensorFlow loads)

setup_environment()

from absl import flags  # noqa: E402

flags.DEFINE_string("run", None, "Run directory of train.py.")
flags.DEFINE_string("preset", None, "Instead of --run: a trained preset folder (save_to_preset). Its data is "
                    "--dataset (default: the dataset its run recorded), and the budget thresholds come from "
                    "training images (--thresholds_from train, the default here) or none: a preset keeps no "
                    "validation split.")
flags.DEFINE_string("out", None, "Bundle folder to write. An existing one is replaced only if it is a bundle "
                    "this tool wrote; never the run or a folder inside or above it.")
flags.DEFINE_list("precision", ["float32", "int8"], "Precisions: float32, float16, int8.")
flags.DEFINE_bool("standalone", False, "Also write exit_k.tflite (image -> exit k) per precision.")
flags.DEFINE_enum("checkpoint", "model", ["model", "best"], "model.keras (last epoch) or best.keras.")
flags.DEFINE_integer("calibration_images", 200, "Training-split images for int8 calibration (>= 1).")
flags.DEFINE_integer("report_images", 0, "Test images for the accuracy checks in report.json (0: all).")
flags.DEFINE_string("dataset", None, "Read the data from here instead of the run's --dataset.")
flags.DEFINE_enum("thresholds_from", "val", ["val", "train", "none"],
                  "Fit the budget thresholds on the validation split (val), on training-split images "
                  "(train: optimistic, for runs without validation data) or not at all (none).")
flags.DEFINE_list("exits", None, "Exits to keep, e.g. 2,4,7 (default all): fewer stages to chain and fewer "
                  "exit heads to run; the bundle's exit k is the model's k-th listed exit.")
flags.DEFINE_bool("pixels_in", True, "Stage 1 reads the uint8 image and normalises it in its graph; --nopixels_in: "
                  "it reads the normalised image, which the runner computes in numpy (as bundles before format 4).")
flags.DEFINE_bool("int8_boundaries", True, "int8 stages hand their feature maps on as int8 (int8 inputs and "
                  "outputs); --noint8_boundaries: float32 inputs and outputs, (de)quantised inside each stage.")
flags.DEFINE_bool("web", False, "Also write the web runtime (BUNDLE/web/: a page running the cascade with "
                  "LiteRT.js, about 28 MB) and its stages; open it with python -m tf_fusionnet.runtime.serve BUNDLE.")
flags.DEFINE_string("litertjs", None, "--web: the node_modules folder holding LiteRT.js (default: "
                    "$TF_FUSIONNET_LITERTJS, else tf_fusionnet/runtime/web/node_modules; npm ci there).")
flags.DEFINE_bool("verbose", False, "Show TensorFlow's C++ start-up log and the converter's messages.")
FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 2
    if bool(FLAGS.run) == bool(FLAGS.preset) or not FLAGS.out:
        print("error: --out and one of --run or --preset are required", file=sys.stderr)
        return 2
    if FLAGS.preset:
        return _export_preset()
    import contextlib

    from tf_fusionnet.runs.reading import load_run
    from tf_fusionnet.export.destination import check_exits, check_export_arguments, check_out_dir

    exits = None
    try:  # before TensorFlow loads: a wrong path or number is answered at once
        run = load_run(FLAGS.run)
        check_out_dir(FLAGS.out, FLAGS.run)
        check_export_arguments(FLAGS.precision, FLAGS.calibration_images, FLAGS.report_images, FLAGS.thresholds_from)
        if FLAGS.exits is not None:
            try:
                exits = [int(e) for e in FLAGS.exits]
            except ValueError:
                raise ValueError(f"--exits must be comma-separated exit numbers, got {','.join(FLAGS.exits)}") from None
            check_exits(exits, len(run.exit_macs))
        if FLAGS.web:
            from tf_fusionnet.export.web import find_litertjs

            find_litertjs(FLAGS.litertjs)
    except (ValueError, OSError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    from tf_fusionnet.console import captured_stderr_fd, import_tensorflow

    import_tensorflow(verbose=FLAGS.verbose)
    from tf_fusionnet.export.bundle import export_bundle

    try:
        print(f"exporting {_SOURCE or FLAGS.run} -> {FLAGS.out}", flush=True)
        # The TFLite converter logs its MLIR passes to fd 2; kept unless something unexpected fails.
        quiet = contextlib.nullcontext() if FLAGS.verbose else captured_stderr_fd((ValueError, OSError))
        with quiet:
            report = export_bundle(FLAGS.run, FLAGS.out, FLAGS.precision, FLAGS.standalone, FLAGS.checkpoint,
                                   FLAGS.calibration_images, FLAGS.report_images, FLAGS.dataset,
                                   thresholds_from=FLAGS.thresholds_from,
                                   exits=exits, int8_boundaries=FLAGS.int8_boundaries,
                                   pixels_in=FLAGS.pixels_in, web=FLAGS.web, litertjs=FLAGS.litertjs)
    except (ValueError, OSError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 1
    print(f"wrote {FLAGS.out}/ in {report['export_seconds']} s (manifest.json, report.json, cascade_runner.py"
          + (f", web/index.html: python -m tf_fusionnet.runtime.serve {FLAGS.out}" if FLAGS.web else "") + ")")
    return 0


_SOURCE: str | None = None  # what the user named, where --preset exports through a temporary run folder


def _export_preset() -> int:
    """--preset: the preset as a temporary run folder, then the run's export."""
    import tempfile

    from tf_fusionnet.console import import_tensorflow

    import_tensorflow(verbose=FLAGS.verbose)  # before the models package loads Keras, so quietly
    from tf_fusionnet.models.preset_files import is_preset_dir
    from tf_fusionnet.presets import trained_preset_dir

    named = FLAGS.preset
    if not os.path.isdir(FLAGS.preset):  # a shipped trained preset, by name (issue 45)
        try:
            FLAGS.preset = trained_preset_dir(FLAGS.preset) or FLAGS.preset
        except ValueError as error:
            print(f"error: {one_line(error)}", file=sys.stderr)
            return 1
    if not is_preset_dir(FLAGS.preset):
        print(f"error: --preset {FLAGS.preset}: not a preset folder (written by save_to_preset)", file=sys.stderr)
        return 1
    if not FLAGS["thresholds_from"].present:
        FLAGS.thresholds_from = "train"
    if FLAGS.thresholds_from == "val":
        print("error: --preset keeps no validation split: use --thresholds_from train or none", file=sys.stderr)
        return 1
    from tf_fusionnet.data.sources import DataError
    from tf_fusionnet.loading import LoadError, preset_as_run

    with tempfile.TemporaryDirectory(prefix="tf_fusionnet_preset_run_") as tmp:
        try:
            FLAGS.run = preset_as_run(FLAGS.preset, os.path.join(tmp, "run"), FLAGS.dataset)
        except (LoadError, DataError, ValueError, OSError) as error:
            print(f"error: {one_line(error)}", file=sys.stderr)
            return 1
        global _SOURCE
        _SOURCE, FLAGS.preset = named, None
        return main([sys.argv[0]])


def run() -> None:
    """Console entry point (``pyproject.toml``): the same tool as the script."""
    run_tool(main, __doc__, __name__)


if __name__ == "__main__":
    run()
