"""Helpers shared by the CIFAR-10 benchmark scripts (not part of the library)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_command(cmd: list[str]) -> float:
    """Runs ``cmd`` in the repository root, echoing it; returns its wall clock in seconds."""
    print("$ " + " ".join(cmd), flush=True)
    start = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return round(time.time() - start, 1)


def bundle_of_one_epoch(work: str, preset: str, precision: str = "float32") -> str:
    """WORK/bundle: ``preset`` trained 1 epoch on the embedded sample and exported, unless there
    already (latency benchmarks need real graphs, not accuracy)."""
    run, bundle = os.path.join(work, "run"), os.path.join(work, "bundle")
    if not os.path.exists(os.path.join(bundle, "manifest.json")):
        run_command([sys.executable, "train.py", "--preset", preset, "--epochs", "1", "--batch_size", "64",
                     "--output", run, "--verbose", "0"])
        run_command([sys.executable, "export/to_tflite.py", "--run", run, "--out", bundle, "--precision", precision])
    return bundle


def cascade_sweep(bundle: str, precision: str, images: np.ndarray, labels: np.ndarray) -> list[dict]:
    """The bundle's cascade runner over ``images`` at every budget of its manifest (1 thread, batch 1)."""
    from tqdm import tqdm

    from tf_fusionnet.export.cascade_runner import CascadeRunner, decode_thresholds

    runner = CascadeRunner(bundle, precision=precision, threads=1)
    points = []
    for entry in tqdm(runner.manifest["thresholds"], desc=f"cascade {os.path.basename(bundle)} {precision}",
                      unit="budget"):
        runner.thresholds = decode_thresholds(entry["thresholds"])
        runner.thresholds[-1] = float("-inf")
        start = time.perf_counter()
        results = [runner.classify(img)[0] for img in images]
        ms = (time.perf_counter() - start) * 1e3 / len(images)
        points.append({"budget_macs": entry["budget_macs"], "mean_ms": ms,
                       "mean_macs": float(np.mean([r["macs"] for r in results])),
                       "top1": float(np.mean([r["class"] == y for r, y in zip(results, labels)]))})
    return points


def percent(value) -> str:
    """A 0-1 accuracy as a percentage with two decimals; "-" for None."""
    return "-" if value is None else f"{100 * value:.2f}"


def test_predictions(run_dir: str) -> dict[str, np.ndarray]:
    """Per exit, every test image's predicted class and softmax confidence, and the labels.

    From the run's cached logits. Small enough to commit beside a benchmark's results (about
    0.2 MB for 7 exits of 10,000 images), so two runs can still be paired once their run
    directories are gone.
    """
    from tf_fusionnet.evaluation.metrics import softmax
    from tf_fusionnet.runs.reading import load_run, run_logits

    logits = run_logits(load_run(run_dir), verbose=0)
    test = logits["test_logits"]
    class_dtype = np.min_scalar_type(max(test.shape[-1] - 1, 0))
    return {"predicted": test.argmax(-1).astype(class_dtype),
            "confidence": softmax(test).max(-1).astype(np.float16),
            "labels": np.asarray(logits["test_labels"]).astype(np.min_scalar_type(int(logits["test_labels"].max())))}


def save_predictions(path: str, predictions: dict[str, np.ndarray]) -> None:
    from tf_fusionnet.utils import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **predictions)


def load_predictions(path: str) -> dict[str, np.ndarray]:
    with np.load(path) as stored:
        return {k: stored[k] for k in ("predicted", "confidence", "labels")}


def paired_errors_of(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[dict]:
    """Per same-numbered exit: test top-1 difference a - b and its paired standard error.

    ``a``, ``b``: :func:`test_predictions` of two runs on the same test images. How far apart
    two classifiers land on the same test images by chance: the scale against which
    matched-cost differences are read.
    """
    from tf_fusionnet.evaluation.metrics import paired_difference

    if not np.array_equal(a["labels"], b["labels"]):
        raise ValueError("the two runs were tested on different images (their test labels differ)")
    rows = []
    for k in range(min(len(a["predicted"]), len(b["predicted"]))):
        diff, se = paired_difference(a["predicted"][k] == a["labels"], b["predicted"][k] == b["labels"])
        rows.append({"exit": k + 1, "top1_difference": diff, "standard_error": se})
    return rows


def paired_errors(run_a: str, run_b: str) -> list[dict]:
    """:func:`paired_errors_of` two run directories (their cached logits)."""
    return paired_errors_of(test_predictions(run_a), test_predictions(run_b))
