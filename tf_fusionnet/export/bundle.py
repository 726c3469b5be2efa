"""Writing a deployable bundle: per-stage TFLite models, manifest, runner, report."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from typing import Any, Sequence

import numpy as np

from tf_fusionnet import runtime
from tf_fusionnet.exits import softmax, thresholds_for_budget
from tf_fusionnet.runs.reading import load_checkpoint, load_run, load_run_data, run_logits
from tf_fusionnet.export.destination import (
    check_export_arguments,
    check_exits,
    check_out_dir,
    clean_stale_temporaries,
)
from tf_fusionnet.export.stages import (
    convert_to_tflite,
    exit_models,
    pixel_input_model,
    representative_feed,
    run_keras_stages,
    stage_models,
)
from tf_fusionnet.export.web import LITERTJS_VERSION, WEB_FOLDER, WEB_PRECISIONS, find_litertjs, write_web_runtime
from tf_fusionnet.models.macs import exit_macs
from tf_fusionnet.models.stage_cut import cut_stages


# A bundle's entry script: it checks and loads the runtime package copied beside it.
RUNNER_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cascade_runner.py")

def threshold_table(val_probs: np.ndarray, val_labels: np.ndarray, exit_macs: Sequence[float],
                    num_budgets: int = 12) -> list[dict]:
    """Thresholds fitted on held-out images for budgets from exit 1's cost to the last exit's.

    Thresholds are strict JSON (see ``runtime.encode_thresholds``).
    """
    if len(val_labels) == 0:
        raise ValueError("no images to fit thresholds on")
    table = []
    for budget in np.linspace(exit_macs[0], exit_macs[-1], num_budgets):
        fitted = thresholds_for_budget(val_probs, val_labels, exit_macs, float(budget))
        if fitted is None:
            continue
        val = fitted["val"]
        table.append({
            "budget_macs": float(budget),
            "thresholds": runtime.encode_thresholds(fitted["thresholds"]),
            "val_avg_macs": val.avg_macs,
            "val_top1": val.top1,
            "val_exit_shares": [c / max(1, len(val_labels)) for c in val.exit_counts],
        })
    return table


def strict_json(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None, so it dumps as strict JSON."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return obj


def _write_json(path: str, obj: Any) -> bytes:
    data = (json.dumps(strict_json(obj), indent=2, allow_nan=False) + "\n").encode()
    with open(path, "wb") as f:
        f.write(data)
    return data


def _log(verbose: bool, message: str) -> None:
    if verbose:
        print(message, flush=True)


def export_bundle(
    run_dir: str,
    out_dir: str,
    precisions: Sequence[str] = ("float32", "int8"),
    standalone: bool = False,
    checkpoint: str = "model",
    calibration_images: int = 200,
    report_images: int = 0,
    dataset: str | None = None,
    verbose: bool = True,
    thresholds_from: str = "val",
    exits: Sequence[int] | None = None,
    int8_boundaries: bool = True,
    pixels_in: bool = True,
    web: bool = False,
    litertjs: str | None = None,
) -> dict[str, Any]:
    """Exports a run as a bundle folder (see docs/export.md); returns the report.

    The bundle is written to a temporary sibling of ``out_dir`` and renamed into place; an
    existing ``out_dir`` is replaced only if it is a bundle this project wrote, and never if it
    is the run, inside it or above it.

    Args:
        precisions: any of "float32", "float16", "int8".
        standalone: also write ``exit_k.tflite`` (image -> exit k) per precision.
        calibration_images: training images (not validation) for int8 calibration.
        report_images: test images for the accuracy checks (0: all).
        thresholds_from: where the budget thresholds are fitted: "val" (the run's validation
            split), "train" (up to 5,000 training-split images: optimistic, the model has seen
            them; for runs trained with --val_size 0) or "none" (no table: the runner then
            needs explicit thresholds, or runs every image to the last exit).
        exits: the model's exits to keep, 1-based and increasing (None: all). Fewer exits mean
            fewer stages to chain and fewer exit heads to run; the bundle's exit k is the model's
            exit ``exits[k-1]`` (``model_exits`` in the manifest), and its MACs, thresholds and
            report count only the kept exits.
        int8_boundaries: int8 stages take and return int8 tensors (the feature maps go from stage
            to stage without being dequantised and quantised again; the runner quantises the
            image and dequantises the logits); False: float32 inputs and outputs, as before.
        pixels_in: stage 1 reads the uint8 image and normalises it in its graph, at every
            precision (the runner hands LiteRT the pixels as they are); False: stage 1 reads the
            normalised image, as before. Standalone ``exit_k`` files read the normalised image.
        web: also write the web runtime (``web/``: a page that runs the cascade with LiteRT.js,
            see docs/export.md, "In a web page") and its stages: batch 1, and for int8 float32
            inputs and outputs, the only kind LiteRT.js's JavaScript API takes. Needs ``pixels_in``
            and float32 or int8 among ``precisions``.
        litertjs: the ``node_modules`` folder to copy LiteRT.js from (default: see
            :func:`tf_fusionnet.export.web.find_litertjs`).
    """
    check_export_arguments(precisions, calibration_images, report_images, thresholds_from)
    web_precisions = [p for p in precisions if p in WEB_PRECISIONS] if web else []
    if web:
        if not web_precisions:
            raise ValueError(f"--web needs {' or '.join(WEB_PRECISIONS)} among --precision")
        if not pixels_in:
            raise ValueError("--web needs stage 1 to read the pixels: drop --nopixels_in")
        node_modules = find_litertjs(litertjs)
    start_time = time.time()
    run = load_run(run_dir)
    kept = check_exits(exits, len(run.exit_macs))
    check_out_dir(out_dir, run_dir)
    parent = os.path.dirname(os.path.abspath(out_dir))
    for entry in clean_stale_temporaries(parent):
        _log(verbose, f"removed {os.path.join(parent, entry)} (left by an export that was killed)")
    data, train_idx, val_idx = load_run_data(run, dataset)
    if thresholds_from == "val" and len(val_idx) == 0:
        raise ValueError(f"{run_dir} has no validation split (--val_size 0), so there is nothing to fit the "
                         "budget thresholds on: pass --thresholds_from train (optimistic: the model has seen "
                         "those images) or --thresholds_from none")
    model = load_checkpoint(run, checkpoint)
    logits = run_logits(run, checkpoint, dataset=dataset, verbose=0, loaded=(data, val_idx, model))
    if len(kept) < len(model.outputs):
        logits = {key: value[kept] if key.endswith("_logits") else value for key, value in logits.items()}
        bundle_exit_macs = exit_macs(model, kept)
    else:
        bundle_exit_macs = list(run.exit_macs)
    mean = np.asarray(run.preprocessing["mean"], np.float32)
    std = np.asarray(run.preprocessing["std"], np.float32)
    normalize = lambda x: ((x.astype(np.float32) - mean) / std).astype(np.float32)

    cut = cut_stages(model, kept)
    stages = stage_models(model, cut)
    num_exits = len(stages)
    rng = np.random.default_rng(0)
    calib_idx = np.sort(rng.choice(train_idx, size=min(calibration_images, len(train_idx)), replace=False))
    calib_feeds = run_keras_stages(stages, normalize(data.train_images[calib_idx]), cut)

    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".tmp-bundle-{os.getpid()}-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_dir, 0o777 & ~umask)  # mkdtemp makes 0700 folders; a bundle is meant to be shared
    try:
        files: dict[str, list[str]] = {}
        standalone_files: dict[str, list[str]] = {}
        stage_specs = []
        for k in range(num_exits):
            inputs, outputs = cut.input_names[k], cut.output_names[k]
            stage_specs.append({"stage": k + 1, "signature": "serve", "inputs": inputs, "outputs": outputs,
                                "input_shapes": [list(t.shape[1:]) for t in stages[k].inputs],
                                "cumulative_macs": int(bundle_exit_macs[k])})
        def write_stages(folder: str, precision: str, integer_io: bool, batch_size: int | None) -> list[str]:
            os.makedirs(os.path.join(tmp_dir, *folder.split("/")))
            names = []
            for k, stage in enumerate(stages):
                inputs, outputs = cut.input_names[k], cut.output_names[k]
                feeds = calib_feeds[k]
                if k == 0 and pixels_in:
                    stage, feeds = pixel_input_model(stage, mean, std), [data.train_images[calib_idx]]
                rep = representative_feed(inputs, feeds) if precision == "int8" else None
                name = f"{folder}/stage_{k + 1}.tflite"
                with open(os.path.join(tmp_dir, *name.split("/")), "wb") as f:
                    f.write(convert_to_tflite(stage, inputs, outputs, precision, rep, integer_io=integer_io,
                                              batch_size=batch_size))
                names.append(name)
                _log(verbose, f"  {name}")
            return names

        web_files: dict[str, list[str]] = {}
        for precision in precisions:
            files[precision] = write_stages(precision, precision, precision == "int8" and int8_boundaries, None)
            if standalone:
                standalone_files[precision] = []
                for k, exit_model in enumerate(exit_models(model, kept)):
                    rep = representative_feed(["image"], calib_feeds[0]) if precision == "int8" else None
                    name = f"{precision}/exit_{k + 1}.tflite"
                    with open(os.path.join(tmp_dir, name), "wb") as f:
                        f.write(convert_to_tflite(exit_model, ["image"], ["logits"], precision, rep))
                    standalone_files[precision].append(name)
                    _log(verbose, f"  {name}")

        if thresholds_from == "val":
            table = threshold_table(softmax(logits["val_logits"]), logits["val_labels"], bundle_exit_macs)
        elif thresholds_from == "train":
            fit_idx = np.sort(rng.choice(train_idx, size=min(5000, len(train_idx)), replace=False))
            fit_logits = np.stack([np.asarray(o) for o in model.predict(
                normalize(data.train_images[fit_idx]), batch_size=500, verbose=0)])[kept]
            table = threshold_table(softmax(fit_logits), data.train_labels[fit_idx], bundle_exit_macs)
        else:
            table = []
        # The runtime: its entry script, and its package whole (docs/export.md, "The bundle").
        shutil.copy(RUNNER_SCRIPT, os.path.join(tmp_dir, "cascade_runner.py"))
        os.makedirs(os.path.join(tmp_dir, runtime.RUNTIME_FOLDER))
        for module in runtime.RUNTIME_MODULES:
            shutil.copy(os.path.join(os.path.dirname(runtime.__file__), module),
                        os.path.join(tmp_dir, runtime.RUNTIME_FOLDER, module))
        for precision in web_precisions:  # batch 1, float32 between stages (LiteRT.js's JavaScript API)
            web_files[precision] = write_stages(f"{WEB_FOLDER}/{precision}", precision, False, 1)
        web_runtime = write_web_runtime(tmp_dir, node_modules) if web else []
        all_files = [n for names in list(files.values()) + list(standalone_files.values()) + list(web_files.values())
                     for n in names]
        all_files += ["cascade_runner.py"] + [f"{runtime.RUNTIME_FOLDER}/{m}" for m in runtime.RUNTIME_MODULES]
        all_files += web_runtime
        manifest = {
            "format_version": runtime.FORMAT_VERSION,
            "preset": run.preset,
            "model_class": run.config.get("model_class"),
            "num_exits": num_exits,
            "input": {"name": "image", "shape": list(data.image_shape), "dtype": "uint8", "layout": "NHWC",
                      "resize": runtime.DEFAULT_RESIZE,
                      "stage_1_reads": "pixels" if pixels_in else "normalized",
                      "preprocessing": ("stage 1 reads the uint8 pixels and computes x = (pixel - mean) / std "
                                        "per channel in its graph" if pixels_in else
                                        "x = (pixel - mean) / std per channel, on 0..255 pixel values; "
                                        "stages with int8 inputs take x quantised with the scale and zero "
                                        "point of stage 1's input")},
            "normalization": {"mean": mean.tolist(), "std": std.tolist()},
            "class_names": run.preprocessing.get("class_names"),
            "exit_macs": [int(m) for m in bundle_exit_macs],
            "model_exits": [k + 1 for k in kept],
            "stages": stage_specs,
            "precisions": {
                p: {"stages": files[p], "standalone": standalone_files.get(p, []),
                    "stage_io_dtype": _stage_io_dtype(p, int8_boundaries),
                    "quantization": {
                        "float32": "none",
                        "float16": "float16 weights, float32 compute and I/O",
                        "int8": "full-integer int8 weights and activations, " + (
                            "int8 inputs and outputs at stage boundaries (each tensor's scale and zero point "
                            "are in its .tflite file)"
                            if int8_boundaries else "float32 inputs/outputs at stage boundaries "
                            "(QUANTIZE/DEQUANTIZE inside TFLite)") + f"; standalone exit files have float32 "
                            f"I/O; calibrated on {len(calib_idx)} training-split images",
                    }[p]}
                for p in precisions
            },
            **({"web": {
                "page": f"{WEB_FOLDER}/index.html",
                "litertjs": LITERTJS_VERSION,
                "batch_size": 1,
                "precisions": {p: {"stages": web_files[p], "stage_io_dtype": "float32"} for p in web_precisions},
                "open_with": "python -m tf_fusionnet.runtime.serve BUNDLE (or any static server; see docs/export.md)",
            }} if web else {}),
            "thresholds": table,
            "thresholds_fitted_on": {"val": "validation split", "train": "training-split images (optimistic)",
                                     "none": "nothing: no budget table"}[thresholds_from],
            "threshold_encoding": "exit at stage k when the top softmax probability >= thresholds[k]; "
                                  "0 means always, null means never",
            "source_run": os.path.abspath(run_dir),
            "checkpoint": checkpoint,
            "sha256": {name: runtime.sha256_file(os.path.join(tmp_dir, name)) for name in all_files},
        }
        runtime.validate_manifest(manifest)  # the runner's schema, checked before anything is written
        manifest_bytes = _write_json(os.path.join(tmp_dir, runtime.MANIFEST), manifest)
        with open(os.path.join(tmp_dir, runtime.MANIFEST_DIGEST), "w") as f:
            f.write(f"{hashlib.sha256(manifest_bytes).hexdigest()}  {runtime.MANIFEST}\n")

        report = _check_bundle(tmp_dir, precisions, standalone, data, logits, bundle_exit_macs, report_images, verbose,
                               web_precisions)
        report["export_seconds"] = round(time.time() - start_time, 1)
        _write_json(os.path.join(tmp_dir, "report.json"), report)

        check_out_dir(out_dir, run_dir)  # again: it may have changed during the export
        if os.path.exists(out_dir):
            old = tempfile.mkdtemp(prefix=f".old-bundle-{os.getpid()}-", dir=parent)
            os.rename(out_dir, os.path.join(old, "b"))
            os.rename(tmp_dir, out_dir)
            shutil.rmtree(old)
        else:
            os.rename(tmp_dir, out_dir)
    finally:
        if os.path.exists(tmp_dir):
            shutil.rmtree(tmp_dir)
    return report


def _stage_io_dtype(precision: str, int8_boundaries: bool) -> str:
    return "int8" if precision == "int8" and int8_boundaries else "float32"


def _check_bundle(bundle, precisions, standalone, data, logits, exit_macs, report_images, verbose,
                  web_precisions=()) -> dict:
    """Chained TFLite stages against Keras, and per-exit test accuracy of every precision (and of
    the web stages, run here by LiteRT's Python interpreter on the same stage files the page
    loads; the page itself is checked in Chromium by tests/test_web_runtime.py and
    benchmarks/web_runtime.py)."""
    n = len(data.test_labels) if not report_images else min(report_images, len(data.test_labels))
    images, labels = data.test_images[:n], data.test_labels[:n]
    keras_logits = logits["test_logits"][:, :n]
    keras_top1 = [float(np.mean(keras_logits[k].argmax(1) == labels)) for k in range(len(exit_macs))]
    report: dict[str, Any] = {"test_images": int(n), "keras_top1": keras_top1, "precisions": {}}
    for precision in precisions:
        runner = runtime.CascadeRunner(bundle, precision=precision, threads=2)
        chained = runner.all_exit_logits(images)
        entry = {
            "top1": [float(np.mean(chained[k].argmax(1) == labels)) for k in range(len(exit_macs))],
            "max_abs_logit_diff_vs_keras": [float(np.abs(chained[k] - keras_logits[k]).max())
                                            for k in range(len(exit_macs))],
        }
        entry["top1_drop_vs_keras_points"] = [100 * (a - b) for a, b in zip(keras_top1, entry["top1"])]
        if precision == "float32":
            entry["within_1e-4"] = bool(max(entry["max_abs_logit_diff_vs_keras"]) <= 1e-4)
        if standalone:
            from ai_edge_litert.interpreter import Interpreter

            diffs = []
            x = runner.preprocess(images)
            for k, name in enumerate(runner.manifest["precisions"][precision]["standalone"]):
                interp = Interpreter(model_path=os.path.join(bundle, name), num_threads=2)
                out = interp.get_signature_runner("serve")(image=x)["logits"]
                diffs.append(float(np.abs(out - chained[k]).max()))
            entry["standalone_max_abs_diff_vs_chained"] = diffs
        if precision in web_precisions:
            web_logits = runtime.CascadeRunner(bundle, precision=precision, threads=2, web=True).all_exit_logits(images)
            entry["web"] = {
                "top1": [float(np.mean(web_logits[k].argmax(1) == labels)) for k in range(len(exit_macs))],
                "max_abs_logit_diff_vs_bundle": [float(np.abs(web_logits[k] - chained[k]).max())
                                                 for k in range(len(exit_macs))],
                "top1_differs_from_bundle": [int(np.sum(web_logits[k].argmax(1) != chained[k].argmax(1)))
                                             for k in range(len(exit_macs))],
            }
        report["precisions"][precision] = entry
        _log(verbose, f"  {precision}: per-exit top-1 " + ", ".join(f"{100 * t:.2f}" for t in entry["top1"])
             + " (Keras " + ", ".join(f"{100 * t:.2f}" for t in keras_top1) + "); max |logit - Keras| "
             + f"{max(entry['max_abs_logit_diff_vs_keras']):.2e}")
    return report
